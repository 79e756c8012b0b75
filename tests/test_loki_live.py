"""A live three-node cluster of the real Loki 3.7.6, from the files the program renders.

The example stack, moved into 198.18.0.0/24 through its settings, runs in network namespaces:
each Loki node with its own rendered config, env file and TLS files (``tests/labs/loki_lab.py`` says
exactly how, and what differs from a VM), keepalived with the rendered configs holding the VIP,
the object store stood in for by moto's S3 server (Python, ``moto[server]``) with the plan's
object-store certificate, each node's gateway (nginx) in front of its Loki, and a client host with
the stack's client certificates. Every request is HTTPS with a client certificate, through a
node's gateway. The figures (time to ready, push and query latency, compactor
takeover) are printed at the end of the test run.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.loki_config import (
    COMPACTOR_HEARTBEAT_TIMEOUT,
    GRPC_PORT,
    HTTP_PORT,
    MEMBERLIST_PORT,
    RETENTION_MARKER_PREFIX,
)
from components.loki_gateway import (
    DELETE_REFUSAL,
    DELETE_REFUSED_STATUS,
    ROLE_AGENT,
    ROLE_HEALTH,
    ROLE_METRICS,
    ROLE_READER,
)
from components.timeouts import MIN_QUERY_TIMEOUT_S, Timeouts
from offline import cluster_ports
from offline.real_loki import LokiTools
from tests.labs.figures import figure
from tests.labs.lab_stack import LOKI_ADDRESSES, VIP, lab_plan, vip_holders
from tests.labs.loki_lab import (
    CLIENT,
    LOAD_DELETES,
    S3,
    SWEPT,
    WAL_CORRUPTIONS,
    LokiLab,
    require_lab_tools,
    start_cluster,
)
from tests.labs.netns import private_network

pytestmark = pytest.mark.live

NODES = list(LOKI_ADDRESSES)
SECTION = "Live Loki 3.7.6 cluster from the rendered configs (measured)"
COMPACTOR_RUNNING = "loki_boltdb_shipper_compactor_running"
CHOSEN = "this instance has been chosen to run the compactor"
ELECTION_TIMEOUT_S = 30  # the compactor asks the ring every 5 s
LAB_HEARTBEAT_PERIOD_S, LAB_HEARTBEAT_TIMEOUT_S = 0.5, 3
"""The compactor ring's heartbeats in this lab (the rendered ones: ``COMPACTOR_HEARTBEAT_*``, 5 s and
15 s): a crashed compactor's place goes after 10 heartbeat timeouts, 30 s here (150 s rendered); a
timeout of 6 heartbeats, as rendered 3.
The crash test measures the rule, not the rendered figure, to keep the run short."""
AUTO_FORGET_PERIODS = 10  # pkg/compactor/compactor.go: ringAutoForgetUnhealthyPeriods
CRASH_TAKEOVER_TIMEOUT_S = AUTO_FORGET_PERIODS * LAB_HEARTBEAT_TIMEOUT_S + 40  # + heartbeat, ring poll, election
VIP_TIMEOUT_S = 30
TIMEOUT_ADVICE = "request timed out, decrease the duration of the request"
"""Loki's answer to a query past its ``query_timeout`` (504)."""
LAB_TIMEOUTS = Timeouts(query_s=MIN_QUERY_TIMEOUT_S)
"""The lab's line of timeouts (``lokiQueryTimeoutSeconds``, its least): a slow query ends in seconds."""
RETENTION = "24h"  # the shortest lokiRetention: lines pushed two days back are past it
COMPACTION_INTERVAL_S = 10
RETENTION_DELETE_DELAY_S = 20
"""The lab's compactor: it compacts and applies retention every 10 s (10 minutes as deployed),
and deletes marked chunks once their marker file is 20 s old (2 hours as deployed): longer than a
leader lives after marking here, shorter than a crashed leader's takeover (30 s)."""
SWEEP_INTERVAL_S = 60  # Loki's sweeper lists marker files at its start, then every minute
MARKED = "loki_boltdb_shipper_retention_marker_count_total"


def compactors(lab: LokiLab, nodes: list[str]) -> list[str]:
    """The nodes whose compactor runs now (Loki's own gauge)."""
    return [n for n in nodes if lab.metric(n, COMPACTOR_RUNNING) == 1.0]


def wait_for_one_compactor(lab: LokiLab, nodes: list[str], timeout: float, since: float,
                           label: str) -> tuple[str, float]:
    """Until exactly one of ``nodes`` runs the compactor; never two at once."""
    while True:
        running = compactors(lab, nodes)
        assert len(running) <= 1, f"{label}: two compactors at once: {running}"
        if running:
            return running[0], time.monotonic() - since
        if time.monotonic() - since > timeout:
            pytest.fail(f"{label}: no node runs the compactor after {timeout:.0f}s\n{lab.logs(nodes)}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def live(loki_tools: LokiTools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LokiLab]:
    require_lab_tools()
    with private_network(f"lkl{os.getpid() % 100000}-", tmp_path_factory.mktemp("live")) as network:
        lab = LokiLab(network, lab_plan(lokiRetention=RETENTION, lokiQueryTimeoutSeconds=LAB_TIMEOUTS.query_s),
                      loki_tools,
                      loki_flags=(f"-compactor.compaction-interval={COMPACTION_INTERVAL_S}s",
                                  f"-compactor.ring.heartbeat-period={LAB_HEARTBEAT_PERIOD_S}s",
                                  f"-compactor.ring.heartbeat-timeout={LAB_HEARTBEAT_TIMEOUT_S}s",
                                  f"-compactor.retention-delete-delay={RETENTION_DELETE_DELAY_S}s"))
        ready = start_cluster(lab, NODES)
        for node, seconds in ready.items():
            figure(SECTION, f"{node}: /ready {seconds:.1f} s after start")
        for node in NODES:
            lab.start_keepalived(node)
        yield lab


def test_every_node_is_ready_and_refuses_clients_without_a_certificate(live):
    for node in NODES:
        ready = live.request(node, "/ready")
        assert (ready.status, ready.body.strip()) == (200, "ready"), f"{node}: /ready answered {ready}"
        anonymous = live.request(node, "/ready", client_cert=False)
        assert anonymous.status != 200, f"{node}: answered a client without a certificate: {anonymous}"


def test_the_firewall_admits_only_the_loki_nodes_to_the_cluster_ports(live):
    """Memberlist asks no client certificate: a host outside the cluster must not reach it."""
    for node, address in LOKI_ADDRESSES.items():
        for port in (MEMBERLIST_PORT, GRPC_PORT):
            assert not live.reachable(CLIENT, address, port), f"{node}:{port} answers a host outside the cluster"
        assert live.reachable(CLIENT, address, HTTP_PORT), f"{node}: the HTTP API must stay open to clients"
        peer = next(n for n in NODES if n != node)
        for port in (MEMBERLIST_PORT, GRPC_PORT):
            assert live.reachable(peer, address, port), f"{node}:{port} refuses its peer {peer}"


def test_on_a_node_only_loki_opens_cluster_connections_and_the_cluster_stays_whole(live):
    """A local user of a Loki node comes from a Loki node's address: without the output rules it
    would reach gRPC (any certificate of the stack's CA, the agent's on the node, is enough there)
    and memberlist (no certificate at all). As ``nobody`` on each node: refused at once on its own
    node and on every peer (TCP reset, a datagram's EPERM); Loki itself (root in the lab, ``loki``
    on a VM) keeps every node in its ring and a push read back from another node."""
    expected = cluster_ports.refused()
    for node in NODES:
        seen = live.cluster_ports_as(node, "nobody", list(LOKI_ADDRESSES.values()))
        wrong = {address: got for address, got in seen.items() if got != expected}
        assert len(seen) == len(NODES) and not wrong, (
            f"{node}: a local user other than Loki's reaches cluster ports (want {expected}): {wrong or seen}")
    for node in NODES:
        metrics = live.request(node, "/metrics").body
        active = re.search(r'^loki_ring_members\{name="ingester",state="ACTIVE"\} (\S+)$', metrics, re.MULTILINE)
        members = re.search(r"^loki_memberlist_client_cluster_members_count (\S+)$", metrics, re.MULTILINE)
        assert active and float(active.group(1)) == len(NODES), f"{node}: ACTIVE ingesters: {active and active[0]}"
        assert members and float(members.group(1)) == len(NODES), (
            f"{node}: memberlist members: {members and members[0]}")
    marker = uuid.uuid4().hex[:8]
    pushed = live.push(NODES[0], {"job": "live-local-users", "marker": marker}, [f"line {marker}"])
    assert pushed.status == 204, f"push to {NODES[0]} after the probes: {pushed}"
    got, response = live.query_lines(NODES[-1], f'{{job="live-local-users", marker="{marker}"}}')
    assert (response.status, got) == (200, [f"line {marker}"]), f"read back from {NODES[-1]}: {response}"


def test_each_certificate_does_only_what_its_role_needs_on_the_real_loki(live):
    """Least privilege: an agent pushes and cannot read or delete; Grafana's data source reads and
    cannot write or delete; Prometheus reads metrics; the VIP's check asks /ready; the operator
    does everything but delete (no one does: see the next test)."""
    node = NODES[0]
    marker = uuid.uuid4().hex[:8]
    line = f"agent line {marker}"
    query = f'{{job="live-roles", marker="{marker}"}}'
    now = int(time.time())
    delete = f"/loki/api/v1/delete?query={urllib.parse.quote(query)}&start={now - 600}&end={now + 60}"
    refused = {
        ROLE_AGENT: [("GET", f"/loki/api/v1/query_range?query={urllib.parse.quote(query)}"),
                     ("GET", "/loki/api/v1/labels"), ("POST", delete), ("GET", "/loki/api/v1/delete"),
                     ("GET", "/metrics"), ("GET", "/config"), ("POST", "/flush")],
        ROLE_READER: [("POST", "/loki/api/v1/push"), ("POST", delete), ("GET", "/loki/api/v1/delete"),
                      ("GET", "/config"), ("GET", "/metrics")],
        ROLE_METRICS: [("GET", "/loki/api/v1/labels"), ("POST", "/loki/api/v1/push"), ("POST", delete)],
        ROLE_HEALTH: [("GET", "/loki/api/v1/labels"), ("POST", "/loki/api/v1/push"), ("GET", "/metrics")],
    }
    pushed = live.push(node, {"job": "live-roles", "marker": marker}, [line], role=ROLE_AGENT)
    assert pushed.status == 204, f"the agent's push was refused: {pushed}"
    got, response = live.query_lines(NODES[1], query, role=ROLE_READER)
    assert (response.status, got) == (200, [line]), f"Grafana's certificate cannot read the agent's line: {response}"
    for role, requests in refused.items():
        for method, path in requests:
            response = live.request(node, path, method=method, role=role,
                                    data="{}" if method == "POST" else None)
            assert response.status == 403, f"{role}: {method} {path} -> {response.status} {response.body[:200]}"
    assert "loki_build_info" in live.request(node, "/metrics", role=ROLE_METRICS).body, "Prometheus cannot scrape"
    assert live.request(node, "/ready", role=ROLE_HEALTH).status == 200, "the VIP's check cannot ask /ready"
    listed = live.local_request(node, "/loki/api/v1/delete")
    assert listed.status == 200 and marker not in listed.body, f"a refused delete reached Loki: {listed.body[:300]}"
    assert live.request(node, "/config").status == 200, "the operator reaches the admin endpoints"
    assert live.query_lines(node, query)[0] == [line], "the line is still there after the refused deletes"


def test_a_push_to_one_node_is_read_back_from_every_other_node(live):
    pushes, queries = [], []
    for writer in NODES:
        lines = [f"from {writer} {uuid.uuid4()} line {i}" for i in range(5)]
        stream = {"job": "live-test", "writer": writer}
        pushed = live.push(writer, stream, lines)
        assert pushed.status == 204, f"push to {writer}: {pushed}"
        pushes.append(pushed.seconds)
        for reader in NODES:
            if reader == writer:
                continue
            got, response = live.query_lines(reader, f'{{job="live-test", writer="{writer}"}}')
            assert response.status == 200, f"query on {reader}: {response}"
            assert got == lines, f"{reader} returned {got} for what {writer} accepted"
            queries.append(response.seconds)
    for _ in range(20):
        pushes.append(live.push(NODES[0], {"job": "live-latency"}, ["x"]).seconds)
    figure(SECTION, f"push (5 lines, HTTPS + client cert): median {statistics.median(pushes) * 1000:.0f} ms, "
                    f"max {max(pushes) * 1000:.0f} ms over {len(pushes)}")
    figure(SECTION, f"query_range from another node: median {statistics.median(queries) * 1000:.0f} ms, "
                    f"max {max(queries) * 1000:.0f} ms over {len(queries)}")


def test_logcli_set_up_from_the_stack_output_queries_through_the_vip(live):
    deadline = time.monotonic() + VIP_TIMEOUT_S
    while len(holders := vip_holders(live.network)) != 1:
        assert time.monotonic() < deadline, f"the VIP is held by {holders} after {VIP_TIMEOUT_S}s"
        time.sleep(0.2)
    line = f"through the vip {uuid.uuid4()}"
    assert live.push(NODES[-1], {"job": "live-logcli"}, [line]).status == 204
    assert "https://loki.home.arpa:3100" in live.plan.outputs["logcliEnvironment"]
    rc, output = live.logcli("query", "--quiet", "--since=1h", '{job="live-logcli"}')
    assert rc == 0 and line in output, f"logcli through the VIP (held by {holders}): rc={rc}\n{output}"


def test_a_query_that_takes_too_long_ends_with_lokis_timeout_through_the_vip_not_a_502(live):
    """The object store stopped (SIGSTOP: it takes connections and answers nothing), a query over a
    day whose index is only there hangs until Loki's query timeout. Through the VIP, curl (as
    Grafana's data source asks) and logcli both get Loki's 504 and its advice, within Loki's bound
    (``Timeouts.loki_answer_s``), before its HTTP server's and the gateway's timeouts: no 502
    (Loki's HTTP server cut by its own write timeout), no 504 page of nginx's, no query sent on to
    a peer to run again."""
    deadline = time.monotonic() + VIP_TIMEOUT_S
    while len(vip_holders(live.network)) != 1:
        assert time.monotonic() < deadline, f"the VIP is held by {vip_holders(live.network)} after {VIP_TIMEOUT_S}s"
        time.sleep(0.2)
    day = int(time.time()) - 20 * 86400
    query = urllib.parse.quote('{job="live-test"}')
    store = live.network.daemons[S3].process.pid
    os.kill(store, signal.SIGSTOP)
    try:
        response = live.request(NODES[0], f"/loki/api/v1/query_range?query={query}&start={day}&end={day + 3600}",
                                address=VIP, role=ROLE_READER, max_time=LAB_TIMEOUTS.grafana_s)
        started = time.monotonic()
        rc, output = live.logcli("query", "--quiet", f"--from={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(day))}",
                                 f"--to={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(day + 3600))}",
                                 '{job="live-test"}', timeout=LAB_TIMEOUTS.grafana_s + 30)
        logcli_s = time.monotonic() - started
    finally:
        os.kill(store, signal.SIGCONT)
    figure(SECTION, f"a query held by a stopped object store, through the VIP: {response.status} after "
                    f"{response.seconds:.1f} s (query timeout {LAB_TIMEOUTS.query_s} s, gateway "
                    f"{LAB_TIMEOUTS.gateway_s} s); logcli: exit {rc} after {logcli_s:.1f} s")
    assert response.status == 504 and TIMEOUT_ADVICE in response.body, (
        f"a slow query through the VIP answered {response.status}, not Loki's timeout: {response.body[:300]}")
    assert LAB_TIMEOUTS.query_s <= response.seconds <= LAB_TIMEOUTS.loki_answer_s, (
        f"the slow query ended after {response.seconds:.1f} s, not within Loki's bound "
        f"({LAB_TIMEOUTS.query_s}-{LAB_TIMEOUTS.loki_answer_s} s)")
    assert rc != 0 and TIMEOUT_ADVICE in output, f"logcli did not show Loki's timeout: {output}"


def test_every_gateway_refuses_the_deletion_api_that_loki_keeps_per_node(live):
    """Every gateway answers the log deletion API with 501 and the reason (``DELETE_REFUSAL``), also
    to the operator. The reason, measured on Loki 3.7.6 itself (each node's loopback listener,
    behind its gateway): a delete request made to one node is listed by that node only
    (grafana/loki#6779, #14985). If that part fails, Loki shares delete requests between nodes now:
    the refusal may go, and this test and the README should say so."""
    now = int(time.time())
    marker = uuid.uuid4().hex[:8]
    query = urllib.parse.quote(f'{{job="live-test", marker="{marker}"}}')
    create = f"/loki/api/v1/delete?query={query}&start={now - 600}&end={now}"
    for node in NODES:
        for method, path in (("POST", create), ("GET", "/loki/api/v1/delete"), ("DELETE", f"{create}&request_id=x")):
            refused = live.request(node, path, method=method)
            assert (refused.status, refused.body.strip()) == (DELETE_REFUSED_STATUS, DELETE_REFUSAL), (
                f"{node}'s gateway must refuse {method} {path} with the reason: {refused}")
    taker = NODES[1]
    posted = live.local_request(taker, create, method="POST")
    assert posted.status == 204, f"{taker}'s Loki refused a delete request: {posted}"
    listed = {n: live.local_request(n, "/loki/api/v1/delete") for n in NODES}
    assert all(r.status == 200 for r in listed.values()), f"listing delete requests failed: {listed}"
    knowing = sorted(n for n, r in listed.items() if marker in r.body)
    assert knowing == [taker], f"the delete request made to {taker}'s Loki is listed by {knowing}: {listed}"


def test_exactly_one_node_runs_the_compactor_and_no_node_logs_grpc_compactor_errors(live):
    leader, _ = wait_for_one_compactor(live, NODES, ELECTION_TIMEOUT_S, time.monotonic(), "first election")
    chosen = [n for n in NODES if CHOSEN in live.log(n)]
    assert chosen == [leader], f"the gauge says {leader} compacts, the logs say {chosen}"
    for node in NODES:
        assert "grpc.Compactor" not in live.log(node), f"{node} logs grpc.Compactor errors:\n{live.log(node)[-3000:]}"


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as Prometheus' WAL checksums each record."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def damage_first_wal_record(segment: Path) -> None:
    """The segment's first record gets a payload Loki cannot decode, under a valid checksum. (A
    record is a type byte, its length in 2 bytes big-endian, the CRC-32C of its payload in 4, then
    the payload. Damage to that framing Loki 3.7.6 does not count: its replay loop stops at the
    reader's error without looking at it, ``pkg/ingester/recovery.go`` ``recoverGeneric``; measured:
    half a segment overwritten, "WAL segment recovery finished errors=false".)"""
    data = bytearray(segment.read_bytes())
    assert data[0] & 0x07 == 1, f"{segment}: the first record is not a whole, uncompressed one: {data[:8].hex()}"
    length = int.from_bytes(data[1:3], "big")
    payload = b"\xee" * length  # no record type of Loki's
    data[3:7] = crc32c(payload).to_bytes(4, "big")
    data[7:7 + length] = payload
    segment.write_bytes(bytes(data))


def expired_chunks(lab: LokiLab) -> set[str]:
    """The chunk objects in the bucket whose lines are past the retention (their key says when
    they start: ``<tenant>/<fingerprint>/<from ms>:<through ms>:<checksum>``, hex)."""
    cutoff_ms = (time.time() - 86400) * 1000
    return {k for k in lab.bucket_keys("fake/")
            if (m := re.fullmatch(r"fake/[0-9a-f]+/([0-9a-f]+):[0-9a-f]+:[0-9a-f]+", k)) and int(m[1], 16) < cutoff_ms}


def test_the_compactor_moves_on_a_clean_stop_and_after_a_crash_and_the_next_one_deletes_what_the_last_marked(live):
    """One node compacts at a time, and another takes over after a clean stop and after a crash.
    Retention goes on across the moves: lines pushed two days back (past the 24h retention) reach
    the bucket when the first leader stops (its ingester flushes, its index is uploaded); the
    second leader marks their chunks and is killed before it could delete them; the third
    deletes them. That needs the markers in the bucket (``RETENTION_MARKER_PREFIX``): on local
    disk they die with the second leader, and no one deletes those chunks (measured: they were
    still there 3 minutes after the takeover)."""
    leader, _ = wait_for_one_compactor(live, NODES, ELECTION_TIMEOUT_S, time.monotonic(), "before the stop")
    job = f"retention-{uuid.uuid4().hex[:8]}"
    pushed = live.push(NODES[0], {"job": job}, [f"expired line {i}" for i in range(100)],
                       at_ns=time.time_ns() - 2 * 86400 * 10**9)
    assert pushed.status == 204, f"a push of lines two days back was refused: {pushed}"
    t = time.monotonic()
    stopped_in = live.stop_node(leader, signal.SIGTERM)
    rest = [n for n in NODES if n != leader]
    second, took = wait_for_one_compactor(live, rest, ELECTION_TIMEOUT_S + stopped_in, t, "after a clean stop")
    figure(SECTION, f"compactor: {leader} stopped (SIGTERM, {stopped_in:.1f} s to exit), {second} compacts "
                    f"{took:.1f} s after the signal")
    deadline = time.monotonic() + 6 * COMPACTION_INTERVAL_S
    while not (expired := expired_chunks(live)) or live.metric_sum(second, MARKED) == 0:
        assert time.monotonic() < deadline, (
            f"{second} did not mark the expired chunks ({sorted(expired)}) within {6 * COMPACTION_INTERVAL_S} s:\n"
            f"{live.log(second)[-3000:]}")
        time.sleep(1)
    assert live.metric(second, LOAD_DELETES) is not None, (
        f"{second}, the elected compactor, applied retention but shows no {LOAD_DELETES}")
    markers = live.bucket_keys(RETENTION_MARKER_PREFIX)
    assert markers, (f"{second} marked {sorted(expired)} but no marker file is in the bucket under "
                     f"{RETENTION_MARKER_PREFIX}")
    t = time.monotonic()
    live.stop_node(second, signal.SIGKILL)
    last = [n for n in rest if n != second]
    third, took = wait_for_one_compactor(live, last, CRASH_TAKEOVER_TIMEOUT_S, t, "after a crash")
    forgotten_s = AUTO_FORGET_PERIODS * LAB_HEARTBEAT_TIMEOUT_S
    figure(SECTION, f"compactor: {second} killed (SIGKILL), {third} compacts {took:.1f} s later (the ring drops "
                    f"a dead compactor after {AUTO_FORGET_PERIODS} heartbeat timeouts: {forgotten_s} s in this lab, "
                    f"{AUTO_FORGET_PERIODS * int(COMPACTOR_HEARTBEAT_TIMEOUT.rstrip('s'))} s with the rendered "
                    f"{COMPACTOR_HEARTBEAT_TIMEOUT})")
    assert took >= forgotten_s - LAB_HEARTBEAT_TIMEOUT_S, (
        f"{third} took over {took:.1f} s after {second} was killed: before its place in the ring could have gone "
        f"({AUTO_FORGET_PERIODS} x {LAB_HEARTBEAT_TIMEOUT_S} s); two compactors may have run at once")
    assert "waiting" in live.log(third).rsplit(CHOSEN, 1)[-1], (
        f"{third} did not start its compactor:\n{live.log(third)[-3000:]}")
    for node in NODES:
        assert "grpc.Compactor" not in live.log(node), f"{node} logs grpc.Compactor errors"
    t = time.monotonic()
    bound = RETENTION_DELETE_DELAY_S + SWEEP_INTERVAL_S + 30
    while left := expired & expired_chunks(live):
        assert time.monotonic() - t < bound, (
            f"{third} did not delete the {len(left)} chunk(s) {second} marked for retention before it was killed "
            f"(markers: {live.bucket_keys(RETENTION_MARKER_PREFIX)}):\n{live.log(third)[-3000:]}")
        time.sleep(2)
    assert live.metric_sum(third, SWEPT) >= len(expired), f"{third} deleted chunks but counts none in {SWEPT}"
    figure(SECTION, f"retention: {len(expired)} chunk(s) marked by {second}, deleted by {third} "
                    f"{time.monotonic() - t:.0f} s after it took over")
    # The killed node starts again on a WAL with a record it cannot decode: the replay counts the
    # corruption before anything scrapes the node, and the node comes up (LokiWALCorrupted reads
    # that count, not its increase).
    wal = live.run / second / "var-lib" / "loki" / "wal"
    segments = sorted((f for f in wal.iterdir() if f.name.isdigit() and f.stat().st_size > 0),
                      key=lambda f: int(f.name))
    assert segments, f"{second}, killed, left no WAL segment with records: {sorted(f.name for f in wal.iterdir())}"
    damage_first_wal_record(segments[0])
    live.start_node(second)
    live.wait_ready([second])
    assert live.metric_sum(second, WAL_CORRUPTIONS) >= 1, (
        f"{second} replayed a damaged WAL segment ({segments[-1].name}) and counts no corruption:\n"
        f"{live.log(second)[-3000:]}")
