"""The rehearsal, end to end: the program's machines booted, its steps run, the results reported.

``python -m offline.rehearsal [--keep] [--run-dir DIR]`` and ``python -m offline.rehearsal teardown
--run-dir DIR``. Needs root, ``systemd-container`` and ``debootstrap``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from components.delivery import key_body
from components.loki_config import HTTP_PORT
from components.loki_gateway import ACCESS_LOG, PUSH_PATH
from components.loki_limits import RELOAD_PERIOD_S
from components.objectstore import API_PORT
from components.step_names import host_step
from offline.diff import diff_manifests
from offline.engine import PROBE_SUFFIX, Registration, RunResult
from offline.plan import build_manifest, read_stack_config, run_program
from offline.proxmox_cloudinit import generated_mac, nocloud_network
from offline.real_loki import LOKI_VERSION, find_tools
from offline.rehearsal.checks import (
    OPERATOR_DIR,
    Operator,
    marker,
    unit_problems,
    vip_holders,
    wait_for_one_holder,
)
from offline.rehearsal.clients import VipClients
from offline.rehearsal.converge import gateway_port_taken_back, interrupted_applies, refused_roll, wait_loki_ready
from offline.rehearsal.disk_full import data_disk_full
from offline.rehearsal.earlier import export
from offline.rehearsal.hitless import RollReport, reload_seconds, roll_report
from offline.rehearsal.life_events import data_disk_late, holder_reboot
from offline.rehearsal.machines import Machine
from offline.rehearsal.network import RehearsalNetwork, apt_mirror_hosts
from offline.rehearsal.phases import NotYetError, Phase, needs
from offline.rehearsal.rebuild import node_rebuilt
from offline.rehearsal.repository import (
    KEY_FILE_NAME,
    build_loki_deb,
    build_repository,
    build_standin_archive,
    server_certificate,
)
from offline.rehearsal.scaling import scale_out_and_in
from offline.rehearsal.settings import (
    AVAILABLE_PACKAGES,
    GATEWAY,
    LOKI_ADDRESSES,
    OBJECT_STORE_ADDRESS,
    RUNNER_ADDRESS,
    TEST_RANGE,
    VIP,
)
from offline.rehearsal.steps import (
    DONE,
    LOCAL,
    REMOTE,
    Interrupt,
    Step,
    StepRunner,
    StepStatus,
    longest_chain,
    step_graph,
    unreachable,
)
from offline.rehearsal.template import CACHE, DIFFERENCES, MIRROR_CACHE, build_template, cache_lock
from stack.program import LOKI_CLUSTER
from stack.schema import PROJECT_DIR

VM_TYPE = "proxmoxve:index/vmLegacy:VmLegacy"
SNIPPET_TYPE = "proxmoxve:index/fileLegacy:FileLegacy"
RUNNER = "runner"
REPOSITORY_PORT = 8443
REPOSITORY_CA = "usr/local/share/ca-certificates/lokistack-rehearsal-repository.crt"
SYSTEM_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
BUCKET_TYPE = "minio:index/s3Bucket:S3Bucket"
KEY_TYPES = ("minio:index/iamUser:IamUser", "minio:index/iamPolicy:IamPolicy",
             "minio:index/iamUserPolicyAttachment:IamUserPolicyAttachment",
             "minio:index/iamServiceAccount:IamServiceAccount", "minio:index/s3BucketPolicy:S3BucketPolicy")
CHANGE = re.compile(r"^(installed|removed|placed|restarting) .*$|^.* replaced$", re.MULTILINE)
"""What the host scripts print when they change something (install-files.sh, lib-place.sh, the applies)."""
STATE_FILE = "rehearsal.json"
NGINX_ERROR_LOG = "/var/log/nginx/error.log"
"""Where Debian's nginx.conf has nginx log its errors (the gateway's config sets no other)."""
SETTLE_AFTER_CRASH_S = 8
"""After a crashed Loki is ready again: keepalived's check passes rise times and the node may take the VIP back."""
RELOAD_SLACK_S = 2
QUERY_TIMEOUT_S = 60
"""As long as Grafana and logcli wait for a query."""
READ_PAGE = 5000
"""Lines per query when reading a job back (Loki's default ``max_entries_limit_per_query``)."""


@dataclass(frozen=True)
class VmPlan:
    name: str
    address: str
    mac: str
    user_data: str
    network_config: str
    data_disk: bool


def vm_plans(result: RunResult) -> list[VmPlan]:
    """Every VM of the program, from its registrations: the user-data its snippet holds and the
    network config Proxmox would write from its settings (and the MAC the fake cloud gave it: another
    one for a VM created anew)."""
    monitor = result.engine.monitor
    generations = result.engine.cloud.rebuilt
    snippets = {r.plain_inputs["sourceRaw"]["fileName"]: r.plain_inputs["sourceRaw"]["data"]
                for r in monitor.of_type(SNIPPET_TYPE)}
    plans = []
    for vm in monitor.of_type(VM_TYPE):
        inputs = vm.plain_inputs
        name = inputs["name"]
        user_data = snippets[f"lokistack-{name}-user-data.yaml"]
        device = (inputs.get("networkDevices") or [{}])[0]
        address = inputs["initialization"]["ipConfigs"][0]["ipv4"]["address"].split("/")[0]
        generation = generations.get(name, 0)
        mac = (device.get("macAddress") or generated_mac(name, 0, generation)).lower()
        plans.append(VmPlan(name=name, address=address, mac=mac, user_data=user_data,
                            network_config=nocloud_network(name, inputs, generation),
                            data_disk=len(inputs.get("disks") or []) > 1))
    return plans


Made = TypeVar("Made")


@dataclass
class Rehearsal:
    run_dir: Path
    prefix: str = field(default_factory=lambda: f"lkr{os.getpid() % 10000}")
    network: RehearsalNetwork | None = None
    machines: dict[str, Machine] = field(default_factory=dict)
    result: RunResult | None = None
    steps: dict[str, Step] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    renewed: frozenset[str] = frozenset()
    """Certificates issued as renewed from now on (``tls.LocallySignedCert`` names)."""
    settings: dict[str, object] = field(default_factory=dict)
    """Settings changed so far (they stay changed for later runs of the program)."""
    rebuilt: dict[str, int] = field(default_factory=dict)
    """VM -> how many times it was created anew (``engine.FakeCloud.rebuilt``)."""
    parameters: dict[str, str] = field(default_factory=dict)
    """The setup scripts' parameters the rehearsal passes instead of the program's: Grafana's
    repository (URL, key URL, fingerprints) and the object store's server archive (URL, SHA-256)."""
    template: Path | None = None
    """The machines' template (``boot``)."""
    repository_ca: bytes = b""
    """The package repository server's CA certificate, which every machine trusts (``boot``)."""
    deployed: dict[str, Any] | None = None
    """The manifest of what the machines run, when an earlier version made it (``deploy_earlier``);
    ``None``: what ``result`` says (this version)."""

    def log(self, line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    # --- Phases: what each part of the rehearsal needs done before it ------------------------

    @property
    def phase(self) -> Phase:
        """How far the rehearsal is: the program run, the machines booted, the steps run."""
        if self.result is None:
            return Phase.NEW
        if self.network is None or self.template is None:
            return Phase.PLANNED
        return Phase.DEPLOYED if self.steps else Phase.BOOTED

    def too_early(self, phase: Phase, what: str) -> NotYetError:
        return NotYetError(f"{what} needs the rehearsal {phase.describe()}; it is {self.phase.describe()}")

    def require(self, phase: Phase, what: str) -> None:
        """Raise ``NotYetError`` naming ``what`` when the rehearsal is not that far."""
        if self.phase < phase:
            raise self.too_early(phase, what)

    def made(self, value: Made | None, phase: Phase, what: str) -> Made:
        """``value``, which ``phase`` makes; ``NotYetError`` naming ``what`` when it is not there yet."""
        if value is None:
            raise self.too_early(phase, what)
        return value

    @property
    def planned(self) -> RunResult:
        """The program's last run (``program`` or ``deploy_earlier``)."""
        return self.made(self.result, Phase.PLANNED, "the program's run")

    @property
    def net(self) -> RehearsalNetwork:
        """The machines' network (``boot``)."""
        return self.made(self.network, Phase.BOOTED, "the network")

    @property
    def booted_template(self) -> Path:
        """The machines' template (``boot``)."""
        return self.made(self.template, Phase.BOOTED, "the template")

    def program(self, **overrides: object) -> RunResult:
        """Runs the program as ``pulumi up`` would now: with the certificates renewed so far, the VMs
        created anew so far, the SSH host keys the running machines present (what a host-key probe
        that runs finds; a machine not running presents its bootstrap key, as a new VM does), and
        the commands' stdout as the last run left it (a probe whose inputs did not change does not
        run again and keeps its answer)."""
        kept = self.result.engine.cloud.commands if self.result is not None and self.deployed is None else {}
        self.result = run_program("homelab", read_stack_config("homelab", overrides={**TEST_RANGE, **overrides}),
                                  renewed=self.renewed, rebuilt=self.rebuilt, presented=self.presented_keys(),
                                  kept=kept)
        return self.result

    def vm_plans(self) -> list[VmPlan]:
        """The VMs of the program's last run (``vm_plans``)."""
        return vm_plans(self.planned)

    def presented_keys(self) -> dict[str, str]:
        """Address -> the ed25519 host key each running machine presents, as ssh-keyscan from the runner sees it."""
        if self.network is None:
            return {}
        found = {}
        for plan in vm_plans(self.result) if self.result is not None else []:
            machine = self.machines.get(plan.name)
            if machine is None or machine.pid1() is None:
                continue
            proc = self.network.run(RUNNER, ["ssh-keyscan", "-T", "5", "-t", "ed25519", plan.address], timeout=30)
            keys = [line.split()[1:3] for line in proc.stdout.splitlines() if not line.startswith("#")]
            if keys and len(keys[0]) == 2:
                found[plan.address] = " ".join(keys[0])
        return found

    def probe_problems(self, steps: Mapping[str, Step]) -> list[str]:
        """A host-key probe that found another key on its machine than the program was run with
        (``presented_keys``) is marked failed: the steps after it pinned the wrong key."""
        problems = []
        for step in steps.values():
            modeled = self.planned.engine.cloud.commands.get(step.name, ("", ""))[1]
            if step.registration.type != LOCAL or not step.name.endswith(PROBE_SUFFIX) or step.status != StepStatus.OK:
                continue
            if step.stdout.strip() != modeled.strip():
                step.status = StepStatus.FAILED
                problems.append(f"{step.name}: found {step.stdout.strip()!r} on its machine, the program was run "
                                f"with {modeled!r}")
        return problems

    def deploy_earlier(self, commit: str) -> None:
        """From now on ``result`` is ``commit``'s program (``earlier.py``): ``boot`` and ``run_steps``
        deploy the stack as that version built it; ``upgrade`` takes it to this version."""
        earlier = export(commit, {**TEST_RANGE, **self.settings}, self.run_dir)
        self.result, self.deployed = earlier.result, earlier.manifest

    def manifest(self) -> dict[str, Any]:
        """What the machines run, as the plan's manifest (the diff of the next change starts there)."""
        return self.deployed if self.deployed is not None else build_manifest(self.planned, stack="homelab")

    def boot(self) -> None:
        t0 = time.monotonic()
        template = build_template(GATEWAY)
        self.figures.append(f"template (debootstrap, cached): {time.monotonic() - t0:.1f} s")
        self.network = RehearsalNetwork(prefix=self.prefix, gateway=GATEWAY, run_dir=self.run_dir)
        self.save_state()
        try:
            self.network.create()
            self.network.start_proxy(apt_mirror_hosts(), MIRROR_CACHE)
            self.network.add_runner(RUNNER, RUNNER_ADDRESS)
            repository_ca = self.start_repository()
        finally:
            self.save_state()
        self.template, self.repository_ca = template, repository_ca
        for plan in vm_plans(self.planned):
            self.add_machine(plan, self.network.add_machine(plan.name, plan.mac))
        for machine in self.machines.values():
            machine.start()
        self.save_state()

    def add_machine(self, plan: VmPlan, netns: str) -> Machine:
        """A new machine for ``plan`` in ``netns`` (not started): a fresh disk from the template with
        its seed, a new data disk, and the rehearsal's repository trusted."""
        self.save_state()
        machine = Machine(name=plan.name, netns=netns, run_dir=self.run_dir, template=self.booted_template,
                          user_data=plan.user_data, network_config=plan.network_config, data_disk=plan.data_disk)
        self.machines[plan.name] = machine
        machine.prepare()
        # The rehearsal's repository server is trusted like a public CA (Grafana's is), and
        # reached directly (apt would send HTTPS through the mirror proxy too).
        (machine.root / REPOSITORY_CA).write_bytes(self.repository_ca)
        (machine.root / "etc/apt/apt.conf.d/99-rehearsal-repository").write_text(
            f'Acquire::https::Proxy::{GATEWAY} "DIRECT";\n')
        with open(machine.root / SYSTEM_BUNDLE, "ab") as bundle:
            bundle.write(self.repository_ca)
        self.save_state()
        return machine

    def start_repository(self) -> bytes:
        """Builds the package repository (the loki package cached by version and binary) and
        serves it; returns the repository server's CA certificate."""
        t0 = time.monotonic()
        (self.run_dir / "loki-tools").mkdir(exist_ok=True)
        tools = find_tools(self.run_dir / "loki-tools")
        digest = hashlib.sha256(tools.loki.read_bytes()).hexdigest()[:12]
        cached = CACHE / f"loki_{LOKI_VERSION}_{digest}.deb"
        with cache_lock():
            if not cached.exists():
                built = build_loki_deb(tools.loki, LOKI_VERSION, self.run_dir)
                shutil.move(built, cached)
        deb = self.run_dir / f"loki_{LOKI_VERSION}_amd64.deb"
        shutil.copy(cached, deb)
        root = self.run_dir / "repository"
        fingerprint = build_repository([deb], root, self.run_dir / "repository-gnupg")
        ca, cert, key = server_certificate(GATEWAY, self.run_dir / "repository-tls")
        self.net.start_service("repository", "offline.rehearsal.repository",
                                   [GATEWAY, str(REPOSITORY_PORT), str(root), str(cert), str(key)], b"repository on")
        archive = build_standin_archive(root / "objectstore")
        url = f"https://{GATEWAY}:{REPOSITORY_PORT}"
        self.parameters = {"REPO_URL": url, "KEY_URL": f"{url}/{KEY_FILE_NAME}", "KEY_FINGERPRINTS": fingerprint,
                           "PACKAGE_URL": f"{url}/objectstore/{archive.name}",
                           "PACKAGE_SHA256": hashlib.sha256(archive.read_bytes()).hexdigest()}
        self.figures.append(f"package repository (loki {LOKI_VERSION}): {time.monotonic() - t0:.1f} s")
        return ca.read_bytes()

    def rewrite(self, stdin: str) -> str:
        """A step's script with the rehearsal's repository and archive in place of the real ones."""
        for name, value in self.parameters.items():
            stdin = re.sub(rf"^{name}=.*$", f"{name}={shlex.quote(value)}", stdin, flags=re.MULTILINE)
        return stdin

    def make_bucket(self, registration: Registration) -> tuple[StepStatus, str]:
        """What the MinIO provider's bucket resource does, against the S3 stand-in."""
        bucket = registration.plain_inputs["bucket"]
        ca = self.run_dir / "stack-ca.pem"
        ca.write_text(self.planned.resolved["output:caCertificate"].value)
        proc = self.net.run(RUNNER, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(ca),
                                         "-X", "PUT", f"https://{OBJECT_STORE_ADDRESS}:{API_PORT}/{bucket}"])
        if proc.stdout != "200":
            return StepStatus.FAILED, f"PUT /{bucket}: {proc.stdout} {proc.stderr}"
        return StepStatus.OK, f"bucket {bucket} made on the S3 stand-in"

    def stood_in(self, registration: Registration) -> tuple[StepStatus, str]:
        return StepStatus.STOOD_IN, ("not rehearsed: the S3 stand-in accepts any key, so users, policies and keys "
                                     "mean nothing")

    def actions(self) -> dict[str, Callable[[Registration], tuple[StepStatus, str]]]:
        return {BUCKET_TYPE: self.make_bucket, **{t: self.stood_in for t in KEY_TYPES}}

    def run_steps(self) -> float:
        registrations: list[Registration] = self.planned.engine.monitor.registrations
        self.steps = step_graph(registrations, unreachable(AVAILABLE_PACKAGES))
        runner = StepRunner(runner_netns=self.net.ns(RUNNER), work=self.run_dir, rewrite=self.rewrite,
                            actions=self.actions(), log=self.log)
        wall = runner.run(self.steps)
        self.probe_problems(self.steps)
        chain_s, chain = longest_chain(self.steps)
        self.figures.append(f"steps: wall {wall:.1f} s, longest chain {chain_s:.1f} s ({' > '.join(chain)})")
        return wall

    @needs(Phase.DEPLOYED)
    def second_run(self) -> dict[str, str]:
        """Runs again every step that ran, as a second ``pulumi up`` with changed triggers would;
        returns the steps that changed something (a file placed, a service restarted), with the
        line that says so. The cloud-init wait and the host-key step are left out: they pin the
        snippet's bootstrap key, which the VM no longer has; Pulumi runs them again only for a new
        VM (their trigger names the VM as created), which has the bootstrap key again."""
        own_keys = {key_body(k) for k in self.planned.resolved["output:sshHostKeys"].value.values()}
        runner = StepRunner(runner_netns=self.net.ns(RUNNER), work=self.run_dir, rewrite=self.rewrite,
                            actions=self.actions(), log=self.log)
        changed: dict[str, str] = {}
        again = [s for s in self.steps.values() if s.status in DONE and (
            s.registration.type != REMOTE
            or key_body(s.registration.plain_inputs["connection"]["hostKey"]) in own_keys)]
        by_host: dict[str, list[Step]] = {}
        for step in again:
            by_host.setdefault(step.host, []).append(step)

        def rerun_on(steps: list[Step]) -> None:
            """One host's steps, one after another in the program's order (two package steps on one
            host would meet at apt's locks); the hosts at the same time."""
            for step in steps:
                rerun = Step(registration=step.registration, needs=set())
                runner.run_one(rerun)
                marker = CHANGE.search(rerun.output)
                if rerun.status not in DONE or marker:
                    changed[step.name] = marker.group(0) if marker else f"exit {rerun.exit_code}: {rerun.output[-300:]}"

        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(by_host) or 1) as pool:
            for done in [pool.submit(rerun_on, steps) for steps in by_host.values()]:
                done.result()
        self.figures.append(f"second run: {len(again)} steps again on {len(by_host)} hosts at once "
                            f"({time.monotonic() - t0:.1f} s), {len(changed)} changed something")
        return changed

    # --- checks after the steps ---------------------------------------------------------------

    def outputs(self) -> dict[str, Any]:
        return {k.split(":", 1)[1]: v.value for k, v in self.planned.resolved.items() if k.startswith("output:")}

    @needs(Phase.DEPLOYED)
    def unit_problems(self) -> list[str]:
        """Every unit the stack installs on a machine, active with its hardening in force."""
        roles = {name: host["role"] for name, host in self.outputs()["hosts"].items()}
        return [p for name, m in self.machines.items() if m.pid1() for p in unit_problems(m, roles[name])]

    def operator(self) -> Operator:
        plan = next(p for p in vm_plans(self.planned) if p.name not in LOKI_ADDRESSES)
        user_data = yaml.safe_load(plan.user_data)
        hosts = next(f["content"] for f in user_data["write_files"] if f["path"] == "/etc/hosts")
        (self.run_dir / "loki-tools").mkdir(exist_ok=True)
        return Operator.prepare(network=self.net, runner=RUNNER, work=self.run_dir, outputs=self.outputs(),
                                etc_hosts=hosts, logcli=find_tools(self.run_dir / "loki-tools").logcli, vip_address=VIP)

    def read_back(self, operator: Operator, line: str, timeout: float = 60) -> str:
        """logcli's output once it shows ``line`` (or the last output after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            proc = operator.logcli_query('{job="rehearsal"}')
            if line in proc.stdout or time.monotonic() > deadline:
                return proc.stdout + proc.stderr
            time.sleep(1)

    @needs(Phase.DEPLOYED)
    def push_and_read(self) -> list[str]:
        """A line pushed through the VIP with the operator's certificate, read back with logcli."""
        operator = self.operator()
        line = marker()
        status = operator.push(line)
        if status != "204":
            return [f"push through the VIP answered {status}"]
        output = self.read_back(operator, line)
        return [] if line in output else [f"logcli did not read back the pushed line: {output[-1000:]}"]

    @needs(Phase.DEPLOYED)
    def loki_crash(self) -> list[str]:
        """SIGKILL of Loki on the VIP holder while both clients push: its gateway sends to the other
        nodes' gateways what its Loki cannot take, and keepalived leaves the VIP where it is (the
        gateway serves; systemd has Loki ready again within vipLokiGraceSeconds), so that no
        connection to the VIP is reset. The problems: any failed push (either client) but one
        that Loki had in hand when it was killed (nginx logged its upstream closing before an
        answer; it is answered 502 and never sent again, as Loki may have taken it), the VIP moved,
        the gateway forwarded nothing (the check tested nothing), an accepted line does not read
        back exactly once."""
        loki_machines = {n: m for n, m in self.machines.items() if n in LOKI_ADDRESSES}
        holder = wait_for_one_holder(loki_machines, VIP)
        machine = loki_machines[holder]
        logged = len(machine.exec(["cat", ACCESS_LOG]).stdout.splitlines())  # what the gateway logged before
        errors_logged = len(machine.exec(["cat", NGINX_ERROR_LOG]).stdout.splitlines())
        holders: set[str] = set()
        with self.vip_clients("crash") as clients:
            time.sleep(3)
            pid = machine.exec(["systemctl", "show", "-p", "MainPID", "--value", "loki.service"]).stdout.strip()
            machine.exec(["kill", "-KILL", pid])
            ready = wait_loki_ready(machine, during=lambda: holders.update(vip_holders(loki_machines, VIP)))
            until = time.monotonic() + SETTLE_AFTER_CRASH_S  # keepalived's checks pass again, clients go on
            while time.monotonic() < until:
                holders.update(vip_holders(loki_machines, VIP))
                time.sleep(0.5)
        final = wait_for_one_holder(loki_machines, VIP)
        log = machine.exec(["cat", ACCESS_LOG]).stdout.splitlines()[logged:]
        forwarded = [line for line in log if "upstream=" in line and "upstream=127.0.0.1:" not in line
                     and "/push" in line]
        self.figures.append(f"Loki on the VIP holder {holder} killed (SIGKILL): ready again {ready:.1f} s after "
                            f"the kill; {len(forwarded)} pushes taken by its gateway went to the other nodes; "
                            f"the VIP was on {', '.join(sorted(holders))} meanwhile and ended on {final}")
        self.figures += [f"  {line}" for line in clients.figures()]
        # A push Loki had in hand when it died is answered 502 and never sent again (Loki may have
        # taken it): nginx logs each, "upstream prematurely closed connection". So many 502s are
        # the crash's own; any other failure is a problem.
        in_hand = [line for line in machine.exec(["cat", NGINX_ERROR_LOG]).stdout.splitlines()[errors_logged:]
                   if "upstream prematurely closed connection" in line and f"POST {PUSH_PATH} " in line]
        problems, excused = [], 0
        for problem in clients.problems:
            if excused < len(in_hand) and re.search(r": a push failed: #\d+ at [0-9:]+: 502 ", problem):
                excused += 1
                self.figures.append(f"  in Loki's hands when it was killed, answered 502: {problem[:90]}")
                continue
            problems.append(problem)
        if holders != {holder} or final != holder:
            problems.append(f"the VIP moved away from {holder} ({sorted(holders)}, then {final}) although its "
                            f"gateway served and Loki was ready again {ready:.1f} s after the kill")
        if not forwarded:
            problems.append(f"no push went from {holder}'s gateway to another node while its Loki was down")
        return problems

    def change(self, settings: dict[str, object], renewed: frozenset[str] = frozenset(),
               interrupts: Mapping[str, Interrupt] | None = None) -> tuple[list[Step], list[str]]:
        """Runs the program again with ``settings`` changed and the certificates ``renewed`` issued
        as renewed, and then exactly the steps the plan's diff names as changed, in their order.
        Returns the steps run and the problems: a step not ok, or Loki nodes restarted at the same
        time (each node's apply must end before the next one's begins)."""
        before = self.manifest()
        self.settings |= settings
        self.renewed |= renewed
        return self.run_changed(before, self.program(**self.settings), interrupts)

    def upgrade(self) -> tuple[list[Step], list[str]]:
        """``pulumi up`` with this version on a stack an earlier version deployed (``deploy_earlier``):
        the steps the diff of this version's program from the deployed manifest names, in their
        order. Run ``program()`` first: the clients of the VIP take this version's files from it.
        Afterwards ``steps`` are this version's (with the status of their last run)."""
        if self.deployed is None:
            raise NotYetError("upgrade: deploy an earlier version first (Rehearsal.deploy_earlier)")
        before, self.deployed = self.deployed, None
        steps, problems = self.run_changed(before, self.planned)
        graph = step_graph(self.planned.engine.monitor.registrations, unreachable(AVAILABLE_PACKAGES))
        last = {s.name: s for s in self.steps.values()} | {s.name: s for s in steps}
        for step in graph.values():
            if step.name in last:
                step.status, step.output, step.seconds = last[step.name].status, last[step.name].output, 0.0
        self.steps = graph
        return steps, problems

    def run_changed(self, before: dict[str, Any], after_result: RunResult,
                    interrupts: Mapping[str, Interrupt] | None = None) -> tuple[list[Step], list[str]]:
        diff = diff_manifests(before, build_manifest(after_result, stack="homelab"))
        named = {c.name for c in diff.changes if c.type in (REMOTE, LOCAL)}
        graph = step_graph(after_result.engine.monitor.registrations, unreachable(AVAILABLE_PACKAGES))
        first_run = {s.name: s for s in self.steps.values()}
        steps = {urn: replace(s, needs={n for n in s.needs if graph[n].name in named})
                 for urn, s in graph.items() if s.name in named}
        for step in steps.values():  # what never ran here does not run again (its setup was not rehearsed)
            earlier = first_run.get(step.name)
            if not step.not_rehearsed and earlier is not None and earlier.status not in DONE:
                step.not_rehearsed = f"{earlier.status} in the first run: {earlier.not_rehearsed or earlier.output}"
        runner = StepRunner(runner_netns=self.net.ns(RUNNER), work=self.run_dir, rewrite=self.rewrite,
                            actions=self.actions(), log=self.log, interrupts=interrupts or {})
        runner.run(steps)
        problems = self.probe_problems(steps)
        problems += [f"{s.name}: {s.status} {s.output[-500:]}" for s in steps.values()
                     if s.status not in (*DONE, StepStatus.NOT_REHEARSED, StepStatus.SKIPPED, StepStatus.KILLED)]
        problems += roll_report(list(steps.values()), list(LOKI_ADDRESSES)).overlaps
        return list(steps.values()), problems

    def loki_starts(self) -> dict[str, str]:
        """Loki node -> when its loki.service last started (a restart changes it)."""
        return {n: self.machines[n].exec(["systemctl", "show", "-p", "ExecMainStartTimestampMonotonic",
                                          "--value", "loki.service"]).stdout.strip() for n in LOKI_ADDRESSES}

    @needs(Phase.DEPLOYED)
    def change_limits(self, **settings: object) -> list[str]:
        """A change of the limits Loki reloads: exactly the runtime-config steps run, every node has
        reloaded the file within one reload period of its placing, and no Loki restarts."""
        starts = self.loki_starts()
        t0 = time.monotonic()
        steps, problems = self.change(settings)
        rerun = sorted(s.name for s in steps)
        expected = sorted(host_step(LOKI_CLUSTER, n, step) for n in LOKI_ADDRESSES
                          for step in ("runtime-apply", "runtime-install"))
        if rerun != expected:
            problems.append(f"the limits change {settings} re-ran {rerun}, not {expected}")
        if (after := self.loki_starts()) != starts:
            problems.append(f"the limits change {settings} restarted Loki: started {starts} -> {after}")
        reloaded = reload_seconds(steps)
        hosts = {s.host for s in steps}
        # Loki looks at the file once per period; the step sees the reload at its next look at the
        # metrics (every 0.5 s, each fetch up to about a second on a busy machine).
        if len(reloaded) != len(hosts) or max(reloaded.values(), default=0) > RELOAD_PERIOD_S + RELOAD_SLACK_S:
            problems.append(f"every node must reload the limits within {RELOAD_PERIOD_S} s: {reloaded}")
        self.figures.append(f"limits change {settings}: {len(steps)} steps in {time.monotonic() - t0:.1f} s, "
                            f"no restart, reloaded after {reloaded} s")
        return problems

    def client_files(self) -> tuple[str, str, str]:
        """The operator's CA, certificate and key on the runner (where the README puts them)."""
        files = self.operator().home / OPERATOR_DIR
        return str(files / "ca.pem"), str(files / "operator.pem"), str(files / "operator.key")

    def vip_clients(self, label: str) -> VipClients:
        """The two clients of the VIP (``clients.py``), to run around a change: ``with lab.vip_clients(...)``."""
        return VipClients(netns=self.net.ns(RUNNER), url=f"https://{VIP}:{HTTP_PORT}/loki/api/v1/push",
                          tls=self.client_files(), work=self.run_dir, label=label, count_lines=self.count_job,
                          read_lines=self.read_job)

    @needs(Phase.DEPLOYED)
    def roll(self) -> tuple[RollReport, VipClients, list[str]]:
        """Every Loki node's server certificate renewed, so that every node restarts, as its apply
        steps order them, while both clients push through the VIP (``vip_clients``). Returns what
        the apply steps said, what the clients saw, and the problems: a failed or stalled push, an
        accepted line that does not read back once, a step not ok, two nodes restarting at once."""
        with self.vip_clients("roll") as clients:
            began = int(time.time())
            steps, problems = self.change({}, renewed=frozenset(f"{n}-server-cert" for n in LOKI_ADDRESSES))
            time.sleep(2)
            for node in LOKI_ADDRESSES:  # for a look at each stop: what Loki did between SIGTERM and exit
                journal = self.machines[node].exec(["journalctl", "-u", "loki.service", "-o", "short-unix",
                                                    "--no-pager", "-S", f"@{began}"]).stdout
                (self.run_dir / f"{node}-roll-journal.log").write_text(journal)
        report = roll_report(steps, list(LOKI_ADDRESSES))
        problems += clients.problems
        self.figures.append(f"roll (certificate renewal, {' > '.join(report.order)}): {report.seconds:.1f} s")
        self.figures += [f"  {line}" for line in clients.figures()]
        for host in report.stopped.keys() | report.ready.keys():
            self.figures.append(f"  {host}: stopped in {report.stopped.get(host, float('nan')):.1f} s, "
                                f"ready {report.ready.get(host, float('nan')):.1f} s after its start")
        self.figures += [f"  VIP {a} -> {b} in {s:.1f} s" for a, b, s in report.handovers]
        return report, clients, problems

    def count_job(self, job: str) -> int:
        """How many lines of ``job`` Loki has from the last hour (a LogQL count, through the VIP, given
        as long as Grafana gives a query)."""
        query = urllib.parse.urlencode({"query": f'sum(count_over_time({{job="{job}"}}[1h]))',
                                        "time": time.time_ns() + 10**9})
        proc = self.operator().curl(f"https://{VIP}:{HTTP_PORT}/loki/api/v1/query?{query}", "-f",
                                    max_time=QUERY_TIMEOUT_S)
        if proc.returncode != 0:
            raise RuntimeError(f"counting {job} through the VIP failed: {proc.stdout[-500:]}{proc.stderr[-500:]}")
        result = json.loads(proc.stdout)["data"]["result"]
        return int(float(result[0]["value"][1])) if result else 0

    def read_job(self, job: str) -> list[str]:
        """Every line of ``job`` in the last hour, read through the VIP with the operator's certificate,
        a page of ``READ_PAGE`` lines at a time (oldest first; each page from just after the last)."""
        lines: list[str] = []
        start, end = time.time_ns() - 3600 * 10**9, time.time_ns() + 10**9
        while True:
            query = urllib.parse.urlencode({"query": f'{{job="{job}"}}', "limit": READ_PAGE, "direction": "forward",
                                            "start": start, "end": end})
            proc = self.operator().curl(f"https://{VIP}:{HTTP_PORT}/loki/api/v1/query_range?{query}", "-f",
                                        max_time=QUERY_TIMEOUT_S)
            if proc.returncode != 0:
                raise RuntimeError(f"reading {job} back through the VIP failed: {proc.stdout[-500:]}"
                                   f"{proc.stderr[-500:]}")
            entries = sorted((int(v[0]), v[1]) for stream in json.loads(proc.stdout)["data"]["result"]
                             for v in stream["values"])
            lines += [line for _, line in entries]
            if len(entries) < READ_PAGE:
                return lines
            start = entries[-1][0] + 1

    def load(self, *, mib_per_s: float, total_mib: float) -> dict[str, Any]:
        """Pushes through the VIP on one kept-open connection, batches of 1000 lines over 10 streams,
        paced to ``mib_per_s`` until ``total_mib`` are sent; returns the client's summary."""
        ca, cert, key = self.client_files()
        out = self.run_dir / f"load-{mib_per_s:g}.json"
        proc = subprocess.run(
            ["ip", "netns", "exec", self.net.ns(RUNNER), sys.executable, "-m", "offline.rehearsal.traffic", "load",
             f"https://{VIP}:{HTTP_PORT}/loki/api/v1/push", str(out), "--ca", ca, "--cert", cert, "--key", key,
             "--mib-per-s", str(mib_per_s), "--total-mib", str(total_mib)],
            capture_output=True, text=True, timeout=600, check=False,
            env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)})
        if proc.returncode != 0:
            raise RuntimeError(f"the load client failed: {proc.stdout}{proc.stderr}")
        summary: dict[str, Any] = json.loads(out.read_text())
        self.figures.append(f"load through the VIP at {mib_per_s:g} MiB/s for {total_mib:g} MiB: "
                            f"{summary['lines_per_s']:.0f} lines/s, {summary['mib_per_s']:.2f} MiB/s, "
                            f"statuses {summary['statuses']}")
        return summary

    def report(self) -> str:
        lines = ["", "steps:"]
        for step in sorted(self.steps.values(), key=lambda s: (s.status != StepStatus.OK, s.started or 1e12, s.name)):
            detail = f"{step.seconds:6.1f} s" if step.status in (StepStatus.OK, StepStatus.FAILED) else ""
            why = step.not_rehearsed or (step.output if step.status == StepStatus.SKIPPED else "")
            lines.append(f"  {step.status:14} {step.name:45} {step.host:14} {detail} {why}".rstrip())
        for step in self.steps.values():
            if step.status == StepStatus.FAILED:
                lines += ["", f"FAILED {step.name} on {step.host}, exit {step.exit_code}:", step.output[-4000:]]
        lines += ["", "what differs from a VM here:", *(f"  - {d}" for d in DIFFERENCES)]
        lines += ["", "figures:", *(f"  {f}" for f in self.figures)]
        return "\n".join(lines)

    def save_state(self) -> None:
        state = {"prefix": self.prefix, "namespaces": self.network.namespaces if self.network else [],
                 "services": {k: v.pid for k, v in self.network.services.items()} if self.network else {},
                 "machines": {n: {"nspawn": m.process.pid if m.process else None, "root": str(m.root),
                                  "loop": m.loop_device, "cgroups": [str(c) for c in m.cgroups]}
                              for n, m in self.machines.items()}}
        (self.run_dir / STATE_FILE).write_text(json.dumps(state, indent=1))

    def close(self) -> None:
        # Every machine powers off at once, without stopping its units: nothing of a lab is kept, and
        # the orderly stop (the VIP holder's drain and handover, Loki's flush) took 23-32 s a lab.
        for machine in self.machines.values():
            machine.request_poweroff(at_once=True)
        for machine in self.machines.values():
            machine.teardown()
        if self.network is not None:
            self.network.close()
        (self.run_dir / STATE_FILE).unlink(missing_ok=True)


def teardown(run_dir: Path) -> None:
    """Take down what ``--keep`` left: by the pids, mounts, devices and namespaces it recorded."""
    state = json.loads((run_dir / STATE_FILE).read_text())
    rehearsal = Rehearsal(run_dir=run_dir, prefix=state["prefix"])
    for name, m in state["machines"].items():
        machine = Machine(name=name, netns="", run_dir=run_dir, template=Path("/"), user_data="", network_config="",
                          data_disk=False, loop_device=m["loop"], mounted=True,
                          cgroups=[Path(c) for c in m["cgroups"]])
        if m["nspawn"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(m["nspawn"], 9)
        rehearsal.machines[name] = machine
    network = RehearsalNetwork(prefix=state["prefix"], gateway=GATEWAY, run_dir=run_dir,
                               namespaces=list(state["namespaces"]))
    for pid in state["services"].values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)
    rehearsal.network = network
    rehearsal.close()


CHECKS: tuple[tuple[str, Callable[[Rehearsal], list[str]]], ...] = (
    ("a second run changes nothing",
     lambda lab: [f"second run changed {name}: {line}" for name, line in lab.second_run().items()]),
    ("every unit runs with its hardening", lambda lab: lab.unit_problems()),
    ("a line pushed through the VIP reads back", lambda lab: lab.push_and_read()),
    ("limits change without a restart", lambda lab: lab.change_limits(lokiRetention="720h")),
    ("a roll under traffic fails no push", lambda lab: lab.roll()[2]),
    ("a roll refuses to stop a node the ring cannot lose", refused_roll),
    ("applies killed mid-way converge when run again", interrupted_applies),
    ("the gateway takes its port back from an earlier Loki", gateway_port_taken_back),
    ("a crashed Loki keeps the VIP and its connections", lambda lab: lab.loki_crash()),
    ("a data disk that arrives late", data_disk_late),
    ("the VIP holder rebooted", holder_reboot),
    ("a full data disk", data_disk_full),
    ("a Loki VM lost and created again", node_rebuilt),
    ("3 -> 4 -> 3 nodes", scale_out_and_in),
)
"""What ``make rehearse`` checks once the stack is deployed (every one needs ``Phase.DEPLOYED``), in
this order: the second run first, while the machines are as the first run left them; then the
events, each of which leaves every node ready and the VIP held, as the next one expects (the
events that change the settings keep them changed: ``Rehearsal.settings``). The tests
(tests/test_rehearsal.py) run the same events on one shared deployment."""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline.rehearsal", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="run", choices=["run", "teardown"])
    parser.add_argument("--keep", action="store_true", help="leave the machines running for inspection")
    parser.add_argument("--run-dir", type=Path, help="where the machines' files go (default: a new temporary one)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the rehearsal needs root (namespaces, mounts, loop devices, systemd-nspawn)", file=sys.stderr)
        return 2
    for tool in ("systemd-nspawn", "debootstrap", "ip", "ssh", "losetup", "nsenter"):
        if shutil.which(tool) is None:
            print(f"the rehearsal needs {tool} (apt-get install systemd-container debootstrap)", file=sys.stderr)
            return 2
    if args.command == "teardown":
        if args.run_dir is None:
            parser.error("teardown needs --run-dir")
        teardown(args.run_dir)
        return 0
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="lokistack-rehearsal-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    rehearsal = Rehearsal(run_dir=run_dir)
    failed = True
    try:
        t0 = time.monotonic()
        rehearsal.program()
        rehearsal.boot()
        rehearsal.run_steps()
        rehearsal.figures.append(f"nothing to the end of the steps: {time.monotonic() - t0:.1f} s")
        failed_steps = [s.name for s in rehearsal.steps.values() if s.status == StepStatus.FAILED]
        # The checks mean something only on a stack whose steps all went through.
        problems = [f"steps failed: {', '.join(failed_steps)}; no check run"] if failed_steps else []
        for name, check in CHECKS if not failed_steps else ():
            rehearsal.log(f"check: {name}")
            try:
                problems += check(rehearsal)
            except (AssertionError, RuntimeError, subprocess.TimeoutExpired) as error:
                problems.append(f"{name}: {error}")
        failed = bool(problems)
        print(rehearsal.report())
        print("\nchecks: " + ("all passed" if not problems else "\n  ".join(["FAILED", *problems])))
    finally:
        if args.keep:
            print(f"\nkept running; take it down with: python -m offline.rehearsal teardown --run-dir {run_dir}")
        else:
            rehearsal.close()
    return 1 if failed else 0
