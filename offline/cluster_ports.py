"""What a local user of a Loki node gets from the cluster ports (components/firewall.py's output
rules), asked on a node: a lab's network namespace (tests/labs/loki_lab.py) or a booted machine of the
rehearsal (offline/rehearsal/firewall_holds.py)."""

from __future__ import annotations

from components.loki_config import GRPC_PORT, MEMBERLIST_PORT

CLUSTER_PORT_PROBE = f"""import errno, socket, sys
for address in sys.argv[1:]:
    results = []
    for kind, port in (("tcp", {GRPC_PORT}), ("tcp", {MEMBERLIST_PORT}), ("udp", {MEMBERLIST_PORT})):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
        s.settimeout(5)
        try:
            if kind == "tcp":
                s.connect((address, port))
                results.append(kind + "/" + str(port) + ":open")
            else:
                s.sendto(b"ping", (address, port))
                results.append(kind + "/" + str(port) + ":sent")
        except OSError as e:
            results.append(kind + "/" + str(port) + ":" + str(errno.errorcode.get(e.errno, e.errno)))
        finally:
            s.close()
    print(address, " ".join(results))
"""
"""For each address on its command line, connects to gRPC and memberlist and sends
memberlist a datagram; prints a line ``address tcp/9095:open|ERRNO tcp/7946:… udp/7946:sent|ERRNO``.
Standard library only: it runs as an unprivileged user with the system's python3."""


def refused() -> str:
    """The line (after the address) for a user the rules refuse: a reset for TCP, EPERM for a datagram."""
    return f"tcp/{GRPC_PORT}:ECONNREFUSED tcp/{MEMBERLIST_PORT}:ECONNREFUSED udp/{MEMBERLIST_PORT}:EPERM"


def parse(output: str) -> dict[str, str]:
    """The probe's lines as address → results."""
    return dict(line.split(" ", 1) for line in output.splitlines() if line.strip())
