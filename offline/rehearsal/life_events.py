"""Life events of a deployed stack, rehearsed on its machines while both clients push through the
VIP (#24): what happens to a node after ``pulumi up``, not during it.

``data_disk_late``: a Loki node that does not hold the VIP is powered off and booted again with its
data disk missing (a storage that comes back late, a disk detached by mistake): Loki must not start
on the root filesystem, nor give up for good. Then the disk appears (its links, as udev makes
them): its mount and Loki start by themselves (``components/disk_arrival.py``), after the node's
firewall, the node rejoins the ring, and no push fails.

``holder_reboot``: the VIP holder is shut down as Proxmox's reboot does (an orderly shutdown) and
booted again with its disk: on the way down it hands the VIP over with a drain
(``components/vip_reboot.py``, ``lokistack-vip-leave.service``); it boots in FAULT and takes part
in VRRP once its Loki is ready, below the new holder, so that the VIP does not move again; every
unit returns by itself, the firewall before Loki, the node rejoins the ring, and no push fails.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING

from components import firewall, loki_gateway, vip
from components.disk_arrival import unit_names
from components.loki import UNIT as LOKI_UNIT
from components.loki_config import LOKI_LOCAL_PORT
from components.vip_handover import MAINTENANCE_FILE, YIELD_FILE
from components.vip_reboot import LEAVE_UNIT, REJOIN_UNIT
from offline.rehearsal.checks import unit_properties, vip_holders, wait_for_one_holder
from offline.rehearsal.converge import leftovers, loki_machines, wait_loki_ready, wait_settled
from offline.rehearsal.phases import Phase, needs
from offline.rehearsal.settings import LOKI_ADDRESSES, VIP
from stack.certificates import CA_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE

if TYPE_CHECKING:
    from offline.rehearsal.machines import Machine
    from offline.rehearsal.run import Rehearsal

DATA_DIR = "/var/lib/loki"
MOUNT_UNIT = "var-lib-loki.mount"
BOOT_TIMEOUT_S = 120
MISSING_HOLD_S = 8
"""How long the node is watched with its disk missing: Loki must stay down, not start and fail over and over."""
RING_TIMEOUT_S = 60
REJOIN_TIMEOUT_S = 60
"""Longest wait, once Loki is ready, for the rejoin unit to have ended (it waits for keepalived's rise)."""
SHUTDOWN_TIMEOUT_S = 180
"""Longest orderly shutdown: the holder's leave unit drains and hands the VIP over first (bounded at 115 s)."""
UNITS = (LOKI_UNIT, loki_gateway.UNIT, vip.UNIT, firewall.UNIT, LEAVE_UNIT)
"""What must run again on the node by itself, once its disk is there."""


def vrrp_priority(machine: Machine) -> int:
    conf = machine.exec(["cat", "/etc/keepalived/keepalived.conf"]).stdout
    found = re.search(r"^\s*priority\s+(\d+)", conf, re.MULTILINE)
    if found is None:
        raise AssertionError(f"{machine.name}: no VRRP priority in its keepalived.conf")
    return int(found[1])


def below_holder(machines: dict[str, Machine], holder: str) -> str:
    """The node of the lowest VRRP priority that does not hold the VIP: the one an event takes away
    when it is about what comes back (a lost holder is a failover first, rehearsed on its own)."""
    own = {n: vrrp_priority(m) for n, m in machines.items()}
    return min((n for n in machines if n != holder), key=lambda n: own[n])


def settled(lab: Rehearsal) -> tuple[dict[str, Machine], str]:
    """The Loki machines once the VIP has settled (``wait_settled``), and its holder."""
    machines = loki_machines(lab)
    return machines, wait_settled(machines)


def settled_below_holder(lab: Rehearsal) -> tuple[dict[str, Machine], str, str]:
    """``settled``, and the node an event takes away (``below_holder``)."""
    machines, holder = settled(lab)
    return machines, holder, below_holder(machines, holder)


def active_ring_members(machine: Machine) -> set[str]:
    """The addresses of the ACTIVE ingesters in the node's view of the ring."""
    proc = machine.exec(["curl", "-fsS", "--max-time", "5", "-H", "Accept: application/json", "--cacert", CA_FILE,
                         "--cert", SERVER_CERT_FILE, "--key", SERVER_KEY_FILE,
                         f"https://127.0.0.1:{LOKI_LOCAL_PORT}/ring"])
    if proc.returncode != 0:
        return set()
    shards = json.loads(proc.stdout).get("shards") or []
    return {str(s.get("address", "")).rsplit(":", 1)[0] for s in shards if s.get("state") == "ACTIVE"}


def started_at(machine: Machine, unit: str, what: str) -> int:
    """A unit's start, in microseconds of the machine's monotonic clock (0: not since boot)."""
    value = machine.exec(["systemctl", "show", "-p", what, "--value", unit]).stdout.strip()
    return int(value) if value.isdigit() else 0


def boot_again(machine: Machine, t0: float, *, disk_attached: bool = True) -> tuple[str, float]:
    """Boots ``machine`` (powered off) and waits until systemd has done its boot jobs; returns its
    state ("running", or "degraded" with a failed unit) and the seconds since ``t0``."""
    machine.start(disk_attached=disk_attached)
    while machine.pid1() is None:
        if time.monotonic() - t0 > BOOT_TIMEOUT_S:
            raise AssertionError(f"{machine.name} did not boot again within {BOOT_TIMEOUT_S} s")
        time.sleep(0.2)
    # Until its bus is up, systemctl answers nothing.
    state = ""
    while state not in ("running", "degraded"):
        if time.monotonic() - t0 > BOOT_TIMEOUT_S:
            raise AssertionError(f"{machine.name} did not finish booting within {BOOT_TIMEOUT_S} s "
                                 f"(systemd says {state!r})")
        state = machine.exec(["systemctl", "is-system-running", "--wait"], timeout=BOOT_TIMEOUT_S).stdout.strip()
        if state not in ("running", "degraded"):
            time.sleep(0.5)
    return state, time.monotonic() - t0


def back_problems(machine: Machine) -> tuple[list[str], float]:
    """Once a rebooted node's Loki is ready: its data disk mounted, every unit running again by
    itself, the firewall loaded before Loki started, the node back in VRRP (the rejoin unit ended
    well, no maintenance mark), nothing a converged node must not have, and every node ACTIVE in
    its ring. Returns the problems and the seconds until the ring was full."""
    problems: list[str] = []
    node = machine.name
    t0 = time.monotonic()
    if machine.exec(["systemctl", "is-active", MOUNT_UNIT]).stdout.strip() != "active":
        problems.append(f"{node}: {MOUNT_UNIT} is not active")
    down = [u for u in UNITS if machine.exec(["systemctl", "is-active", u]).stdout.strip() != "active"]
    if down:
        problems.append(f"{node}: not running again by itself: {down}")
    rules = started_at(machine, firewall.UNIT, "ActiveEnterTimestampMonotonic")
    loki = started_at(machine, LOKI_UNIT, "ExecMainStartTimestampMonotonic")
    if not rules or not loki or rules > loki:
        problems.append(f"{node}: the firewall ({rules} us) must be loaded before Loki starts ({loki} us)")
    deadline = time.monotonic() + REJOIN_TIMEOUT_S
    ended = {"ActiveState": "inactive", "Result": "success"}
    while (rejoin := unit_properties(machine, REJOIN_UNIT, *ended)) != ended:
        if time.monotonic() > deadline or rejoin.get("ActiveState") == "failed":
            journal = machine.exec(["journalctl", "-b", "-u", REJOIN_UNIT, "--no-pager", "-o", "cat"]).stdout
            problems.append(f"{node}: {REJOIN_UNIT} is {rejoin} {REJOIN_TIMEOUT_S} s after Loki was ready: "
                            f"{journal[-600:]}")
            break
        time.sleep(0.5)
    problems += leftovers(machine)
    deadline = time.monotonic() + RING_TIMEOUT_S
    while (members := active_ring_members(machine)) != set(LOKI_ADDRESSES.values()):
        if time.monotonic() > deadline:
            problems.append(f"{node}: its ring has ACTIVE {sorted(members)} {RING_TIMEOUT_S} s after Loki was ready")
            break
        time.sleep(1)
    return problems, time.monotonic() - t0


@needs(Phase.DEPLOYED)
def data_disk_late(lab: Rehearsal) -> list[str]:
    problems: list[str] = []
    machines = loki_machines(lab)
    # A stack that has settled: right after a deploy the last node's check may pass only now, and
    # its keepalived takes the VIP by preemption (measured: 20 s after the steps ended), a move
    # that is not this event's.
    holder = wait_settled(machines)
    # Below the holder: the event is about the disk, and the lowest node is the one a roll restarts
    # first. (A node above it also boots in FAULT and rejoins below the holder: holder_reboot.)
    own = {n: vrrp_priority(m) for n, m in machines.items()}
    candidates = sorted((n for n in machines if own[n] < own[holder]), key=lambda n: own[n])
    if not candidates:
        return [f"no Loki node has a lower VRRP priority than the holder {holder}: {own}"]
    node = candidates[0]
    machine = machines[node]
    path_unit, _ = unit_names(LOKI_UNIT)
    with lab.vip_clients("data disk late") as clients:
        time.sleep(2)
        t0 = time.monotonic()
        off = machine.poweroff(timeout=SHUTDOWN_TIMEOUT_S)
        # "degraded": the data disk's mount failed.
        state, booted = boot_again(machine, t0, disk_attached=False)
        time.sleep(MISSING_HOLD_S)
        loki_state = machine.exec(["systemctl", "is-active", LOKI_UNIT]).stdout.strip()
        result = machine.exec(["systemctl", "show", "-p", "Result", "-p", "NRestarts", "--value",
                               LOKI_UNIT]).stdout.split()
        if loki_state in ("active", "activating"):
            problems.append(f"{node}: Loki is {loki_state} with its data disk missing")
        if machine.exec(["findmnt", DATA_DIR]).returncode == 0:
            problems.append(f"{node}: something is mounted at {DATA_DIR} with the data disk missing")
        written = machine.exec(["find", DATA_DIR, "-mindepth", "1", "-xdev"]).stdout.split()
        if written:
            problems.append(f"{node}: with its data disk missing, the root filesystem got {written[:5]} "
                            f"under {DATA_DIR}")
        if machine.exec(["systemctl", "is-active", path_unit]).stdout.strip() != "active":
            problems.append(f"{node}: {path_unit} does not watch for the data disk")
        mark = machine.exec(["cat", MAINTENANCE_FILE]).stdout.strip()
        if mark == "0" or not mark:
            problems.append(f"{node}: booted without Loki, it is not in the VIP's FAULT state ({MAINTENANCE_FILE}: "
                            f"{mark!r})")
        machine.attach_data_disk()
        ready = wait_loki_ready(machine)
        back, ringed = back_problems(machine)
        problems += back
        time.sleep(3)
    after = wait_for_one_holder(machines, VIP)
    if after != holder:
        problems.append(f"the VIP moved from {holder} to {after} while {node} was rebooted")
    problems += clients.problems
    lab.figures.append(
        f"{node} powered off ({off:.1f} s) and booted without its data disk: system {state!r} after {booted:.1f} s, "
        f"Loki {loki_state} (result {' '.join(result)}) {MISSING_HOLD_S} s later, nothing under {DATA_DIR}; "
        f"disk attached: Loki ready {ready:.1f} s later by itself ({ringed:.1f} s more to a rejoined node and "
        "a full ring)")
    lab.figures += [f"  {line}" for line in clients.figures()]
    return problems


@needs(Phase.DEPLOYED)
def holder_reboot(lab: Rehearsal) -> list[str]:
    problems: list[str] = []
    machines, holder = settled(lab)
    machine = machines[holder]
    rest = {n: m for n, m in machines.items() if n != holder}
    moves: list[tuple[float, list[str]]] = []
    with lab.vip_clients("holder reboot") as clients:
        time.sleep(2)
        t0 = time.monotonic()
        machine.request_poweroff()  # as Proxmox's shutdown: the leave unit drains and hands the VIP over first
        while machine.process is not None and machine.process.poll() is None:
            if time.monotonic() - t0 > SHUTDOWN_TIMEOUT_S:
                raise AssertionError(f"{holder} did not power off within {SHUTDOWN_TIMEOUT_S} s")
            try:
                now = vip_holders(machines, VIP)
            except RuntimeError:  # the holder's machine stopped between its check and its exec
                now = vip_holders(rest, VIP)
            if not moves or moves[-1][1] != now:
                moves.append((time.monotonic() - t0, now))
            time.sleep(0.1)
        off = time.monotonic() - t0
        successor = wait_for_one_holder(rest, VIP)
        state, booted = boot_again(machine, t0)
        ready = wait_loki_ready(machine)
        back, ringed = back_problems(machine)
        problems += back
        yielded = machine.exec(["cat", YIELD_FILE]).stdout.strip()
        time.sleep(3)
    after = wait_for_one_holder(machines, VIP)
    if after != successor:
        problems.append(f"the VIP moved again, from {successor} to {after}, after {holder} came back: a move "
                        "without a drain")
    handed = [(at, now) for at, now in moves if now == [successor]]
    if not handed:
        problems.append(f"{holder} did not hand the VIP to {successor} on its way down (seen: {moves})")
    # With preemption it must rejoin below the new holder: a yield where its own priority is higher,
    # none where it is lower already (the holder is often not the VIP's home after earlier events).
    own, theirs = vrrp_priority(machine), vrrp_priority(machines[successor])
    effective = own + int(yielded or 0)
    if effective >= theirs or (own < theirs and int(yielded or 0) != 0):
        problems.append(f"{holder} (priority {own}) rejoined VRRP with a yield of {yielded!r} ({YIELD_FILE}) "
                        f"beside {successor} (priority {theirs}): it must end below it, with no yield "
                        "where it is below already")
    problems += clients.problems
    lab.figures.append(
        f"VIP holder {holder} shut down and booted again: VIP on {successor} "
        f"{handed[0][0] if handed else float('nan'):.1f} s after the shutdown began, powered off after {off:.1f} s; "
        f"system {state!r} {booted:.1f} s after the shutdown began, Loki ready {ready:.1f} s later, rejoined below "
        f"{successor} (yield {yielded}) with a full ring {ringed:.1f} s after that; the VIP stayed on {after}")
    lab.figures += [f"  {line}" for line in clients.figures()]
    return problems
