"""Benchmark: the offline plan's wall time next to the bare import time of the packages.

    .venv/bin/python bench/plan_benchmark.py [--runs 3]

Every case runs `python -m offline plan` in a fresh interpreter (best of --runs), so each number
includes interpreter start and imports, like the import floor it is compared with. Prints a table
(the README's) and the two goals of issue 8. Not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parent.parent
IMPORTS = ("import pulumi, pulumi_proxmoxve, pulumi_tls, pulumi_command, pulumi_minio, pulumi_random, "
           "pulumiverse_grafana, pulumiverse_grafana.oss, cryptography.x509, yaml, jinja2")


def best_of(runs: int, command: list[str]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, cwd=PROJECT, check=True, capture_output=True, timeout=600)
        times.append(time.perf_counter() - start)
    return min(times)


def stack_file(directory: Path, nodes: int) -> Path:
    """The example stack with ``nodes`` Loki nodes (addresses from .101 up)."""
    doc = yaml.safe_load((PROJECT / "Pulumi.homelab.yaml").read_text())
    doc["config"]["loki-stack:lokiNodes"] = [f"loki-{i:02}" for i in range(1, nodes + 1)]
    doc["config"]["loki-stack:lokiAddresses"] = [f"192.168.50.{100 + i}" for i in range(1, nodes + 1)]
    path = directory / f"Pulumi.bench{nodes}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def plan(runs: int, path: Path, out: Path) -> tuple[float, int]:
    command = [sys.executable, "-m", "offline", "plan", "--stack-file", str(path), "--out", str(out)]
    seconds = best_of(runs, command)
    resources = len(json.loads((out / "manifest.json").read_text())["resources"])
    return seconds, resources


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    floor = best_of(args.runs, [sys.executable, "-c", IMPORTS])
    rows: list[tuple[str, int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cases = [("example stack (3 Loki nodes)", PROJECT / "Pulumi.homelab.yaml")]
        cases += [(f"{n} Loki nodes", stack_file(work, n)) for n in (3, 10, 30)]
        for label, path in cases:
            seconds, resources = plan(args.runs, path, work / f"out-{len(rows)}")
            rows.append((label, resources, seconds))
    print(f"import floor (python -c '<all packages>'): {floor:.2f} s, best of {args.runs}\n")
    print("| plan of | resources | wall time | × import floor | ms per resource above the floor |")
    print("|---|---|---|---|---|")
    for label, resources, seconds in rows:
        print(f"| {label} | {resources} | {seconds:.2f} s | {seconds / floor:.1f}× | "
              f"{(seconds - floor) / resources * 1000:.1f} |")
    example, three, thirty = rows[0][2], rows[1][2], rows[3][2]
    print(f"\ngoal: example plan within 1.5× the import floor: {example / floor:.1f}× "
          f"({'met' if example <= 1.5 * floor else 'not met'})")
    print(f"goal: 30 nodes within 2× of 3 nodes: {thirty / three:.1f}× ({'met' if thirty <= 2 * three else 'not met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
