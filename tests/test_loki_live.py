"""A live three-node cluster of the real Loki 3.7.6, from the files the program renders.

The example stack, moved into 198.18.0.0/24 through its settings, runs in network namespaces:
each Loki node with its own rendered config, env file and TLS files (``tests/loki_lab.py`` says
exactly how, and what differs from a VM), keepalived with the rendered configs holding the VIP,
the object store stood in for by moto's S3 server (Python, ``moto[server]``) with the plan's
object-store certificate, each node's gateway (nginx) in front of its Loki, and a client host with
the stack's client certificates. Every request is HTTPS with a client certificate, through a
node's gateway. The figures (time to ready, push and query latency, compactor
takeover) are printed at the end of the test run.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
import urllib.parse
import uuid
from collections.abc import Iterator

import pytest

from components.loki_config import GRPC_PORT, HTTP_PORT, MEMBERLIST_PORT
from components.loki_gateway import ROLE_AGENT, ROLE_HEALTH, ROLE_METRICS, ROLE_READER
from offline.real_loki import LokiTools
from tests.conftest import figure, missing, require_root, require_tool
from tests.lab_stack import LOKI_ADDRESSES, lab_plan, vip_holders
from tests.loki_lab import CLIENT, LokiLab
from tests.netns import private_network

NODES = list(LOKI_ADDRESSES)
SECTION = "Live Loki 3.7.6 cluster from the rendered configs (measured)"
COMPACTOR_RUNNING = "loki_boltdb_shipper_compactor_running"
CHOSEN = "this instance has been chosen to run the compactor"
ELECTION_TIMEOUT_S = 30  # the compactor asks the ring every 5 s
CRASH_TAKEOVER_TIMEOUT_S = 240  # 10 heartbeat timeouts (150 s) + heartbeat and ring poll
VIP_TIMEOUT_S = 30


def require_lab_tools() -> None:
    require_root()
    for tool in ("ip", "curl", "unshare", "keepalived", "nft", "nginx"):
        require_tool(tool)
    try:
        import moto.server  # noqa: F401, PLC0415 (the S3 stand-in; only these tests need it)
    except ImportError:
        missing("moto[server] is not installed (requirements-dev.txt)")


def start_cluster(lab: LokiLab) -> dict[str, float]:
    """Object store, then every node; returns each node's seconds from start to /ready."""
    lab.add_hosts()
    lab.prepare_client()
    lab.start_object_store()
    for node in NODES:  # as deployed: the firewall is in place before Loki first starts
        lab.load_firewall(node)
    for node in NODES:
        lab.start_gateway(node)
        lab.start_node(node)
    return lab.wait_ready(NODES)


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
        lab = LokiLab(network, lab_plan(), loki_tools)
        ready = start_cluster(lab)
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


def test_each_certificate_does_only_what_its_role_needs_on_the_real_loki(live):
    """Least privilege: an agent pushes and cannot read or delete; Grafana's data source reads and
    cannot write or delete; Prometheus reads metrics; the VIP's check asks /ready; the operator
    does everything."""
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
    listed = live.request(node, "/loki/api/v1/delete")
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


def test_a_delete_request_is_known_only_to_the_node_that_took_it(live):
    """What Loki 3.7.6 does with deletes on several nodes (grafana/loki#6779, #14985): each node's
    compactor keeps its own delete-request database, so a request made through one node is listed
    by that node only (and processed only if it is the elected compactor). The README says so.
    If this fails, Loki shares delete requests between nodes now: deletes work on a cluster, and
    the README and this test should say so."""
    now = int(time.time())
    taker = NODES[1]
    marker = uuid.uuid4().hex[:8]
    query = urllib.parse.quote(f'{{job="live-test", marker="{marker}"}}')
    posted = live.request(taker, f"/loki/api/v1/delete?query={query}&start={now - 600}&end={now}", method="POST")
    assert posted.status == 204, f"{taker} refused a delete request: {posted}"
    listed = {n: live.request(n, "/loki/api/v1/delete") for n in NODES}
    assert all(r.status == 200 for r in listed.values()), f"listing delete requests failed: {listed}"
    knowing = sorted(n for n, r in listed.items() if marker in r.body)
    assert knowing == [taker], f"the delete request made through {taker} is listed by {knowing}: {listed}"


def test_exactly_one_node_runs_the_compactor_and_no_node_logs_grpc_compactor_errors(live):
    leader, _ = wait_for_one_compactor(live, NODES, ELECTION_TIMEOUT_S, time.monotonic(), "first election")
    chosen = [n for n in NODES if CHOSEN in live.log(n)]
    assert chosen == [leader], f"the gauge says {leader} compacts, the logs say {chosen}"
    for node in NODES:
        assert "grpc.Compactor" not in live.log(node), f"{node} logs grpc.Compactor errors:\n{live.log(node)[-3000:]}"


def test_the_compactor_moves_on_a_clean_stop_and_after_a_crash(live):
    leader, _ = wait_for_one_compactor(live, NODES, ELECTION_TIMEOUT_S, time.monotonic(), "before the stop")
    t = time.monotonic()
    stopped_in = live.stop_node(leader, signal.SIGTERM)
    rest = [n for n in NODES if n != leader]
    second, took = wait_for_one_compactor(live, rest, ELECTION_TIMEOUT_S + stopped_in, t, "after a clean stop")
    figure(SECTION, f"compactor: {leader} stopped (SIGTERM, {stopped_in:.1f} s to exit), {second} compacts "
                    f"{took:.1f} s after the signal")
    t = time.monotonic()
    live.stop_node(second, signal.SIGKILL)
    last = [n for n in rest if n != second]
    third, took = wait_for_one_compactor(live, last, CRASH_TAKEOVER_TIMEOUT_S, t, "after a crash")
    figure(SECTION, f"compactor: {second} killed (SIGKILL), {third} compacts {took:.1f} s later "
                    "(the ring drops a dead compactor after 10 heartbeat timeouts)")
    assert "waiting" in live.log(third).rsplit(CHOSEN, 1)[-1], (
        f"{third} did not start its compactor:\n{live.log(third)[-3000:]}")
    for node in NODES:
        assert "grpc.Compactor" not in live.log(node), f"{node} logs grpc.Compactor errors"
