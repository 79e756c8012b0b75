"""Converging from any state: the rehearsal's checks that a roll never takes writes down and that a
step killed anywhere is finished by the next run.

- **A roll on a degraded cluster** (``refused_roll``): one node's Loki is stopped, then every node's
  certificate changes, so every node must restart. The first apply must refuse (its ring check
  names the stopped node), restart nothing and leave the rest of the roll unrun. Once the node is
  back, running the steps that did not finish (what the next ``pulumi up`` does) rolls every node
  with both clients of the VIP pushing: no push may fail.
- **Interrupted applies** (``interrupted_applies``): the VIP holder's apply is killed at each phase
  (with the new files in place as it begins, during the drain, after Loki stopped, while Loki
  starts and before the node rejoins VRRP):
  its whole SSH session, with everything it started, gets SIGKILL, as when the machine running
  ``pulumi up`` dies (only that session: the gateway's apply on the same node runs beside it).
  Then the step runs again, and again once more: the second run must find
  nothing left to do, and the node must hold no drain rule, maintenance mark, start guard or owed
  follow-up, with one ready node holding the VIP.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from components.loki import CONFIG_FILE, DROPIN_FILE, ENV_FILE, STARTED_RECORD
from components.loki_config import CREDENTIALS_DIR, HTTP_PORT, LOKI_LOCAL_PORT
from components.loki_gateway import CONFIG_FILE as GATEWAY_CONFIG
from components.step_names import host_step
from components.vip_handover import DRAIN_TABLE, MAINTENANCE_FILE, RELOAD_TABLE
from offline.rehearsal.checks import vip_holders, wait_for_one_holder
from offline.rehearsal.machines import Machine
from offline.rehearsal.phases import Phase, needs
from offline.rehearsal.settings import AVAILABLE_PACKAGES, LOKI_ADDRESSES, VIP
from offline.rehearsal.steps import DONE, Interrupt, Step, StepRunner, StepStatus, step_graph, unreachable
from stack.certificates import CA_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE
from stack.program import LOKI_CLUSTER, LOKI_GATEWAY

if TYPE_CHECKING:
    from offline.rehearsal.run import Rehearsal

RING_WAIT_S = 8
"""The refused roll's bound on the ring check (the program's is ``components.loki_ring.WAIT_S``, 180 s):
the rehearsal passes it as the step's parameter, as it passes its own package repository."""
READY_TIMEOUT_S = 120
SETTLE_S = 10.0
"""A stack that has settled: every Loki node answers /ready on its port and the VIP stays on one node
for this long (longer than keepalived takes to move the VIP to a node whose check has just passed:
its rise, 2 s, and three adverts, measured 5 s). A first deploy ends as soon as the last node is
ready, and its keepalived then takes the VIP from a node serving clients (preemption): a move that
is not the upgrade's, nor a life event's."""
PHASES = (("with the new files in place, as it begins", "may stop"),
          ("during the drain", "draining the VIP on"),
          ("after Loki stopped", "loki.service stopped on"),
          ("while Loki starts, before it rejoins VRRP", "loki.service started on"))
"""Where an apply is killed: the phase, and the line of its output that marks it (the kill lands
100-200 ms after the line: what each kill left is in the figures)."""
POLICY_RC_D = "/usr/sbin/policy-rc.d"
FOLLOW_UP_DIR = "/var/lib/lokistack/follow-up"

KILL_SESSION = r"""
# The SSH session of one connection (every sshd process holding its socket, and all they started),
# SIGKILLed at once. $1: the client's port. Other sessions (a step running beside it) live on.
set -u
sessions=$(ss -Htnp "sport = :22 and dport = :$1" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u)
[ -n "$sessions" ] || { echo "no SSH session from port $1"; exit 1; }
tree=$(echo $sessions)
while :; do
  more=$(ps -eo pid=,ppid= | awk -v t=" $tree " 'index(t, " " $2 " ") && !index(t, " " $1 " ") { print $1 }')
  [ -n "$more" ] || break
  tree="$tree $(echo $more)"
done
kill -KILL $tree
echo "killed $(echo $tree | wc -w) processes"
"""


def server_certs(nodes: list[str] | tuple[str, ...]) -> frozenset[str]:
    return frozenset(f"{n}-server-cert" for n in nodes)


def client_port(netns: str, pid: int) -> int:
    """The local port of the TCP connection the SSH client ``pid`` holds (in the runner's namespace)."""
    out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Htnp", "dport = :22"], capture_output=True,
                         text=True, check=False, timeout=30).stdout
    for line in out.splitlines():
        if f"pid={pid}," in line:
            return int(line.split()[3].rsplit(":", 1)[1])
    raise RuntimeError(f"the SSH client {pid} holds no connection in {netns}: {out}")


def kill_session(lab: Rehearsal, machine: Machine, client: int) -> None:
    """SIGKILL of the SSH session of the client ``client`` on ``machine``, everything it started with it."""
    port = client_port(lab.net.ns("runner"), client)
    proc = machine.exec(["bash", "-c", KILL_SESSION, "kill-session", str(port)])
    if proc.returncode != 0:
        raise RuntimeError(f"{machine.name}: could not kill the step's SSH session: {proc.stdout}{proc.stderr}")


def wait_loki_ready(machine: Machine, during: Callable[[], object] = lambda: None,
                    port: int = LOKI_LOCAL_PORT) -> float:
    """Seconds until ``machine``'s Loki answers /ready on ``port`` (its own; the gateway's, or an
    earlier version's Loki there, on HTTP_PORT); ``during`` is called at every try."""
    t0 = time.monotonic()
    while True:
        during()
        proc = machine.exec(["curl", "-fsS", "-o", "/dev/null", "--max-time", "3", "--cacert", CA_FILE, "--cert",
                             SERVER_CERT_FILE, "--key", SERVER_KEY_FILE, f"https://127.0.0.1:{port}/ready"])
        if proc.returncode == 0:
            return time.monotonic() - t0
        if time.monotonic() - t0 > READY_TIMEOUT_S:
            raise AssertionError(f"{machine.name}: Loki is not ready after {READY_TIMEOUT_S} s: {proc.stderr}")
        time.sleep(1)


def wait_settled(machines: dict[str, Machine], timeout: float = 180.0) -> str:
    """Waits until every node answers /ready on its port (the earlier version's Loki or gateway) and
    then the VIP has stayed on one node for ``SETTLE_S`` (within ``timeout``); returns that node."""
    for machine in machines.values():
        wait_loki_ready(machine, port=HTTP_PORT)
    deadline = time.monotonic() + timeout
    holder, since = wait_for_one_holder(machines, VIP), time.monotonic()
    while time.monotonic() - since < SETTLE_S:
        if (now := vip_holders(machines, VIP)) != [holder]:
            holder, since = wait_for_one_holder(machines, VIP), time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"the VIP does not settle: held by {now} after {timeout:.0f} s")
        time.sleep(0.5)
    return holder


def leftovers(machine: Machine) -> list[str]:
    """What a converged Loki node must not have: a drain rule, a maintenance mark, our start guard,
    an owed follow-up; Loki not running, or running other files than those in place."""
    found = []
    tables = machine.exec(["nft", "list", "tables"]).stdout
    found += [f"the drain table {table}" for table in (DRAIN_TABLE, RELOAD_TABLE) if table in tables]
    mark = machine.exec(["cat", MAINTENANCE_FILE]).stdout.strip()
    if mark not in ("", "0"):
        found.append(f"the maintenance mark {MAINTENANCE_FILE} = {mark!r}")
    if machine.exec(["test", "-e", POLICY_RC_D]).returncode == 0:
        found.append(f"a start guard {POLICY_RC_D}")
    owed = machine.exec(["find", FOLLOW_UP_DIR, "-type", "f"]).stdout.split()
    if owed:
        found.append(f"owed follow-ups {owed}")
    if machine.exec(["systemctl", "is-active", "--quiet", "loki.service"]).returncode != 0:
        found.append("loki.service is not running")
    started = machine.exec(["cat", STARTED_RECORD]).stdout.split()
    in_place = [line.split()[0] for line in
                machine.exec(["sha256sum", CONFIG_FILE, ENV_FILE, DROPIN_FILE]).stdout.splitlines()]
    if started != in_place:
        found.append(f"Loki started with other files than those in place ({STARTED_RECORD})")
    for name, path in (("server.pem", SERVER_CERT_FILE), ("server.key", SERVER_KEY_FILE), ("ca.pem", CA_FILE)):
        if machine.exec(["cmp", "-s", f"{CREDENTIALS_DIR}/{name}", path]).returncode != 0:
            found.append(f"Loki runs another {name} than {path}")
    return [f"{machine.name}: {f}" for f in found]


def again(lab: Rehearsal, steps: list[Step], names: set[str] | None = None) -> list[Step]:
    """Runs again the steps that did not end ok (or those named), in their order, as the next
    ``pulumi up`` would; returns them."""
    chosen = {s.registration.urn: s for s in steps if (s.name in names if names is not None else s.status not in DONE)}
    fresh = {urn: replace(s, needs={n for n in s.needs if n in chosen}, status=StepStatus.WAITING, output="",
                          exit_code=None)
             for urn, s in chosen.items() if not s.not_rehearsed}
    StepRunner(runner_netns=lab.net.ns("runner"), work=lab.run_dir, rewrite=lab.rewrite, actions=lab.actions(),
               log=lab.log).run(fresh)
    return list(fresh.values())


def loki_machines(lab: Rehearsal) -> dict[str, Machine]:
    return {n: m for n, m in lab.machines.items() if n in LOKI_ADDRESSES}


@needs(Phase.DEPLOYED)
def refused_roll(lab: Rehearsal, down: str = "loki-02") -> list[str]:
    nodes = list(LOKI_ADDRESSES)
    machine = lab.machines[down]
    starts = lab.loki_starts()
    stop = machine.exec(["systemctl", "stop", "loki.service"], timeout=180)
    if stop.returncode != 0:
        return [f"{down}: systemctl stop loki.service failed: {stop.stderr}"]
    lab.renewed ^= server_certs(nodes)  # every node's certificate changes: every node must restart
    lab.parameters["RING_WAIT_S"] = str(RING_WAIT_S)
    try:
        steps, problems = lab.change({})
    finally:
        del lab.parameters["RING_WAIT_S"]
    names = {host_step(LOKI_CLUSTER, node, "apply") for node in LOKI_ADDRESSES}
    applies = sorted((s for s in steps if s.name in names),
                     key=lambda s: s.started or float("inf"))
    first = applies[0]
    if (first.status != StepStatus.FAILED or down not in first.output
            or "nothing was placed or restarted" not in first.output):
        problems.append(f"with {down} down, {first.name} must refuse, naming {down}: {first.status} "
                        f"{first.output[-1500:]}")
    problems = [p for p in problems if not p.startswith(f"{first.name}: failed")]
    unrun = [s.name for s in applies[1:] if s.status != StepStatus.SKIPPED]
    if unrun:
        problems.append(f"after {first.name} refused, the rest of the roll must not run: {unrun} ran")
    after = lab.loki_starts()
    restarted = [n for n in nodes if n != down and after[n] != starts[n]]
    if restarted:
        problems.append(f"a roll refused with {down} down restarted Loki on {restarted}")
    lab.figures.append(f"roll with {down}'s Loki stopped: {first.name} refused after "
                       f"{first.seconds:.1f} s (ring check bound {RING_WAIT_S} s), no Loki restarted")
    # The node is back: the next pulumi up finishes the roll.
    machine.exec(["systemctl", "start", "loki.service"])
    ready_s = wait_loki_ready(machine)
    wait_for_one_holder(loki_machines(lab), VIP)
    before = lab.loki_starts()
    with lab.vip_clients("finished roll") as clients:
        finished = again(lab, steps)
    problems += [f"finishing the roll: {s.name}: {s.status} {s.output[-800:]}" for s in finished
                 if s.status not in DONE]
    problems += clients.problems
    after = lab.loki_starts()
    # The stopped node started with its new certificate already; the others restart now.
    unrestarted = [n for n in nodes if n != down and after[n] == before[n]]
    if unrestarted:
        problems.append(f"finishing the roll did not restart {unrestarted}")
    problems += [p for m in loki_machines(lab).values() for p in leftovers(m)]
    lab.figures.append(f"{down} back (ready {ready_s:.0f} s after its start): the next run finished the roll "
                       f"({', '.join(s.name for s in finished)})")
    lab.figures += [f"  {line}" for line in clients.figures()]
    return problems


@needs(Phase.DEPLOYED)
def interrupted_applies(lab: Rehearsal) -> list[str]:
    problems: list[str] = []
    machines = loki_machines(lab)
    with lab.vip_clients("interrupted applies") as clients:
        for phase, line in PHASES:
            holder = wait_for_one_holder(machines, VIP)
            lab.renewed ^= server_certs([holder])  # the holder must restart: its apply drains first
            apply = host_step(LOKI_CLUSTER, holder, "apply")
            kill = Interrupt(line, partial(kill_session, lab, machines[holder]))
            steps, found = lab.change({}, interrupts={apply: kill})
            killed = next(s for s in steps if s.name == apply)
            if killed.status != StepStatus.KILLED:
                problems.append(f"{apply} was to be killed {phase} (at {line!r}): {killed.status} "
                                f"{killed.output[-1500:]}")
                continue
            problems += [f"{phase}: {p}" for p in found]
            left = [p.split(": ", 1)[1] for p in leftovers(machines[holder])]
            rerun = again(lab, steps, {apply})[0]
            if rerun.status != StepStatus.OK:
                problems.append(f"{apply} killed {phase}, run again: {rerun.status} {rerun.output[-1500:]}")
                continue
            check = again(lab, steps, {apply})[0]
            if check.status != StepStatus.OK or "restarted: no" not in check.output:
                problems.append(f"{apply} killed {phase}, run again, then once more: it must find nothing left "
                                f"to do: {check.status} {check.output[-1500:]}")
            problems += [f"{apply} killed {phase}, run again: {p}" for p in leftovers(machines[holder])]
            wait_for_one_holder(machines, VIP)
            restarted = "restarted Loki" if "restarted: yes" in rerun.output else "no restart needed"
            lab.figures.append(f"{holder}'s apply killed {phase}: left {', '.join(left) or 'nothing to see'}; "
                               f"run again in {rerun.seconds:.1f} s ({restarted}), converged")
    problems += clients.problems
    lab.figures += [f"  {line}" for line in clients.figures()]
    return problems


SQUATTER_UNIT = "lokistack-rehearsal-old-loki"
SQUATTER_DIR = "/var/lib/lokistack-rehearsal/old-loki"
"""On the machine's own disk (its /run is a tmpfs the rehearsal does not see from outside)."""
SQUATTER = r"""
import http.server, ssl
class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ready" else 404)
        self.end_headers()
    def log_message(self, *args): pass
server = http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Ready)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain("CERT", "KEY")
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""
"""An earlier version's Loki on the gateway's port, as far as the gateway step can tell: a process
named ``loki`` answering ``/ready`` over TLS with the node's certificate, without the gateway's header."""


def current_step(lab: Rehearsal, name: str) -> Step:
    """The step ``name`` as the program renders it now (after the changes so far)."""
    graph = step_graph(lab.planned.engine.monitor.registrations, unreachable(AVAILABLE_PACKAGES))
    return next(replace(s, needs=set()) for s in graph.values() if s.name == name)


def listeners(machine: Machine, port: int) -> str:
    return machine.exec(["ss", "-Hltnp", f"sport = :{port}"]).stdout


NGINX_ERROR_LOG = "/var/log/nginx/error.log"
NGINX_BIND_TRIES_S = 10
"""nginx tries a bind 5 times, 500 ms apart (``ngx_open_listening_sockets``), then logs "still could not bind()"."""


def nginx_gave_up(machine: Machine) -> int:
    """How often nginx has given up binding a port (its error log)."""
    return int(machine.exec(["grep", "-c", "still could not bind()", NGINX_ERROR_LOG]).stdout.strip() or 0)


def wait_listener(machine: Machine, port: int, expected: str | None, timeout: float = 20) -> bool:
    """Until ``expected`` (a process name) listens on ``port`` (None: until nothing does)."""
    deadline = time.monotonic() + timeout
    while True:
        found = listeners(machine, port)
        if (expected in found) if expected else not found.strip():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


@needs(Phase.DEPLOYED)
def gateway_port_taken_back(lab: Rehearsal) -> list[str]:
    """The upgrade from a version whose Loki held the gateway's port: nginx is reloaded while a
    process named ``loki`` holds it, so it keeps running without it (the reload exits 0). The gateway
    step must say so and not fail (failing would stop the Loki applies that free the port); once the
    port is free, the node's Loki apply must have nginx take it."""
    machines = loki_machines(lab)
    holder = wait_for_one_holder(machines, VIP)
    node = next(n for n in sorted(machines, reverse=True) if n != holder)  # no client of the VIP is there
    machine = machines[node]
    conf = machine.root / GATEWAY_CONFIG.lstrip("/")
    rendered = conf.read_text()
    # nginx on another port for a moment, so that the "old Loki" can take the gateway's.
    conf.write_text(rendered.replace(f"listen {HTTP_PORT} ssl;", f"listen {HTTP_PORT + 99} ssl;"))
    machine.exec(["systemctl", "reload", "nginx.service"])
    if not wait_listener(machine, HTTP_PORT, None):
        conf.write_text(rendered)
        return [f"{node}: nginx did not leave port {HTTP_PORT}: {listeners(machine, HTTP_PORT)}"]
    squatter = SQUATTER.replace("PORT", str(HTTP_PORT)).replace("CERT", SERVER_CERT_FILE)
    (machine.root / SQUATTER_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (machine.root / SQUATTER_DIR.lstrip("/") / "server.py").write_text(squatter.replace("KEY", SERVER_KEY_FILE))
    machine.exec(["cp", "/usr/bin/python3", f"{SQUATTER_DIR}/loki"])  # ss names it "loki"
    try:
        machine.exec(["systemd-run", f"--unit={SQUATTER_UNIT}", f"{SQUATTER_DIR}/loki", f"{SQUATTER_DIR}/server.py"])
        if not wait_listener(machine, HTTP_PORT, '"loki"'):
            return [f"{node}: could not put an old Loki on port {HTTP_PORT}: {listeners(machine, HTTP_PORT)}"]
        gave_up = nginx_gave_up(machine)
        conf.write_text(rendered)  # the real step places it again (it differs) and reloads: nginx cannot bind
        gateway = again(lab, [current_step(lab, host_step(LOKI_GATEWAY, node, "apply"))])[0]
        # A reload that cannot bind tries 5 times, 500 ms apart, then keeps the old listeners: a
        # real old Loki holds the port far longer than that.
        deadline = time.monotonic() + NGINX_BIND_TRIES_S
        while nginx_gave_up(machine) == gave_up and time.monotonic() < deadline:
            time.sleep(0.5)
        held = listeners(machine, HTTP_PORT)
        nginx_failed = nginx_gave_up(machine) > gave_up
    finally:
        conf.write_text(rendered)
        machine.exec(["systemctl", "stop", SQUATTER_UNIT])
    problems = []
    if gateway.status != StepStatus.OK or "still held by the Loki of an earlier version" not in gateway.output:
        problems.append(f"{gateway.name} with an old Loki on port {HTTP_PORT} must say so and go on: "
                        f"{gateway.status} {gateway.output[-1500:]}")
    if not nginx_failed:
        problems.append(f"{node}: nginx never gave up binding port {HTTP_PORT} while the old Loki held it")
    if '"nginx"' in held or '"loki"' not in held:
        problems.append(f"{node}: while the old Loki ran, port {HTTP_PORT} must be its, not nginx's: {held}")
    loki_apply = again(lab, [current_step(lab, host_step(LOKI_CLUSTER, node, "apply"))])[0]
    if loki_apply.status != StepStatus.OK or f"serves port {HTTP_PORT} again" not in loki_apply.output:
        problems.append(f"{loki_apply.name} must have nginx take port {HTTP_PORT} back: {loki_apply.status} "
                        f"{loki_apply.output[-1500:]}")
    if '"nginx"' not in listeners(machine, HTTP_PORT):
        problems.append(f"{node}: nginx does not serve port {HTTP_PORT} after Loki's apply: "
                        f"{listeners(machine, HTTP_PORT)}")
    lab.figures.append(f"{node}: nginx, reloaded while an old Loki held port {HTTP_PORT}, kept running without it; "
                       f"the gateway step said so and went on, and Loki's apply had nginx take the port "
                       f"({loki_apply.seconds:.1f} s)")
    return problems
