"""What a client of the VIP sees while the stack changes: the rehearsal's hitless checks.

- **Roll**: a client pushes one line through the VIP every 100 ms, each on a new TLS connection and
  without retries (``traffic.py steady``), while the Loki nodes restart as their apply steps order
  them (every node's server certificate renewed: Loki reads it only at start). Afterwards every
  accepted line must read back, and the Loki apply steps tell each node's stop and ready times and
  where the VIP went.
- **Limits**: a change of the limits Loki reloads re-runs only the runtime-config steps, every node
  has reloaded within one reload period, and no Loki restarted.
- **Load**: through the VIP on one kept-open connection (``traffic.py load``) below the configured
  rate, past the burst: no 429; above it, Loki refuses with exactly the configured rate as its
  limit (not a share of it), which also shows the new rate took without a restart.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from components.step_names import host_step
from offline.rehearsal.steps import Step
from stack.program import LOKI_CLUSTER

STOPPED = re.compile(r"^loki\.service stopped on (\S+) in ([0-9.]+) s$", re.MULTILINE)
READY = re.compile(r"^loki\.service ready on (\S+) ([0-9.]+) s after its start$", re.MULTILINE)
HANDED = re.compile(r"^VIP handed over from (\S+) to (\S+) in ([0-9.]+) s$", re.MULTILINE)
RELOADED = re.compile(r"^runtime config on (\S+): Loki reloaded it ([0-9.]+) s after it was placed", re.MULTILINE)
LIMIT = re.compile(r"limit: (\d+) bytes/sec")


@dataclass
class RollReport:
    order: list[str] = field(default_factory=list)
    """The Loki apply steps, in the order they ran."""
    stopped: dict[str, float] = field(default_factory=dict)
    """Host -> seconds from ``systemctl stop`` to its end."""
    ready: dict[str, float] = field(default_factory=dict)
    """Host -> seconds from ``systemctl start`` to /ready."""
    handovers: list[tuple[str, str, float]] = field(default_factory=list)
    """(from, to, seconds) of each VIP move."""
    seconds: float = 0.0
    """From the first Loki apply's start to the last one's end."""
    overlaps: list[str] = field(default_factory=list)


def roll_report(steps: list[Step], nodes: list[str]) -> RollReport:
    """What the Loki apply steps of a roll said, in the order they ran."""
    names = {host_step(LOKI_CLUSTER, n, "apply") for n in nodes}
    applies = sorted((s for s in steps if s.name in names), key=lambda s: s.started)
    report = RollReport(order=[s.name for s in applies])
    for step in applies:
        report.stopped |= {host.split(".")[0]: float(s) for host, s in STOPPED.findall(step.output)}
        report.ready |= {host.split(".")[0]: float(s) for host, s in READY.findall(step.output)}
        report.handovers += [(a, b, float(s)) for a, b, s in HANDED.findall(step.output)]
    if applies:
        report.seconds = max(s.started + s.seconds for s in applies) - applies[0].started
    for first, second in itertools.pairwise(applies):
        if second.started < first.started + first.seconds:
            report.overlaps.append(f"{second.name} began before {first.name} ended")
    return report


def reload_seconds(steps: list[Step]) -> dict[str, float]:
    """Host -> seconds from placing the runtime config to Loki having reloaded it."""
    found: dict[str, float] = {}
    for step in steps:
        found |= {host.split(".")[0]: float(s) for host, s in RELOADED.findall(step.output)}
    return found


def refused_limit(message: str) -> int | None:
    """The bytes/sec limit a 429 from Loki names."""
    match = LIMIT.search(message)
    return int(match.group(1)) if match else None
