"""The upgrade rehearsal (offline/rehearsal/upgrade.py): booted Debian 12 systems get the stack as an
earlier commit of this repository built it (its program, its engine replaced by this one's, its
steps), then this version's steps run in the order ``pulumi up`` would, while both clients of the
VIP push and every gateway port is watched: the upgrade itself is a roll of every Loki node (their
drop-in, config and certificates change), and it must fail no push. Afterwards the stack must pass
the rehearsal's checks of a deployed stack: every Loki node runs what it should and holds nothing
a converged node must not, a second run changes nothing, every unit runs hardened, a line pushed
through the VIP reads back with logcli. (The changes and events after a deploy, in
``test_rehearsal.py``, run on a fresh deployment of this version.)

Each earlier version gets its own machines: the last commit before this version learned to
converge from any state (#22), and the last commit before the gateway (Loki itself held port 3100;
no per-VM SSH host key yet); ``LOKISTACK_UPGRADE_FROM`` (a comma-separated list of commits, or
``all``) picks some: each one costs a deployment from nothing. Several are
deployed from nothing at the same time (each deploy mostly waits, on boots, apt and Loki: about two
minutes each), then each is upgraded and checked in turn, and taken down once its checks are done.
Marked ``rehearsal``, as ``test_rehearsal.py``: it needs root, systemd-container and debootstrap.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from offline.rehearsal.earlier import VERSIONS, upgrade_sources
from offline.rehearsal.run import Rehearsal
from offline.rehearsal.settings import GATEWAY
from offline.rehearsal.template import build_template
from offline.rehearsal.upgrade import UpgradeReport, upgrade
from tests.labs.booted import booted_lab
from tests.labs.figures import figure

SECTION = "Upgrade rehearsal from earlier commits on booted Debian 12 systems (measured)"
pytestmark = pytest.mark.rehearsal
SOURCES = upgrade_sources()
"""The earlier commits this run upgrades from (``UPGRADE_FROM``)."""


@dataclass
class Upgraded:
    lab: Rehearsal
    report: UpgradeReport
    earlier_failed: dict[str, str]


def deploy_earlier(lab: Rehearsal, commit: str) -> float:
    """``commit``'s stack from nothing on ``lab``'s machines; returns the seconds it took."""
    t0 = time.monotonic()
    lab.deploy_earlier(commit)
    lab.boot()
    lab.run_steps()
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def earlier_labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Rehearsal]]:
    """Every earlier version deployed on machines of its own, all at the same time."""
    with contextlib.ExitStack() as labs_open:
        labs = {commit: labs_open.enter_context(booted_lab(tmp_path_factory, letter, SECTION, "git"))
                for commit, letter in zip(SOURCES, "uvwxyz", strict=False)}
        build_template(GATEWAY)  # once, before the labs boot from it
        with ThreadPoolExecutor(max_workers=len(labs)) as pool:
            deploys = {commit: pool.submit(deploy_earlier, lab, commit) for commit, lab in labs.items()}
            for commit, deploy in deploys.items():
                figure(SECTION, f"{commit} ({VERSIONS[commit]}) from nothing to a ready stack: {deploy.result():.1f} s "
                       f"(beside {len(labs) - 1} other deployment(s))")
        yield labs


@pytest.fixture(scope="module", params=SOURCES, ids=SOURCES)
def upgraded(request: pytest.FixtureRequest, earlier_labs: dict[str, Rehearsal]) -> Iterator[Upgraded]:
    commit: str = request.param
    lab = earlier_labs[commit]
    failed = {s.name: s.output[-1500:] for s in lab.steps.values() if s.status == "failed"}
    report = upgrade(lab, commit) if not failed else UpgradeReport(commit=commit)
    yield Upgraded(lab=lab, report=report, earlier_failed=failed)
    lab.close()  # its checks are done: its machines need not idle beside the next upgrade


def test_the_earlier_version_deploys(upgraded):
    assert not upgraded.earlier_failed, f"{upgraded.report.commit}'s own steps failed: {upgraded.earlier_failed}"


def test_the_upgrade_fails_no_push_leaves_no_port_dead_and_loses_no_line(upgraded):
    """This version's steps on the earlier stack, once it has settled, both clients pushing through
    the VIP (one on a new connection every 100 ms, one kept-alive with 1 MiB batches): no push
    fails, every accepted line reads back, the VIP's port 3100 accepts at every probe (every
    200 ms) and each node's refuses at most once, for less than ``upgrade.NGINX_BIND_S`` (nginx
    binding the port an earlier Loki held), a line pushed before the upgrade is still there, and
    every Loki node runs what it should."""
    report = upgraded.report
    assert report.steps, "the upgrade ran no step"
    names = {s.name for s in report.steps}
    for node in ("loki-01", "loki-02", "loki-03"):
        assert f"loki-{node}-apply" in names, f"the upgrade from {report.commit} did not run loki-{node}-apply"
    assert not report.problems, "\n".join(report.problems)


def test_after_the_upgrade_a_second_run_changes_nothing(upgraded):
    changed = upgraded.lab.second_run()
    assert not changed, f"after the upgrade from {upgraded.report.commit}, a second run changed: {changed}"


def test_after_the_upgrade_every_unit_runs_with_its_hardening(upgraded):
    problems = upgraded.lab.unit_problems()
    assert not problems, "\n".join(problems)


def test_after_the_upgrade_a_line_pushed_through_the_vip_reads_back_with_logcli(upgraded):
    problems = upgraded.lab.push_and_read()
    assert not problems, "\n".join(problems)

