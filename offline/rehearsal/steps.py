"""The program's steps, run the way pulumi-command runs them: over SSH to each step's host, as its
user, with its private key and the host key pinned, ``create`` with ``stdin``; in the order the
program's dependencies give, independent steps at the same time. A failed step stops every step
that depends on it. Steps that need what this machine cannot reach are reported as not
rehearsed, with the reason, and their dependents skipped.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from offline.engine import Registration

REMOTE = "command:remote:Command"
LOCAL = "command:local:Command"
DIAL_DELAY_S = 2.0
DIAL_FAILURES = ("Connection refused", "Connection timed out", "No route to host", "Connection reset",
                 "kex_exchange_identification", "Connection closed by")
UNREACHABLE_TYPES = {"grafana:": "Grafana's API resources (Grafana provider)"}
STOOD_IN_TYPES = ("minio:",)
"""Provider resources the rehearsal makes itself, against its stand-in (``StepRunner.actions``)."""
class StepStatus(StrEnum):
    """Where a step stands."""

    WAITING = "waiting"
    RUNNING = "running"
    OK = "ok"
    STOOD_IN = "stood in"
    """Done against a stand-in, with a note."""
    FAILED = "failed"
    NOT_REHEARSED = "not rehearsed"
    """This machine cannot run it (``Step.not_rehearsed`` says why)."""
    SKIPPED = "skipped"
    """A step it waits for failed, was killed or was not run."""
    KILLED = "killed"
    """By the rehearsal, on purpose (``Interrupt``)."""


DONE = (StepStatus.OK, StepStatus.STOOD_IN)
"""What lets a step's dependents run."""
NOT_RUN = (StepStatus.NOT_REHEARSED, StepStatus.SKIPPED)
RUNS_PAST = {re.compile(r"^gateway-certificates-.+-settle$"):
             "the gateways' lists settle once every client has switched certificates; the clients this "
             "machine cannot run (Alloy, Grafana's API) switch nothing here"}
"""Steps that run once every step they wait for has run or cannot run here (not rehearsed, or
waiting for such a step), not only once all have run: name pattern -> why that is faithful."""


@dataclass
class Step:
    registration: Registration
    needs: set[str]
    """URNs of the steps this one waits for."""
    not_rehearsed: str = ""
    """Why this machine cannot run it (empty: it can)."""
    runs_past: str = ""
    """Why it runs past the steps it waits for that cannot run here (``RUNS_PAST``; empty: it does not)."""
    status: StepStatus = StepStatus.WAITING
    exit_code: int | None = None
    output: str = ""
    """What the step printed, stdout then stderr."""
    stdout: str = ""
    """Its stdout alone (what Pulumi keeps as the command's ``stdout`` output)."""
    seconds: float = 0.0
    started: float = 0.0

    @property
    def name(self) -> str:
        return self.registration.name

    @property
    def host(self) -> str:
        if self.registration.type == REMOTE:
            return str(self.registration.plain_inputs["connection"]["host"])
        return "(local)" if self.registration.type == LOCAL else "(API)"


def step_graph(registrations: list[Registration],
               not_rehearsed: Callable[[Registration], str]) -> dict[str, Step]:
    """Every command of the program with the commands it waits for. Depending on a component means
    depending on all its children; depending on another resource, on whatever that resource waits for.
    A resource this machine cannot make (``UNREACHABLE_TYPES``) is a step of its own, not rehearsed."""
    by_urn = {r.urn: r for r in registrations}
    children: dict[str, list[str]] = {}
    for r in registrations:
        children.setdefault(r.parent, []).append(r.urn)

    def is_step(r: Registration) -> bool:
        return r.type in (REMOTE, LOCAL) or (r.custom and r.type.startswith((*UNREACHABLE_TYPES, *STOOD_IN_TYPES)))

    def waits_for(r: Registration) -> tuple[str, ...]:
        """Its dependencies, and its provider (a resource waits for what its provider waits for)."""
        return (*r.dependencies, r.provider.rsplit("::", 1)[0]) \
            if r.provider else r.dependencies

    memo: dict[str, frozenset[str]] = {}

    def expand(urn: str, seen: frozenset[str] = frozenset()) -> frozenset[str]:
        if urn in memo:
            return memo[urn]
        r = by_urn.get(urn)
        if r is None or urn in seen:
            return frozenset()
        if is_step(r):
            found = frozenset({urn})
        elif not r.custom:
            found = frozenset().union(*(expand(c, seen | {urn}) for c in children.get(urn, [])))
        else:
            found = frozenset().union(*(expand(d, seen | {urn}) for d in waits_for(r)))
        memo[urn] = found
        return found

    steps = {}
    for r in registrations:
        if not is_step(r):
            continue
        reason = next((why for prefix, why in UNREACHABLE_TYPES.items() if r.type.startswith(prefix)), "")
        needs = set().union(*(expand(d) for d in waits_for(r))) - {r.urn}
        past = next((why for pattern, why in RUNS_PAST.items() if pattern.match(r.name)), "")
        steps[r.urn] = Step(registration=r, needs=needs, not_rehearsed=reason or not_rehearsed(r), runs_past=past)
    return steps


@dataclass(frozen=True)
class Interrupt:
    """Kill a step when a line of its output contains ``line``: ``kill`` does it (on the host), given
    the pid of the step's SSH client, and the step ends ``killed``, as a step whose SSH session or
    machine died there would."""
    line: str
    kill: Callable[[int], None]


@dataclass
class StepRunner:
    runner_netns: str
    work: Path
    rewrite: Callable[[str], str] = lambda stdin: stdin
    """What the rehearsal changes in a step's stdin (the package repository's parameters)."""
    actions: Mapping[str, Callable[[Registration], tuple[StepStatus, str]]] = field(default_factory=dict)
    """Resource type -> what the rehearsal does for it: (status, output)."""
    interrupts: Mapping[str, Interrupt] = field(default_factory=dict)
    """Step name -> where the rehearsal kills it (``Interrupt``)."""
    max_parallel: int = 8
    timeout_s: float = 1800
    log: Callable[[str], None] = print
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _ssh(self, step: Step) -> list[str]:
        connection = step.registration.plain_inputs["connection"]
        keys = self.work / "ssh"
        keys.mkdir(mode=0o700, exist_ok=True)
        key = keys / f"{step.name}.key"
        key.write_text(connection["privateKey"].strip() + "\n")
        key.chmod(0o600)
        known = keys / f"{step.name}.known_hosts"
        known.write_text(f"{connection['host']} {connection['hostKey'].strip()}\n")
        return ["ip", "netns", "exec", self.runner_netns, "ssh", "-i", str(key), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", f"{connection['user']}@{connection['host']}",
                step.registration.plain_inputs["create"]]

    def run_one(self, step: Step, interrupt: Interrupt | None = None) -> None:
        action = self.actions.get(step.registration.type)
        if action is not None or step.registration.type.startswith(STOOD_IN_TYPES):
            step.started = time.monotonic()
            step.status, step.output = action(step.registration) if action else (
                StepStatus.STOOD_IN, "made by no one: the stand-in does not need it")
            step.exit_code = 0 if step.status in DONE else 1
            step.seconds = time.monotonic() - step.started
            return
        inputs = step.registration.plain_inputs
        stdin = self.rewrite(inputs.get("stdin") or "")
        attempts = int(inputs["connection"].get("dialErrorLimit") or 10) if step.registration.type == REMOTE else 1
        step.started = time.monotonic()
        if interrupt is not None:
            self._run_interrupted(step, stdin, interrupt)
            return
        for attempt in range(attempts):
            # A local step runs where ``pulumi up`` runs: in the runner's namespace (it reaches the
            # machines as the remote steps' SSH client does), in the rehearsal's directory, not in
            # the project (where Pulumi runs it).
            argv = self._ssh(step) if step.registration.type == REMOTE else [
                "ip", "netns", "exec", self.runner_netns, "bash", "-c", inputs["create"]]
            proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=self.timeout_s,
                                  check=False, cwd=self.work)
            # ssh's own failures exit 255: a refused or dropped connection while the machine boots
            # (also one ssh reports nothing about at LogLevel=ERROR) is dialled again, as
            # pulumi-command does; a host key that does not match is not.
            dial_failed = proc.returncode == 255 and "Host key verification failed" not in proc.stderr and (
                any(s in proc.stderr for s in DIAL_FAILURES) or not (proc.stdout + proc.stderr).strip())
            if not dial_failed or attempt == attempts - 1:
                break
            time.sleep(DIAL_DELAY_S)
        step.seconds = time.monotonic() - step.started
        step.exit_code = proc.returncode
        step.stdout = proc.stdout
        step.output = proc.stdout + proc.stderr or f"(no output; exit {proc.returncode})"
        step.status = StepStatus.OK if proc.returncode == 0 else StepStatus.FAILED

    def _run_interrupted(self, step: Step, stdin: str, interrupt: Interrupt) -> None:
        """The step's command with its output read line by line (stderr with it), killed at ``interrupt``."""
        output, killed = [], False
        with subprocess.Popen(self._ssh(step), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=self.work) as proc:
            assert proc.stdin is not None and proc.stdout is not None

            def feed() -> None:
                assert proc.stdin is not None
                with contextlib.suppress(OSError):  # the step was killed before it read all of its script
                    proc.stdin.write(stdin)
                    proc.stdin.close()

            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
            deadline = time.monotonic() + self.timeout_s
            try:
                for line in proc.stdout:
                    output.append(line)
                    if not killed and interrupt.line in line:
                        interrupt.kill(proc.pid)
                        killed = True
                        output.append(f"(the rehearsal killed the step here: {interrupt.line!r})\n")
                    if time.monotonic() > deadline:
                        break
                proc.wait(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                feeder.join(timeout=10)
        step.seconds = time.monotonic() - step.started
        step.exit_code = proc.returncode
        step.output = "".join(output) or f"(no output; exit {proc.returncode})"
        step.status = StepStatus.KILLED if killed else (StepStatus.OK if proc.returncode == 0 else StepStatus.FAILED)

    def run(self, steps: dict[str, Step]) -> float:
        """Run every step; returns the wall time."""
        start = time.monotonic()
        running: dict[Future[None], Step] = {}
        with ThreadPoolExecutor(max_workers=self.max_parallel) as pool:
            while True:
                self._settle(steps)
                for step in steps.values():
                    if step.status == StepStatus.WAITING and all(
                            steps[n].status in DONE or (step.runs_past and steps[n].status in NOT_RUN)
                            for n in step.needs if n in steps):
                        past = [steps[n].name for n in step.needs if n in steps and steps[n].status in NOT_RUN]
                        self.log(f"start  {step.name} on {step.host}"
                                 + (f" (past {len(past)} steps not run here: {step.runs_past})" if past else ""))
                        step.status = StepStatus.RUNNING
                        running[pool.submit(self.run_one, step, self.interrupts.get(step.name))] = step
                if not running:
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in done:
                    step = running.pop(future)
                    future.result()
                    self.log(f"{step.status:6} {step.name} on {step.host} ({step.seconds:.1f} s)")
        return time.monotonic() - start

    @staticmethod
    def _settle(steps: dict[str, Step]) -> None:
        """Marks what cannot run: not rehearsable steps, and the dependents of failed or skipped ones."""
        changed = True
        while changed:
            changed = False
            for step in steps.values():
                if step.status != StepStatus.WAITING:
                    continue
                if step.not_rehearsed:
                    step.status, changed = StepStatus.NOT_REHEARSED, True
                    continue
                blocked = [steps[n] for n in step.needs if n in steps
                           and steps[n].status in (StepStatus.FAILED, StepStatus.KILLED,
                                                   *(() if step.runs_past else NOT_RUN))]
                if blocked:
                    step.status, changed = StepStatus.SKIPPED, True
                    step.output = f"waits for {blocked[0].name} ({blocked[0].status})"


def longest_chain(steps: dict[str, Step]) -> tuple[float, list[str]]:
    """The chain of dependent steps that took longest, and its length in seconds."""
    best: dict[str, tuple[float, list[str]]] = {}

    def chain(urn: str) -> tuple[float, list[str]]:
        if urn not in best:
            step = steps[urn]
            before = max((chain(n) for n in step.needs if n in steps and steps[n].status in DONE),
                         default=(0.0, []), key=lambda c: c[0])
            best[urn] = (before[0] + step.seconds, [*before[1], step.name])
        return best[urn]

    ran = [u for u, s in steps.items() if s.status in DONE]
    return max((chain(u) for u in ran), default=(0.0, []), key=lambda c: c[0])


def unreachable(available_packages: frozenset[str]) -> Callable[[Registration], str]:
    """Why a step cannot run here: a package from Grafana's repository that the rehearsal's own
    repository does not hold."""
    def why(registration: Registration) -> str:
        stdin = registration.plain_inputs.get("stdin") or ""
        for package in re.findall(r"^\s*install_pinned (\S+) ", stdin, re.MULTILINE):
            if package not in available_packages:
                return (f"installs {package} from Grafana's package repository, which this machine cannot reach "
                        f"(the rehearsal's repository holds {', '.join(sorted(available_packages)) or 'nothing'})")
        return ""
    return why
