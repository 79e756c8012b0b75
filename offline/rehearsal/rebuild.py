"""A Loki VM lost with its disks and created again by the program (#24), rehearsed while both
clients push through the VIP.

The loss: the machine stops at once (no unit stops, Loki flushes nothing) and its disks are
deleted. What the operator does then (docs/runbook): ``pulumi refresh`` drops the VM from the
state, ``pulumi up`` creates it again with the same settings and the same cloud-init snippet;
Proxmox gives its NIC another MAC (and may give it the same id). That run's diff names exactly the
new VM's steps, its host-key probe first (``components/proxmox_vm.py``); the rehearsal runs those
steps on a new machine (a fresh disk from the template, an empty data disk, the new MAC), in the
program's order.

The ring: Loki's ingester ID is the host name, so the new node finds its old entry (unhealthy
since the loss) and takes it over with its tokens (Loki 3.7.6, dskit ``Lifecycler.initRing``:
"existing instance found in ring"); nothing lingers and nothing has to be forgotten, so
``ingester.autoforget_unhealthy`` stays off (it would also forget a node that is only slow to come
back). While it was gone, writes went on with two of three replicas (quorum); once it is ACTIVE
again it takes its share of new streams, so replication is back to three for what comes next.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from components.loki import UNIT as LOKI_UNIT
from components.loki_config import LOKI_LOCAL_PORT
from offline.engine import PROBE_SUFFIX
from offline.rehearsal.checks import loki_metrics, metric_sum, vip_journal, vip_masters, wait_for_one_holder
from offline.rehearsal.converge import wait_loki_ready
from offline.rehearsal.life_events import back_problems, settled_below_holder
from offline.rehearsal.phases import Phase, needs
from offline.rehearsal.settings import LOKI_ADDRESSES, VIP
from offline.rehearsal.steps import REMOTE
from stack.certificates import CA_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE

if TYPE_CHECKING:
    from offline.rehearsal.machines import Machine
    from offline.rehearsal.run import Rehearsal

TAKEN_OVER = "existing instance found in ring"
"""What dskit's lifecycler logs when a starting ingester finds its own entry in the ring."""
STREAMS_TIMEOUT_S = 30
"""How long after the rejoin the new node may take to hold a stream of the clients' pushes."""


def ring_shards(machine: Machine) -> list[dict[str, str]]:
    """Every ingester in the node's view of the ring: its id, address and state."""
    proc = machine.exec(["curl", "-fsS", "--max-time", "5", "-H", "Accept: application/json", "--cacert", CA_FILE,
                         "--cert", SERVER_CERT_FILE, "--key", SERVER_KEY_FILE,
                         f"https://127.0.0.1:{LOKI_LOCAL_PORT}/ring"])
    if proc.returncode != 0:
        return []
    return [{"id": str(s.get("id", "")), "address": str(s.get("address", "")), "state": str(s.get("state", ""))}
            for s in json.loads(proc.stdout).get("shards") or []]


def memory_streams(machine: Machine) -> float:
    """``loki_ingester_memory_streams`` of the node's ingester (every tenant)."""
    return metric_sum(loki_metrics(machine) or "", "loki_ingester_memory_streams")


@needs(Phase.DEPLOYED)
def node_rebuilt(lab: Rehearsal) -> list[str]:
    problems: list[str] = []
    machines, holder, node = settled_below_holder(lab)
    lost = machines[node]
    address = LOKI_ADDRESSES[node]
    with lab.vip_clients("node rebuilt") as clients:
        time.sleep(2)
        t0, began = time.monotonic(), time.time()
        lost.poweroff(at_once=True)
        lost.teardown()
        del lab.machines[node]
        # Its disks (the root overlay, the data disk image) are gone for the new machine; kept aside
        # for a look at the old one's journal.
        (lab.run_dir / node).rename(lab.run_dir / f"{node}-lost-{lab.rebuilt.get(node, 0) + 1}")
        lab.save_state()
        # pulumi refresh (the VM is gone from the state), then pulumi up: Proxmox creates it again.
        before = lab.manifest()
        lab.rebuilt[node] = lab.rebuilt.get(node, 0) + 1
        result = lab.program(**lab.settings)
        plan = next(p for p in lab.vm_plans() if p.name == node)
        machine = lab.add_machine(plan, lab.net.replace_machine(node, plan.mac))
        machine.start()
        lab.save_state()
        created = time.monotonic() - t0
        steps, run_problems = lab.run_changed(before, result)
        problems += run_problems
        ran = {s.name for s in steps}
        on_it = {r.name for r in result.engine.registrations
                 if r.type == REMOTE and r.plain_inputs["connection"]["host"] == address}
        expected = on_it | {f"{node}{PROBE_SUFFIX}"}
        if ran != expected:
            problems.append(f"pulumi up after {node} was created anew would run {sorted(ran)}: missing "
                            f"{sorted(expected - ran)}, not its own {sorted(ran - expected)}")
        stepped = time.monotonic() - t0
        ready = wait_loki_ready(machine)
        back, ringed = back_problems(machine)
        problems += back
        journal = machine.exec(["journalctl", "-b", "-u", LOKI_UNIT, "-o", "cat", "--no-pager"]).stdout
        if TAKEN_OVER not in journal:
            problems.append(f"{node}'s new Loki did not take over its entry in the ring ({TAKEN_OVER!r} not logged)")
        shards = {m: ring_shards(other) for m, other in lab.machines.items() if m in LOKI_ADDRESSES}
        for viewer, seen in shards.items():
            if sorted(s["id"] for s in seen) != sorted(LOKI_ADDRESSES) or {s["state"] for s in seen} != {"ACTIVE"}:
                problems.append(f"{viewer}'s ring after {node} came back: {seen} (expected each node once, ACTIVE)")
        deadline = time.monotonic() + STREAMS_TIMEOUT_S
        while (streams := memory_streams(machine)) <= 0 and time.monotonic() < deadline:
            time.sleep(1)
        if streams <= 0:
            problems.append(f"{node}'s new ingester holds no stream {STREAMS_TIMEOUT_S} s after it rejoined: it takes "
                            "no share of the writes, so they have fewer replicas than configured")
        time.sleep(3)
    after = wait_for_one_holder(lab.machines, VIP)
    moves = vip_masters(lab.machines, began)
    if after != holder or moves:
        problems.append(f"the VIP moved while {node} was lost and created again: from {holder}, taken by "
                        f"{moves}, now on {after}; keepalived:\n{vip_journal(lab.machines, began)}")
    problems += clients.problems
    lab.figures.append(
        f"{node} lost with its disks and created anew: new machine booting {created:.1f} s after the loss, its "
        f"{len(steps)} steps done {stepped:.1f} s after it, Loki ready {ready:.1f} s later, a full ring "
        f"{ringed:.1f} s after that, {streams:.0f} streams in its ingester; the VIP stayed on {after}")
    lab.figures += [f"  {line}" for line in clients.figures()]
    return problems
