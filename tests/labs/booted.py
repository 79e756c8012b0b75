"""Booted Debian 12 systems for the rehearsal's tests: a ``Rehearsal`` taken down afterwards, also on
failure, with nothing left behind (namespaces, cgroups, mounts, processes, loop devices)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offline.rehearsal.machines import CGROUP_ROOTS
from offline.rehearsal.run import Rehearsal
from tests.labs.figures import figure
from tests.labs.needs import expect_marker, require_root, require_tool


def leftovers(prefix: str) -> list[str]:
    found = []
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    found += [f"namespace {line.split()[0]}" for line in namespaces.splitlines() if line.startswith(prefix)]
    found += [f"cgroup {c}" for root in CGROUP_ROOTS if root.is_dir()
              for c in root.glob(f"lokistack-rehearsal-{prefix}*")]
    mounts = Path("/proc/mounts").read_text()
    found += [f"mount {line.split()[1]}" for line in mounts.splitlines() if f"/{prefix}-run/" in line]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if f"/{prefix}-run" in argv and cmdline.parent.name != str(os.getpid()):
            found.append(f"process {cmdline.parent.name}: {argv[:200]}")
    return found


@contextlib.contextmanager
def booted_lab(tmp_path_factory: pytest.TempPathFactory, letter: str, section: str,
               *tools: str) -> Iterator[Rehearsal]:
    """A ``Rehearsal`` whose machines are taken down afterwards, also on failure, with its figures
    recorded under ``section``; nothing may be left behind. ``letter`` tells its namespaces apart."""
    expect_marker("rehearsal", "booted systems")
    require_root()
    for tool in ("systemd-nspawn", "debootstrap", "nsenter", "losetup", "ssh", "ip", *tools):
        require_tool(tool)
    prefix = f"lk{letter}{os.getpid() % 10000}"
    lab = Rehearsal(run_dir=tmp_path_factory.mktemp(f"{prefix}-run"), prefix=prefix)
    try:
        yield lab
    finally:
        print(lab.report())
        lab.close()
        for line in lab.figures:
            figure(section, line)
        assert not leftovers(prefix), f"the rehearsal left {leftovers(prefix)}"
        # Its own only (their backing files are in its directory): other labs may be up beside it.
        loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout.splitlines()
        assert not [line for line in loops if str(lab.run_dir) in line], "loop devices left"


@contextlib.contextmanager
def deployed_lab(tmp_path_factory: pytest.TempPathFactory, letter: str, section: str) -> Iterator[Rehearsal]:
    """A ``booted_lab`` with the example stack deployed from nothing, as the first ``pulumi up``."""
    with booted_lab(tmp_path_factory, letter, section) as lab:
        t0 = time.monotonic()
        lab.program()
        lab.boot()
        lab.run_steps()
        figure(section, f"from nothing (cached template) to a ready stack: {time.monotonic() - t0:.1f} s")
        yield lab


