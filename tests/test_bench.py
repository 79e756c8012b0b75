"""make bench's floor (bench/sdk_floor.py) registers exactly the resource graph of the plan it is
compared with: every resource of the example stack's manifest, with its parent and dependencies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stack.schema import PROJECT_DIR


def test_the_sdk_floor_registers_every_resource_of_the_plans_manifest(tmp_path: Path):
    subprocess.run([sys.executable, "-m", "offline", "plan", "--stack", "homelab", "--out", str(tmp_path / "plan")],
                   cwd=PROJECT_DIR, check=True, capture_output=True, timeout=120)
    manifest = tmp_path / "plan" / "manifest.json"
    proc = subprocess.run([sys.executable, str(PROJECT_DIR / "bench" / "sdk_floor.py"), str(manifest)],
                          cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"bench/sdk_floor.py did not register the manifest's graph: {proc.stderr[-2000:]}"


def test_the_imports_alone_run_and_register_nothing():
    proc = subprocess.run([sys.executable, str(PROJECT_DIR / "bench" / "sdk_floor.py"), "--imports-only"],
                          cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout == proc.stderr == "", (
        f"bench/sdk_floor.py --imports-only must only import the program's packages: {proc}")
