"""Real VRRP failover with the keepalived configs the project renders.

Three keepalived daemons, each in its own network namespace on a private bridge (addresses in
198.18.0.0/24 only, set through the stack's settings), each next to a small HTTPS server that
stands in for Loki's /ready (the node's real server certificate, client certificates required).
The daemons read the rendered keepalived.conf; the health check's certificate files sit on a
private tmpfs over /etc/keepalived in each daemon's own mount namespace. Only script_user differs
from the rendered file (root instead of keepalived_script, which the test host lacks).
Everything started here is stopped by pid, and every namespace deleted, also when a step fails.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.labs.figures import figure
from tests.labs.lab_stack import LOKI_ADDRESSES, lab_plan
from tests.labs.vip_lab import VipLab, node_files, prepare, vip_lab

pytestmark = pytest.mark.live

SECTION = "VIP failover with the real keepalived (measured)"


GRACE_S = 8
"""vipLokiGraceSeconds here: short, so that the test waits for it (the default is 60)."""


def rendered_files(nopreempt: bool) -> dict[str, dict[str, str]]:
    """The files the project renders for each Loki node, with the test range's addresses."""
    return node_files(lab_plan(vipNoPreempt=nopreempt, vipCheckInterval=1, vipLokiGraceSeconds=GRACE_S))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[VipLab]:
    with vip_lab("lkv", tmp_path, SECTION, ()) as created:
        yield created


def test_the_vip_follows_loki_readiness_and_keepalived(lab):
    prepare(lab, rendered_files(nopreempt=False))
    t = time.monotonic()
    for node in LOKI_ADDRESSES:
        lab.start_keepalived(node)
    lab.wait_for("loki-01", "cold start: the first node takes the VIP", t)
    t = time.monotonic()
    lab.stop_keepalived("loki-01")
    lab.wait_for("loki-02", "loki-01 keepalived stopped (SIGTERM): next priority takes over", t)
    t = time.monotonic()
    lab.start_keepalived("loki-01")
    lab.wait_for("loki-01", "loki-01 keepalived back: preempts", t)
    # Loki not ready (crashed, restarting), its gateway answers and the peers are ready: the gateway
    # sends requests to them, and the VIP stays for vipLokiGraceSeconds.
    t = time.monotonic()
    lab.set_ready("loki-01", False)
    lab.keeps("loki-01", GRACE_S - 1.5, "loki-01 /ready fails, its gateway answers, the others are ready")
    moved = lab.wait_for("loki-02", f"loki-01 /ready fails for longer than {GRACE_S} s: gives the VIP away", t)
    assert moved >= GRACE_S - 1.5, f"loki-01 gave the VIP away {moved:.1f} s after its Loki stopped being ready"
    t = time.monotonic()
    lab.set_ready("loki-01", True)
    lab.wait_for("loki-01", "loki-01 /ready recovers: takes the VIP back", t)
    # Ready again within the grace: the VIP never moved.
    lab.set_ready("loki-01", False)
    lab.keeps("loki-01", GRACE_S / 2, "loki-01 /ready fails for a while")
    lab.set_ready("loki-01", True)
    lab.keeps("loki-01", GRACE_S, "loki-01 ready again within the grace")
    figure(SECTION, f"loki-01 not ready for {GRACE_S / 2:g} s (grace {GRACE_S} s): the VIP stayed")
    # The gateway itself does not answer: the VIP moves after vipCheckFall checks, without grace.
    t = time.monotonic()
    lab.stop_gateway("loki-01")
    moved = lab.wait_for("loki-02", "loki-01's gateway stops: gives the VIP away at once", t)
    assert moved < GRACE_S - 1, f"loki-01 kept the VIP {moved:.1f} s with its gateway down"
    t = time.monotonic()
    lab.start_gateway("loki-01")
    lab.wait_for("loki-01", "loki-01's gateway back: takes the VIP back", t)
    t = time.monotonic()
    lab.set_ready("loki-01", False)
    lab.set_ready("loki-02", False)
    lab.wait_for("loki-03", "loki-01 and loki-02 not ready: the last healthy node holds it", t)


def test_with_nopreempt_the_vip_stays_where_it_is(lab):
    prepare(lab, rendered_files(nopreempt=True))
    t = time.monotonic()
    for node in LOKI_ADDRESSES:
        lab.start_keepalived(node)
    lab.wait_for(None, "nopreempt cold start: one node takes the VIP", t)
    first = lab.holders()[0]
    t = time.monotonic()
    lab.stop_keepalived(first)
    lab.wait_for(None, f"nopreempt: {first} keepalived stopped, another takes over", t)
    second = lab.holders()[0]
    assert second != first
    lab.start_keepalived(first)
    time.sleep(6)  # longer than master_down: a preempting node would have taken the VIP back by now
    lab.wait_for(second, f"nopreempt: {first} back, the VIP stays on {second}", time.monotonic())
    # A master that is not ready must give the VIP away with nopreempt too: no backup takes the
    # VIP from a live master whatever its priority, so the failing check puts it in FAULT.
    t = time.monotonic()
    lab.set_ready(second, False)
    time.sleep(GRACE_S + 3)  # vipCheckInterval 1 s, fall of the /ready check: the grace; it has failed by now
    lab.wait_for(None, f"nopreempt: {second} not ready gives the VIP away", t)
    assert lab.holders() != [second], f"with nopreempt, {second} keeps the VIP although it is not ready"
