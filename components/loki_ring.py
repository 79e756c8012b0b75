"""The ring check: a Loki node stops only when the cluster can lose it.

With replication factor 3 a push needs 2 of its 3 replicas. On a healthy 3-node cluster a rolling
restart keeps that: one node is out at a time. On a cluster where a node is already out (crashed,
powered off, its Loki not ready) the restart of a second one leaves one replica, and pushes fail
with 500 until it is back (measured before this check: 153 of 3,682 pushes through the VIP, in
windows of 4 s and 11 s). So before any step stops a node's Loki (``templates/lib-ring-check.sh``,
called by ``loki-apply.sh`` only when that node must restart), the node reads its own view of the
ingester ring, as JSON (``GET /ring`` with ``Accept: application/json``; dskit's ring page: a node
whose heartbeat is older than the ring's heartbeat timeout is reported ``UNHEALTHY``), and asks
every other node's gateway for ``/ready`` and for that node's own view of the ring (``GET /ring``,
granted to the server role: the certificate of a Loki node, which has the ring through memberlist
anyway). It may stop when every other node is in its ring, ``ACTIVE``, and ready, and every other
node sees the nodes that stay ``ACTIVE``: the nodes left must write to each other. Loki's ``/ready``
does not say so: it reports that a node's own view was whole once (dskit latches it), and the
ingester's ``min_ready_duration`` only gives the others time to hear of it; with the peers' views
checked here it is 5 s instead of 15 s (``components.loki_config.MIN_READY_DURATION``). A node
that left the ring cleanly (``unregister_on_shutdown``) is missing from it; a node that died keeps
its ``ACTIVE`` entry until its heartbeat times out (1 minute), so the ``/ready`` probe is what sees
it at once.

Otherwise the node waits, up to ``WAIT_S``, then fails naming what is not healthy; nothing is
placed and nothing restarts, so the next ``pulumi up`` finds the same difference and finishes the
job once the cluster is whole again.

dskit's ring page: https://github.com/grafana/dskit/blob/main/ring/http.go
"""

from __future__ import annotations

from collections.abc import Mapping

from components.loki_config import HTTP_PORT, LOKI_LOCAL_PORT

WAIT_S = 180
"""Longest wait for every other node to be healthy: a node restarting after a crash is ready in
about 12 s (the ingester's min_ready_duration and a short WAL replay); a node that is down for good
fails the step after this, with its name."""
RING_URLS = (f"https://127.0.0.1:{LOKI_LOCAL_PORT}/ring", f"https://127.0.0.1:{HTTP_PORT}/ring")
"""Where the running Loki answers, in order: its loopback port behind the gateway, and the gateway's
port, where the Loki of a version of the stack before the gateway still runs during the upgrade
(the upgrade rehearsal found the check waiting for a ring it could not read, there)."""


def ring_parameters(node: str, addresses: Mapping[str, str], wait_s: int = WAIT_S) -> dict[str, str | int]:
    """The parameters of ``lib-ring-check.sh`` for ``node``'s steps (``addresses``: every Loki node's)."""
    if node not in addresses:
        raise ValueError(f"ring check for {node}: not one of the Loki nodes {sorted(addresses)}")
    return {"RING_SELF": node, "RING_NODES": " ".join(f"{n}={a}" for n, a in addresses.items()),
            "RING_URLS": " ".join(RING_URLS), "RING_PEER_PORT": HTTP_PORT, "RING_WAIT_S": wait_s}
