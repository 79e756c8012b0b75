"""A host firewall on each Loki node: only the Loki nodes reach its cluster ports.

Memberlist (7946, TCP and UDP) encrypts with TLS but does not ask peers for a certificate
(grafana/dskit sets no client CA on its listener), so any host that reaches the port could gossip
fake ring state; gRPC (9095) asks for one, but has no reason to be open to anyone else either.
An nftables table of its own (``inet lokistack``, leaving any other rules of the host alone) drops
both ports for every source but the Loki nodes. The gateway's HTTP port (3100, and its twin's 3102)
stays open: agents on any host, Grafana, Prometheus and the operator use it, each with a client
certificate and its role.
Loki's own HTTP listener is on loopback (3101) behind the gateway; locally, only root and nginx's
workers may connect to it, so that no other user of the node (the VIP's check, the log agent, a
compromised service) goes around the gateway with a certificate it holds.

The rules load from a oneshot unit before the network comes up and before Loki starts.
nftables: https://wiki.nftables.org/wiki-nftables/index.php/Scripting
"""

from __future__ import annotations

from collections.abc import Sequence

from components.loki_config import GRPC_PORT, LOKI_LOCAL_PORT, MEMBERLIST_PORT
from components.loki_gateway import NGINX_USER

RULES_FILE = "/etc/lokistack/firewall.nft"
UNIT = "lokistack-firewall.service"
UNIT_FILE = f"/etc/systemd/system/{UNIT}"
TABLE = "inet lokistack"
NFT = "/usr/sbin/nft"
LOCAL_USERS = f'root, "{NGINX_USER}"'
"""Local users that may connect to Loki's loopback listener: root (the apply step's checks) and nginx's workers."""


def render_rules(node_addresses: Sequence[str]) -> str:
    """The ruleset: the first two lines make any earlier version of the table go, so that loading
    the file again replaces it in one transaction."""
    nodes = ", ".join(node_addresses)
    return f"""#!{NFT} -f
# loki-stack: only the Loki nodes reach memberlist ({MEMBERLIST_PORT}) and gRPC ({GRPC_PORT}); only
# root and the gateway reach Loki's loopback HTTP listener ({LOKI_LOCAL_PORT}).
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
    }}
}}
"""


def render_unit() -> str:
    return f"""[Unit]
Description=loki-stack firewall: only the Loki nodes reach the cluster ports
DefaultDependencies=no
Wants=network-pre.target
Before=network-pre.target loki.service
After=local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={NFT} -f {RULES_FILE}
ExecReload={NFT} -f {RULES_FILE}
ExecStop={NFT} delete table {TABLE}

[Install]
WantedBy=multi-user.target
"""


APPLY = (f"{NFT} -c -f {RULES_FILE} && systemctl daemon-reload && systemctl enable --quiet {UNIT} "
         f"&& systemctl restart {UNIT}")
"""Run after the rules or the unit changed: the rules are checked, then loaded."""
