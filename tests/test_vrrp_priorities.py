"""The VRRP priority levels (components/vrrp_priorities.py): every level a healthy node can take is
distinct and, where the range allows, a full step from every other, so that at a handover the best
backup's head start is 39 ms, not 4; a failing node drops below all of them."""

from __future__ import annotations

import itertools

import pytest

from components.vrrp_priorities import (
    SKEW_PER_POINT_MS,
    check_weight,
    lowest_level,
    priorities,
    priority_step,
    yield_levels,
    yield_step,
)
from stack.rules import MAX_LOKI_NODES

COUNTS = range(1, MAX_LOKI_NODES + 1)


def names(count: int) -> list[str]:
    return [f"loki-{i:02d}" for i in range(1, count + 1)]


def test_priorities_follow_the_node_order():
    assert priorities(["loki-02", "loki-01", "loki-03"]) == {"loki-02": 200, "loki-01": 190, "loki-03": 180}


def test_the_example_stacks_levels_are_a_full_step_apart():
    prios = priorities(names(3))
    assert yield_levels(prios) == {"loki-01": 170, "loki-02": 160}, (
        "the two upper nodes yield below 180, 10 apart, in the nodes' order (the last one is below everyone)")
    assert check_weight(prios) == -50, "a failing node drops by more than 200 - 160"


@pytest.mark.parametrize("count", COUNTS)
def test_every_level_a_healthy_node_can_take_is_apart_from_every_other(count):
    prios = priorities(names(count))
    levels = yield_levels(prios)
    lowest = min(prios, key=prios.__getitem__)
    assert sorted(levels) == sorted(n for n in prios if n != lowest), (
        f"{count} nodes: every node but the lowest, which is below every holder, has a yield level: {levels}")
    assert all(levels[n] < prios[lowest] for n in levels), (
        f"{count} nodes: a yield level must be below every configured priority: {levels}, configured {prios}")
    assert sorted(levels, key=lambda n: -levels[n]) == sorted(levels, key=lambda n: -prios[n]), (
        f"{count} nodes: the yield levels must keep the nodes' order: {levels}")
    every = sorted([*prios.values(), *levels.values()])
    gap = min((b - a for a, b in itertools.pairwise(every)), default=priority_step(count))
    assert gap >= yield_step(prios) >= 1, f"{count} nodes: two levels {yield_step(prios)} or less apart: {every}"
    if count <= 10:
        assert gap == 10, (
            f"{count} nodes: levels {gap} apart give the better backup {gap * SKEW_PER_POINT_MS:.0f} ms of head "
            f"start at a handover, not 39: {every}")


@pytest.mark.parametrize("count", COUNTS)
def test_a_failing_node_drops_below_every_healthy_one_within_keepaliveds_range(count):
    prios = priorities(names(count))
    weight = check_weight(prios)
    assert -253 <= weight < 0, f"{count} nodes: keepalived takes weights from -253 to 253, not {weight}"
    assert lowest_level(prios) >= 2, (
        f"{count} nodes: the lowest healthy level {lowest_level(prios)} must stay above 1, where a failing node "
        "sits at least")
    assert max(prios.values()) + weight < lowest_level(prios), (
        f"{count} nodes: a failing node at {max(prios.values()) + weight} does not drop below a yielding node at "
        f"{lowest_level(prios)}")
