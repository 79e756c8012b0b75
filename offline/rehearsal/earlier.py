"""An earlier version of the stack, as that version's own code built it: where the rehearsal's
upgrade starts.

``export(commit, overrides, work)`` takes the commit's files out of this repository (``git archive``,
into ``work``), runs *its* program with *its* offline engine in a separate interpreter (the same
dependencies: ``requirements.txt`` has not changed since the first commit the rehearsal upgrades
from) and returns what the rehearsal needs to deploy it: every registration (the steps, the VMs'
user-data), the stack outputs, and the manifest that version's plan writes, which the upgrade
compares with this version's to find the steps ``pulumi up`` would run.

What a real upgrade keeps, this one keeps too: *this* version's fake engine runs the earlier program
(the earlier engine module is replaced before that program imports it). The engine derives every
key, password and certificate from the resource's name and inputs, so a resource whose inputs did
not change has the same value before and after, as Pulumi's state keeps it. With the earlier
version's own engine it would not: the engine has been corrected since (a certificate subject's
attribute order, for one), and the upgrade would look like a new CA that no real upgrade makes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offline.engine import Engine, FakeCloud, RecordingMonitor, Registration, Resolved, RunResult
from stack.schema import PROJECT_DIR

BEFORE_GATEWAY = "caae4ed"
"""The last commit before the Loki gateway (337e3bd): Loki itself on port 3100, no host-key step."""
BEFORE_CONVERGE = "2395182"
"""The last commit before the roll checked the ring and steps converged from what runs (#22)."""
VERSIONS = {BEFORE_GATEWAY: "the last version before the gateway",
            BEFORE_CONVERGE: "the last version before converging from any state"}
UPGRADE_FROM = "LOKISTACK_UPGRADE_FROM"
"""Which of ``VERSIONS`` the upgrade rehearsal starts from: commits, comma-separated, or ``all``."""
DEFAULT_UPGRADE_FROM = tuple(VERSIONS)
"""Every earlier version: both are deployed from nothing at the same time, then upgraded one after
the other (402 s for both, 238 s for the nearest alone; CI must stay under 35 minutes, and has room
since ``make test`` runs the tests without booted systems on two workers)."""


def upgrade_sources(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The earlier commits to upgrade from (``UPGRADE_FROM``; ``DEFAULT_UPGRADE_FROM`` when unset)."""
    value = environ.get(UPGRADE_FROM, "").strip()
    if not value:
        return list(DEFAULT_UPGRADE_FROM)
    if value == "all":
        return list(VERSIONS)
    chosen = [c.strip() for c in value.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in VERSIONS]
    if unknown or not chosen:
        raise ValueError(f"{UPGRADE_FROM}={value!r}: {unknown or 'nothing'} is not an earlier version the rehearsal "
                         f"knows; use some of {', '.join(VERSIONS)} (comma-separated) or all, e.g. "
                         f"{UPGRADE_FROM}={','.join(VERSIONS)}")
    return chosen

EXPORT = r"""
import dataclasses, importlib.util, json, sys
# This version's fake engine stands in for Pulumi's state on both sides of the upgrade (see below).
spec = importlib.util.spec_from_file_location("engine_now", sys.argv[3])
engine = importlib.util.module_from_spec(spec)
sys.modules["engine_now"] = sys.modules["offline.engine"] = sys.modules["stack.engine"] = engine
spec.loader.exec_module(engine)
try:
    from offline import plan
except ImportError:  # before the offline package (the plan was stack.plan)
    from stack import plan
overrides = json.loads(sys.argv[1])
result = plan.run_program("homelab", plan.read_stack_config("homelab", overrides=overrides))
json.dump({
    "registrations": [dataclasses.asdict(r) for r in result.engine.registrations],
    "outputs": {k: {"value": v.value, "known": v.known, "secret": v.secret}
                for k, v in result.resolved.items() if k.startswith("output:")},
    "manifest": plan.build_manifest(result, stack="homelab"),
}, open(sys.argv[2], "w"))
"""


class EarlierVersionError(RuntimeError):
    """The commit is not in this repository, or its program did not run."""


@dataclass
class Earlier:
    commit: str
    """The full hash."""
    result: RunResult
    """The registrations and outputs, as this version's rehearsal reads a run of its own program."""
    manifest: dict[str, Any]


def full_hash(commit: str) -> str:
    proc = subprocess.run(["git", "-C", str(PROJECT_DIR), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise EarlierVersionError(
            f"commit {commit} is not in the repository at {PROJECT_DIR}: the upgrade rehearsal deploys earlier "
            f"versions from this repository's history (a shallow clone has none: git fetch --unshallow)")
    return proc.stdout.strip()


def checkout(commit: str, dest: Path) -> Path:
    """The commit's files in ``dest`` (no .git: nothing there can change this repository)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest.with_suffix(".tar")
    with open(archive, "wb") as out:
        subprocess.run(["git", "-C", str(PROJECT_DIR), "archive", "--format=tar", commit], stdout=out, check=True)
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python before 3.11.4 (Debian 12's 3.11.2): the archive git made of this repository, just now
            tar.extractall(dest)  # noqa: S202
    archive.unlink()
    return dest


def export(commit: str, overrides: dict[str, Any], work: Path) -> Earlier:
    full = full_hash(commit)
    tree = checkout(full, work / f"version-{full[:12]}")
    out = work / f"version-{full[:12]}.json"
    engine = PROJECT_DIR / "offline" / "engine.py"
    proc = subprocess.run([sys.executable, "-c", EXPORT, json.dumps(overrides), str(out), str(engine)], cwd=tree,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"},
                          capture_output=True, text=True, check=False, timeout=600)
    if proc.returncode != 0:
        raise EarlierVersionError(f"the program of {commit} did not run: {proc.stderr[-3000:]}")
    out.chmod(0o600)  # the registrations hold the stack's secrets, as a state file does
    data = json.loads(out.read_text())
    registrations = [Registration(**{**r, "dependencies": tuple(r["dependencies"]),
                                     "ignore_changes": tuple(r["ignore_changes"])}) for r in data["registrations"]]
    cloud = FakeCloud()
    monitor = RecordingMonitor(cloud)
    monitor.registrations = registrations
    result = RunResult(engine=Engine(cloud=cloud, monitor=monitor), returned=None,
                       resolved={k: Resolved(**v) for k, v in data["outputs"].items()})
    return Earlier(commit=full, result=result, manifest=data["manifest"])
