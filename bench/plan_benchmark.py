"""Benchmark: the offline plan's wall time next to a floor that means something.

    .venv/bin/python bench/plan_benchmark.py [--runs 3]

Every case runs `python -m offline plan` in a fresh interpreter (best of --runs), then
`bench/sdk_floor.py` on the manifest it wrote: the same resource graph (types, names, parents,
dependencies) registered with the bare Pulumi SDK under mocks, after the same imports, with none of
the program's logic. The difference is what the program itself costs. Prints the figures only: no
verdict (the numbers depend on the machine). Not a test.
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
SDK_FLOOR = PROJECT / "bench" / "sdk_floor.py"


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


def plan(runs: int, path: Path, out: Path) -> tuple[float, float, int]:
    """The plan's time, the SDK floor's for the graph it made, and the graph's size."""
    command = [sys.executable, "-m", "offline", "plan", "--stack-file", str(path), "--out", str(out)]
    seconds = best_of(runs, command)
    floor = best_of(runs, [sys.executable, str(SDK_FLOOR), str(out / "manifest.json")])
    resources = len(json.loads((out / "manifest.json").read_text())["resources"])
    return seconds, floor, resources


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    imports = best_of(args.runs, [sys.executable, str(SDK_FLOOR), "--imports-only"])
    rows: list[tuple[str, int, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cases = [("example stack (3 Loki nodes)", PROJECT / "Pulumi.homelab.yaml")]
        cases += [(f"{n} Loki nodes", stack_file(work, n)) for n in (10, 30)]
        for label, path in cases:
            seconds, floor, resources = plan(args.runs, path, work / f"out-{len(rows)}")
            rows.append((label, resources, seconds, floor))
    print(f"interpreter start and imports alone: {imports:.2f} s; every figure is the best of {args.runs}\n")
    print("| plan of | resources | plan | SDK floor, same graph | the program's own | ms per resource (own) |")
    print("|---|---|---|---|---|---|")
    for label, resources, seconds, floor in rows:
        print(f"| {label} | {resources} | {seconds:.2f} s | {floor:.2f} s | {seconds - floor:.2f} s | "
              f"{(seconds - floor) / resources * 1000:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
