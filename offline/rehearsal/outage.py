"""The object store away for ten minutes (#24), rehearsed while both clients push through the VIP and
a real Prometheus scrapes the machines with the stack's scrape config and rules (``prometheus.py``).

The object store's machine is shut down as Proxmox's shutdown does (its units stop in order, its
address goes with its network) and stays off for ``OUTAGE_S``; Loki's flushes and index uploads fail
meanwhile (a connection to an address nobody answers). What must hold: every push is taken (the
ingesters keep the chunks they cannot flush in memory and in their WAL), every node stays ready,
``LokiStackObjectStoreDown`` fires and no alert says a node, the ring or pushes are in trouble. Then
the machine boots again: its server starts by itself, the alert clears, every node's backlog of
chunks reaches the store, and every accepted line reads back.

Measured every ``SAMPLE_S`` on each node: Loki's resident memory and Go heap in use, the WAL's size on
the data disk, the chunks in memory; with the bytes of log lines the nodes received, this gives the
growth per minute of outage and how long an outage the default VM (``lokiMemoryMiB``,
``lokiDataDiskGiB``) survives at this rate (the README quotes it).
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from components.loki_config import WAL_DISK_FULL_THRESHOLD
from components.objectstore import API_PORT, DATA_DIR
from offline.rehearsal.checks import loki_metrics, loki_ready, metric_sum, vip_journal, vip_masters, wait_for_one_holder
from offline.rehearsal.converge import loki_machines, wait_settled
from offline.rehearsal.life_events import DATA_DIR as LOKI_DATA_DIR
from offline.rehearsal.life_events import boot_again
from offline.rehearsal.phases import Phase, needs
from offline.rehearsal.prometheus import rehearsal_prometheus
from offline.rehearsal.settings import OBJECT_STORE_ADDRESS, VIP
from stack.schema import load_schema

if TYPE_CHECKING:
    from offline.rehearsal.machines import Machine
    from offline.rehearsal.prometheus import RehearsalPrometheus
    from offline.rehearsal.run import Rehearsal

OUTAGE_S = 600
SAMPLE_S = 30
"""How often each node's memory and WAL are measured during the outage."""
CHECK_S = 5
"""How often each node's readiness and the alerts are looked at during the outage."""
ALERT = "LokiStackObjectStoreDown"
QUIET = ("LokiNodeDown", "LokiRingShortOfReplicas", "LokiRingBelowWriteQuorum", "LokiPushErrorsHigh")
"""Alerts that must be neither pending nor firing during the outage: every node stays up and in the
ring, and every push is taken."""
STORE_JOB = 'up{job="loki-objectstore"}'
SHUTDOWN_TIMEOUT_S = 60
BACK_TIMEOUT_S = 180
"""Once the store answers again: longest wait for the alert to clear and every node's backlog to flush
(a failed flush is tried again after at most a minute, ``ingester.flush-op-backoff-max-period``)."""
MIB = 1 << 20
WAL_DIR = f"{LOKI_DATA_DIR}/wal"
STORE_VOLUME = f"{DATA_DIR}/data"


@dataclass(frozen=True)
class Sample:
    at: float
    """Seconds since the object store went away."""
    rss: float
    """Loki's resident memory, MiB (``process_resident_memory_bytes``)."""
    heap: float
    """Go heap in use, MiB (``go_memstats_heap_inuse_bytes``)."""
    wal: float
    """The WAL's directory on the data disk, MiB (``du``)."""
    chunks: float
    """Chunks in the ingester's memory (``loki_ingester_memory_chunks``)."""
    received: float
    """Bytes of log lines this node's distributor took so far (``loki_distributor_bytes_received_total``)."""
    flushed: float
    """Chunks flushed to the store so far (``loki_ingester_chunks_flushed_total``)."""
    flush_failures: float
    """Failed chunk flushes so far (``loki_ingester_chunks_flush_failures_total``)."""


def sample(machine: Machine, at: float) -> Sample:
    text = loki_metrics(machine)
    if text is None:
        raise AssertionError(f"{machine.name}: Loki's /metrics did not answer during the object store's outage")
    du = machine.exec(["du", "-sb", WAL_DIR]).stdout.split()
    return Sample(at=at, rss=metric_sum(text, "process_resident_memory_bytes") / MIB,
                  heap=metric_sum(text, "go_memstats_heap_inuse_bytes") / MIB,
                  wal=int(du[0]) / MIB if du else 0.0, chunks=metric_sum(text, "loki_ingester_memory_chunks"),
                  received=metric_sum(text, "loki_distributor_bytes_received_total"),
                  flushed=metric_sum(text, "loki_ingester_chunks_flushed_total"),
                  flush_failures=metric_sum(text, "loki_ingester_chunks_flush_failures_total"))


def per_minute(samples: list[Sample], field: str) -> float:
    """The growth of ``field`` per minute: the slope of a least-squares line through the samples
    (Go's memory grows in steps, with each collection; a line through all of them is steadier than
    the first and the last)."""
    return statistics.linear_regression([s.at for s in samples], [getattr(s, field) for s in samples]).slope * 60


def object_store(lab: Rehearsal) -> Machine:
    """The object store's machine: the one whose network config has its address."""
    address = re.compile(rf"\b{re.escape(OBJECT_STORE_ADDRESS)}\b")
    found = [m for m in lab.machines.values() if address.search(m.network_config)]
    if len(found) != 1:
        raise AssertionError(f"not one machine has the object store's address {OBJECT_STORE_ADDRESS}: {found}")
    return found[0]


def stored_objects(store: Machine) -> int:
    """Objects in the store's buckets (the S3 stand-in keeps one file per object)."""
    found = store.exec(["find", STORE_VOLUME, "-type", "f", "!", "-name", ".tmp-*"]).stdout
    return len(found.splitlines())


def store_answers(lab: Rehearsal) -> str:
    """'' when the object store's health endpoint answers from the runner, else curl's error."""
    proc = lab.net.run("runner", ["curl", "-sS", "-o", "/dev/null", "-m", "5", "-k",
                                      f"https://{OBJECT_STORE_ADDRESS}:{API_PORT}/minio/health/live"], timeout=20)
    return "" if proc.returncode == 0 else proc.stderr.strip() or f"curl exited {proc.returncode}"


def survival(*, memory_mib: float, data_disk_gib: float, used_mib: float, wal_mib: float,
             memory_growth: float, wal_growth: float) -> tuple[float, str]:
    """Minutes until a node of ``memory_mib`` (of which ``used_mib`` is in use when the outage
    begins) runs out of memory, or its WAL fills its ``data_disk_gib`` to Loki's disk-full threshold,
    at the measured growths per minute; and which of the two comes first."""
    memory = (memory_mib - used_mib) / memory_growth if memory_growth > 0 else float("inf")
    disk = ((data_disk_gib * 1024 * WAL_DISK_FULL_THRESHOLD - wal_mib) / wal_growth if wal_growth > 0
            else float("inf"))
    return (memory, "memory") if memory <= disk else (disk, "the WAL's disk")


def watch(machines: dict[str, Machine], prometheus: RehearsalPrometheus, t0: float, outage_s: float,
          ) -> tuple[dict[str, list[Sample]], list[str], float | None, set[str]]:
    """The outage itself: every ``CHECK_S`` each node's readiness and the alerts, every ``SAMPLE_S``
    a sample of each node. Returns the samples, the nodes found not ready (with when and why), when
    the alert fired (seconds into the outage) and the quiet alerts seen pending or firing."""
    samples: dict[str, list[Sample]] = {n: [] for n in machines}
    not_ready: list[str] = []
    fired: float | None = None
    noisy: set[str] = set()
    next_sample = 0.0
    while (elapsed := time.monotonic() - t0) < outage_s:
        for name, machine in machines.items():
            if error := loki_ready(machine):
                not_ready.append(f"{name} {elapsed:.0f} s into the outage: {error}")
        if fired is None and prometheus.alerts(ALERT):
            fired = elapsed
        noisy |= {f"{alert} ({state})" for alert in QUIET for state in ("pending", "firing")
                  if prometheus.alerts(alert, state)}
        if elapsed >= next_sample:
            for name, machine in machines.items():
                samples[name].append(sample(machine, elapsed))
            next_sample += SAMPLE_S
        time.sleep(max(0.0, min(CHECK_S, outage_s - (time.monotonic() - t0))))
    for name, machine in machines.items():
        samples[name].append(sample(machine, time.monotonic() - t0))
    return samples, not_ready, fired, noisy


@needs(Phase.DEPLOYED)
def object_store_outage(lab: Rehearsal, outage_s: float = OUTAGE_S) -> list[str]:
    problems: list[str] = []
    machines = loki_machines(lab)
    holder = wait_settled(machines)
    store = object_store(lab)
    keys = load_schema().keys
    memory_mib, disk_gib = keys["lokiMemoryMiB"].default, keys["lokiDataDiskGiB"].default
    with rehearsal_prometheus(lab) as prometheus, lab.vip_clients("object-store outage") as clients:
        prometheus.wait_for("the object store scraped (up 1) and every Loki node's ingester", lambda: (
            prometheus.values(STORE_JOB, by="job").get("loki-objectstore") == 1
            and set(machines) <= set(prometheus.values("loki_ingester_memory_chunks", by="node"))))
        objects_before = stored_objects(store)
        used_before = {n: m.memory_mib() for n, m in machines.items()}
        began = time.time()
        t0 = time.monotonic()
        down_s = store.poweroff(SHUTDOWN_TIMEOUT_S)  # as Proxmox's shutdown: every unit stops in order
        unreachable = store_answers(lab)
        if not unreachable:
            problems.append(f"{store.name} is shut down, yet its health endpoint answers")
        samples, not_ready, fired, noisy = watch(machines, prometheus, t0, outage_s)
        at_end = {state: sorted({a["metric"].get("alertname", "") for a in
                                 prometheus.query(f'ALERTS{{alertstate="{state}"}}')})
                  for state in ("firing", "pending")}
        outage = time.monotonic() - t0

        # The machine boots again.
        back = time.monotonic()
        state, booted = boot_again(store, back)
        answered = prometheus.wait_for(f"{store.name}'s server answering again after its boot",
                                       lambda: not store_answers(lab), BACK_TIMEOUT_S)
        flushed_at = {n: s[-1].flushed for n, s in samples.items()}

        def caught_up() -> bool:
            now = {n: sample(m, 0.0) for n, m in machines.items()}
            return (not prometheus.alerts(ALERT) and all(now[n].flushed > flushed_at[n] for n in machines)
                    and stored_objects(store) > objects_before)

        recovered = prometheus.wait_for(f"{ALERT} cleared, every node flushing to the store again and new "
                                        "objects in it", caught_up, BACK_TIMEOUT_S)
        objects_after = stored_objects(store)
        ended = time.monotonic()
    after = wait_for_one_holder(machines, VIP)
    moves = vip_masters(machines, began)

    if fired is None:
        problems.append(f"{ALERT} did not fire in {outage:.0f} s of outage ({STORE_JOB} went to 0 when "
                        f"{store.name} shut down: '{unreachable}')")
    if noisy:
        problems.append(f"during the object store's outage these alerts were pending or firing: {sorted(noisy)} "
                        "(every node must stay up and in the ring, and take every push)")
    problems += [f"not ready during the object store's outage: {line}" for line in not_ready[:10]]
    if after != holder or moves:
        problems.append(f"the VIP moved during the object store's outage: from {holder}, taken by {moves}, now on "
                        f"{after}; keepalived:\n{vip_journal(machines, began)}")
    failing = {n: s[-1].flush_failures - s[0].flush_failures for n, s in samples.items()}
    if not all(failing.values()):
        problems.append(f"the outage did not reach Loki: chunk flush failures per node {failing}")
    problems += clients.problems

    minutes = outage / 60
    received = sum(s[-1].received - s[0].received for s in samples.values()) / MIB / (samples[holder][-1].at
                                                                                      - samples[holder][0].at)
    lab.figures.append(
        f"object store {store.name} shut down in {down_s:.1f} s (then '{unreachable}') and away for {minutes:.1f} min "
        f"under both clients ({received:.2f} MiB/s of log lines received): {ALERT} firing after {fired or 0:.0f} s; "
        f"at its end firing {at_end['firing']}, pending {at_end['pending']} (Grafana's and the agents' are not "
        f"rehearsed); every node ready throughout: {not not_ready}; booted again: "
        f"system {state!r} in {booted:.1f} s, answering {answered:.1f} s later; alert cleared and every node's "
        f"backlog flushing {recovered:.1f} s after that; objects in the store {objects_before} -> {objects_after} "
        f"({ended - back:.0f} s from the boot)")
    worst = 0.0, ""
    for name, rows in samples.items():
        first, last = rows[0], rows[-1]
        rss, heap, wal = per_minute(rows, "rss"), per_minute(rows, "heap"), per_minute(rows, "wal")
        minutes_left, bound = survival(memory_mib=memory_mib, data_disk_gib=disk_gib, used_mib=used_before[name],
                                       wal_mib=first.wal, memory_growth=rss, wal_growth=wal)
        if not worst[1] or minutes_left < worst[0]:
            worst = minutes_left, f"{name}, {bound} first"
        lab.figures.append(
            f"  {name}: Loki resident {first.rss:.0f} -> {last.rss:.0f} MiB ({rss:+.1f} MiB/min), heap in use "
            f"{first.heap:.0f} -> {last.heap:.0f} MiB ({heap:+.1f}/min), WAL {first.wal:.0f} -> {last.wal:.0f} MiB "
            f"({wal:+.1f}/min), chunks in memory {first.chunks:.0f} -> {last.chunks:.0f}, flush failures "
            f"{failing[name]:.0f}; machine in use before {used_before[name]:.0f} MiB; at this rate a default node "
            f"({memory_mib} MiB, {disk_gib} GiB data disk) lasts {minutes_left:.0f} min ({bound} first)")
    lab.figures.append(f"  shortest survival at {received:.2f} MiB/s: {worst[0]:.0f} min ({worst[1]}); it scales "
                       "inversely with the rate of log lines")
    lab.figures += [f"  {line}" for line in clients.figures()]
    return problems
