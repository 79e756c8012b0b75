"""The object store's outage (offline/rehearsal/outage.py), on a deployment of its own: booted Debian
12 systems get the stack from nothing, as in ``test_rehearsal.py``, and then lose the object store
for ten minutes under both clients of the VIP, a real Prometheus watching.

Why a deployment of its own: ten minutes of an outage are ten minutes of waiting, and the events of
``test_rehearsal.py`` (rolls, reboots, a rebuild) need a working object store. So ``make test`` runs
the rehearsal on two pytest workers, each file on one of them (``--dist loadfile``, in their order):
``test_rehearsal.py`` on the first, this file on the second, and the upgrade rehearsal on whichever
is free first (this one: it ends a few minutes before the other); the outage's ten minutes cost
the run none. Its figures are also its own: no other event's restarts in its memory and WAL curves.
(pytest-xdist's ``loadgroup`` cannot pin files to workers here: with pytest 9.2 its group mark no
longer reaches the scheduler, pytest-dev/pytest-xdist#1386, seen here too.)

Marked ``rehearsal``, as ``test_rehearsal.py``: it needs root, systemd-container, debootstrap and
Prometheus' server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from offline.rehearsal.outage import object_store_outage
from offline.rehearsal.run import Rehearsal
from tests.labs.booted import deployed_lab
from tests.labs.needs import require_tool

SECTION = "Object store outage on booted Debian 12 systems (measured)"
pytestmark = pytest.mark.rehearsal


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    require_tool("prometheus")
    with deployed_lab(tmp_path_factory, "o", SECTION) as lab:
        yield lab


def test_the_stack_for_the_outage_deploys(deployed):
    failed = {s.name: s.output[-1500:] for s in deployed.steps.values() if s.status == "failed"}
    assert not failed, f"steps failed: {failed}"


def test_ten_minutes_without_the_object_store_fail_no_push_keep_every_node_ready_and_fire_its_alert(deployed):
    """The object store's machine shut down for ten minutes under both clients: no push fails, every
    node stays ready, ``LokiStackObjectStoreDown`` fires in a real Prometheus with the stack's scrape
    config and rules while no node, ring or push alert is even pending, the VIP stays; booted again,
    the alert clears, every node's backlog reaches the store and every accepted line reads back.
    Each node's memory and WAL growth per minute are measured (``outage.object_store_outage``)."""
    problems = object_store_outage(deployed)
    assert not problems, "\n".join(problems)
