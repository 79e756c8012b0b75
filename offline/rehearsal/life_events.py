"""Life events of a deployed stack, rehearsed on its machines while both clients push through the
VIP (#24): what happens to a node after ``pulumi up``, not during it.

``data_disk_late``: a Loki node that does not hold the VIP is powered off and booted again with its
data disk missing (a storage that comes back late, a disk detached by mistake): Loki must not start
on the root filesystem, nor give up for good. Then the disk appears (its links, as udev makes
them): its mount and Loki start by themselves (``components/disk_arrival.py``), after the node's
firewall, the node rejoins the ring, and no push fails.
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
from offline.rehearsal.checks import wait_for_one_holder
from offline.rehearsal.converge import loki_machines, wait_loki_ready, wait_settled
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
UNITS = (LOKI_UNIT, loki_gateway.UNIT, vip.UNIT, firewall.UNIT)
"""What must run again on the node by itself, once its disk is there."""


def vrrp_priority(machine: Machine) -> int:
    conf = machine.exec(["cat", "/etc/keepalived/keepalived.conf"]).stdout
    found = re.search(r"^\s*priority\s+(\d+)", conf, re.MULTILINE)
    if found is None:
        raise AssertionError(f"{machine.name}: no VRRP priority in its keepalived.conf")
    return int(found[1])


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


def data_disk_late(lab: Rehearsal) -> list[str]:
    problems: list[str] = []
    machines = loki_machines(lab)
    # A stack that has settled: right after a deploy the last node's check may pass only now, and
    # its keepalived takes the VIP by preemption (measured: 20 s after the steps ended), a move
    # that is not this event's.
    holder = wait_settled(machines)
    # Below the holder: once back, the node must not take the VIP (a preemption is a move without
    # a drain; the reboot of a node that would preempt is another event).
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
        off = machine.poweroff()
        machine.start(disk_attached=False)
        while machine.pid1() is None:
            if time.monotonic() - t0 > BOOT_TIMEOUT_S:
                return [f"{node} did not boot again within {BOOT_TIMEOUT_S} s"]
            time.sleep(0.2)
        # Booted: its jobs done ("degraded": the data disk's mount failed). Until its bus is up,
        # systemctl answers nothing.
        state = ""
        while state not in ("running", "degraded"):
            if time.monotonic() - t0 > BOOT_TIMEOUT_S:
                return [f"{node} did not finish booting within {BOOT_TIMEOUT_S} s (systemd says {state!r})"]
            state = machine.exec(["systemctl", "is-system-running", "--wait"], timeout=BOOT_TIMEOUT_S).stdout.strip()
            if state not in ("running", "degraded"):
                time.sleep(0.5)
        booted = time.monotonic() - t0
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
        t1 = time.monotonic()
        machine.attach_data_disk()
        ready = wait_loki_ready(machine)
        if machine.exec(["systemctl", "is-active", MOUNT_UNIT]).stdout.strip() != "active":
            problems.append(f"{node}: {MOUNT_UNIT} is not active once the disk is there")
        down = [u for u in UNITS if machine.exec(["systemctl", "is-active", u]).stdout.strip() != "active"]
        if down:
            problems.append(f"{node}: not running again by itself once its disk is there: {down}")
        rules = started_at(machine, firewall.UNIT, "ActiveEnterTimestampMonotonic")
        loki = started_at(machine, LOKI_UNIT, "ExecMainStartTimestampMonotonic")
        if not rules or not loki or rules > loki:
            problems.append(f"{node}: the firewall ({rules} us) must be loaded before Loki starts ({loki} us)")
        deadline = time.monotonic() + RING_TIMEOUT_S
        while (members := active_ring_members(machine)) != set(LOKI_ADDRESSES.values()):
            if time.monotonic() > deadline:
                problems.append(f"{node}: its ring has ACTIVE {sorted(members)} {RING_TIMEOUT_S} s after Loki "
                                "was ready")
                break
            time.sleep(1)
        ringed = time.monotonic() - t1
        time.sleep(3)
    after = wait_for_one_holder(machines, VIP)
    if after != holder:
        problems.append(f"the VIP moved from {holder} to {after} while {node} was rebooted")
    problems += clients.problems
    lab.figures.append(
        f"{node} powered off ({off:.1f} s) and booted without its data disk: system {state!r} after {booted:.1f} s, "
        f"Loki {loki_state} (result {' '.join(result)}) {MISSING_HOLD_S} s later, nothing under {DATA_DIR}; "
        f"disk attached: Loki ready {ready:.1f} s later by itself ({ringed:.1f} s to a full ring)")
    lab.figures += [f"  {line}" for line in clients.figures()]
    return problems
