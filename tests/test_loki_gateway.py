"""The Loki gateway: the real nginx with the rendered config, every role against every kind of path.

A Loki node of the example stack (moved into 198.18.0.0/24) runs Debian's nginx with its rendered
gateway config and TLS files, and its rendered firewall; behind it, on Loki's loopback port, a
stand-in that requires the node's certificate, like Loki, and answers every request with what it
received. A client host sends each request with each certificate the stack hands out. So these
tests show exactly which requests get through, and unchanged; ``tests/test_loki_live.py`` shows
the same gateway in front of the real Loki.

A second node renders the stack with ``lokiRequireClientCerts: false``.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from components.gateway_certificates import STAGED_LIST, certificate_serial
from components.loki_config import HTTP_PORT, LOKI_LOCAL_PORT
from components.loki_gateway import (
    ANONYMOUS,
    CLIENT_STALL_S,
    DELETE_REFUSAL,
    DELETE_REFUSED_STATUS,
    DRAIN_PORT,
    GRANTS,
    KEEPALIVE_TIME_S,
    READ_PATHS,
    ROLE_AGENT,
    ROLE_HEADER,
    ROLE_HEALTH,
    ROLE_METRICS,
    ROLE_OPERATOR,
    ROLE_READER,
    ROLE_SERVER,
    ROLES,
    Peer,
    render_gateway_conf,
)
from stack.certificates import (
    AGENT_CERT_FILE,
    AGENT_KEY_FILE,
    CA_FILE,
    GATEWAY_CLIENT_CA_FILE,
    SERVER_CERT_FILE,
    SERVER_KEY_FILE,
)
from tests.labs.example import shellcheck_commands
from tests.labs.lab_stack import LabPlan, gateway_command, lab_firewall_rules, lab_plan
from tests.labs.needs import require_root, require_tool
from tests.labs.netns import PrivateNetwork, private_network

STRICT, OPEN, CLIENT = "loki-01", "loki-02", "client"
METRICS_ISSUER = "CN=loki-stack metrics clients home.arpa,O=loki-stack"
EXTRA_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJpr/dRGxU8CQFAAYlnNpNTENGvp7bPiqQowbP0PnG7"
"""A real SSH host public key, for an extra host."""
ADDRESSES = {STRICT: "198.18.0.11", OPEN: "198.18.0.12", CLIENT: "198.18.0.50"}

UPSTREAM = r"""
import http.server, json, ssl, sys
tls = sys.argv[1]
class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        subject = dict(item[0] for item in self.connection.getpeercert()["subject"])
        out = json.dumps({"method": self.command, "path": self.path, "client": subject["commonName"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = do_PUT = do_DELETE = answer
    def log_message(self, *args):
        pass
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(tls + "/server.pem", tls + "/server.key")
context.load_verify_locations(tls + "/ca.pem")
context.verify_mode = ssl.CERT_REQUIRED
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Echo)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""
"""Loki's loopback listener, stood in: TLS with the node's certificate, a client certificate of the
stack's CA required; answers with the method, the path (as received) and the client's name."""

PUSH = ("POST", "/loki/api/v1/push")
READS = [("GET", "/loki/api/v1/query_range?query=%7Bjob%3D%22x%22%7D&limit=5"), ("POST", "/loki/api/v1/query"),
         ("GET", "/loki/api/v1/labels"), ("GET", "/loki/api/v1/label/job/values"),
         ("GET", "/loki/api/v1/series?match%5B%5D=%7Bjob%3D%22x%22%7D"), ("GET", "/loki/api/v1/index/volume"),
         ("GET", "/loki/api/v1/detected_field/level/values"), ("GET", "/loki/api/v1/status/buildinfo"),
         ("GET", "/loki/api/v1/tail")]
READY, METRICS = ("GET", "/ready"), ("GET", "/metrics")
ADMIN = [("GET", "/config"), ("GET", "/services"), ("POST", "/flush"), ("GET", "/ring"), ("POST", "/ingester/shutdown"),
         ("GET", "/loki/api/v1/push"), ("PUT", "/loki/api/v1/push"), ("GET", "/compactor/ring")]
DELETES = [("POST", "/loki/api/v1/delete?query=%7Bjob%3D%22x%22%7D&start=1"), ("GET", "/loki/api/v1/delete"),
           ("DELETE", "/loki/api/v1/delete?request_id=1"), ("PUT", "/loki/api/v1/delete?query=%7Bjob%3D%22x%22%7D"),
           ("GET", "/compactor/ui/api/v1/deletes"), ("POST", "/compactor/ui/api/v1/deletes"),
           ("POST", "/ui/api/v1/proxy/loki-01/compactor/ui/api/v1/deletes")]
"""Loki's log deletion API: refused by every gateway, to the operator with 501 and the reason."""
EVERY = [PUSH, *READS, READY, METRICS, *ADMIN, *DELETES]
ALLOWED = {
    ROLE_AGENT: {PUSH, READY},
    ROLE_READER: {*READS, READY},
    ROLE_METRICS: {METRICS, READY},
    ROLE_OPERATOR: {PUSH, *READS, READY, METRICS, *ADMIN},
    ROLE_HEALTH: {READY},
    ROLE_SERVER: {READY, ("GET", "/ring")},
}
"""What each role may do: the issue's least privilege, written out by hand (not from GRANTS)."""


@dataclass
class Gateways:
    plans: dict[str, LabPlan]
    run: Path
    network: PrivateNetwork

    def request(self, node: str, role: str | None, method: str, path: str,
                headers: tuple[str, ...] = (), *, port: int = HTTP_PORT) -> tuple[int, str]:
        argv = ["curl", "-sS", "--path-as-is", "-m", "20", "-o", "-", "-w", "\n%{http_code}",
                "--cacert", str(self.run / CLIENT / node / "ca.pem"), "-X", method]
        for header in headers:
            argv += ["-H", header]
        if role is not None:
            argv += ["--cert", str(self.run / CLIENT / node / f"{role}.pem"),
                     "--key", str(self.run / CLIENT / node / f"{role}.key")]
        if method in ("POST", "PUT"):
            argv += ["--data-binary", "{}", "-H", "Content-Type: application/json"]
        proc = self.network.run(CLIENT, [*argv, f"https://{ADDRESSES[node]}:{port}{path}"], timeout=60)
        body, _, status = proc.stdout.rpartition("\n")
        return int(status or 0), body if proc.returncode == 0 else proc.stderr


def foreign_identity() -> tuple[str, str]:
    """A client certificate with a stack-like subject (OU operator) from a CA that is not the stack's."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "loki-stack"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ROLE_OPERATOR),
                      x509.NameAttribute(NameOID.COMMON_NAME, "operator")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return (cert.public_bytes(ser.Encoding.PEM).decode(),
            key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()).decode())


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    require_root()
    for tool in ("ip", "curl", "nginx", "nft", "setpriv"):
        require_tool(tool)
    plans = {STRICT: lab_plan(), OPEN: lab_plan(lokiRequireClientCerts=False)}
    run = tmp_path_factory.mktemp("gateway")
    with private_network("gw", run) as network:
        for host, address in ADDRESSES.items():
            network.add_host(host, address)
        for node, plan in plans.items():
            files = plan.files[node]
            command = gateway_command(run / node, files)
            rules = run / node / "firewall.nft"
            rules.write_text(lab_firewall_rules(files))
            loaded = network.run(node, ["nft", "-f", str(rules)])
            assert loaded.returncode == 0, f"{node}: nft -f rejected the rendered rules: {loaded.stderr}"
            network.start(f"loki-{node}", node, [sys.executable, "-c", UPSTREAM, str(run / node / "tls"),
                                                 str(LOKI_LOCAL_PORT)])
            network.start(f"gateway-{node}", node, command)
            client = run / CLIENT / node
            client.mkdir(parents=True)
            (client / "ca.pem").write_text(plan.outputs["caCertificate"])
            for role, (cert, key) in [*plan.identities.items(), ("foreign", foreign_identity())]:
                (client / f"{role}.pem").write_text(cert)
                (client / f"{role}.key").write_text(key)
        gw = Gateways(plans=plans, run=run, network=network)
        for node in plans:  # both up: the operator reaches the stand-in through the gateway
            for _ in range(100):
                if gw.request(node, ROLE_OPERATOR, *READY)[0] == 200:
                    break
                network.run(node, ["sleep", "0.2"])
            else:
                logs = (run / node / "error.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"{node}: the gateway never answered /ready for the operator\n{logs}")
        yield gw


@pytest.mark.live
@pytest.mark.parametrize("role", ROLES)
def test_each_role_reaches_exactly_its_paths_unchanged(gateways, role):
    wrong = []
    for method, path in EVERY:
        status, body = gateways.request(STRICT, role, method, path)
        if (method, path) in ALLOWED[role]:
            seen = json.loads(body) if status == 200 else {}
            if (status, seen.get("method"), seen.get("path")) != (200, method, path):
                wrong.append(f"{method} {path}: {status} {body[:200]} (should pass unchanged)")
            elif seen.get("client") != "loki-01.home.arpa":
                wrong.append(f"{method} {path}: Loki saw client {seen.get('client')}, not the node's own certificate")
        elif (method, path) in DELETES and role == ROLE_OPERATOR:
            if status != DELETE_REFUSED_STATUS or body.strip() != DELETE_REFUSAL:
                wrong.append(f"{method} {path}: {status} {body[:200]} (the deletion API: should be "
                             f"{DELETE_REFUSED_STATUS} with the reason)")
        elif status != 403:
            wrong.append(f"{method} {path}: {status} {body[:200]} (should be 403)")
    assert not wrong, f"role {role} on the gateway of {STRICT}:\n" + "\n".join(wrong)


@pytest.mark.live
@pytest.mark.parametrize(("role", "path"), [
    (ROLE_AGENT, "/loki/api/v1/push/../delete"),
    (ROLE_AGENT, "/loki/api/v1/%70ush"),
    (ROLE_AGENT, "/loki/api/v1//push"),
    (ROLE_AGENT, "/loki/api/v1/push/."),
    (ROLE_READER, "/loki/api/v1/query/../../../config"),
    (ROLE_READER, "/loki/api/v1/label/%2e%2e/%2e%2e/delete"),
])
def test_a_path_that_nginx_and_loki_could_read_differently_is_refused(gateways, role, path):
    method = "POST" if role == ROLE_AGENT else "GET"
    status, body = gateways.request(STRICT, role, method, path)
    assert status == 400, f"{role} {method} {path}: {status} {body[:200]} (must be refused before any role check)"


@pytest.mark.live
def test_no_certificate_or_a_foreign_one_reaches_nothing(gateways):
    for role in (None, "foreign"):
        for method, path in [PUSH, READY, *READS[:2], ADMIN[0]]:
            status, body = gateways.request(STRICT, role, method, path)
            assert status != 200 and '"client"' not in body, (
                f"{role or 'no certificate'}: {method} {path} got through ({status} {body[:200]})")


@pytest.mark.live
def test_without_required_client_certificates_anonymous_clients_push_and_read_only(gateways):
    for method, path in EVERY:
        status, body = gateways.request(OPEN, None, method, path)
        allowed = (method, path) in {PUSH, *READS, READY}
        assert status == (200 if allowed else 403), f"no certificate: {method} {path} -> {status} {body[:200]}"
    status, _ = gateways.request(OPEN, ROLE_AGENT, *ADMIN[0])
    assert status == 403, "a certificate keeps its role when certificates are optional"
    status, _ = gateways.request(OPEN, "foreign", *READY)
    assert status == 400, "a certificate of another CA is refused also when certificates are optional"


@pytest.mark.live
def test_only_root_and_the_gateway_reach_lokis_loopback_listener(gateways):
    """The node's firewall: another local user holding a certificate cannot go around the gateway."""
    with tempfile.TemporaryDirectory(prefix="gw-certs-") as shared:
        tls = Path(shared)
        tls.chmod(0o755)
        for name in ("server.pem", "server.key", "ca.pem"):  # the certificate, readable by anyone here
            shutil.copy(gateways.run / STRICT / "tls" / name, tls / name)
            (tls / name).chmod(0o644)

        def curl(port: int, path: str, *user: str) -> tuple[str, int]:
            as_user = ["setpriv", f"--reuid={user[0]}", "--regid=nogroup", "--clear-groups"] if user else []
            proc = gateways.network.run(STRICT, [
                *as_user, "curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
                str(tls / "ca.pem"), "--cert", str(tls / "server.pem"), "--key", str(tls / "server.key"),
                f"https://localhost:{port}{path}"], timeout=30)
            return proc.stdout, proc.returncode

        assert curl(LOKI_LOCAL_PORT, "/config")[0] == "200", "root must reach Loki on loopback (the apply's checks)"
        for user in ("nobody", "_apt"):
            assert curl(HTTP_PORT, "/ready", user)[0] == "200", f"{user} must reach the gateway with the certificate"
            status, code = curl(LOKI_LOCAL_PORT, "/config", user)
            assert (status, code != 0) == ("000", True), (
                f"{user} reached Loki's loopback listener ({status}): the firewall must refuse it")


def test_grants_name_only_known_roles_and_the_reader_paths_are_loki_query_routes():
    for grant in GRANTS:
        assert set(grant.roles) <= {*ROLES, ANONYMOUS}, f"grant {grant} names an unknown role"
    assert not any("delete" in p or "push" in p for p in READ_PATHS), "the read paths must not write"


def test_certificates_are_required_unless_the_setting_says_otherwise():
    strict = render_gateway_conf(require_client_certs=True, cert_file=SERVER_CERT_FILE, key_file=SERVER_KEY_FILE,
                                 ca_file=CA_FILE, client_ca_file=GATEWAY_CLIENT_CA_FILE, metrics_issuer=METRICS_ISSUER)
    loose = render_gateway_conf(require_client_certs=False, cert_file=SERVER_CERT_FILE, key_file=SERVER_KEY_FILE,
                                ca_file=CA_FILE, client_ca_file=GATEWAY_CLIENT_CA_FILE, metrics_issuer=METRICS_ISSUER)
    assert "ssl_verify_client on;" in strict and ANONYMOUS not in strict.split("map $request_uri")[0], strict
    assert "ssl_verify_client optional;" in loose and f'"00|NONE|" {ANONYMOUS};' in loose, loose


FORWARDED = f"{ROLE_HEADER}: {ROLE_OPERATOR}"
OPERATOR_ONLY = ("POST", "/flush")


@pytest.mark.live
def test_a_peer_gateway_passes_its_clients_role_on_and_nobody_else_can(gateways):
    """loki-01's server certificate is a peer's for loki-02 (the other Loki node): the role it passes
    on counts there, and the request reaches that node's own Loki. The same header from any other
    certificate, or from the node's own certificate at its own gateway, counts for nothing."""
    status, body = gateways.request(OPEN, ROLE_SERVER, *OPERATOR_ONLY, headers=(FORWARDED,))
    assert status == 200 and '"client": "loki-02' in body, (
        f"a peer forwarding an operator's request must reach loki-02's own Loki: {status} {body}")
    status, _ = gateways.request(OPEN, ROLE_SERVER, *PUSH)
    assert status == 403, f"a peer's certificate without a forwarded role may only ask /ready: {status}"
    for role in (ROLE_AGENT, ROLE_READER, ROLE_METRICS, ROLE_HEALTH):
        status, _ = gateways.request(OPEN, role, *OPERATOR_ONLY, headers=(FORWARDED,))
        assert status == 403, f"the {role} certificate became an operator with {FORWARDED}: {status}"
    status, _ = gateways.request(STRICT, ROLE_SERVER, *OPERATOR_ONLY, headers=(FORWARDED,))
    assert status == 403, f"loki-01's own certificate is no peer of loki-01's gateway: {status}"
    status, _ = gateways.request(OPEN, ROLE_SERVER, *PUSH, headers=(f"{ROLE_HEADER}: {ROLE_HEALTH}",))
    assert status == 403, "only the roles that reach more than /ready are passed on"


def test_each_node_sends_pushes_and_reads_to_its_peers_only_when_its_own_loki_cannot_be_reached():
    """Rendered for loki-02 of three: the two others are backup servers of Loki's upstream, named by
    their certificates in the peer map; only pushes and the read API may go to them (/ready,
    /metrics, the admin endpoints and deletes are about the node itself)."""
    peers = [Peer(fqdn="loki-01.home.arpa", address="198.18.0.11"),
             Peer(fqdn="loki-03.home.arpa", address="198.18.0.13")]
    conf = render_gateway_conf(require_client_certs=True, cert_file=SERVER_CERT_FILE, key_file=SERVER_KEY_FILE,
                               ca_file=CA_FILE, client_ca_file=GATEWAY_CLIENT_CA_FILE,
                               metrics_issuer=METRICS_ISSUER, peers=peers)
    upstream = conf.split("upstream lokistack_loki {", 1)[1].split("}", 1)[0]
    assert f"server 127.0.0.1:{LOKI_LOCAL_PORT} max_fails=1" in upstream, upstream
    assert [line.split()[1] for line in upstream.splitlines() if line.strip().endswith("backup;")] == [
        f"198.18.0.11:{HTTP_PORT}", f"198.18.0.13:{HTTP_PORT}"], f"the peers must be the upstream's backups: {upstream}"
    assert r"CN=(loki\-01\.home\.arpa|loki\-03\.home\.arpa),OU=server,O=loki-stack" in conf
    shared = conf.split('map "$request_method $uri" $lokistack_shared {', 1)[1].split("}", 1)[0]
    shared_routes = {tuple(line.split('"')[1][2:-1].split(" ", 1)) for line in shared.splitlines() if '"~^' in line}
    assert shared_routes == {("POST", "/loki/api/v1/push"), *(("(GET|POST)", p) for p in READ_PATHS)}, (
        f"only pushes and the read API may go to another node: {shared_routes}")
    assert "01 lokistack_loki;" in conf and "default lokistack_loki_local;" in conf, (
        "anything else, and anything a peer forwarded, must go to the node's own Loki")
    assert "proxy_next_upstream" not in conf and "non_idempotent" not in conf, (
        "a push that was sent must never be sent again (nginx's default)")


CONNECTION_HEADERS = r"""
import http.client, json, ssl, sys, time
ca, cert, key, host, port, pause = sys.argv[1:7]
context = ssl.create_default_context(cafile=ca)
context.load_cert_chain(cert, key)
connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=20)
seen = []
for wait in (0.0, float(pause)):
    time.sleep(wait)
    connection.request("GET", "/ready")
    response = connection.getresponse()
    response.read()
    seen.append([response.status, response.getheader("Connection")])
    if response.will_close:
        break
print(json.dumps(seen))
"""


@pytest.mark.live
def test_the_drain_twin_grants_exactly_what_the_gateway_does(gateways):
    """The twin on DRAIN_PORT takes new connections to the VIP while a drain lets the kept-alive
    ones end: the same roles reach the same paths, nothing more."""
    for role in (*ROLES, "foreign", None):
        for method, path in EVERY:
            main = gateways.request(STRICT, role, method, path)[0]
            twin = gateways.request(STRICT, role, method, path, port=DRAIN_PORT)[0]
            assert twin == main, f"{role} {method} {path}: the gateway answers {main}, its twin {twin}"


@pytest.mark.live
def test_a_kept_alive_connection_ends_after_keepalive_time_and_the_twin_keeps_none(gateways):
    """The gateway answers Connection: close once a connection is KEEPALIVE_TIME_S old (a drain waits
    for that instead of cutting idle connections); the twin closes every connection after one answer."""
    client = gateways.run / CLIENT / STRICT
    def exchange(port: int, pause: float) -> list[list[object]]:
        proc = gateways.network.run(CLIENT, [sys.executable, "-c", CONNECTION_HEADERS, str(client / "ca.pem"),
                                             str(client / f"{ROLE_OPERATOR}.pem"), str(client / f"{ROLE_OPERATOR}.key"),
                                             ADDRESSES[STRICT], str(port), str(pause)], timeout=60)
        assert proc.returncode == 0, f"the client failed on port {port}: {proc.stderr}"
        return json.loads(proc.stdout)
    assert exchange(HTTP_PORT, 0.2) == [[200, "keep-alive"], [200, "keep-alive"]], (
        "a young connection must be kept alive")
    assert exchange(HTTP_PORT, KEEPALIVE_TIME_S + 0.5) == [[200, "keep-alive"], [200, "close"]], (
        f"a connection older than {KEEPALIVE_TIME_S} s must be closed after its answer")
    assert exchange(DRAIN_PORT, 0.2) == [[200, "close"]], "the twin must close every connection after one answer"


STALLED_PUSH = r"""
import json, socket, ssl, sys, threading, time
ca, cert, key, host = sys.argv[1:5]
context = ssl.create_default_context(cafile=ca)
context.load_cert_chain(cert, key)
seen = {}
def stall(port):
    conn = context.wrap_socket(socket.create_connection((host, port), timeout=90), server_hostname=host)
    conn.sendall(b"POST /loki/api/v1/push HTTP/1.1\r\nHost: loki\r\nContent-Type: application/x-protobuf\r\n"
                 b"Content-Length: 1048576\r\n\r\n" + b"x" * 65536)  # then nothing more of the body
    t, data = time.monotonic(), b""
    try:
        while chunk := conn.recv(65536):
            data += chunk
    except OSError as e:
        data += repr(e).encode()
    seen[port] = [round(time.monotonic() - t, 1), data.split(b"\r\n", 1)[0].decode(errors="replace")]
threads = [threading.Thread(target=stall, args=(int(port),)) for port in sys.argv[5:]]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(seen))
"""


@pytest.mark.live
def test_a_client_that_stops_sending_its_push_is_let_go_after_client_stall_s(gateways):
    """A push whose body stops arriving (its client is gone: after a VIP move that was not a drain,
    the old holder never hears from it again) ends after CLIENT_STALL_S, on the gateway and on its
    twin, not after nginx's default minute, for which a later drain of the VIP there would wait."""
    client = gateways.run / CLIENT / STRICT
    proc = gateways.network.run(CLIENT, [sys.executable, "-c", STALLED_PUSH, str(client / "ca.pem"),
                                         str(client / f"{ROLE_OPERATOR}.pem"), str(client / f"{ROLE_OPERATOR}.key"),
                                         ADDRESSES[STRICT], str(HTTP_PORT), str(DRAIN_PORT)], timeout=120)
    assert proc.returncode == 0, f"the stalled client failed: {proc.stderr}"
    for port, (seconds, first_line) in json.loads(proc.stdout).items():
        assert CLIENT_STALL_S - 1 <= seconds <= CLIENT_STALL_S + 3, (
            f"port {port}: a push whose body stopped arriving must end after about {CLIENT_STALL_S} s, "
            f"it ended after {seconds} s ({first_line!r})")


@pytest.mark.real_tools
def test_the_apply_reloads_through_the_drain_and_passes_shellcheck(example, tmp_path):
    """nginx reloads through ``vip_reload_gateway`` (on the VIP holder the kept-alive connections end
    first); a drain an earlier run left goes before anything else, and none outlives the step."""
    shellcheck_commands(example, ["loki-gateway-loki-01-setup", "loki-gateway-loki-01-apply"], tmp_path)
    stdin = example.engine.monitor.find("command:remote:Command", "loki-gateway-loki-01-apply").plain_inputs["stdin"]
    assert "\nVIP_SELF=loki-01\n" in stdin and f"\nVIP_DRAIN_PORT={DRAIN_PORT}\n" in stdin, (
        "the gateway's apply must be rendered with the node's handover parameters")
    exit_traps = re.findall(r"^trap (.*) EXIT$", stdin, re.MULTILINE)
    assert exit_traps == ["'rm -rf \"$work\"; vip_gateway_exit'"], (
        f"one EXIT trap, which removes the reload's diversion (a later trap would replace it): {exit_traps}")
    trap = stdin.index("\ntrap 'rm -rf \"$work\"; vip_gateway_exit' EXIT\n")
    assert trap < stdin.index('\nvip_recover "$VIP_RELOAD_TABLE"\n') < stdin.index('place "$STAGED" "$TARGET"') < (
        stdin.index('  vip_reload_gateway "$UNIT"\n')), "recover, place, then reload through the drain"
    assert "\n  systemctl reload \"$UNIT\"\n" not in stdin, "nginx must not reload around the drain"


def serial_lines(text: str) -> dict[str, str]:
    """A certificate list's entries, serial -> its whole line."""
    return {line.split('"')[1]: line for line in text.splitlines() if line.startswith('"')}


def admitted(staged: str, held: str) -> str:
    """What ``admit`` makes of a node's list (templates/gateway-certificates.sh): the staged list's
    lines, and the serials the list held that the staged one does not name."""
    kept = serial_lines(held)
    kept.update(serial_lines(staged))
    return "".join(f"{line}\n" for line in kept.values())


def load_list(gateways: Gateways, node: str, text: str, until: Callable[[], bool], what: str) -> None:
    """``node``'s gateway with ``text`` as its certificate list (nginx reloads, SIGHUP, as its unit
    does), once ``until()`` holds: a request whose answer the new list changes (the old workers
    answer until the reload is through: five answers in a row)."""
    (gateways.run / node / "certificates.map").write_text(text)
    gateways.network.daemons[f"gateway-{node}"].process.send_signal(signal.SIGHUP)
    held = 0
    for _ in range(100):
        held = held + 1 if until() else 0
        if held == 5:  # five in a row: an old worker may take a connection while the new ones start
            return
        time.sleep(0.1)
    raise AssertionError(f"{node}: with the list of {what} loaded, {until.__doc__ or 'the expected answer'} never came")


@pytest.mark.live
def test_the_gateway_takes_the_certificates_the_stack_issues_now_and_no_revoked_one(gateways, tmp_path):
    """With the real nginx: a removed extra host's agent certificate gets 403 (with the list of the
    run that still had the host, it pushes); after the operator's certificate is renewed, ``admit``'s
    list takes the old one and the new one (no gap), ``settle``'s only the new one (the old gets
    403); a serial in certRevokedSerials gets 403 whoever issued it (Grafana's, of the stack's CA;
    Prometheus', of its own CA), and the rest keep their roles."""
    strict = gateways.plans[STRICT]
    current = strict.files[STRICT][STAGED_LIST]
    identity = tmp_path / "identity"
    identity.mkdir()

    def as_(who: tuple[str, str], method: str, path: str) -> int:
        cert, key = who
        (identity / "c.pem").write_text(cert)
        (identity / "c.key").write_text(key)
        (identity / "c.key").chmod(0o600)
        proc = gateways.network.run(CLIENT, [
            "curl", "-sS", "-m", "20", "-o", "/dev/null", "-w", "%{http_code}", "-X", method,
            "--cacert", str(gateways.run / CLIENT / STRICT / "ca.pem"), "--cert", str(identity / "c.pem"),
            "--key", str(identity / "c.key"), *(["--data-binary", "{}", "-H", "Content-Type: application/json"]
                                              if method == "POST" else []),
            f"https://{ADDRESSES[STRICT]}:{HTTP_PORT}{path}"], timeout=60)
        return int(proc.stdout or 0)

    with_extra = lab_plan(agentExtraHosts=[f"backup-01 198.18.0.60 {EXTRA_KEY}"])
    extra = (with_extra.files["backup-01"][AGENT_CERT_FILE], with_extra.files["backup-01"][AGENT_KEY_FILE])
    renewed = lab_plan(renewed=frozenset({"operator-client-cert"}))
    old_operator, new_operator = strict.identities[ROLE_OPERATOR], renewed.identities[ROLE_OPERATOR]
    assert old_operator[0] != new_operator[0], "the operator's certificate was not renewed"
    reader, metrics = strict.identities[ROLE_READER], strict.identities[ROLE_METRICS]
    revoking = lab_plan(certRevokedSerials=[certificate_serial(reader[0]), certificate_serial(metrics[0])])
    seen = {}
    try:
        seen["removed extra host, pushing"] = as_(extra, *PUSH)
        load_list(gateways, STRICT, with_extra.files[STRICT][STAGED_LIST],
                  lambda: as_(extra, *PUSH) == 200, "the run with the extra host")
        seen["extra host listed, pushing"] = as_(extra, *PUSH)
        load_list(gateways, STRICT, admitted(renewed.files[STRICT][STAGED_LIST], current),
                  lambda: as_(new_operator, "GET", "/config") == 200, "admit, the operator's renewed")
        seen["admit: old operator"], seen["admit: new operator"] = (as_(old_operator, "GET", "/config"),
                                                                    as_(new_operator, "GET", "/config"))
        load_list(gateways, STRICT, renewed.files[STRICT][STAGED_LIST],
                  lambda: as_(old_operator, "GET", "/config") != 200, "settle, the operator's renewed")
        seen["settle: old operator"], seen["settle: new operator"] = (as_(old_operator, "GET", "/config"),
                                                                      as_(new_operator, "GET", "/config"))
        load_list(gateways, STRICT, revoking.files[STRICT][STAGED_LIST],
                  lambda: as_(reader, "GET", "/loki/api/v1/labels") != 200, "certRevokedSerials")
        seen["revoked: Grafana's reader"] = as_(reader, "GET", "/loki/api/v1/labels")
        seen["revoked: Prometheus"] = as_(metrics, *METRICS)
        seen["revoked list: the operator"] = as_(old_operator, "GET", "/config")
    finally:
        load_list(gateways, STRICT, current, lambda: as_(reader, "GET", "/loki/api/v1/labels") == 200
                  and as_(old_operator, "GET", "/config") == 200, "the fixture's run")
    want = {"removed extra host, pushing": 403, "extra host listed, pushing": 200,
            "admit: old operator": 200, "admit: new operator": 200,
            "settle: old operator": 403, "settle: new operator": 200,
            "revoked: Grafana's reader": 403, "revoked: Prometheus": 403, "revoked list: the operator": 200}
    assert seen == want, f"what the gateway answered: {seen}"
