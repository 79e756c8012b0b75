"""The Loki nodes' firewall on a booted node (#25 item 4), while both clients push through the VIP:
the cluster ports are never without their rules, whatever loads rules on the node.

On a node below the VIP holder:
0. a local user other than Loki's (``nobody``) is refused on the cluster ports (gRPC, memberlist
   over TCP and UDP) of its own node and of every peer, at once; Loki's user (``loki``) connects to
   them (the rules name it; the cluster is whole: the ring is checked at the end of the event);
1. a rules change is loaded as the firewall step loads it (``firewall.APPLY``: a reload, ``nft -f``
   replacing the table in one transaction), ten times, while a loop on the node looks for the table
   without pause: it is never missing, and Loki is not restarted. (Ten restarts of the unit, which
   delete the table before loading it, are watched the same way for comparison: a figure.)
2. Debian's ``nftables.service`` (its ``/etc/nftables.conf`` begins with ``flush ruleset``, its stop
   is a flush) started, reloaded, restarted and stopped: after each, the stack's table is there
   (the drop-in ``firewall.NFTABLES_DROPIN_FILE``).
3. Rules that fail to load (a broken file, the unit stopped: no table): Loki restarted does not
   start (its drop-in pulls the firewall's unit in, which fails; its check names the table); the
   rules good again, it starts and rejoins its ring.
"""

from __future__ import annotations

import subprocess
import time
from typing import TYPE_CHECKING

from components import firewall
from components.loki import UNIT as LOKI_UNIT
from components.loki_config import GRPC_PORT, MEMBERLIST_PORT, SERVICE_USER
from offline import cluster_ports
from offline.rehearsal.checks import vip_journal, vip_masters, wait_for_one_holder
from offline.rehearsal.converge import leftovers, wait_loki_ready
from offline.rehearsal.life_events import RING_TIMEOUT_S, active_ring_members, settled_below_holder, started_at
from offline.rehearsal.phases import Phase, needs
from offline.rehearsal.settings import LOKI_ADDRESSES, VIP

if TYPE_CHECKING:
    from offline.rehearsal.machines import Machine
    from offline.rehearsal.run import Rehearsal

CHANGES = 10
"""Rule loads watched, each way."""
WATCH = f"""missing=0 checks=0
while [ ! -e /run/lokistack-watch-stop ]; do
  checks=$((checks + 1))
  {firewall.NFT} list table {firewall.TABLE} >/dev/null 2>&1 || missing=$((missing + 1))
done
echo "$checks $missing"
"""
"""Looks for the table without pause until told to stop; prints how often it looked and missed it."""
STOP_WATCH = "/run/lokistack-watch-stop"
DOWN_HOLD_S = 6
"""How long Loki is watched not starting, with the table gone."""


def table_loaded(machine: Machine) -> bool:
    return machine.exec([firewall.NFT, "list", "table", *firewall.TABLE.split()]).returncode == 0


def watched(machine: Machine, command: list[str]) -> tuple[int, int, list[str]]:
    """Runs ``command`` in the machine ``CHANGES`` times while a loop there looks for the table;
    returns (looks, misses, failures of the command)."""
    machine.exec(["rm", "-f", STOP_WATCH])
    pid = machine.pid1()
    assert pid is not None
    watcher = subprocess.Popen(["nsenter", "-t", str(pid), "-a", "bash", "-c", WATCH], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    failures = []
    try:
        time.sleep(0.5)
        for _ in range(CHANGES):
            proc = machine.exec(command, timeout=60)
            if proc.returncode != 0:
                failures.append(f"{' '.join(command)}: {proc.stdout[-300:]}{proc.stderr[-300:]}")
        time.sleep(0.5)
    finally:
        machine.exec(["touch", STOP_WATCH])
        out, _ = watcher.communicate(timeout=30)
        machine.exec(["rm", "-f", STOP_WATCH])
    looks, misses = (int(v) for v in out.split()[-2:])
    return looks, misses, failures


def nftables_problems(machine: Machine) -> list[str]:
    """Debian's nftables.service started, reloaded, restarted and stopped: the table after each."""
    problems = []
    for action in ("start", "reload", "restart", "stop"):
        proc = machine.exec(["systemctl", action, firewall.NFTABLES_UNIT], timeout=60)
        if proc.returncode != 0:
            problems.append(f"{machine.name}: systemctl {action} {firewall.NFTABLES_UNIT} failed: {proc.stderr[-500:]}")
        if not table_loaded(machine):
            problems.append(f"{machine.name}: after systemctl {action} {firewall.NFTABLES_UNIT}, the table "
                            f"{firewall.TABLE} is gone (its flush; the drop-in must load it again)")
            machine.exec(["systemctl", "reload", firewall.UNIT])
    return problems


def local_user_problems(machine: Machine) -> tuple[list[str], str]:
    """The cluster ports of every Loki node as ``nobody`` and as Loki's user, from ``machine``;
    (problems, a figure)."""
    problems = []
    addresses = list(LOKI_ADDRESSES.values())
    seen = {}
    for user, group in (("nobody", "nogroup"), (SERVICE_USER, SERVICE_USER)):
        proc = machine.exec(["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups", "python3", "-c",
                             cluster_ports.CLUSTER_PORT_PROBE, *addresses], timeout=120)
        if proc.returncode != 0:
            problems.append(f"{machine.name}: the cluster-port probe as {user} failed: {proc.stderr[-500:]}")
            continue
        seen[user] = cluster_ports.parse(proc.stdout)
    for address, got in seen.get("nobody", {}).items():
        if got != cluster_ports.refused():
            problems.append(f"{machine.name}: the local user nobody reaches {address}'s cluster ports: {got} "
                            f"(want {cluster_ports.refused()})")
    for address, got in seen.get(SERVICE_USER, {}).items():
        if not got.startswith(f"tcp/{GRPC_PORT}:open tcp/{MEMBERLIST_PORT}:open"):
            problems.append(f"{machine.name}: Loki's user {SERVICE_USER} is refused on {address}'s cluster ports: "
                            f"{got}")
    if len(seen.get("nobody", {})) != len(addresses):
        problems.append(f"{machine.name}: the probe as nobody did not answer for every node: {seen.get('nobody')}")
    figure = (f"as nobody on {machine.name}, towards {len(addresses)} nodes (its own among them): "
              f"{sorted(set(seen.get('nobody', {}).values()))}; as {SERVICE_USER}: "
              f"{sorted(set(seen.get(SERVICE_USER, {}).values()))}")
    return problems, figure


@needs(Phase.DEPLOYED)
def firewall_holds(lab: Rehearsal) -> list[str]:
    problems: list[str] = []
    machines, holder, node = settled_below_holder(lab)
    machine = machines[node]
    began = time.time()
    with lab.vip_clients("firewall") as clients:
        local_problems, local_figure = local_user_problems(machine)
        problems += local_problems
        loki_since = started_at(machine, LOKI_UNIT, "ExecMainStartTimestampMonotonic")
        looks, misses, failures = watched(machine, ["sh", "-c", firewall.APPLY])
        problems += failures
        if misses:
            problems.append(f"{node}: during {CHANGES} rule loads as the firewall step does them, {misses} of {looks} "
                            f"looks found no table {firewall.TABLE}: the ports were open")
        if started_at(machine, LOKI_UNIT, "ExecMainStartTimestampMonotonic") != loki_since:
            problems.append(f"{node}: loading the firewall's rules restarted Loki")
        # (reset-failed before each: ten starts in a few seconds are past systemd's start limit)
        restart_looks, restart_misses, _ = watched(machine, ["sh", "-c", f"systemctl reset-failed {firewall.UNIT}; "
                                                             f"systemctl restart {firewall.UNIT}"])
        if started_at(machine, LOKI_UNIT, "ExecMainStartTimestampMonotonic") != loki_since:
            problems.append(f"{node}: restarting the firewall's unit restarted Loki")

        problems += nftables_problems(machine)

        # Rules that fail to load: Loki does not start without them.
        unit_state = machine.exec(["systemctl", "is-active", firewall.UNIT]).stdout.strip()
        if unit_state != "active":
            problems.append(f"{node}: the firewall's unit is {unit_state} after the rule loads and nftables.service")
        machine.exec(["cp", "-p", firewall.RULES_FILE, f"{firewall.RULES_FILE}.rehearsal-good"])
        machine.exec(["sh", "-c", f"echo 'this is not a ruleset' >{firewall.RULES_FILE}"])
        machine.exec(["systemctl", "stop", firewall.UNIT])
        if table_loaded(machine):
            problems.append(f"{node}: the table {firewall.TABLE} is still there after its unit stopped")
        t0 = time.monotonic()
        refused = machine.exec(["systemctl", "restart", LOKI_UNIT], timeout=180)
        time.sleep(DOWN_HOLD_S)
        state = machine.exec(["systemctl", "is-active", LOKI_UNIT]).stdout.strip()
        firewall_state = machine.exec(["systemctl", "is-active", firewall.UNIT]).stdout.strip()
        journal = machine.exec(["journalctl", "-u", LOKI_UNIT, "--no-pager", "-o", "cat", "-n", "50"]).stdout
        if refused.returncode == 0 or state == "active":
            problems.append(f"{node}: Loki started although the firewall's rules did not load (systemctl restart: "
                            f"{refused.returncode}, then {state}; the firewall's unit {firewall_state}; tables: "
                            f"{machine.exec([firewall.NFT, 'list', 'tables']).stdout.split()})")
        if f"the firewall table {firewall.TABLE} is not loaded" not in journal:
            problems.append(f"{node}: Loki's journal does not say why it did not start: {journal[-800:]}")
        machine.exec(["mv", f"{firewall.RULES_FILE}.rehearsal-good", firewall.RULES_FILE])
        machine.exec(["systemctl", "reset-failed", firewall.UNIT])
        machine.exec(["systemctl", "start", firewall.UNIT])
        machine.exec(["systemctl", "reset-failed", LOKI_UNIT])
        machine.exec(["systemctl", "start", LOKI_UNIT], timeout=180)
        ready = wait_loki_ready(machine)
        deadline = time.monotonic() + RING_TIMEOUT_S
        while active_ring_members(machine) != set(LOKI_ADDRESSES.values()):
            if time.monotonic() > deadline:
                problems.append(f"{node}: its ring is not full {RING_TIMEOUT_S} s after Loki was ready again: "
                                f"{sorted(active_ring_members(machine))}")
                break
            time.sleep(1)
        back = time.monotonic() - t0
    problems += leftovers(machine)
    after = wait_for_one_holder(machines, VIP)
    moves = vip_masters(machines, began)
    if after != holder or moves:
        problems.append(f"the VIP moved during the firewall event: from {holder}, taken by {moves}, now on {after}; "
                        f"keepalived:\n{vip_journal(machines, began)}")
    problems += clients.problems
    lab.figures.append(
        f"firewall on {node}: {CHANGES} rule loads as the step does them (reload): the table missing at {misses} of "
        f"{looks} looks; {CHANGES} restarts of the unit, for comparison: missing at {restart_misses} of "
        f"{restart_looks}; "
        f"Loki not restarted by either; Debian's nftables.service started, reloaded, restarted and stopped: the "
        f"table there after each; the unit {unit_state} then; rules that fail to load (the unit "
        f"{firewall_state}): Loki restarted is {state} after {DOWN_HOLD_S} s, the reason in its journal; rules "
        f"loaded again: ready {ready:.1f} s later, ring full {back:.0f} s after the restart; local users: "
        f"{local_figure}")
    lab.figures += [f"  {line}" for line in clients.figures()]
    return problems
