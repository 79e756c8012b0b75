"""The rehearsal, end to end: the program's machines booted, its steps run, the results reported.

``python -m offline.rehearsal [--keep] [--run-dir DIR]`` and ``python -m offline.rehearsal teardown
--run-dir DIR``. Needs root, ``systemd-container`` and ``debootstrap``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from components.objectstore import API_PORT
from offline.diff import diff_manifests
from offline.engine import Registration, RunResult
from offline.plan import build_manifest, read_stack_config, run_program
from offline.proxmox_cloudinit import generated_mac, nocloud_network
from offline.real_loki import LOKI_VERSION, find_tools
from offline.rehearsal.checks import Operator, marker, unit_problems, wait_for_one_holder
from offline.rehearsal.machines import Machine
from offline.rehearsal.network import RehearsalNetwork, apt_mirror_hosts
from offline.rehearsal.repository import (
    KEY_FILE_NAME,
    build_loki_deb,
    build_repository,
    build_standin_archive,
    server_certificate,
)
from offline.rehearsal.settings import GATEWAY, LOKI_ADDRESSES, OBJECT_STORE_ADDRESS, RUNNER_ADDRESS, TEST_RANGE, VIP
from offline.rehearsal.steps import DONE, LOCAL, REMOTE, Step, StepRunner, longest_chain, step_graph, unreachable
from offline.rehearsal.template import CACHE, DIFFERENCES, build_template

VM_TYPE = "proxmoxve:index/vmLegacy:VmLegacy"
SNIPPET_TYPE = "proxmoxve:index/fileLegacy:FileLegacy"
RUNNER = "runner"
REPOSITORY_PORT = 8443
REPOSITORY_CA = "usr/local/share/ca-certificates/lokistack-rehearsal-repository.crt"
SYSTEM_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
AVAILABLE_PACKAGES = frozenset({"loki"})
BUCKET_TYPE = "minio:index/s3Bucket:S3Bucket"
KEY_TYPES = ("minio:index/iamUser:IamUser", "minio:index/iamPolicy:IamPolicy",
             "minio:index/iamUserPolicyAttachment:IamUserPolicyAttachment",
             "minio:index/iamServiceAccount:IamServiceAccount", "minio:index/s3BucketPolicy:S3BucketPolicy")
CHANGE = re.compile(r"^(installed|removed|placed|restarting) .*$|^.* replaced$", re.MULTILINE)
"""What the host scripts print when they change something (install-files.sh, lib-place.sh, the applies)."""
STATE_FILE = "rehearsal.json"


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
    network config Proxmox would write from its settings."""
    monitor = result.engine.monitor
    snippets = {r.plain_inputs["sourceRaw"]["fileName"]: r.plain_inputs["sourceRaw"]["data"]
                for r in monitor.of_type(SNIPPET_TYPE)}
    plans = []
    for vm in monitor.of_type(VM_TYPE):
        inputs = vm.plain_inputs
        name = inputs["name"]
        user_data = snippets[f"lokistack-{name}-user-data.yaml"]
        device = (inputs.get("networkDevices") or [{}])[0]
        address = inputs["initialization"]["ipConfigs"][0]["ipv4"]["address"].split("/")[0]
        mac = (device.get("macAddress") or generated_mac(name, 0)).lower()
        plans.append(VmPlan(name=name, address=address, mac=mac, user_data=user_data,
                            network_config=nocloud_network(name, inputs),
                            data_disk=len(inputs.get("disks") or []) > 1))
    return plans


@dataclass
class Rehearsal:
    run_dir: Path
    prefix: str = field(default_factory=lambda: f"lkr{os.getpid() % 10000}")
    network: RehearsalNetwork | None = None
    machines: dict[str, Machine] = field(default_factory=dict)
    result: RunResult | None = None
    steps: dict[str, Step] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    parameters: dict[str, str] = field(default_factory=dict)
    """The setup scripts' parameters the rehearsal passes instead of the program's: Grafana's
    repository (URL, key URL, fingerprints) and the object store's server archive (URL, SHA-256)."""

    def log(self, line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    def program(self, **overrides: object) -> RunResult:
        self.result = run_program("homelab", read_stack_config("homelab", overrides={**TEST_RANGE, **overrides}))
        return self.result

    def boot(self) -> None:
        assert self.result is not None
        t0 = time.monotonic()
        template = build_template(GATEWAY)
        self.figures.append(f"template (debootstrap, cached): {time.monotonic() - t0:.1f} s")
        self.network = RehearsalNetwork(prefix=self.prefix, gateway=GATEWAY, run_dir=self.run_dir)
        self.save_state()
        try:
            self.network.create()
            self.network.start_proxy(apt_mirror_hosts())
            self.network.add_runner(RUNNER, RUNNER_ADDRESS)
            repository_ca = self.start_repository()
        finally:
            self.save_state()
        for plan in vm_plans(self.result):
            ns = self.network.add_machine(plan.name, plan.mac)
            self.save_state()
            machine = Machine(name=plan.name, netns=ns, run_dir=self.run_dir, template=template,
                              user_data=plan.user_data, network_config=plan.network_config, data_disk=plan.data_disk)
            self.machines[plan.name] = machine
            machine.prepare()
            # The rehearsal's repository server is trusted like a public CA (Grafana's is), and
            # reached directly (apt would send HTTPS through the mirror proxy too).
            (machine.root / REPOSITORY_CA).write_bytes(repository_ca)
            (machine.root / "etc/apt/apt.conf.d/99-rehearsal-repository").write_text(
                f'Acquire::https::Proxy::{GATEWAY} "DIRECT";\n')
            with open(machine.root / SYSTEM_BUNDLE, "ab") as bundle:
                bundle.write(repository_ca)
            self.save_state()
        for machine in self.machines.values():
            machine.start()
        self.save_state()

    def start_repository(self) -> bytes:
        """Builds the package repository (the loki package cached by version and binary) and
        serves it; returns the repository server's CA certificate."""
        assert self.network is not None
        t0 = time.monotonic()
        (self.run_dir / "loki-tools").mkdir(exist_ok=True)
        tools = find_tools(self.run_dir / "loki-tools")
        digest = hashlib.sha256(tools.loki.read_bytes()).hexdigest()[:12]
        cached = CACHE / f"loki_{LOKI_VERSION}_{digest}.deb"
        if not cached.exists():
            built = build_loki_deb(tools.loki, LOKI_VERSION, self.run_dir)
            shutil.move(built, cached)
        deb = self.run_dir / f"loki_{LOKI_VERSION}_amd64.deb"
        shutil.copy(cached, deb)
        root = self.run_dir / "repository"
        fingerprint = build_repository([deb], root, self.run_dir / "repository-gnupg")
        ca, cert, key = server_certificate(GATEWAY, self.run_dir / "repository-tls")
        self.network.start_service("repository", "offline.rehearsal.repository",
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

    def make_bucket(self, registration: Registration) -> tuple[str, str]:
        """What the MinIO provider's bucket resource does, against the S3 stand-in."""
        assert self.network is not None and self.result is not None
        bucket = registration.plain_inputs["bucket"]
        ca = self.run_dir / "stack-ca.pem"
        ca.write_text(self.result.resolved["output:caCertificate"].value)
        proc = self.network.run(RUNNER, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(ca),
                                         "-X", "PUT", f"https://{OBJECT_STORE_ADDRESS}:{API_PORT}/{bucket}"])
        if proc.stdout != "200":
            return "failed", f"PUT /{bucket}: {proc.stdout} {proc.stderr}"
        return "ok", f"bucket {bucket} made on the S3 stand-in"

    def stood_in(self, registration: Registration) -> tuple[str, str]:
        return "stood in", "not rehearsed: the S3 stand-in accepts any key, so users, policies and keys mean nothing"

    def actions(self) -> dict[str, Callable[[Registration], tuple[str, str]]]:
        return {BUCKET_TYPE: self.make_bucket, **{t: self.stood_in for t in KEY_TYPES}}

    def run_steps(self) -> float:
        assert self.result is not None and self.network is not None
        registrations: list[Registration] = self.result.engine.monitor.registrations
        self.steps = step_graph(registrations, unreachable(AVAILABLE_PACKAGES))
        runner = StepRunner(runner_netns=self.network.ns(RUNNER), work=self.run_dir, rewrite=self.rewrite,
                            actions=self.actions(), log=self.log)
        wall = runner.run(self.steps)
        chain_s, chain = longest_chain(self.steps)
        self.figures.append(f"steps: wall {wall:.1f} s, longest chain {chain_s:.1f} s ({' > '.join(chain)})")
        return wall

    def second_run(self) -> dict[str, str]:
        """Runs again every step that ran, as a second ``pulumi up`` with changed triggers would;
        returns the steps that changed something (a file placed, a service restarted), with the
        line that says so. The cloud-init wait and the host-key step are left out: they pin the
        snippet's bootstrap key, which the VM no longer has; Pulumi runs them again only for a new
        VM (their trigger is the VM's id), which has the bootstrap key again."""
        assert self.result is not None and self.network is not None
        own_keys = {k.strip() for k in self.result.resolved["output:sshHostKeys"].value.values()}
        runner = StepRunner(runner_netns=self.network.ns(RUNNER), work=self.run_dir, rewrite=self.rewrite,
                            actions=self.actions(), log=self.log)
        changed: dict[str, str] = {}
        again = [s for s in self.steps.values() if s.status in DONE and (
            s.registration.type != REMOTE or s.registration.plain_inputs["connection"]["hostKey"].strip() in own_keys)]
        for step in again:
            rerun = Step(registration=step.registration, needs=set())
            runner.run_one(rerun)
            marker = CHANGE.search(rerun.output)
            if rerun.status not in DONE or marker:
                changed[step.name] = marker.group(0) if marker else f"exit {rerun.exit_code}: {rerun.output[-300:]}"
        self.figures.append(f"second run: {len(again)} steps again, {len(changed)} changed something")
        return changed

    # --- checks after the steps ---------------------------------------------------------------

    def outputs(self) -> dict[str, Any]:
        assert self.result is not None
        return {k.split(":", 1)[1]: v.value for k, v in self.result.resolved.items() if k.startswith("output:")}

    def unit_problems(self) -> list[str]:
        """Every unit the stack installs on a machine, active with its hardening in force."""
        roles = {name: host["role"] for name, host in self.outputs()["hosts"].items()}
        return [p for name, m in self.machines.items() if m.pid1() for p in unit_problems(m, roles[name])]

    def operator(self) -> Operator:
        assert self.network is not None and self.result is not None
        plan = next(p for p in vm_plans(self.result) if p.name not in LOKI_ADDRESSES)
        user_data = yaml.safe_load(plan.user_data)
        hosts = next(f["content"] for f in user_data["write_files"] if f["path"] == "/etc/hosts")
        (self.run_dir / "loki-tools").mkdir(exist_ok=True)
        return Operator.prepare(network=self.network, runner=RUNNER, work=self.run_dir, outputs=self.outputs(),
                                etc_hosts=hosts, logcli=find_tools(self.run_dir / "loki-tools").logcli, vip_address=VIP)

    def read_back(self, operator: Operator, line: str, timeout: float = 60) -> str:
        """logcli's output once it shows ``line`` (or the last output after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            proc = operator.logcli_query('{job="rehearsal"}')
            if line in proc.stdout or time.monotonic() > deadline:
                return proc.stdout + proc.stderr
            time.sleep(1)

    def push_and_read(self) -> list[str]:
        """A line pushed through the VIP with the operator's certificate, read back with logcli."""
        operator = self.operator()
        line = marker()
        status = operator.push(line)
        if status != "204":
            return [f"push through the VIP answered {status}"]
        output = self.read_back(operator, line)
        return [] if line in output else [f"logcli did not read back the pushed line: {output[-1000:]}"]

    def failover(self) -> list[str]:
        """Powers off the machine that holds the VIP: another takes it, and no pushed line is lost."""
        operator = self.operator()
        loki_machines = {n: m for n, m in self.machines.items() if n in LOKI_ADDRESSES}
        holder = wait_for_one_holder(loki_machines, VIP)
        line = marker()
        if (status := operator.push(line)) != "204":
            return [f"push through the VIP (on {holder}) answered {status}"]
        t0 = time.monotonic()
        stopped = self.machines[holder].poweroff()
        rest = {n: m for n, m in loki_machines.items() if n != holder}
        successor = wait_for_one_holder(rest, VIP)
        moved = time.monotonic() - t0
        output = self.read_back(operator, line)
        self.figures.append(f"VIP holder {holder} powered off ({stopped:.1f} s): VIP on {successor} "
                            f"{moved:.1f} s after the poweroff began")
        problems = [] if line in output else [f"the line pushed before {holder} went is lost: {output[-1000:]}"]
        after = marker()
        if (status := operator.push(after)) != "204":
            problems.append(f"push after the failover answered {status}")
        return problems

    def change_setting(self, **settings: object) -> tuple[list[str], list[str]]:
        """Runs the program again with ``settings`` changed, and then exactly the steps the plan's
        diff names as changed, in their order. Returns (the steps re-run, problems): a step not
        ok, or Loki nodes restarted at the same time (each node's apply must end before the next
        one's begins)."""
        assert self.network is not None and self.result is not None
        before = build_manifest(self.result, stack="homelab")
        after_result = self.program(**settings)
        diff = diff_manifests(before, build_manifest(after_result, stack="homelab"))
        named = {c.name for c in diff.changes if c.type in (REMOTE, LOCAL)}
        graph = step_graph(after_result.engine.monitor.registrations, unreachable(AVAILABLE_PACKAGES))
        steps = {urn: replace(s, needs={n for n in s.needs if graph[n].name in named})
                 for urn, s in graph.items() if s.name in named}
        runner = StepRunner(runner_netns=self.network.ns(RUNNER), work=self.run_dir, rewrite=self.rewrite,
                            actions=self.actions(), log=self.log)
        wall = runner.run(steps)
        problems = [f"{s.name}: {s.status} {s.output[-500:]}" for s in steps.values() if s.status not in DONE]
        applies = sorted((s for s in steps.values() if s.name.startswith("loki-loki-") and s.name.endswith("-apply")),
                         key=lambda s: s.started)
        for first, second in itertools.pairwise(applies):
            if second.started < first.started + first.seconds:
                problems.append(f"{second.name} began before {first.name} ended: two Loki nodes restarted at once")
        restarted = [s.name for s in applies if "restarting loki.service" in s.output]
        self.figures.append(f"setting change {settings}: {len(steps)} steps re-run in {wall:.1f} s, "
                            f"Loki restarted one node at a time on {restarted}")
        return sorted(s.name for s in steps.values()), problems

    def report(self) -> str:
        lines = ["", "steps:"]
        for step in sorted(self.steps.values(), key=lambda s: (s.status != "ok", s.started or 1e12, s.name)):
            detail = f"{step.seconds:6.1f} s" if step.status in ("ok", "failed") else ""
            why = step.not_rehearsed or (step.output if step.status == "skipped" else "")
            lines.append(f"  {step.status:14} {step.name:45} {step.host:14} {detail} {why}".rstrip())
        for step in self.steps.values():
            if step.status == "failed":
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
        failed_steps = [s.name for s in rehearsal.steps.values() if s.status == "failed"]
        # The checks mean something only on a stack whose steps all went through.
        problems = [f"steps failed: {', '.join(failed_steps)}; no check run"] if failed_steps else []
        checks: list[Callable[[], list[str]]] = [
            lambda: [f"second run changed {name}: {line}" for name, line in rehearsal.second_run().items()],
            rehearsal.unit_problems, rehearsal.push_and_read,
            lambda: rehearsal.change_setting(lokiRetention="720h")[1], rehearsal.failover]
        for check in checks if not failed_steps else []:
            try:
                problems += check()
            except (AssertionError, RuntimeError, subprocess.TimeoutExpired) as error:
                problems.append(f"{error}")
        failed = bool(problems)
        print(rehearsal.report())
        print("\nchecks: " + ("all passed" if not problems else "\n  ".join(["FAILED", *problems])))
    finally:
        if args.keep:
            print(f"\nkept running; take it down with: python -m offline.rehearsal teardown --run-dir {run_dir}")
        else:
            rehearsal.close()
    return 1 if failed else 0
