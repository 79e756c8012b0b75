"""The upgrade: a stack an earlier version of this repository deployed (``earlier.py``), taken to this
version by this version's steps, in the order ``pulumi up`` runs them, while both clients of the VIP
push (``clients.py``) and every Loki node's gateway port and the VIP's are watched (``port_watch.py``).

The problems: a step not ok, a failed push (either client), an accepted line that does not read
back, a port that accepted no connection at any moment (but for the moment nginx takes a node's
port from the earlier version's Loki, which it can bind only once that Loki has exited), a line
pushed before the upgrade that is gone after it, and anything a converged Loki node must not have
(``converge.leftovers``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from components.loki_config import HTTP_PORT
from offline.rehearsal.checks import marker
from offline.rehearsal.converge import leftovers, loki_machines, wait_settled
from offline.rehearsal.port_watch import PortWatch
from offline.rehearsal.settings import LOKI_ADDRESSES, VIP
from offline.rehearsal.steps import Step, StepStatus

NGINX_BIND_S = 1.0
"""The longest a Loki node's port may refuse connections while its earlier version's Loki exits and
nginx binds the port (measured: 0.2-0.4 s)."""

if TYPE_CHECKING:
    from offline.rehearsal.run import Rehearsal


@dataclass
class UpgradeReport:
    commit: str
    steps: list[Step] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def upgrade(lab: Rehearsal, commit: str) -> UpgradeReport:
    """``lab`` runs ``commit``'s stack (deployed with ``deploy_earlier``, ``boot``, ``run_steps``)."""
    report = UpgradeReport(commit=commit)
    machines = loki_machines(lab)
    wait_settled(machines)
    lab.program()  # this version's: the clients, the operator's files and the checks use its outputs
    operator = lab.operator()
    before = marker()
    if (status := operator.push(before)) != "204":
        report.problems.append(f"a push through the VIP of {commit}'s stack answered {status}")
    label = f"upgrade from {commit[:7]}"
    t0 = time.monotonic()
    with PortWatch(lab.net.ns("runner"), HTTP_PORT, {**LOKI_ADDRESSES, "the VIP": VIP}, lab.run_dir,
                   label) as ports, lab.vip_clients(label) as clients:
        report.steps, problems = lab.upgrade()
    report.seconds = time.monotonic() - t0
    (lab.run_dir / f"{label.replace(' ', '-')}-steps.log").write_text("".join(
        f"== {s.name} on {s.host}: {s.status} ({s.seconds:.1f} s)\n{s.output}\n" for s in report.steps))
    report.problems += problems + clients.problems
    for name, windows in ports.dead.items():
        # Where an earlier version's Loki held the gateway's port, nginx can bind it only once that
        # Loki has exited: one refusal shorter than NGINX_BIND_S per node. The VIP's port: never.
        allowed = 1 if name in LOKI_ADDRESSES else 0
        for began, end, why in windows[allowed:] + [w for w in windows[:allowed] if w[1] - w[0] >= NGINX_BIND_S
                                                    or w[2] != "ConnectionRefusedError"]:
            report.problems.append(f"{label}: port {HTTP_PORT} on {name} accepted no connection for "
                                   f"{end - began:.1f} s ({why})")
    report.problems += [p for m in machines.values() for p in leftovers(m)]
    read = lab.read_back(lab.operator(), before)
    if before not in read:
        report.problems.append(f"the line pushed before the upgrade from {commit[:7]} is gone: {read[-800:]}")
    ran = sorted(s.name for s in report.steps if s.status == StepStatus.OK)
    lab.figures.append(f"{label} ({len(ran)} steps ran, in {report.seconds:.1f} s): "
                       f"{', '.join(n for n in ran if n.startswith('loki-loki-') and n.endswith('-apply'))}")
    lab.figures += [f"  {line}" for line in clients.figures()]
    lab.figures.append(f"  {ports.figure()}")
    return report

