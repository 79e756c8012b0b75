"""The rehearsal (offline/rehearsal/): the program's VMs as booted Debian 12 systems, its steps run
over SSH as pulumi-command runs them. Marked ``rehearsal``: it needs root, systemd-container and
debootstrap, and takes about two minutes (plus about 90 s the first time, for the template).

What it shows now: every VM's cloud-init finishes on a booted system from the VM's own user-data
and the network config Proxmox would write; each VM's own SSH host key replaces the snippet's
bootstrap key and every later step pins it; the TLS files arrive; a second run changes nothing;
nothing is left behind. Steps that need Grafana's repository or the object store's download are
reported as not rehearsed, with the reason, and their dependents skipped.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from offline.rehearsal.machines import CGROUP_ROOTS
from offline.rehearsal.run import Rehearsal
from tests.conftest import figure, require_root, require_tool

SECTION = "Rehearsal on booted Debian 12 systems (measured)"
pytestmark = pytest.mark.rehearsal


def leftovers(prefix: str) -> list[str]:
    found = []
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    found += [f"namespace {line.split()[0]}" for line in namespaces.splitlines() if line.startswith(prefix)]
    found += [f"cgroup {c}" for root in CGROUP_ROOTS if root.is_dir()
              for c in root.glob(f"lokistack-rehearsal-{prefix}*")]
    mounts = Path("/proc/mounts").read_text()
    found += [f"mount {line.split()[1]}" for line in mounts.splitlines() if f"/{prefix}-run/" in line]
    return found


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    require_root()
    for tool in ("systemd-nspawn", "debootstrap", "nsenter", "losetup", "ssh", "ip"):
        require_tool(tool)
    prefix = f"lkt{os.getpid() % 10000}"
    run_dir = tmp_path_factory.mktemp(f"{prefix}-run")
    lab = Rehearsal(run_dir=run_dir, prefix=prefix)
    loops_before = set(subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout.split())
    try:
        lab.program()
        lab.boot()
        lab.run_steps()
        yield lab
    finally:
        print(lab.report())
        lab.close()
        for line in lab.figures:
            figure(SECTION, line)
        assert not leftovers(prefix), f"the rehearsal left {leftovers(prefix)}"
        loops_after = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout.split()
        assert not [d for d in loops_after if d.endswith(":") and d not in loops_before], "loop devices left"


def test_no_step_fails_and_every_vm_is_booted_keyed_and_has_its_tls_files(rehearsal):
    failed = {s.name: s.output[-2000:] for s in rehearsal.steps.values() if s.status == "failed"}
    assert not failed, f"steps failed: {failed}"
    by_name = {s.name: s for s in rehearsal.steps.values()}
    for vm in rehearsal.machines:
        for step in (f"{vm}-cloud-init", f"{vm}-host-key", f"{vm}-tls-install"):
            assert by_name[step].status == "ok", f"{step}: {by_name[step].status} {by_name[step].output[-500:]}"
        for step in (f"{vm}-cloud-init", f"{vm}-host-key", f"{vm}-tls-install"):
            figure(SECTION, f"{step}: {by_name[step].seconds:.1f} s")


def test_every_step_not_rehearsed_says_why_and_its_dependents_are_skipped(rehearsal):
    for step in rehearsal.steps.values():
        assert step.status != "waiting", f"{step.name} was never decided"
        if step.status == "not rehearsed":
            assert step.not_rehearsed, f"{step.name} is not rehearsed without a reason"
        if step.status == "skipped":
            assert "waits for" in step.output, f"{step.name} is skipped without saying for what"
    loki_setup = next(s for s in rehearsal.steps.values() if s.name == "loki-loki-01-setup")
    assert loki_setup.status == "not rehearsed" and "Grafana's package repository" in loki_setup.not_rehearsed


def test_a_second_run_of_every_step_changes_nothing(rehearsal):
    changed = rehearsal.second_run()
    assert not changed, f"a second run changed: {changed}"
