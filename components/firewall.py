"""A host firewall on each Loki node: only Loki on the Loki nodes reaches its cluster ports.

Memberlist (7946, TCP and UDP) encrypts with TLS but does not ask peers for a certificate
(grafana/dskit sets no client CA on its listener), so any host that reaches the port could gossip
fake ring state; gRPC (9095) asks for one, but has no reason to be open to anyone else either.
An nftables table of its own (``inet lokistack``, leaving any other rules of the host alone) drops
both ports for every source but the Loki nodes. On the nodes themselves, only Loki's user
(``loki``) may open a connection to either port, its own node's or a peer's, or send a datagram to
memberlist's: another local user would otherwise come from a Loki node's address, and gRPC's
certificate check lets in any certificate of the stack's CA (the node holds the log agent's and
the VIP check's), and with ``-target=all`` it serves the ingesters' push and query services, as
the single tenant. Matched on a connection's first segment (SYN without ACK: unprivileged users
cannot send any other without a connection; the kernel's own resets, sent as root, pass), refused
at once (a TCP reset, a datagram's ``EPERM``). The gateway's HTTP port (3100, and its twin's 3102)
stays open: agents on any host, Grafana, Prometheus and the operator use it, each with a client
certificate and its role.
Loki's own HTTP listener is on loopback (3101) behind the gateway; locally, only root and nginx's
workers may connect to it, so that no other user of the node (the VIP's check, the log agent, a
compromised service) goes around the gateway with a certificate it holds.

The rules load from a oneshot unit before the network comes up and before Loki starts; Loki's
drop-in checks at every start that the table is loaded (``components/loki.py``), so rules that
failed to load keep Loki down (``LokiNodeDown``) instead of leaving the cluster ports open. A
change is loaded with ``systemctl reload`` (``nft -f``, which replaces the table in one
transaction): at no moment are the ports without rules, and nothing that depends on the unit is
restarted. Debian's own ``nftables.service`` (installed with the package, disabled by default)
starts, reloads and stops with ``flush ruleset``: the unit is ordered after it at boot, and a
drop-in for it loads the table again after each of its starts, reloads and stops (an administrator
who enables it, reloads their own rules or stops them keeps the stack's).
nftables: https://wiki.nftables.org/wiki-nftables/index.php/Scripting
"""

from __future__ import annotations

from collections.abc import Sequence

from components.loki_config import GRPC_PORT, LOKI_LOCAL_PORT, MEMBERLIST_PORT, SERVICE_USER
from components.loki_gateway import NGINX_USER

RULES_FILE = "/etc/lokistack/firewall.nft"
UNIT = "lokistack-firewall.service"
UNIT_FILE = f"/etc/systemd/system/{UNIT}"
TABLE = "inet lokistack"
NFT = "/usr/sbin/nft"
NFTABLES_UNIT = "nftables.service"
"""Debian's firewall unit (package nftables): ``flush ruleset``, then /etc/nftables.conf."""
NFTABLES_DROPIN_FILE = f"/etc/systemd/system/{NFTABLES_UNIT}.d/50-lokistack.conf"
LOCAL_USERS = f'root, "{NGINX_USER}"'
"""Local users that may connect to Loki's loopback listener: root (the apply step's checks) and nginx's workers."""


def render_rules(node_addresses: Sequence[str], cluster_user: str = SERVICE_USER) -> str:
    """The ruleset: the first two lines make any earlier version of the table go, so that loading
    the file again replaces it in one transaction. ``cluster_user``, the one local user that opens
    cluster connections, is named, not numbered (the package makes it, its uid is not known here):
    ``nft`` resolves it when it loads the file, so it must exist by then (loki-setup.sh, run
    before the firewall's step, makes it)."""
    nodes = ", ".join(node_addresses)
    return f"""#!{NFT} -f
# loki-stack: only the Loki nodes reach memberlist ({MEMBERLIST_PORT}) and gRPC ({GRPC_PORT}), and on
# them only Loki's user opens those connections; only root and the gateway reach Loki's loopback
# HTTP listener ({LOKI_LOCAL_PORT}).
table {TABLE}
delete table {TABLE}
table {TABLE} {{
    set loki_nodes {{
        type ipv4_addr
        elements = {{ {nodes} }}
    }}

    chain input {{
        type filter hook input priority filter; policy accept;
        iif "lo" accept
        tcp dport {{ {MEMBERLIST_PORT}, {GRPC_PORT} }} ip saddr @loki_nodes accept
        udp dport {MEMBERLIST_PORT} ip saddr @loki_nodes accept
        tcp dport {{ {MEMBERLIST_PORT}, {GRPC_PORT} }} counter drop
        udp dport {MEMBERLIST_PORT} counter drop
    }}

    chain output {{
        type filter hook output priority filter; policy accept;
        oif "lo" tcp dport {LOKI_LOCAL_PORT} meta skuid != {{ {LOCAL_USERS} }} counter reject with tcp reset
        tcp dport {{ {MEMBERLIST_PORT}, {GRPC_PORT} }} tcp flags & (syn | ack) == syn \\
            meta skuid != "{cluster_user}" counter reject with tcp reset
        udp dport {MEMBERLIST_PORT} meta skuid != "{cluster_user}" counter drop
    }}
}}
"""


def render_unit() -> str:
    return f"""[Unit]
Description=loki-stack firewall: only the Loki nodes reach the cluster ports
DefaultDependencies=no
Wants=network-pre.target
Before=network-pre.target loki.service
# Debian's nftables.service flushes every ruleset when it starts: at boot, load ours after it.
# A drop-in for it loads ours again after its later starts, reloads and stops:
# {NFTABLES_DROPIN_FILE}
After=local-fs.target {NFTABLES_UNIT}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={NFT} -f {RULES_FILE}
ExecReload={NFT} -f {RULES_FILE}
# The table may be gone already (a flush by another firewall).
ExecStop=-{NFT} delete table {TABLE}

[Install]
WantedBy=multi-user.target
"""


def render_nftables_dropin() -> str:
    """Debian's nftables.service loads /etc/nftables.conf, which begins with ``flush ruleset``, and
    its stop is ``nft flush ruleset``: after each start, reload and stop it loads the stack's table
    again (a failure shows in its status)."""
    return f"""# loki-stack: nftables.service flushes every ruleset; load the Loki nodes' table again after it.
[Service]
ExecStartPost={NFT} -f {RULES_FILE}
ExecReload={NFT} -f {RULES_FILE}
ExecStopPost={NFT} -f {RULES_FILE}
"""


APPLY = (f"{NFT} -c -f {RULES_FILE} && systemctl daemon-reload && systemctl enable --quiet {UNIT} "
         f"&& systemctl reload-or-restart {UNIT}")
"""Run after the rules or the unit changed: the rules are checked, then loaded in one transaction
(a reload; a restart would delete the table first, leaving the ports open for a moment)."""
LOADED_CHECK = (f"ExecStartPre=+/bin/sh -c '{NFT} list table {TABLE} >/dev/null || "
                f"{{ echo \"the firewall table {TABLE} is not loaded: Loki does not start without it "
                f"(systemctl status {UNIT})\" >&2; exit 1; }}'")
"""For Loki's drop-in: a start fails unless the table is loaded (as root, ``+``: reading rules needs it)."""
