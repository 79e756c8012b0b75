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
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from offline.engine import Registration, RunResult
from offline.plan import read_stack_config, run_program
from offline.proxmox_cloudinit import generated_mac, nocloud_network
from offline.real_loki import LOKI_VERSION, find_tools
from offline.rehearsal.machines import Machine
from offline.rehearsal.network import RehearsalNetwork, apt_mirror_hosts
from offline.rehearsal.repository import KEY_FILE_NAME, build_loki_deb, build_repository, server_certificate
from offline.rehearsal.settings import GATEWAY, RUNNER_ADDRESS, TEST_RANGE
from offline.rehearsal.steps import REMOTE, Step, StepRunner, longest_chain, step_graph, unreachable
from offline.rehearsal.template import CACHE, DIFFERENCES, build_template

VM_TYPE = "proxmoxve:index/vmLegacy:VmLegacy"
SNIPPET_TYPE = "proxmoxve:index/fileLegacy:FileLegacy"
RUNNER = "runner"
REPOSITORY_PORT = 8443
REPOSITORY_CA = "usr/local/share/ca-certificates/lokistack-rehearsal-repository.crt"
SYSTEM_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
AVAILABLE_PACKAGES = frozenset({"loki"})
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
    repository: dict[str, str] = field(default_factory=dict)
    """The setup scripts' repository parameters, as the rehearsal passes them."""

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
        url = f"https://{GATEWAY}:{REPOSITORY_PORT}"
        self.repository = {"REPO_URL": url, "KEY_URL": f"{url}/{KEY_FILE_NAME}", "KEY_FINGERPRINTS": fingerprint}
        self.figures.append(f"package repository (loki {LOKI_VERSION}): {time.monotonic() - t0:.1f} s")
        return ca.read_bytes()

    def rewrite(self, stdin: str) -> str:
        """A step's script with the rehearsal's repository in place of Grafana's."""
        for name, value in self.repository.items():
            stdin = re.sub(rf"^{name}=.*$", f"{name}={shlex.quote(value)}", stdin, flags=re.MULTILINE)
        return stdin

    def run_steps(self) -> float:
        assert self.result is not None and self.network is not None
        registrations: list[Registration] = self.result.engine.monitor.registrations
        self.steps = step_graph(registrations, unreachable(AVAILABLE_PACKAGES))
        runner = StepRunner(runner_netns=self.network.ns(RUNNER), work=self.run_dir, rewrite=self.rewrite,
                            log=self.log)
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
                            log=self.log)
        changed: dict[str, str] = {}
        again = [s for s in self.steps.values() if s.status == "ok" and (
            s.registration.type != REMOTE or s.registration.plain_inputs["connection"]["hostKey"].strip() in own_keys)]
        for step in again:
            rerun = Step(registration=step.registration, needs=set())
            runner.run_one(rerun)
            marker = CHANGE.search(rerun.output)
            if rerun.status != "ok" or marker:
                changed[step.name] = marker.group(0) if marker else f"exit {rerun.exit_code}: {rerun.output[-300:]}"
        self.figures.append(f"second run: {len(again)} steps again, {len(changed)} changed something")
        return changed

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
        changed = rehearsal.second_run()
        failed = any(s.status == "failed" for s in rehearsal.steps.values()) or bool(changed)
        print(rehearsal.report())
        for name, line in changed.items():
            print(f"SECOND RUN CHANGED {name}: {line}")
    finally:
        if args.keep:
            print(f"\nkept running; take it down with: python -m offline.rehearsal teardown --run-dir {run_dir}")
        else:
            rehearsal.close()
    return 1 if failed else 0
