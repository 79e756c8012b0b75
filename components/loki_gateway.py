"""LokiGateway: nginx in front of Loki's HTTP API on every Loki node, granting each client its role.

Loki has no authorisation of its own: any certificate its HTTP listener accepts may push, query,
delete and reach the admin endpoints. So Loki listens on loopback only (``LOKI_LOCAL_PORT``), and
nginx (Debian's package) takes the public port (``HTTP_PORT``) on the node's addresses and the VIP.
nginx asks for a certificate of the stack's CA, reads the holder's role from the certificate's
subject (the OU the stack sets in every certificate it issues) and lets each role reach only its
paths (``GRANTS``); everything else is 403. The request goes on to Loki over TLS with the node's
own certificate.

- ``agent``: pushes (``POST /loki/api/v1/push``) and nothing else;
- ``reader`` (Grafana's data source): the query API, read only;
- ``metrics`` (Prometheus): ``GET /metrics``;
- ``operator`` (logcli, curl): everything, the admin endpoints included;
- nobody: the log deletion API, which every gateway answers with 501 and why (``DELETE_REFUSAL``);
- every certificate of the stack (also ``health``, the VIP's check, and ``server``): ``/ready``.

A path that nginx would read differently from Loki (percent-encoded, ``..``, ``//``) is refused
with 400 before any role is looked at, so that what is authorised is exactly what Loki serves.

**A local Loki that does not answer** (crashed, killed; until keepalived has moved the VIP, about
5 s, and until systemd has it ready again, about 15 s): nginx passes the request to another Loki
node's gateway instead (the peers are ``backup`` servers of Loki's upstream). It does so only when
it could not even connect to its own Loki: for a push (a POST) nginx never sends a request again
once it has been sent (``proxy_next_upstream`` without ``non_idempotent``), so a push that Loki may
have taken is never sent twice, and no line can be stored twice by the gateway. The peer must
apply the client's role, not the forwarding node's: the forwarding gateway passes the role it
authorised on in ``X-Lokistack-Role``, which counts only from another Loki node's server
certificate (by its name: the other servers of the stack hold server certificates too), and a
forwarded request goes to that peer's own Loki only, never on to a third node. Only pushes and the
read API, which every node serves alike, go to a peer; ``/ready``, ``/metrics`` and the admin
endpoints are about the node itself (the VIP's check and the roll's checks ask
``/ready``; Prometheus sees a node down by its ``/metrics``) and go to its own Loki only.
On a Loki node, only root and nginx's workers reach Loki's loopback listener: the node's firewall
refuses every other local user (``components.firewall``).

nginx: https://nginx.org/en/docs/http/ngx_http_ssl_module.html#variables
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command

from components.delivery import FileDelivery, FileDeliveryArgs, after
from components.hostfile import HostFile
from components.loki_config import HTTP_PORT, LOKI_LOCAL_PORT
from components.pki import ORGANIZATION
from components.scripts import render_script
from components.step_names import host_step
from components.timeouts import DEFAULT as DEFAULT_TIMEOUTS
from components.timeouts import Timeouts
from components.vip_handover import NODE_HEADER, VipHandover

RESOURCE_TYPE = "lokistack:gateway:LokiGateway"
UNIT = "nginx.service"
NGINX_USER = "www-data"
"""What Debian's nginx.conf runs the workers as (``user www-data;``): the firewall lets it reach Loki."""
CONFIG_FILE = "/etc/nginx/conf.d/lokistack-gateway.conf"
"""Debian's nginx.conf includes ``conf.d/*.conf`` inside its ``http`` block."""
DEFAULT_SITE = "/etc/nginx/sites-enabled/default"
"""Debian's nginx-common post-install links the default site (port 80) here on a first install,
unless something is there already: the setup puts a placeholder first."""
STAGE_DIR = "/etc/lokistack/staged/gateway"
CERTIFICATE_LIST = "/etc/lokistack/gateway/certificates.map"
"""The serials of the stack CA's client certificates the gateway takes (``components.gateway_certificates``)."""
ACCESS_LOG = "/var/log/nginx/lokistack-gateway.log"
MAX_BODY = "64m"
"""Largest request body (a push batch; Alloy sends about 1 MiB)."""
BODY_BUFFER = "2m"
"""Request bodies up to this size stay in memory (a push batch), larger ones go to a temporary file."""
CLIENT_STALL_S = 10
"""A client that sends nothing more of its request (headers, body), or takes nothing of an answer
nginx is blocked sending, for this long has gone (nginx's client_header_timeout,
client_body_timeout, send_timeout; 60 s by default). Above all after a VIP move that was not a
drain (a failover, a preemption): the clients' packets go to the new holder, and the old one keeps
its half of each connection open until these run out. Should the VIP come back, a drain there
waits for every open connection while new ones wait: 10 s, not a minute (measured in a
rehearsal upgrade: a push cut mid-body by a preemption held a later drain 16 s, until nginx's
408 after 60 s). Alloy sends a batch at once, on a LAN."""
ROLE_HEADER = "X-Lokistack-Role"
"""The role the forwarding gateway authorised, passed on to a peer (counts only from a Loki node's
server certificate)."""
KEEPALIVE_TIME_S = 5
"""A kept-alive connection is closed gracefully (Connection: close on an answer) once this old: a
drain of the VIP waits for it (a client dials again every few seconds: one TLS handshake)."""
DRAIN_PORT = 3102
"""The gateway's twin without keep-alive: the VIP handover diverts new connections here while the
kept-alive ones on HTTP_PORT end by themselves."""
LOCAL_FAIL_TIMEOUT_S = 2
"""After the local Loki refused a connection, the peers take requests for this long before it is tried again."""
PROBE_TIMEOUT_S = 60

ROLE_AGENT, ROLE_READER, ROLE_METRICS, ROLE_OPERATOR = "agent", "reader", "metrics", "operator"
ROLE_HEALTH, ROLE_SERVER = "health", "server"
ROLES = (ROLE_AGENT, ROLE_READER, ROLE_METRICS, ROLE_OPERATOR, ROLE_HEALTH, ROLE_SERVER)
ANONYMOUS = "anonymous"
"""A client without a certificate, when ``lokiRequireClientCerts`` is false: it may push and read."""

READ_PATHS = (
    "/loki/api/v1/query", "/loki/api/v1/query_range", "/loki/api/v1/labels", "/loki/api/v1/label",
    "/loki/api/v1/label/[^/]+/values", "/loki/api/v1/series", "/loki/api/v1/index/stats",
    "/loki/api/v1/index/volume", "/loki/api/v1/index/volume_range", "/loki/api/v1/patterns",
    "/loki/api/v1/detected_labels", "/loki/api/v1/detected_fields", "/loki/api/v1/detected_field/[^/]+/values",
    "/loki/api/v1/drilldown-limits", "/loki/api/v1/format_query", "/loki/api/v1/status/buildinfo",
    "/loki/api/v1/tail",
)
"""Loki 3.7's query API (the routes its querier registers), as regular expressions: what Grafana
and logcli read with. Not the delete API, not the admin endpoints."""


@dataclass(frozen=True)
class Grant:
    roles: tuple[str, ...]
    methods: str
    """A regular expression of HTTP methods."""
    paths: tuple[str, ...]
    """Regular expressions of paths (whole path)."""


PUSH_PATH = "/loki/api/v1/push"

DELETE_PATHS = r"^/loki/api/v1/delete$|/compactor/ui/api/v1/deletes$"
"""Loki 3.7.6's log deletion API (``pkg/loki/modules.go``: create, list, cancel) and the compactor
UI's endpoint that lists and creates delete requests too (``pkg/compactor/ui.go``)."""
DELETE_REFUSED_STATUS = 501
DELETE_REFUSAL = (
    "loki-stack: the log deletion API is off. Loki 3.7 keeps delete requests in each node's own "
    "database (grafana/loki#6779, #14985): on a cluster a request is known to the node that took it "
    "only, is applied only if that node runs the compactor, and can be overwritten by another "
    "node's copy. Logs are removed by retention: lower lokiRetention and run pulumi up (README: "
    "Removing logs).")
"""What every gateway answers to the deletion API, for every role and method: a request Loki
accepts with 204 and may silently never apply is worse than a refusal that says why. Not on a
single node either: there Loki behaves as upstream intends, but no test of ours shows a delete
applied, and a stack that grows to three nodes would change its answer."""

GRANTS = (
    Grant((ROLE_AGENT, ANONYMOUS), "POST", (PUSH_PATH,)),
    Grant((ROLE_READER, ANONYMOUS), "GET|POST", READ_PATHS),
    Grant((ROLE_METRICS,), "GET", ("/metrics",)),
    Grant((ROLE_OPERATOR,), "[A-Z]+", ("/.*",)),
    Grant((*ROLES, ANONYMOUS), "GET|HEAD", ("/ready",)),
    # Another Loki node's roll reads this node's view of the ingester ring before it stops
    # (templates/lib-ring-check.sh). The server certificate is a Loki node's, which has the ring
    # through memberlist anyway; the answer is this node's own (never passed on to another node).
    Grant((ROLE_SERVER,), "GET", ("/ring",)),
)


def _map_entries(grant: Grant) -> list[str]:
    roles = "|".join(grant.roles)
    return [f'    "~^({roles}) ({grant.methods}) {path}$" 1;' for path in grant.paths]


@dataclass(frozen=True)
class Peer:
    """Another Loki node, whose gateway takes this node's requests while its own Loki does not answer."""
    fqdn: str
    """The name in its server certificate's subject (CN)."""
    address: str


def _peer_blocks(peers: Sequence[Peer]) -> tuple[str, str]:
    """The ``map`` of the peers' certificates and the ``backup`` servers of Loki's upstream."""
    names = "|".join(re.escape(p.fqdn) for p in peers)
    subject = f"CN=({names}),OU={ROLE_SERVER},O={ORGANIZATION}"
    peer_map = f"""# Another Loki node's gateway, forwarding what its own Loki could not take (its server certificate,
# one the stack issues now).
map "$lokistack_issued|$ssl_client_verify|$ssl_client_s_dn" $lokistack_from_peer {{
    default 0;
{f'    "~^1[|]SUCCESS[|]{subject}$" 1;' if peers else ""}
}}
"""
    backups = "".join(f"    server {p.address}:{HTTP_PORT} backup;\n" for p in peers)
    return peer_map, backups


def render_gateway_conf(*, require_client_certs: bool, cert_file: str, key_file: str, ca_file: str,
                        client_ca_file: str, metrics_issuer: str, peers: Sequence[Peer] = (),
                        timeouts: Timeouts = DEFAULT_TIMEOUTS) -> str:
    """The nginx config (an ``http``-level file for ``conf.d``) of a node whose fellow Loki nodes are
    ``peers``. ``ca_file``: the stack's CA, which Loki's certificate is checked against;
    ``client_ca_file``: the CAs whose client certificates are taken (the stack's and Prometheus');
    ``metrics_issuer``: the subject of Prometheus' CA as nginx shows it (RFC 2253)."""
    verify = "on" if require_client_certs else "optional"
    anonymous = f'    "00|NONE|" {ANONYMOUS};\n' if not require_client_certs else ""
    grants = "\n".join(line for g in GRANTS for line in _map_entries(g))
    # A subject exactly "CN=<name>,OU=<role>,O=loki-stack" (RFC 2253: the certificate's order
    # reversed); the name may hold no comma and no escaped character (\x5c is the backslash).
    subject = f"CN=[^,\\x5c]+,OU=(?<lokistack_ou>[a-z]+),O={ORGANIZATION}"
    metrics_subject = f"CN=[^,\\x5c]+,OU={ROLE_METRICS},O={ORGANIZATION}"
    peer_map, backups = _peer_blocks(peers)
    shared = "\n".join([f'    "~^POST {PUSH_PATH}$" 1;', *(f'    "~^(GET|POST) {path}$" 1;' for path in READ_PATHS)])
    # What a peer may pass on: the roles that reach more than /ready (which is never forwarded).
    forwardable = [ROLE_AGENT, ROLE_READER, ROLE_METRICS, ROLE_OPERATOR] + ([] if require_client_certs else [ANONYMOUS])

    def server(port: int, keepalive: str, what: str) -> str:
        return f"""# {what}
server {{
    listen {port} ssl;
    {keepalive}
    server_name _;
    access_log {ACCESS_LOG} lokistack_gateway;

    ssl_certificate {cert_file};
    ssl_certificate_key {key_file};
    ssl_client_certificate {client_ca_file};
    ssl_verify_client {verify};
    ssl_verify_depth 1;
    ssl_protocols TLSv1.2 TLSv1.3;
    client_max_body_size {MAX_BODY};
    # Which node answered (its host name, as in its certificate): the VIP handover asks who holds the VIP.
    add_header {NODE_HEADER} $hostname always;
    client_body_buffer_size {BODY_BUFFER};
    client_header_timeout {CLIENT_STALL_S}s;
    client_body_timeout {CLIENT_STALL_S}s;
    send_timeout {CLIENT_STALL_S}s;

    if ($lokistack_clean_path = 0) {{
        return 400;
    }}
    if ($lokistack_allowed = 0) {{
        return 403;
    }}

    proxy_http_version 1.1;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection $lokistack_connection;
    proxy_set_header {ROLE_HEADER} $lokistack_role;
    proxy_buffering off;
    # Longer than Loki's own (components/timeouts.py): Loki's 504 for a query that took too long
    # reaches the client, and no query that timed out here is sent on to a peer to run again.
    proxy_read_timeout {timeouts.gateway_s}s;
    proxy_send_timeout {timeouts.gateway_s}s;
    proxy_ssl_certificate {cert_file};
    proxy_ssl_certificate_key {key_file};
    proxy_ssl_trusted_certificate {ca_file};
    proxy_ssl_verify on;
    proxy_ssl_verify_depth 1;
    # Every Loki node's certificate names localhost too (its own health checks use it).
    proxy_ssl_name localhost;
    proxy_ssl_session_reuse on;

    location / {{
        proxy_pass https://$lokistack_upstream;
    }}
    # The log deletion API is off (components/loki_gateway.py: DELETE_REFUSAL says why).
    location ~ "{DELETE_PATHS}" {{
        default_type text/plain;
        return {DELETE_REFUSED_STATUS} "{DELETE_REFUSAL}\n";
    }}
}}
"""

    main_server = server(HTTP_PORT, f"keepalive_time {KEEPALIVE_TIME_S}s;",
                         f"The gateway. A kept-alive connection is closed after the first answer once it is "
                         f"{KEEPALIVE_TIME_S} s old\n# (Connection: close): a drain of the VIP waits for that "
                         f"instead of cutting idle connections.")
    drain_server = server(DRAIN_PORT, "keepalive_timeout 0;",
                          "Its twin for a drain of the VIP: new connections to the VIP come here while the "
                          "kept-alive ones end;\n# each connection takes one request and is closed "
                          "(Connection: close).")
    return f"""# loki-stack: the Loki gateway. Loki itself listens on 127.0.0.1:{LOKI_LOCAL_PORT}; this server takes
# port {HTTP_PORT} on every address of the node (the VIP too) and lets each certificate's role reach
# only its paths.
log_format lokistack_gateway '$remote_addr [$time_local] "$request" $status $body_bytes_sent '
                             '$request_time role=$lokistack_role subject="$ssl_client_s_dn" '
                             'upstream=$upstream_addr';

# A client certificate of the stack's CA counts only while the stack issues it (not a removed
# host's, not one a renewal replaced): its serial is 1 in the list, from the state, kept by the
# certificate steps; a revoked serial (certRevokedSerials) is 2 there, whichever CA issued it.
map $ssl_client_serial $lokistack_issued {{
    default 0;
    include {CERTIFICATE_LIST};
}}
# Prometheus' certificates have a CA of their own, which signs nothing else: each counts until it
# ends (a renewal blinds no scrape), for the role metrics only. (A pattern: an exact key this long
# would need a larger map_hash_bucket_size, a setting of the whole http block.)
map $ssl_client_i_dn $lokistack_metrics_issued {{
    default 0;
    "~^{re.escape(metrics_issuer)}$" 1;
}}

map "$lokistack_issued$lokistack_metrics_issued|$ssl_client_verify|$ssl_client_s_dn" $lokistack_client_role {{
    default "";
    "~^10[|]SUCCESS[|]{subject}$" $lokistack_ou;
    "~^01[|]SUCCESS[|]{metrics_subject}$" {ROLE_METRICS};
{anonymous}}}

{peer_map}
# A peer passes on the role it authorised (X-Lokistack-Role); from anyone else the header counts for nothing.
map "$lokistack_from_peer|$http_x_lokistack_role" $lokistack_role {{
    default $lokistack_client_role;
    "~^1[|](?<lokistack_forwarded>{"|".join(forwardable)})$" $lokistack_forwarded;
}}

# What another node may take while this node's Loki cannot be reached: pushes and the read API,
# which every node serves alike. The rest is about this node (/ready, /metrics, the admin
# endpoints), and what a peer forwarded goes to this node's Loki only: never on to a third node.
map "$request_method $uri" $lokistack_shared {{
    default 0;
{shared}
}}
map "$lokistack_from_peer$lokistack_shared" $lokistack_upstream {{
    default lokistack_loki_local;
    01 lokistack_loki;
}}

# The path as the client sent it must be the path nginx authorises (and passes on): nothing
# percent-encoded, no "..", no "//".
map $request_uri $lokistack_raw_path {{
    "~^(?<lokistack_path>[^?]*)" $lokistack_path;
}}
map "$lokistack_raw_path|$uri" $lokistack_clean_path {{
    default 0;
    "~^([^|]*)[|]\\1$" 1;
}}

map "$lokistack_role $request_method $uri" $lokistack_allowed {{
    default 0;
{grants}
}}

map $http_upgrade $lokistack_connection {{
    default upgrade;
    "" "";
}}

upstream lokistack_loki_local {{
    server 127.0.0.1:{LOKI_LOCAL_PORT};
    keepalive 16;
}}

# This node's Loki; the peers' gateways only when it cannot be reached (not even connected to: a
# push that was sent is never sent again).
upstream lokistack_loki {{
    server 127.0.0.1:{LOKI_LOCAL_PORT} max_fails=1 fail_timeout={LOCAL_FAIL_TIMEOUT_S}s;
{backups}    keepalive 16;
}}

{main_server}
{drain_server}"""


def port_check_parameters() -> dict[str, str | int]:
    """The parameters of ``lib-gateway-port.sh``: whether the gateway itself serves its port (an
    earlier version's Loki held it; nginx, reloaded meanwhile, kept running without it)."""
    return {"GATEWAY_URL": f"https://127.0.0.1:{HTTP_PORT}/ready", "GATEWAY_PORT": HTTP_PORT,
            "GATEWAY_NODE_HEADER": NODE_HEADER}


@dataclass(frozen=True, kw_only=True)
class GatewayHost:
    name: str
    connection: pulumi.Input[command.remote.ConnectionArgsDict]
    """SSH connection to the ready host, after its TLS files are in place (secret)."""
    tls_digest: pulumi.Input[str]
    """Digest of the host's TLS files: nginx reads its certificates when it (re)loads."""


@dataclass(frozen=True, kw_only=True)
class LokiGatewayArgs:
    hosts: Sequence[GatewayHost]
    """Every Loki node."""
    require_client_certs: bool
    cert_file: str
    key_file: str
    ca_file: str
    """Host paths of the node's server certificate (also its client certificate towards Loki), key, CA."""
    client_ca_file: str
    """Host path of the CAs whose client certificates the gateway takes: the stack's and Prometheus'."""
    metrics_issuer: str
    """The subject of Prometheus' CA, as nginx shows an issuer (RFC 2253)."""
    after_steps: Mapping[str, pulumi.CustomResource]
    """Host name -> the step its setup waits for (one package step at a time on a host)."""
    peers: Mapping[str, Peer]
    """Every Loki node's name -> its certificate's name and address: each node's gateway sends to the
    others when its own Loki does not answer."""
    handover: VipHandover
    """On the VIP holder, a reload first lets the kept-alive connections to the VIP end (``vip_reload_gateway``)."""
    timeouts: Timeouts = DEFAULT_TIMEOUTS
    """How long the gateway waits for Loki: longer than Loki itself (``components.timeouts``)."""


class LokiGateway(pulumi.ComponentResource):
    """nginx on every Loki node, in front of Loki's HTTP API."""

    setups: dict[str, command.remote.Command]
    """Host name -> the step that installs nginx there (the host's next package step waits for it)."""
    applies: dict[str, command.remote.Command]
    host_files: list[HostFile]

    def __init__(self, name: str, args: LokiGatewayArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(RESOURCE_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        unknown = sorted({h.name for h in args.hosts} - set(args.peers))
        if unknown:
            raise ValueError(f"LokiGateway: hosts {unknown} are not among the peers {sorted(args.peers)}")
        setup_script = render_script("loki-gateway-setup.sh", {"DEFAULT_SITE": DEFAULT_SITE, "STAGE_DIR": STAGE_DIR},
                                     libraries=["lib-apt.sh"])
        parameters = {
            "STAGED": f"{STAGE_DIR}/gateway.conf", "TARGET": CONFIG_FILE, "UNIT": UNIT, "NGINX_USER": NGINX_USER,
            "PROBE_URL": f"https://127.0.0.1:{HTTP_PORT}/ready", "CA_FILE": args.ca_file,
            "CERT_FILE": args.cert_file, "KEY_FILE": args.key_file, "TIMEOUT_S": PROBE_TIMEOUT_S,
            **port_check_parameters(),
        }
        self.setups, self.applies, self.host_files = {}, {}, []
        for host in args.hosts:
            apply_script = render_script("loki-gateway-apply.sh", {
                **parameters, **args.handover.script_parameters(host.name)},
                libraries=["lib-safe-write.sh", "lib-place.sh", "lib-wait-ready.sh", "lib-gateway-port.sh",
                           "lib-clock.sh", "lib-vip-handover.sh"])
            conf = render_gateway_conf(require_client_certs=args.require_client_certs, cert_file=args.cert_file,
                                       key_file=args.key_file, ca_file=args.ca_file,
                                       client_ca_file=args.client_ca_file, metrics_issuer=args.metrics_issuer,
                                       peers=[p for n, p in args.peers.items() if n != host.name],
                                       timeouts=args.timeouts)
            connection = host.connection
            if host.name in args.after_steps:
                connection = after(connection, args.after_steps[host.name])
            setup = command.remote.Command(host_step(name, host.name, "setup"), connection=connection,
                                           create="sudo bash -s", stdin=setup_script, triggers=[setup_script],
                                           opts=child)
            self.setups[host.name] = setup
            staged = FileDelivery(host_step(name, host.name, "staged"), FileDeliveryArgs(
                host=host.name, connection=after(host.connection, setup),
                files=[HostFile(host=host.name, path=f"{STAGE_DIR}/gateway.conf", content=conf, mode="0600")]),
                opts=child)
            self.applies[host.name] = command.remote.Command(
                host_step(name, host.name, "apply"), connection=after(host.connection, staged.command),
                create="sudo bash -s", stdin=apply_script,
                # nginx reads the certificates when it loads: a renewal reloads it (no connection drops).
                triggers=[hashlib.sha256(conf.encode()).hexdigest(), apply_script, host.tls_digest], opts=child)
            self.host_files += staged.host_files
        self.register_outputs({})
