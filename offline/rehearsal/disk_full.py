"""A Loki node's data disk full (#24), rehearsed while both clients push through the VIP and a real
Prometheus scrapes the machines with the stack's scrape config and rules (``prometheus.py``).

The node (below the VIP holder) gets its data disk filled to the last block: Loki 3.7.6's WAL
throttle (``ingester.wal.disk_full_threshold``, 0.9, read every 10 s) makes its ingester refuse
every push (``loki_ingester_wal_disk_full_failures_total`` counts them) without writing the WAL on a
full disk; the node stays ready; every push through the VIP is written to the other two ingesters
(two of three is a write quorum); ``LokiWALDiskFull`` fires for the node. Then the space comes back:
the node takes writes again by itself and the alert clears. Last its Loki restarts (not the VIP
holder: no handover needed) and replays the WAL written up to the full disk without a corruption.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from components.loki import UNIT as LOKI_UNIT
from offline.rehearsal.checks import loki_metrics, loki_ready, metric_sum, vip_journal, vip_masters, wait_for_one_holder
from offline.rehearsal.converge import wait_loki_ready
from offline.rehearsal.life_events import DATA_DIR, settled_below_holder
from offline.rehearsal.phases import Phase, needs
from offline.rehearsal.prometheus import rehearsal_prometheus
from offline.rehearsal.settings import VIP

if TYPE_CHECKING:
    from offline.rehearsal.machines import Machine
    from offline.rehearsal.run import Rehearsal

ALERT = "LokiWALDiskFull"
FILLER = f"{DATA_DIR}/lokistack-rehearsal-filler"
THROTTLED = "loki_ingester_wal_disk_full_failures_total"
"""Counts each time the WAL's disk monitor begins throttling (Loki 3.7.6 ``pkg/ingester/wal.go``)."""
PUSHES = "loki_request_duration_seconds_count"
PUSH_ROUTE = 'route="/logproto.Pusher/Push"'
"""The ingester's gRPC pushes as dskit counts them, by ``status_code``: a throttled ingester answers
every push with an error (``ErrReadOnly``, ``pkg/ingester/ingester.go``)."""
CORRUPTIONS = "loki_ingester_wal_corruptions_total"
"""A counter per corruption type: no series until one happens."""
FIRE_TIMEOUT_S = 60
"""Loki reads the disk's use every 10 s; Prometheus scrapes and evaluates every second here."""
RESUME_TIMEOUT_S = 60
FULL_HOLD_S = 10
"""How long the clients push while the disk is full, once the alert fired."""


def metrics(machine: Machine) -> str:
    """The node's Loki metrics; a node that does not answer fails the event (its Loki must stay ready)."""
    text = loki_metrics(machine)
    if text is None:
        raise AssertionError(f"{machine.name}: Loki's /metrics did not answer")
    return text


def metric(machine: Machine, name: str) -> float:
    return metric_sum(metrics(machine), name)


def pushes(machine: Machine) -> tuple[float, float]:
    """The pushes the node's ingester took and refused so far (gRPC, by dskit's status code)."""
    took = refused = 0.0
    for labels, value in re.findall(rf"^{PUSHES}\{{([^}}]*)\}} (\S+)$", metrics(machine), re.MULTILINE):
        if PUSH_ROUTE in labels:
            if 'status_code="success"' in labels:
                took += float(value)
            else:
                refused += float(value)
    return took, refused


def fill(machine: Machine) -> str:
    """Every free block of the node's data disk taken by one file (fallocate, then dd for the rest);
    returns ``df``'s line for the disk."""
    avail = int(machine.exec(["df", "-B1", "--output=avail", DATA_DIR]).stdout.split()[-1])
    machine.exec(["fallocate", "-l", str(max(avail - (1 << 20), 0)), FILLER])
    machine.exec(["sh", "-c", f"dd if=/dev/zero bs=4096 oflag=append conv=notrunc of={FILLER} 2>/dev/null; sync"],
                 timeout=120)
    return machine.exec(["df", "-h", DATA_DIR]).stdout.splitlines()[-1]


@needs(Phase.DEPLOYED)
def data_disk_full(lab: Rehearsal) -> list[str]:
    problems: list[str] = []
    machines, holder, node = settled_below_holder(lab)
    machine = machines[node]
    with rehearsal_prometheus(lab) as prometheus, lab.vip_clients("data disk full") as clients:
        prometheus.wait_for(f"{node}'s data disk in use scraped", lambda: node in prometheus.values(
            "loki_ingester_wal_disk_usage_percent", by="node"))
        began = time.time()
        t0 = time.monotonic()
        df = fill(machine)
        fired = prometheus.wait_for(f"{ALERT} firing for {node} with its data disk full ({df})",
                                    lambda: node in {a.get("node") for a in prometheus.alerts(ALERT)}, FIRE_TIMEOUT_S)
        others = [a.get("node") for a in prometheus.alerts(ALERT) if a.get("node") != node]
        if others:
            problems.append(f"{ALERT} fires for {others} too: only {node}'s disk is full")
        if metric(machine, THROTTLED) < 1:
            problems.append(f"{node}'s WAL did not throttle with its disk full ({df}): {THROTTLED} is 0")
        took, refused = pushes(machine)
        time.sleep(FULL_HOLD_S)
        took_full, refused_full = pushes(machine)
        took, refused = took_full - took, refused_full - refused
        if refused <= 0 or took > 0:
            problems.append(f"{node}'s ingester with its disk full ({df}) must refuse every push: in {FULL_HOLD_S} s "
                            f"it refused {refused:.0f} and took {took:.0f}")
        if not_ready := loki_ready(machine):
            problems.append(f"{node} is not ready with its disk full: {not_ready}")

        # The space comes back.
        machine.exec(["rm", "-f", FILLER])
        freed = time.monotonic()
        last = pushes(machine)

        def takes_writes() -> bool:
            nonlocal last
            now = pushes(machine)
            took_again, refused_again = now[0] > last[0], now[1] > last[1]
            last = now
            return took_again and not refused_again and node not in {a.get("node") for a in prometheus.alerts(ALERT)}

        time.sleep(2)
        resumed = prometheus.wait_for(f"{node} taking writes again and {ALERT} cleared once its disk was freed",
                                      takes_writes, RESUME_TIMEOUT_S)

        # Loki started again replays the WAL written up to the full disk.
        machine.exec(["systemctl", "restart", LOKI_UNIT], timeout=180)
        replayed = wait_loki_ready(machine)
        corruptions = metric(machine, CORRUPTIONS)
        if corruptions != 0:
            problems.append(f"{node}'s WAL, written up to a full disk, replayed with {corruptions} corruption(s) "
                            f"({CORRUPTIONS})")
        time.sleep(3)
    after = wait_for_one_holder(machines, VIP)
    moves = vip_masters(machines, began)
    if after != holder or moves:
        problems.append(f"the VIP moved while {node}'s disk was full: from {holder}, taken by {moves}, now on {after}; "
                        f"keepalived:\n{vip_journal(machines, began)}")
    problems += clients.problems
    lab.figures.append(
        f"{node}'s data disk filled ({df}): {ALERT} firing after {fired:.1f} s (in {time.monotonic() - t0:.0f} s of "
        f"event), its ingester refused {refused:.0f} pushes in {FULL_HOLD_S} s, the others took them; freed: writes "
        f"again and the alert cleared {resumed + 2:.1f} s later ({time.monotonic() - freed:.0f} s with the restart); "
        f"Loki restarted: ready in {replayed:.1f} s, {corruptions:.0f} WAL corruptions")
    lab.figures += [f"  {line}" for line in clients.figures()]
    return problems
