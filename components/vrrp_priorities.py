"""The VRRP priorities of the Loki nodes: every level a healthy node can advertise, and the check
weight that puts a failing node below all of them.

When the VIP holder gives the VIP away (a handover sends a priority-0 advert; a failure stops the
adverts), every backup starts a timer and the first to run out takes the VIP. The timers differ by
keepalived's skew only: (256 - priority) / 256 s with VRRPv2, about 3.9 ms per point of priority.
Two backups whose priorities are one point apart both take the VIP as soon as the better one is
4 ms late (its VM busy, its advert delivered later): the worse one enters MASTER, sends gratuitous
ARPs for the VIP, runs its ``notify_master`` (which clears a yield) and gives the VIP up again when
it hears the better one. That is a move of the VIP without a drain; it happened in a rehearsal's
roll on two busy cores. So every level a healthy node can take is at least ``step`` points from
every other (39 ms with the usual 10):

- **Configured priorities**: the first node 200, then ``step`` lower for each node (10; smaller for
  many nodes, see ``priority_step``).
- **Yield levels**: a node back from a restart whose priority is not below the holder's yields
  (``components.vip_handover``): it takes a level below every configured priority, ``yield_step``
  apart and in the nodes' order (``yield_levels``). They do not depend on the holder, so nodes that
  yielded to different holders never share one.
- **Check weight**: a failing check drops a node by more than the spread of all those levels, so any
  healthy node outranks it (``check_weight``).

With many nodes the range (1-254) leaves less room, and ``yield_step`` shrinks to 1 first (50
nodes: configured 200 down to 53 by 3, yields 52 down to 4 by 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

BASE_PRIORITY, MAX_PRIORITY_STEP, PRIORITY_SPAN = 200, 10, 180
LOWEST_LEVEL = 2
"""The lowest level a healthy node may take: a failing node sits at 1 at most (keepalived never
advertises below 1 for a live node), always below it."""
SKEW_PER_POINT_MS = 1000 / 256
"""keepalived's master-down skew (VRRPv2) per point of priority: the head start of the better of two
backups."""


def priority_step(count: int) -> int:
    """Distance between two nodes' configured priorities: 10, smaller for many nodes so that the
    lowest stays at 20 or more and leaves room below it for a yield level per node (one point apart
    at least; this makes the step smaller than before for 30, 35, 36 and 41 to 45 nodes)."""
    room = (BASE_PRIORITY - LOWEST_LEVEL) // (count - 1) - 1 if count > 1 else MAX_PRIORITY_STEP
    return max(1, min(MAX_PRIORITY_STEP, PRIORITY_SPAN // count, room))


def priorities(nodes: Sequence[str]) -> dict[str, int]:
    """VRRP priority of each node, highest first, in the order given: distinct, so that exactly
    one healthy node is the VIP's home."""
    step = priority_step(len(nodes))
    return {name: BASE_PRIORITY - step * i for i, name in enumerate(nodes)}


def yield_step(prios: Mapping[str, int]) -> int:
    """Distance between two yield levels, and from the lowest configured priority to the first: the
    configured step where the range allows it, at least 1."""
    count = len(prios)
    if count < 2:
        return priority_step(count)
    room = (min(prios.values()) - LOWEST_LEVEL) // (count - 1)
    return max(1, min(priority_step(count), room))


def yield_levels(prios: Mapping[str, int]) -> dict[str, int]:
    """The priority each node takes while it yields: below every configured priority, in the nodes'
    order (the node with the highest configured priority highest). The last node has none: its
    priority is below every holder's already."""
    step, lowest = yield_step(prios), min(prios.values())
    ranked = sorted(prios, key=lambda n: -prios[n])[:-1]
    return {name: lowest - step * (1 + rank) for rank, name in enumerate(ranked)}


def lowest_level(prios: Mapping[str, int]) -> int:
    """The lowest priority a healthy node can advertise (the last node's yield level)."""
    return min([*yield_levels(prios).values(), *prios.values()])


def check_weight(prios: Mapping[str, int]) -> int:
    """A failing node drops below every healthy one, yielding or not: more than the spread of every
    level a healthy node can take."""
    return -(max(prios.values()) - lowest_level(prios) + priority_step(len(prios)))
