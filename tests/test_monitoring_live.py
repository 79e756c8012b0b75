"""The stack's scrape config and rules in a real Prometheus, against the live Loki lab.

The three Loki nodes, their gateways and the S3 stand-in run as in ``tests/test_loki_live.py``;
Prometheus (Debian's package) runs on the client host with the outputs written as the README says
(``tests/labs/prometheus_lab.py``). What this shows: the ``loki`` job reaches every node through its
gateway with Prometheus' certificate; every Loki metric the rules read is one Loki 3.7.6 exposes,
with the labels the rules select; the rules evaluate on real data and follow a node's stop; the
agents' job reaches a Go TLS server that holds the agent's files and that server takes Prometheus'
certificate and no other certificate of the stack.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.alloy import METRICS_PORT
from components.loki_gateway import ROLE_AGENT, ROLE_METRICS, ROLE_OPERATOR
from components.monitoring import metric_names, recording_rules, signals
from offline.real_loki import LokiTools
from offline.rehearsal.earlier import BEFORE_CONVERGE, export
from stack.certificates import PROMETHEUS_CLIENT
from tests.labs.figures import figure
from tests.labs.lab_stack import LOKI_ADDRESSES, lab_plan
from tests.labs.loki_lab import (
    CLIENT,
    LOAD_DELETES,
    SWEPT,
    WAL_CORRUPTIONS,
    LokiLab,
    require_lab_tools,
    small_data_disk,
    start_cluster,
)
from tests.labs.needs import require_tool
from tests.labs.netns import private_network
from tests.labs.prometheus_lab import (
    AGENT_STAND_IN,
    active_alerts,
    start_agent_stand_in,
    start_prometheus,
    values,
    wait_for,
)

pytestmark = pytest.mark.live

NODES = list(LOKI_ADDRESSES)
SECTION = "Prometheus with the stack's scrape config and rules, on the live cluster (measured)"
AGENT_NODE = NODES[0]
FULL_NODE, DATA_DISK_MIB = NODES[1], 256
"""The node whose data disk fills: its ``/var/lib`` is a file system of this size."""
STREAMS_CREATED = "loki_ingester_streams_created_total"
SHOWN_ON_USE = {
    LOAD_DELETES:
        "by status, from the elected compactor's first retention run (10 minutes after its election here): "
        "read off Loki in tests/test_loki_live.py, whose compactor runs every 10 s",
    WAL_CORRUPTIONS:
        "by type, counted by a replay that finds a damaged WAL: read off Loki in tests/test_loki_live.py, "
        "which starts a node on a damaged segment",
    SWEPT:
        "by status, from the first chunk retention deletes: read off Loki in tests/test_loki_live.py",
    "loki_compactor_delete_processing_fails_total":
        "by cause, from the first failed delete phase (nothing here makes one fail): the name is Loki "
        "3.7.6's pkg/compactor/deletion/metrics.go",
}
"""Metrics the rules read that Loki exposes only once they count something (a labelled vector)."""


def push_old_line(lab: LokiLab, node: str) -> None:
    old = str(time.time_ns() - 30 * 86400 * 10**9)
    response = lab.request(node, "/loki/api/v1/push", method="POST", data=json.dumps(
        {"streams": [{"stream": {"job": "monitoring"}, "values": [[old, "a month old"]]}]}))
    assert response.status == 400, f"{node}: a month-old line was not refused: {response.status}"


@pytest.fixture(scope="module")
def watched(loki_tools: LokiTools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokiLab]:
    require_lab_tools()
    binary = require_tool("prometheus")
    run_dir = tmp_path_factory.mktemp("watched")
    with small_data_disk(run_dir, FULL_NODE, DATA_DISK_MIB), \
            private_network(f"lkm{os.getpid() % 100000}-", run_dir) as network:
        lab = LokiLab(network, lab_plan(), loki_tools)
        start_cluster(lab, NODES)
        start_agent_stand_in(lab, AGENT_NODE, binary)
        start_prometheus(lab, binary)
        # Traffic every rule reads: pushes, one line too old to take, a flush to the object store.
        node = NODES[0]
        for i in range(3):
            assert lab.push(node, {"job": "monitoring"}, [f"line {i}"]).status == 204
        push_old_line(lab, node)
        for n in NODES:
            assert lab.request(n, "/flush", method="POST").status == 204, f"{n}: /flush"
        yield lab


def test_prometheus_scrapes_every_loki_node_through_its_gateway(watched):
    seconds = wait_for(watched, "every Loki node up in job loki",
                       lambda: values(watched, 'up{job="loki"}', by="node") == dict.fromkeys(NODES, 1.0))
    figure(SECTION, f"every Loki node scraped through its gateway {seconds:.1f} s after Prometheus started")


def test_every_loki_metric_the_rules_read_is_exposed_by_loki(watched):
    """By name and with the job and cluster labels the rules select, after the fixture's traffic."""
    exprs = [s.expr for s in signals(watched.plan.monitoring).values()] + [
        r["expr"] for r in recording_rules(watched.plan.monitoring)]
    names = sorted(set().union(*(metric_names(e) for e in exprs if 'job="loki"' in e)) - set(SHOWN_ON_USE))
    assert len(names) >= 10, names
    cluster = watched.plan.monitoring.cluster

    def missing() -> list[str]:
        return [n for n in names if not values(watched, f'count({n}{{job="loki", cluster="{cluster}"}})')]

    wait_for(watched, f"Loki metrics the rules read: {missing()}", lambda: not missing(), timeout=60)


def test_the_signals_read_a_healthy_cluster(watched):
    s = {k: v.expr for k, v in signals(watched.plan.monitoring).items()}
    wait_for(watched, "3 healthy ingesters, 3 nodes up, one compactor",
             lambda: (values(watched, s["ingesters_active"]), values(watched, s["loki_nodes_up"]),
                      values(watched, s["compactors"])) == ({"": 3.0}, {"": 3.0}, {"": 1.0}))
    # A counter that Prometheus first sees at 1 has no rate yet: the discard that counts comes now.
    wait_for(watched, "the discard counter scraped", lambda: bool(values(watched, "loki_discarded_samples_total")))
    push_old_line(watched, NODES[0])
    wait_for(watched, "the refused old line counted as discarded",
             lambda: values(watched, s["discarded"], by="reason").get("greater_than_max_sample_age", 0) > 0)
    push = values(watched, s["push_errors"])
    assert push in ({"": 0.0}, {}), f"push error ratio on a healthy cluster: {push}"
    assert not active_alerts(watched, "LokiNodeDown") and not active_alerts(watched, "LokiRingShortOfReplicas")


def test_the_agents_job_reaches_an_agent_endpoint_that_takes_prometheus_only(watched):
    wait_for(watched, f"{AGENT_NODE}'s agent endpoint up in job loki-agents",
             lambda: values(watched, 'up{job="loki-agents"}', by="node").get(AGENT_NODE) == 1.0)
    url = f"https://{LOKI_ADDRESSES[AGENT_NODE]}:{METRICS_PORT}/metrics"
    ca = watched.client_home / ".config/loki-stack/ca.pem"
    for role, accepted in ((ROLE_METRICS, True), (ROLE_OPERATOR, False), (ROLE_AGENT, False)):
        cert, key = watched.identity(role)
        proc = watched.network.run(CLIENT, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10",
                                            "--cacert", str(ca), "--cert", str(cert), "--key", str(key), url])
        assert (proc.stdout == "200") == accepted, (
            f"{AGENT_NODE}'s agent endpoint with a {role} certificate: {proc.stdout} {proc.stderr}")
    proc = watched.network.run(CLIENT, ["curl", "-sS", "-o", "/dev/null", "-m", "10", "--cacert", str(ca), url])
    assert proc.returncode != 0, f"{AGENT_NODE}'s agent endpoint answered without a certificate"


def test_a_renewed_prometheus_certificate_blinds_no_agent(watched, tmp_path):
    """Prometheus' certificate renewed by a run (the fake engine issues it again): the agent
    restarted with that run's files, as Alloy restarts after any TLS change, is scraped on by the
    live Prometheus, which still presents the old certificate (the operator has not exported the
    new one), and takes the renewed one too, and the one an earlier version issued (an upgraded
    stack's Prometheus presents it); so does a Loki gateway. (Earlier versions pinned the
    certificate itself: the agent would have refused the old one, ``LokiStackAgentDown``.)"""
    renewed = lab_plan(renewed=frozenset({f"{PROMETHEUS_CLIENT}-cert"}))
    old_cert = watched.plan.outputs["prometheusCertificate"]
    new_cert, new_key = renewed.outputs["prometheusCertificate"], renewed.outputs["prometheusPrivateKey"]
    assert new_cert != old_cert, "the renewed run did not issue Prometheus' certificate again"
    binary = require_tool("prometheus")
    watched.network.stop(AGENT_STAND_IN.format(node=AGENT_NODE))
    stopped = time.monotonic()
    wait_for(watched, f"{AGENT_NODE}'s agent seen down", lambda: values(
        watched, 'up{job="loki-agents"}', by="node").get(AGENT_NODE) == 0.0, timeout=30)
    start_agent_stand_in(watched, AGENT_NODE, binary, files=renewed.files[AGENT_NODE], run_name="agent-renewed")
    wait_for(watched, f"{AGENT_NODE}'s agent, restarted with the renewed run's files, scraped with the old certificate",
             lambda: values(watched, 'up{job="loki-agents"}', by="node").get(AGENT_NODE) == 1.0, timeout=30)
    back = time.monotonic() - stopped
    # And the certificate an earlier version issued Prometheus (the stack's CA), which an upgraded
    # stack's Prometheus presents until its operator exports the new one.
    earlier = export(BEFORE_CONVERGE, {}, tmp_path / "earlier").result.resolved
    identities = {"renewed": (new_cert, new_key), f"{BEFORE_CONVERGE}'s": (
        earlier["output:prometheusCertificate"].value, earlier["output:prometheusPrivateKey"].value)}
    ca = watched.client_home / ".config/loki-stack/ca.pem"
    for which, (cert, key) in identities.items():
        (tmp_path / "cert.pem").write_text(cert)
        (tmp_path / "cert.key").write_text(key)
        (tmp_path / "cert.key").chmod(0o600)
        for url in (f"https://{LOKI_ADDRESSES[AGENT_NODE]}:{METRICS_PORT}/metrics",
                    f"https://{LOKI_ADDRESSES[NODES[1]]}:3100/metrics"):
            proc = watched.network.run(CLIENT, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10",
                                                "--cacert", str(ca), "--cert", str(tmp_path / "cert.pem"),
                                                "--key", str(tmp_path / "cert.key"), url])
            assert proc.stdout == "200", f"{url} with the {which} Prometheus certificate: {proc.stdout} {proc.stderr}"
    figure(SECTION, f"Prometheus' certificate renewed: the agent restarted with the renewed files was scraped again "
                    f"with the old certificate {back:.1f} s after it stopped; the renewed one and the one "
                    f"{BEFORE_CONVERGE} issued get 200 there and from a Loki gateway")


def fill(directory: Path) -> Path:
    """A file in ``directory`` that takes every free block of its file system."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:  # unbuffered: a write the disk refused is not kept to retry
        for size in (1 << 20, 4096):
            try:
                while out.write(b"\0" * size):
                    pass
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
    return filler


def test_a_full_data_disk_stops_the_nodes_writes_fires_the_alert_and_clears_by_itself(watched):
    """The node's data disk fills to its last block while lines are pushed. Loki 3.7.6's WAL throttle
    (``components.loki_config.WAL_DISK_FULL_THRESHOLD``, read every 10 s) makes its ingester refuse
    pushes: LokiWALDiskFull fires, every push through every node's gateway is taken by the other two
    ingesters, and every line reads back. Freed, the node takes writes again by itself and the alert
    clears; started again, its WAL replays without a corruption."""
    lab, s = watched, {k: v.expr for k, v in signals(watched.plan.monitoring).items()}
    wait_for(lab, f"{FULL_NODE}'s data disk in use scraped",
             lambda: FULL_NODE in values(lab, s["data_disk_used"], by="node"))
    pushed: list[str] = []
    failed: list[str] = []

    def push_new_stream(node: str) -> None:
        line = f"disk full {len(pushed)} via {node}"
        response = lab.push(node, {"job": "disk-full", "n": str(len(pushed))}, [line])
        pushed.append(line)
        if response.status != 204:
            failed.append(f"{line}: {response.status} {response.body[:200]}")

    disk = lab.run / FULL_NODE / "var-lib"
    usage = subprocess.run(["du", "-a", "-d", "3", "-m", str(disk)], capture_output=True, text=True, timeout=30,
                           check=False).stdout
    free = os.statvfs(disk)
    assert free.f_bavail > free.f_blocks // 2, f"{FULL_NODE}'s data disk is more than half full already:\n{usage}"
    start = time.monotonic()
    filler = fill(disk)
    while not any(a.get("node") == FULL_NODE for a in active_alerts(lab, "LokiWALDiskFull")):
        assert time.monotonic() - start < 60, (
            f"LokiWALDiskFull did not fire for {FULL_NODE} within 60 s of a full disk\n{lab.logs([FULL_NODE])}")
        for node in NODES:
            push_new_stream(node)
        time.sleep(0.5)
    fired = time.monotonic() - start
    assert lab.request(FULL_NODE, "/ready").status == 200, f"{FULL_NODE} must stay ready with a full disk"
    created = {n: lab.metric_sum(n, STREAMS_CREATED) for n in NODES}
    throttled = len(pushed)
    for _ in range(5):
        for node in NODES:
            push_new_stream(node)
    gained = {n: lab.metric_sum(n, STREAMS_CREATED) - created[n] for n in NODES}
    new_streams = len(pushed) - throttled
    assert gained[FULL_NODE] == 0 and all(gained[n] == new_streams for n in NODES if n != FULL_NODE), (
        f"with its disk full {FULL_NODE}'s ingester must take no stream and the others every one of "
        f"{new_streams}: {gained}")
    assert not failed, f"pushes failed while {FULL_NODE}'s disk was full: {failed[:5]}"
    lines, response = lab.query_lines(NODES[0], '{job="disk-full"}')
    assert sorted(lines) == sorted(pushed), (
        f"lines pushed while {FULL_NODE}'s disk was full, read back: {len(lines)} of {len(pushed)} ({response.status})")

    filler.unlink()
    before = lab.metric_sum(FULL_NODE, STREAMS_CREATED)

    def takes_writes() -> bool:
        push_new_stream(NODES[0])
        return lab.metric_sum(FULL_NODE, STREAMS_CREATED) > before

    resumed = wait_for(lab, f"{FULL_NODE} taking writes again once its disk was freed", takes_writes, timeout=60)
    cleared = wait_for(lab, "LokiWALDiskFull cleared", lambda: not active_alerts(lab, "LokiWALDiskFull"))
    assert not failed, f"pushes failed after {FULL_NODE}'s disk was freed: {failed[:5]}"
    lab.stop_node(FULL_NODE, signal.SIGTERM)
    lab.start_node(FULL_NODE)
    ready = lab.wait_ready([FULL_NODE])[FULL_NODE]
    corruptions = lab.metric_sum(FULL_NODE, WAL_CORRUPTIONS)
    assert corruptions == 0, f"{FULL_NODE}'s WAL, written up to a full disk, replayed with {corruptions} corruption(s)"
    figure(SECTION, f"{FULL_NODE}'s data disk ({DATA_DISK_MIB} MiB) filled: LokiWALDiskFull firing after "
                    f"{fired:.1f} s, "
                    f"its ingester refused {new_streams} new streams the others took, {len(pushed)} pushes through "
                    f"every gateway, 0 failed, every line read back; freed: writes again after "
                    f"{resumed:.1f} s, the alert cleared {cleared:.1f} s later; "
                    f"started again: ready in {ready:.1f} s, 0 WAL corruptions")


def test_alerts_follow_a_node_stop(watched):
    """Unreachable agents (no Alloy here) are pending LokiStackAgentDown; the stand-in is not.
    Then a node stops: LokiNodeDown and LokiRingShortOfReplicas go pending, the quorum alert does not."""
    wait_for(watched, "LokiStackAgentDown pending for the hosts without an agent",
             lambda: {a["node"] for a in active_alerts(watched, "LokiStackAgentDown")}
             == set(watched.plan.outputs["hosts"]) - {AGENT_NODE})
    stopped = NODES[2]
    start = time.monotonic()
    watched.stop_node(stopped, signal.SIGTERM)
    wait_for(watched, f"LokiNodeDown pending for {stopped}",
             lambda: [a["node"] for a in active_alerts(watched, "LokiNodeDown")] == [stopped])
    down = time.monotonic() - start
    wait_for(watched, "LokiRingShortOfReplicas pending",
             lambda: bool(active_alerts(watched, "LokiRingShortOfReplicas")))
    short = time.monotonic() - start
    assert not active_alerts(watched, "LokiRingBelowWriteQuorum"), "two of three nodes are a write quorum"
    figure(SECTION, f"{stopped} stopped: LokiNodeDown pending after {down:.1f} s, "
                    f"LokiRingShortOfReplicas after {short:.1f} s (1 s scrapes and evaluations)")
