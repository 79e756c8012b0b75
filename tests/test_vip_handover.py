"""The VIP handover around a Loki restart (``components/vip_handover.py``), with the real keepalived
and the rendered configs and handover functions (``tests/vip_lab.py`` says what is the lab's).

A client asks ``/ready`` through the VIP every 100 ms, each time on a new TLS connection and
without retries, while the holder hands the VIP over and takes part again: it must see no failure.
With preemption the node that handed the VIP over must not take it back (a move started by the
taker cuts what the holder serves); it is the VIP's home again after the next failover. With
``vipNoPreempt`` the VIP stays too. A handover that finds no other ready node fails with the
reason and leaves the node holding the VIP.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.vip_handover import MAINTENANCE_FILE, YIELD_FILE
from offline.rehearsal.traffic import summarize_steady
from stack.schema import PROJECT_DIR
from tests.conftest import figure, require_root, require_tool
from tests.lab_stack import LOKI_ADDRESSES, VIP, LabPlan, lab_plan
from tests.netns import private_network
from tests.vip_lab import CLIENT, CLIENT_ADDRESS, VipLab, node_files, prepare

SECTION = "VIP handover with the real keepalived (measured)"
NODES = list(LOKI_ADDRESSES)
SETTLE_S = 6  # longer than keepalived's master-down interval: a preempting node would have moved the VIP


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[VipLab]:
    require_root()
    for tool in ("keepalived", "ip", "curl", "unshare", "nft", "ss"):
        require_tool(tool)
    with private_network(f"lkh{os.getpid() % 100000}-", tmp_path) as network:
        for node, address in LOKI_ADDRESSES.items():
            network.add_host(node, address)
        network.add_host(CLIENT, CLIENT_ADDRESS)
        yield VipLab(network, SECTION)


def start(lab: VipLab, plan: LabPlan, *, preempt: bool = True) -> None:
    """keepalived on every node; with preemption the VIP settles on its home, the first node."""
    prepare(lab, node_files(plan))
    t = time.monotonic()
    for node in NODES:
        lab.start_keepalived(node)
    lab.wait_for(NODES[0] if preempt else None, "cold start", t)


def start_client(lab: VipLab) -> Path:
    """The client asking /ready through the VIP (with the health check's certificate: any of the stack's may)."""
    record = lab.run / "client.jsonl"
    d = lab.run / NODES[0]
    lab.network.start("client", CLIENT, [sys.executable, "-m", "offline.rehearsal.traffic", "steady",
                                         f"https://{VIP}:3100/ready", str(record), "--ca", str(d / "check" / "ca.pem"),
                                         "--cert", str(d / "check" / "client.pem"),
                                         "--key", str(d / "check" / "client.key")],
                      env={"PYTHONPATH": str(PROJECT_DIR)})
    deadline = time.monotonic() + 10
    while not (record.exists() and record.read_text().count("\n") >= 3):
        assert time.monotonic() < deadline, f"the client records nothing: {lab.network.daemons['client'].log_text()}"
        time.sleep(0.1)
    return record


def stop_client(lab: VipLab, record: Path, label: str) -> None:
    lab.network.stop("client", signal.SIGTERM)
    seen = summarize_steady(record)
    figure(SECTION, f"{label}: {seen.requests} requests through the VIP, {seen.failures} failed")
    assert seen.failures == 0, f"{label}: a client of the VIP saw failures: {seen.errors[:10]}"
    assert seen.requests >= 20, f"{label}: the client made only {seen.requests} requests"


def leave(lab: VipLab, plan: LabPlan, node: str, **overrides: str) -> str:
    proc = lab.handover(plan, node, "vip_leave", **overrides)
    assert proc.returncode == 0, f"vip_leave on {node} failed: {proc.stdout}{proc.stderr}\n{lab.logs()}"
    return proc.stdout


def rejoin(lab: VipLab, plan: LabPlan, node: str) -> str:
    proc = lab.handover(plan, node, "vip_rejoin")
    assert proc.returncode == 0, f"vip_rejoin on {node} failed: {proc.stdout}{proc.stderr}\n{lab.logs()}"
    return proc.stdout


def test_the_holder_hands_the_vip_over_without_a_failed_request_and_does_not_take_it_back(lab):
    plan = lab_plan(vipCheckInterval=1)
    start(lab, plan)
    home = lab.holders()[0]
    record = start_client(lab)
    t = time.monotonic()
    said = leave(lab, plan, home)
    taker = lab.wait_for(None, f"{home} hands the VIP over", t) and lab.holders()[0]
    assert taker == NODES[1] and f"VIP handed over from {home} to {taker}" in said, said
    assert lab.track_file(home, MAINTENANCE_FILE) == "1", f"{home} must take no VIP while its Loki restarts"
    said = rejoin(lab, plan, home)
    assert lab.track_file(home, YIELD_FILE) == "-11", f"{home} must yield to {taker}: {said}"
    time.sleep(SETTLE_S)
    lab.wait_for(taker, f"{home} back (yielding): the VIP stays on {taker}", time.monotonic())
    stop_client(lab, record, f"{home} hands over and comes back")
    # The next failover takes the VIP home, and the home keeps it when the other node returns.
    t = time.monotonic()
    lab.stop_keepalived(taker)
    lab.wait_for(home, f"{taker} stops: the VIP goes home to {home}", t)
    assert lab.track_file(home, YIELD_FILE) == "", f"{home} is master again: its yield must be gone"
    lab.start_keepalived(taker)
    time.sleep(SETTLE_S)
    lab.wait_for(home, f"{taker} back: the VIP stays home on {home}", time.monotonic())


def test_a_node_that_does_not_hold_the_vip_takes_none_while_it_restarts(lab):
    plan = lab_plan(vipCheckInterval=1)
    start(lab, plan)
    holder, other = NODES[0], NODES[2]
    said = leave(lab, plan, other)
    assert "does not hold the VIP" in said and lab.track_file(other, MAINTENANCE_FILE) == "1", said
    t = time.monotonic()
    lab.stop_keepalived(holder)
    lab.wait_for(NODES[1], f"{holder} gone while {other} restarts: the VIP skips {other}", t)
    rejoin(lab, plan, other)
    assert lab.track_file(other, YIELD_FILE) == "0", f"{other} is below {NODES[1]} anyway: no yield"
    time.sleep(SETTLE_S)
    lab.wait_for(NODES[1], f"{other} back: the VIP stays on {NODES[1]}", time.monotonic())


def test_with_nopreempt_the_handover_moves_the_vip_once(lab):
    plan = lab_plan(vipCheckInterval=1, vipNoPreempt=True)
    start(lab, plan, preempt=False)
    holder = lab.holders()[0]
    record = start_client(lab)
    t = time.monotonic()
    leave(lab, plan, holder)
    lab.wait_for(None, f"nopreempt: {holder} hands the VIP over", t)
    taker = lab.holders()[0]
    assert taker != holder
    rejoin(lab, plan, holder)
    assert lab.track_file(holder, YIELD_FILE) == "0", "with nopreempt nothing needs to yield"
    time.sleep(SETTLE_S)
    lab.wait_for(taker, f"nopreempt: {holder} back, the VIP stays on {taker}", time.monotonic())
    stop_client(lab, record, "nopreempt handover")


def test_a_handover_without_another_ready_node_fails_and_keeps_the_vip(lab):
    plan = lab_plan(vipCheckInterval=1)
    start(lab, plan)
    holder = lab.holders()[0]
    for node in NODES[1:]:
        lab.set_ready(node, False)
    time.sleep(4)  # their checks fail
    proc = lab.handover(plan, holder, "vip_leave", VIP_HANDOVER_TIMEOUT_S="5")
    assert proc.returncode != 0, f"vip_leave succeeded with no ready node to take the VIP: {proc.stdout}"
    assert "no other ready node took the VIP" in proc.stderr and "was not restarted" in proc.stderr, proc.stderr
    assert lab.track_file(holder, MAINTENANCE_FILE) == "0", f"{holder} must be back in VRRP"
    lab.wait_for(holder, f"failed handover: {holder} keeps the VIP", time.monotonic())
    tables = lab.network.run(holder, ["nft", "list", "tables"]).stdout
    assert "lokistack_vip_handover" not in tables, f"{holder} still drops new connections to the VIP: {tables}"
