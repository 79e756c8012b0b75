"""Scaling out 3 -> 4 and in 4 -> 3 through the settings (#24), rehearsed while both clients push
through the VIP.

Out: ``loki-04`` is added to ``lokiNodes`` and ``lokiAddresses``; ``pulumi up`` creates its VM and
runs exactly the steps the plan's diff names, in order: the new node's steps (its host-key probe
first, its keepalived in FAULT until its Loki is ready, its Loki only once every node's firewall
lets it in) and the other nodes' firewall, gateway and keepalived steps and their Loki applies,
which restart no Loki (memberlist joins through the first three nodes: ``loki_config.JOIN_SEEDS``).

In, first run: ``loki-04`` named in ``lokiRetiring``: its retirement runs before any step on the
other nodes (``components/loki_retire.py``): it leaves the VIP, its Loki stops (flushing, leaving the
ring), everything is masked or disabled; then the others drop it. The retirement is killed while
Loki stops, and the next run finishes it and runs the rest; once more, it finds nothing to do.
Second run: ``loki-04`` out of both lists: nothing runs on any host but the other nodes' lists of
the client certificates their gateways take (loki-04's agent certificate goes from them); Pulumi
deletes the VM (here: the machine powers off at once and is gone).

Checked each time: exactly the diff's steps ran and none failed, no Loki restarted on the nodes
that stay, every node's ring holds each node once and ACTIVE (and nothing else), memberlist counts
the nodes, the VRRP priorities are what the settings give, the VIP stayed on its node, and neither
client saw a failed push or lost a line.
"""

from __future__ import annotations

import re
import time
from functools import partial
from typing import TYPE_CHECKING

from components.loki import UNIT as LOKI_UNIT
from components.loki_gateway import UNIT as GATEWAY_UNIT
from components.step_names import host_step
from components.vip import UNIT as KEEPALIVED_UNIT
from components.vrrp_priorities import priorities
from offline.rehearsal.checks import loki_metrics, vip_journal, vip_masters, wait_for_one_holder
from offline.rehearsal.converge import again, kill_session, loki_machines, wait_loki_ready, wait_settled
from offline.rehearsal.life_events import vrrp_priority
from offline.rehearsal.phases import Phase, needs
from offline.rehearsal.rebuild import memory_streams, ring_shards
from offline.rehearsal.settings import LOKI_ADDRESSES, VIP
from offline.rehearsal.steps import DONE, Interrupt, StepStatus
from stack.program import LOKI_CLUSTER, LOKI_RETIRING

if TYPE_CHECKING:
    from offline.rehearsal.machines import Machine
    from offline.rehearsal.run import Rehearsal
    from offline.rehearsal.steps import Step

ADDED = "loki-04"
ADDED_ADDRESS = "198.18.0.14"
RING_TIMEOUT_S = 90
"""How long the nodes' views of the ring and of memberlist may take to agree after a change."""
STREAMS_TIMEOUT_S = 30
SPREAD_STREAMS = 32
"""Streams pushed at once after the new node joined: with a replication factor of 3 on four nodes,
the chance that none lands on the new one is about (1/4)^32."""
KILLED_AT = "stopping Loki"
LISTS = "gateway-certificates-"
"""The steps of the gateways' lists of the certificates they take (components/gateway_certificates.py)."""
"""Where the retirement's SSH session is killed (``templates/loki-retire.sh``): while Loki stops."""
LEFT = "instance removed from the KV store"
"""What dskit's lifecycler logs when a stopping ingester has taken itself out of the ring."""


def members(machine: Machine) -> int:
    """How many members the node's memberlist counts alive (dskit's ``cluster_members_count``)."""
    found = re.search(r"^\w*memberlist_client_cluster_members_count (\S+)$", loki_metrics(machine) or "", re.MULTILINE)
    return int(float(found[1])) if found else -1


def cluster_problems(machines: dict[str, Machine], nodes: list[str]) -> tuple[list[str], float]:
    """Waits until every node of ``nodes`` sees exactly ``nodes`` in its ring, each ACTIVE, and
    memberlist counts as many members; returns what still differs after ``RING_TIMEOUT_S``, and
    the seconds it took."""
    t0 = time.monotonic()
    while True:
        problems = []
        for viewer in nodes:
            seen = ring_shards(machines[viewer])
            if sorted(s["id"] for s in seen) != sorted(nodes) or {s["state"] for s in seen} != {"ACTIVE"}:
                problems.append(f"{viewer}'s ring: {[(s['id'], s['state']) for s in seen]} (expected {nodes}, "
                                "each once and ACTIVE)")
            if (count := members(machines[viewer])) != len(nodes):
                problems.append(f"{viewer}'s memberlist counts {count} members, not {len(nodes)}")
        if not problems or time.monotonic() - t0 > RING_TIMEOUT_S:
            return problems, time.monotonic() - t0
        time.sleep(2)


def priority_problems(machines: dict[str, Machine], nodes: list[str]) -> list[str]:
    expected = priorities(nodes)
    found = {n: vrrp_priority(machines[n]) for n in nodes}
    return [] if found == expected else [f"VRRP priorities {found}, the settings give {expected}"]


def restart_problems(steps: list[Step], node: str, started: dict[str, str], after: dict[str, str]) -> list[str]:
    """No Loki of the nodes that stay restarted (their configs did not change)."""
    restarted = sorted(n for n in started if after.get(n) != started[n])
    if restarted:
        return [f"scaling {node} restarted Loki on {restarted} ({len(steps)} steps ran)"]
    return []


@needs(Phase.DEPLOYED)
def scale_out_and_in(lab: Rehearsal) -> list[str]:
    problems: list[str] = []
    three = list(LOKI_ADDRESSES)
    four = [*three, ADDED]
    addresses = [*LOKI_ADDRESSES.values(), ADDED_ADDRESS]
    holder = wait_settled(loki_machines(lab))
    with lab.vip_clients("scaling") as clients:
        time.sleep(2)
        began = time.time()

        # Out: 3 -> 4.
        t0 = time.monotonic()
        starts = lab.loki_starts()
        before = lab.manifest()
        lab.settings |= {"lokiNodes": four, "lokiAddresses": addresses}
        result = lab.program(**lab.settings)
        plan = next(p for p in lab.vm_plans() if p.name == ADDED)
        machine = lab.add_machine(plan, lab.net.add_machine(ADDED, plan.mac))
        machine.start()
        lab.save_state()
        steps, run_problems = lab.run_changed(before, result)
        problems += run_problems
        ran = {s.name for s in steps}
        added = host_step(LOKI_CLUSTER, ADDED, "")
        if not any(s.startswith(added) for s in ran) or not any("loki-01" in s for s in ran):
            problems.append(f"scaling out ran {sorted(ran)}: not the new node's steps and the others' changes")
        problems += restart_problems(steps, ADDED, starts, lab.loki_starts())
        out_s = time.monotonic() - t0
        ready = wait_loki_ready(machine)
        machines = {n: lab.machines[n] for n in four}
        cluster, ringed = cluster_problems(machines, four)
        problems += [f"after scaling out: {p}" for p in cluster]
        problems += [f"after scaling out: {p}" for p in priority_problems(machines, four)]
        # The clients push two streams, and each lands on three of the four ingesters: loki-04 holds
        # neither about one time in sixteen (it did so in a rehearsal). Many streams at once reach it.
        if (status := lab.operator().push(f"{ADDED} joined", streams=SPREAD_STREAMS)) != "204":
            problems.append(f"a push of {SPREAD_STREAMS} streams through the VIP after {ADDED} joined answered "
                            f"{status}")
        deadline = time.monotonic() + STREAMS_TIMEOUT_S
        while (streams := memory_streams(machine)) <= 0 and time.monotonic() < deadline:
            time.sleep(1)
        if streams <= 0:
            problems.append(f"{ADDED}'s ingester holds no stream {STREAMS_TIMEOUT_S} s after it joined")
        lab.figures.append(f"scale out to 4: {len(steps)} steps in {out_s:.1f} s (new machine included), no Loki "
                           f"restarted, {ADDED} ready {ready:.1f} s later, rings and memberlist agree "
                           f"{ringed:.1f} s after that, {streams:.0f} streams in its ingester")

        # In, first run: loki-04 retires.
        t0 = time.monotonic()
        starts = lab.loki_starts()
        before = lab.manifest()
        lab.settings |= {"lokiRetiring": [ADDED]}
        # The retirement's SSH session dies while Loki stops (a network cut, a killed pulumi up): the
        # steps after it do not run, and the next run runs them all, the retirement again first.
        name = host_step(LOKI_RETIRING, ADDED, "retire")
        kill = Interrupt(KILLED_AT, partial(kill_session, lab, machine))
        steps, run_problems = lab.run_changed(before, lab.program(**lab.settings), {name: kill})
        problems += run_problems
        killed = next((s for s in steps if s.name == name), None)
        waited = [s.name for s in steps if s is not killed and s.status != StepStatus.SKIPPED]
        if killed is None or killed.status != StepStatus.KILLED or waited:
            problems.append(f"{name} was to be killed at {KILLED_AT!r} with every other step waiting: "
                            f"{killed.status if killed else 'not run'}; ran anyway: {waited}")
        finished = again(lab, steps)
        problems += [f"the run after the killed retirement: {s.name}: {s.status} {s.output[-600:]}"
                     for s in finished if s.status not in DONE]
        steps = finished
        problems += restart_problems(steps, ADDED, starts, lab.loki_starts())
        retire = next((s for s in steps if s.name == host_step(LOKI_RETIRING, ADDED, "retire")), None)
        if retire is None or retire.status != StepStatus.OK:
            problems.append(f"{ADDED}'s retirement: {retire.status if retire else 'did not run'} "
                            f"{retire.output[-800:] if retire else ''}")
        else:
            ended = (retire.started or 0) + retire.seconds
            early = [s.name for s in steps if s.host != ADDED_ADDRESS and (s.started or 0) < ended]
            if early:
                problems.append(f"steps on the other nodes started before {ADDED} had retired: {early}")
        for unit in (LOKI_UNIT, GATEWAY_UNIT, KEEPALIVED_UNIT):
            state = machine.exec(["systemctl", "is-enabled", unit]).stdout.strip()
            active = machine.exec(["systemctl", "is-active", unit]).stdout.strip()
            # loki.service's file is in /etc (Grafana's package puts it there): systemctl cannot mask it.
            if active != "inactive" or state not in ("masked", "disabled"):
                problems.append(f"{ADDED}: {unit} is {active} and {state} after its retirement (expected inactive, "
                                "and masked or disabled)")
        # Safe to run again (a run cut short, a later pulumi up with a changed connection): it finds
        # everything stopped and does nothing.
        rerun = again(lab, [retire], names={retire.name}) if retire is not None else []
        if (not rerun or rerun[0].status != StepStatus.OK
                or re.search(r"leaving the VIP|stopping Loki", rerun[0].output)):
            problems.append(f"{ADDED}'s retirement run again: "
                            f"{(rerun[0].status, rerun[0].output[-600:]) if rerun else 'not run'}")
        journal = machine.exec(["journalctl", "-u", LOKI_UNIT, "-o", "cat", "--no-pager", "-n", "400"]).stdout
        if not re.search(rf"{LEFT}.*ring=ingester", journal):
            problems.append(f"{ADDED}'s Loki did not log that it left the ingester ring ({LEFT!r}): {journal[-800:]}")
        in_s = time.monotonic() - t0
        machines = {n: lab.machines[n] for n in three}
        cluster, ringed = cluster_problems(machines, three)
        problems += [f"after {ADDED} retired: {p}" for p in cluster]
        problems += [f"after {ADDED} retired: {p}" for p in priority_problems(machines, three)]
        lab.figures.append(f"scale in, retirement: {len(steps)} steps in {in_s:.1f} s ({ADDED}'s retirement "
                           f"{retire.seconds if retire else float('nan'):.1f} s), no Loki restarted, rings and "
                           f"memberlist agree {ringed:.1f} s later")

        # In, second run: loki-04 out of the lists; Pulumi deletes the VM.
        before = lab.manifest()
        lab.settings |= {"lokiNodes": three, "lokiAddresses": list(LOKI_ADDRESSES.values()), "lokiRetiring": []}
        steps, run_problems = lab.run_changed(before, lab.program(**lab.settings))
        problems += run_problems
        # Only the gateways' lists of the certificates they take change: the retired node's go.
        others = [s.name for s in steps if not s.name.startswith(LISTS)]
        if others:
            problems.append(f"the run after {ADDED}'s retirement ran {others}: it must only delete, and drop "
                            f"{ADDED}'s certificates from the gateways' lists")
        problems += [f"{s.name}: {s.status} {s.output[-300:]}" for s in steps if s.status != StepStatus.OK]
        moves = vip_masters({ADDED: machine}, began)
        machine.poweroff(at_once=True)
        machine.teardown()
        del lab.machines[ADDED]
        lab.save_state()
        time.sleep(3)
        cluster, _ = cluster_problems(machines, three)
        problems += [f"after {ADDED}'s VM was deleted: {p}" for p in cluster]
    after = wait_for_one_holder(loki_machines(lab), VIP)
    moves += vip_masters(loki_machines(lab), began)
    if after != holder or moves:
        problems.append(f"the VIP moved while scaling: from {holder}, taken by {moves}, now on {after}; "
                        f"keepalived:\n{vip_journal(loki_machines(lab), began)}")
    problems += clients.problems
    lab.figures += [f"  {line}" for line in clients.figures()]
    return problems
