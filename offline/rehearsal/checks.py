"""What the rehearsal checks once the steps ran: the services the stack installs are running with
their hardening in force, the Loki cluster answers through the VIP, a line pushed with the
operator's certificate is read back with logcli set up only from the stack's ``logcliEnvironment``;
where the VIP is (the life events, ``life_events.py``, use it)."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from components import firewall, loki, loki_gateway, objectstore, vip, vip_reboot
from components.loki_config import HTTP_PORT, LOKI_LOCAL_PORT
from offline.rehearsal.machines import Machine
from offline.rehearsal.network import RehearsalNetwork
from offline.rehearsal.traffic import push_body
from stack.certificates import CA_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE

HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes", "ProtectHome": "yes"}
UNITS = {
    "loki": {loki.UNIT: {**HARDENING, "User": "loki", "Group": "loki"}, loki_gateway.UNIT: {},
             vip.UNIT: {}, firewall.UNIT: {}, vip_reboot.LEAVE_UNIT: {}},
    "objectstore": {objectstore.UNIT: {**HARDENING, "User": objectstore.SERVICE_USER}},
}
"""Per role: each unit the stack installs that this machine runs, and the properties it must have."""
VIP_TIMEOUT_S = 60
OPERATOR_DIR = ".config/loki-stack"


def unit_properties(machine: Machine, unit: str, *names: str) -> dict[str, str]:
    """``systemctl show`` of ``unit`` on ``machine``: the properties ``names``, by name."""
    show = machine.exec(["systemctl", "show", unit, *(f"-p{name}" for name in names)])
    return dict(line.split("=", 1) for line in show.stdout.splitlines() if "=" in line)


def loki_metrics(machine: Machine) -> str | None:
    """The node's Loki ``/metrics`` (its loopback listener, with the node's certificate); ``None``
    when it does not answer."""
    proc = machine.exec(["curl", "-fsS", "--max-time", "5", "--cacert", CA_FILE, "--cert", SERVER_CERT_FILE,
                         "--key", SERVER_KEY_FILE, f"https://127.0.0.1:{LOKI_LOCAL_PORT}/metrics"])
    return proc.stdout if proc.returncode == 0 else None


def loki_ready(machine: Machine) -> str:
    """'' when the node's Loki answers ``/ready`` on its loopback listener, else what curl said."""
    proc = machine.exec(["curl", "-fsS", "-o", "/dev/null", "--max-time", "5", "--cacert", CA_FILE, "--cert",
                         SERVER_CERT_FILE, "--key", SERVER_KEY_FILE, f"https://127.0.0.1:{LOKI_LOCAL_PORT}/ready"])
    return "" if proc.returncode == 0 else proc.stderr.strip() or f"curl exited {proc.returncode}"


def metric_sum(metrics: str, name: str) -> float:
    """The sum of every series of ``name`` in ``metrics`` (0 where there is none: a counter vector
    has no series until its first count)."""
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", metrics, re.MULTILINE))


def unit_problems(machine: Machine, role: str) -> list[str]:
    problems = []
    for unit, expected in UNITS.get(role, {}).items():
        props = unit_properties(machine, unit, "ActiveState", *expected)
        if props.get("ActiveState") != "active":
            problems.append(f"{machine.name}: {unit} is {props.get('ActiveState')}")
        problems += [f"{machine.name}: {unit} has {key}={props.get(key)!r}, not {value!r}"
                     for key, value in expected.items() if props.get(key) != value]
    return problems


@dataclass
class Operator:
    """The operator's machine (the rehearsal's runner): the stack's CA and operator certificate
    where the README puts them, and the stack's names as every VM has them in /etc/hosts."""
    network: RehearsalNetwork
    runner: str
    home: Path
    hosts: Path
    logcli: Path
    environment: str
    vip: str

    @classmethod
    def prepare(cls, *, network: RehearsalNetwork, runner: str, work: Path, outputs: dict[str, str], etc_hosts: str,
                logcli: Path, vip_address: str) -> Operator:
        home = work / "operator-home"
        files = home / OPERATOR_DIR
        files.mkdir(parents=True, exist_ok=True)
        (files / "ca.pem").write_text(outputs["caCertificate"])
        (files / "operator.pem").write_text(outputs["operatorCertificate"])
        (files / "operator.key").write_text(outputs["operatorPrivateKey"])
        (files / "operator.key").chmod(0o600)
        (work / "operator-hosts").write_text(etc_hosts)
        return cls(network=network, runner=runner, home=home, hosts=work / "operator-hosts", logcli=logcli,
                   environment=outputs["logcliEnvironment"], vip=vip_address)

    def curl(self, url: str, *args: str, max_time: float = 10) -> subprocess.CompletedProcess[str]:
        files = self.home / OPERATOR_DIR
        tls = ["--cacert", str(files / "ca.pem"), "--cert", str(files / "operator.pem"), "--key",
               str(files / "operator.key")]
        return self.network.run(self.runner, ["curl", "-sS", "-m", f"{max_time:g}", *tls, *args, url],
                                timeout=max_time + 20)

    def push(self, line: str, streams: int = 1) -> str:
        """``line`` pushed through the VIP (to ``streams`` streams of job rehearsal, each once); the
        HTTP status, or curl's error."""
        labels = [{"job": "rehearsal"} | ({"stream": str(i)} if streams > 1 else {}) for i in range(streams)]
        body = push_body([(stream, line) for stream in labels]).decode()
        proc = self.curl(f"https://{self.vip}:{HTTP_PORT}/loki/api/v1/push", "-o", "/dev/null", "-w", "%{http_code}",
                         "-H", "Content-Type: application/json", "--data-binary", body)
        return proc.stdout or proc.stderr

    def logcli_query(self, query: str) -> subprocess.CompletedProcess[str]:
        script = 'mount --bind "$1" /etc/hosts && eval "$2" && shift 2 && exec "$@"'
        return subprocess.run(["ip", "netns", "exec", self.network.ns(self.runner), "unshare", "-m", "sh", "-c", script,
                               "sh", str(self.hosts), self.environment, str(self.logcli), "query", "--quiet",
                               "--since=1h", query], capture_output=True, text=True, timeout=60, check=False,
                              env={"HOME": str(self.home), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def vip_holders(machines: dict[str, Machine], vip_address: str) -> list[str]:
    found = []
    for name, machine in machines.items():
        if machine.pid1() is None:
            continue
        out = machine.exec(["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
        if f"inet {vip_address}/" in out:
            found.append(name)
    return found


def keepalived_log(machines: dict[str, Machine], since: float) -> list[tuple[float, str, str]]:
    """(Unix time, node, message) of each line keepalived logged on the running machines from
    ``since`` (Unix time) on, in time order."""
    found = []
    for name, machine in machines.items():
        if machine.pid1() is None:
            continue
        journal = machine.exec(["journalctl", "-u", "keepalived.service", "-o", "short-unix", "--no-pager",
                                "-S", f"@{int(since)}"]).stdout
        for line in journal.splitlines():
            stamp, _, text = line.partition(" ")
            with contextlib.suppress(ValueError):
                found.append((float(stamp), name, text.split(": ", 1)[-1]))
    return sorted(entry for entry in found if entry[0] >= since)


def vip_masters(machines: dict[str, Machine], since: float) -> list[tuple[float, str]]:
    """(Unix time, node) of each time a node took the VIP (keepalived: "Entering MASTER STATE")
    from ``since`` (Unix time) on, in order: every move of the VIP, drained or not."""
    return [(stamp, name) for stamp, name, text in keepalived_log(machines, since) if "Entering MASTER STATE" in text]


VRRP_EVENTS = ("entering ", "priority", "script", "advert", "track file")
"""What keepalived logs about the VIP's elections (matched in any case): its states, its priorities
and why they changed."""


def election_lines(entries: list[tuple[float, str, str]], since: float) -> str:
    """The lines of ``keepalived_log`` entries about the VIP's elections, one per event, each with
    its node and its seconds from ``since``."""
    return "\n".join(f"{stamp - since:7.2f} s {name}: {text}" for stamp, name, text in entries
                     if any(event in text.lower() for event in VRRP_EVENTS))


def vip_journal(machines: dict[str, Machine], since: float) -> str:
    """keepalived's log of the VIP's elections on every machine from ``since`` (Unix time) on, in
    time order: what a failed check on the VIP's moves shows."""
    return election_lines(keepalived_log(machines, since), since)


def wait_for_one_holder(machines: dict[str, Machine], vip_address: str, timeout: float = VIP_TIMEOUT_S) -> str:
    deadline = time.monotonic() + timeout
    while True:
        holders = vip_holders(machines, vip_address)
        if len(holders) == 1:
            return holders[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"the VIP is held by {holders} after {timeout:.0f}s")
        time.sleep(0.5)


def marker() -> str:
    return f"rehearsal line {uuid.uuid4()}"
