"""A live Loki cluster from the files the program renders, in a private network of namespaces.

Each Loki node runs the real Loki with its own rendered config, env file and TLS files, started
the way its systemd drop-in says (the ``ExecStart=`` flags, the ``EnvironmentFile=``, the
``LoadCredential=`` files copied into ``/run/credentials/loki.service`` as systemd does), in a
host of its own: its address, its host name, its ``/etc/hosts`` from its cloud-init user-data,
``/var/lib/loki`` private to it. What differs from a VM, on purpose and only here:

- Loki runs as root, without the unit's hardening (no systemd in a network namespace);
- the object store is a stand-in: moto's S3 server (``moto[server]``, Python), serving the
  plan's object-store certificate on the object store's address; the bucket is created with
  the S3 API, as the MinIO provider would;
- keepalived runs with ``script_user root`` (see ``lab_stack.prepare_keepalived``);
- nginx (the gateway) runs with its rendered config in a main config like Debian's, its pid file,
  logs and TLS files in the lab (see ``lab_stack.gateway_command``);
- the node's firewall rules are loaded with ``nft -f`` (no systemd to run their unit), naming root
  as the one local user that opens cluster connections (``lab_stack.lab_firewall_rules``);
- the node's config names the runtime config (the limits) in the lab's directory, not in /etc/loki;
- Loki may be started with extra flags (``loki_flags``, after the config file, so they win): a
  test that must see the compactor work in minutes, not hours, shortens its intervals so.

Every process is stopped by its pid and every namespace removed when the lab closes, also when a
test fails (``PrivateNetwork``).
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from components.loki import CONFIG_FILE, DROPIN_FILE, STAGE_DIR
from components.loki_config import (
    CREDENTIALS_DIR,
    HTTP_PORT,
    LOKI_LOCAL_PORT,
)
from components.loki_gateway import ROLE_OPERATOR
from components.loki_limits import RUNTIME_FILE
from components.objectstore import API_PORT
from offline import cluster_ports
from offline.real_loki import LokiTools
from tests.labs.lab_stack import (
    CLIENT_ADDRESS,
    LOKI_ADDRESSES,
    OBJECT_STORE_ADDRESS,
    LabPlan,
    gateway_command,
    keepalived_command,
    lab_firewall_rules,
)
from tests.labs.lab_stack import prepare_keepalived as prepare_keepalived_files
from tests.labs.needs import missing, require_root, require_tool
from tests.labs.netns import PrivateNetwork

OBJECT_STORE_CERT_DIR = "/etc/objectstore/certs"
CLIENT = "client"
S3 = "s3"
READY_TIMEOUT_S = 120
OPERATOR_DIR = ".config/loki-stack"
"""Where the README puts the operator's CA, certificate and key (``logcliEnvironment`` points there)."""

NODE_START = """
set -eu
hostname "$1"
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p "$3"
cp "$2"/credentials/* "$3"/
chmod 0400 "$3"/*
mount --bind "$2/var-lib" /var/lib
mount --bind "$2/hosts" /etc/hosts
set -a
. "$2/env"
set +a
shift 3
exec "$@"
"""
"""Runs in the node's namespace, in private mount and UTS namespaces: what systemd and the VM
would provide (host name, credentials, data directory, /etc/hosts, environment), then Loki."""


@contextlib.contextmanager
def small_data_disk(run: Path, node: str, mib: int) -> Iterator[Path]:
    """``node``'s ``/var/lib`` (its data directory) as a file system of its own of ``mib`` MiB, as a
    data disk that can fill: a tmpfs, mounted before the node starts and unmounted when the block
    ends (after the lab's processes: open the block outside the lab's network)."""
    path = run / node / "var-lib"
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0755", "tmpfs", str(path)], check=True,
                   capture_output=True, timeout=30)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=30)


def env_values(text: str) -> dict[str, str]:
    """The ``NAME="value"`` lines of a rendered env file (``EnvironmentFile=``)."""
    return dict(re.findall(r'^(\w+)="([^"]*)"$', text, re.MULTILINE))


@dataclass(frozen=True)
class Dropin:
    exec_start: list[str]
    environment_file: str
    credentials: dict[str, str]
    """Credential id -> the host file systemd copies in."""


def parse_dropin(text: str) -> Dropin:
    """What the rendered drop-in tells systemd: the last ``ExecStart=``, the env file, the credentials."""
    starts = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ExecStart=")]
    env = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("EnvironmentFile=")]
    creds = dict(line.split("=", 1)[1].split(":", 1) for line in text.splitlines()
                 if line.startswith("LoadCredential="))
    assert starts and starts[-1] and len(env) == 1 and creds, (
        f"the drop-in lacks ExecStart, env file or credentials:\n{text}")
    return Dropin(exec_start=shlex.split(starts[-1]), environment_file=env[0], credentials=creds)


@dataclass(frozen=True)
class Response:
    status: int
    body: str
    seconds: float

    def json(self) -> object:
        return json.loads(self.body)


def curl_response(proc: subprocess.CompletedProcess[str]) -> Response:
    """What curl ``-w "\\n%{http_code} %{time_total}"`` wrote: status 0 and curl's message when it failed."""
    body, _, tail = proc.stdout.rpartition("\n")
    status, seconds = tail.split() if tail.count(" ") == 1 else ("0", "0")
    return Response(status=int(status), body=body if proc.returncode == 0 else proc.stderr, seconds=float(seconds))


@dataclass
class LokiLab:
    network: PrivateNetwork
    plan: LabPlan
    tools: LokiTools
    loki_flags: tuple[str, ...] = ()
    """Flags added to every Loki start (they override the config file)."""
    started: dict[str, float] = field(default_factory=dict)
    """Node -> monotonic time its Loki was started."""

    @property
    def run(self) -> Path:
        return self.network.run_dir

    @property
    def client_home(self) -> Path:
        return self.run / CLIENT / "home"

    # --- setting up ------------------------------------------------------------------------

    def add_hosts(self) -> None:
        for node, address in LOKI_ADDRESSES.items():
            self.network.add_host(node, address)
        self.network.add_host(S3, OBJECT_STORE_ADDRESS)
        self.network.add_host(CLIENT, CLIENT_ADDRESS)

    def prepare_client(self) -> None:
        """The operator's files as the README has them written from the stack's outputs."""
        operator = self.client_home / OPERATOR_DIR
        operator.mkdir(parents=True)
        (operator / "ca.pem").write_text(self.plan.outputs["caCertificate"])
        (operator / "operator.pem").write_text(self.plan.outputs["operatorCertificate"])
        (operator / "operator.key").write_text(self.plan.outputs["operatorPrivateKey"])
        (operator / "operator.key").chmod(0o600)
        # Not a stack VM: any host name resolution it has; the stack's names as every VM has them.
        (self.run / CLIENT / "hosts").write_text(self.plan.etc_hosts("grafana"))

    def s3_keys(self) -> tuple[str, str]:
        env = self.plan.files[next(iter(LOKI_ADDRESSES))][f"{STAGE_DIR}/lokistack.env"]
        values = env_values(env)
        return values["LOKI_S3_ACCESS_KEY"], values["LOKI_S3_SECRET_KEY"]

    def bucket_keys(self, prefix: str = "") -> list[str]:
        """The keys of every object in Loki's bucket under ``prefix`` (the S3 API, as Loki lists)."""
        access, secret = self.s3_keys()
        d = self.run / S3
        url = f"https://{OBJECT_STORE_ADDRESS}:{API_PORT}/{self.plan.outputs['lokiBucket']}"
        namespace = "{http://s3.amazonaws.com/doc/2006-03-01/}"
        keys: list[str] = []
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix, **({"continuation-token": token} if token else {})}
            proc = self.network.run(S3, ["curl", "-sS", "-f", "--cacert", str(d / "ca.pem"), "--aws-sigv4",
                                         "aws:amz:us-east-1:s3", "--user", f"{access}:{secret}",
                                         f"{url}?{urllib.parse.urlencode(query)}"], timeout=30)
            assert proc.returncode == 0, f"listing the bucket under {prefix!r} failed: {proc.stderr}"
            root = ElementTree.fromstring(proc.stdout)  # noqa: S314 (the lab's own S3 stand-in answers)
            keys += [e.text or "" for e in root.iter(f"{namespace}Key")]
            token = root.findtext(f"{namespace}NextContinuationToken") or ""
            if root.findtext(f"{namespace}IsTruncated") != "true" or not token:
                return keys

    def start_object_store(self) -> None:
        """moto's S3 server with the plan's object-store certificate, and Loki's bucket in it."""
        d = self.run / S3
        d.mkdir(exist_ok=True)
        files = self.plan.files[S3]
        (d / "public.crt").write_text(files[f"{OBJECT_STORE_CERT_DIR}/public.crt"])
        (d / "private.key").write_text(files[f"{OBJECT_STORE_CERT_DIR}/private.key"])
        (d / "ca.pem").write_text(self.plan.outputs["caCertificate"])
        server = [sys.executable, "-m", "moto.server", "-H", OBJECT_STORE_ADDRESS, "-p", str(API_PORT),
                  "-c", str(d / "public.crt"), "-k", str(d / "private.key")]
        self.network.start(S3, S3, server,
                           # Loki speaks path-style to https://<object store FQDN>:9000/<bucket>.
                           env={"S3_IGNORE_SUBDOMAIN_BUCKETNAME": "1"})
        access, secret = self.s3_keys()
        deadline = time.monotonic() + 60
        url = f"https://{OBJECT_STORE_ADDRESS}:{API_PORT}/{self.plan.outputs['lokiBucket']}"
        while True:
            proc = self.network.run(S3, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
                                         str(d / "ca.pem"), "--aws-sigv4", "aws:amz:us-east-1:s3", "--user",
                                         f"{access}:{secret}", "-X", "PUT", url], timeout=30)
            if proc.stdout == "200":
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the S3 stand-in did not create the bucket: {proc.stdout} {proc.stderr}\n"
                                     f"{self.network.daemons[S3].log_text()[-3000:]}")
            time.sleep(0.3)

    def prepare_node(self, node: str) -> Dropin:
        """The node's files where its start script expects them; returns the parsed drop-in."""
        files = self.plan.files[node]
        dropin = parse_dropin(files[f"{STAGE_DIR}/10-lokistack.conf"])
        assert dropin.environment_file.startswith("/etc/loki/"), dropin.environment_file
        d = self.run / node
        (d / "credentials").mkdir(parents=True, exist_ok=True)
        for credential, source in dropin.credentials.items():
            (d / "credentials" / credential).write_text(files[source])
        config = files[f"{STAGE_DIR}/config.yml"]
        assert f"file: {RUNTIME_FILE}" in config, f"{node}: the config does not read the runtime config"
        (d / "config.yml").write_text(config.replace(f"file: {RUNTIME_FILE}", f"file: {d / 'runtime.yml'}"))
        (d / "runtime.yml").write_text(files[f"{STAGE_DIR}/runtime.yml"])
        (d / "env").write_text(files[f"{STAGE_DIR}/lokistack.env"])
        (d / "hosts").write_text(self.plan.etc_hosts(node))
        (d / "var-lib" / "loki").mkdir(parents=True, exist_ok=True)
        prepare_keepalived_files(d / "keepalived", files)
        return dropin

    def start_node(self, node: str) -> None:
        dropin = self.prepare_node(node)
        d = self.run / node
        argv = [str(self.tools.loki) if a == dropin.exec_start[0] else a for a in dropin.exec_start]
        assert f"-config.file={CONFIG_FILE}" in argv, f"{node}: {DROPIN_FILE} starts Loki with {argv}"
        argv = [f"-config.file={d / 'config.yml'}" if a == f"-config.file={CONFIG_FILE}" else a for a in argv]
        argv += self.loki_flags
        self.started[node] = time.monotonic()
        self.network.start(f"loki-{node}", node, ["unshare", "-m", "-u", "sh", "-c", NODE_START, "sh", node, str(d),
                                                  CREDENTIALS_DIR, *argv])

    def start_gateway(self, node: str) -> None:
        """nginx with the node's rendered gateway config, in front of the node's Loki."""
        self.network.start(f"gateway-{node}", node, gateway_command(self.run / node / "gateway", self.plan.files[node]))

    def load_firewall(self, node: str) -> None:
        """The node's rendered nftables rules, loaded in its namespace as its firewall unit does."""
        rules = self.run / node / "firewall.nft"
        rules.parent.mkdir(parents=True, exist_ok=True)
        rules.write_text(lab_firewall_rules(self.plan.files[node]))
        proc = self.network.run(node, ["nft", "-f", str(rules)])
        assert proc.returncode == 0, f"{node}: nft -f rejected the rendered rules: {proc.stderr}"

    def reachable(self, host: str, address: str, port: int, timeout: float = 2.0) -> bool:
        """Whether a TCP connection from ``host`` to ``address:port`` is accepted."""
        probe = ("import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), "
                 f"timeout={timeout}).close()\nexcept OSError:\n    sys.exit(1)\n")
        return self.network.run(host, [sys.executable, "-c", probe, address, str(port)], timeout=30).returncode == 0

    def cluster_ports_as(self, host: str, user: str, addresses: list[str]) -> dict[str, str]:
        """What a local ``user`` of ``host`` gets from the cluster ports of each address (the
        firewall's output rules): ``offline.cluster_ports``' results per address."""
        probe = ["/usr/bin/python3", "-c", cluster_ports.CLUSTER_PORT_PROBE, *addresses]
        proc = self.network.run(host, ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *probe],
                                timeout=60)
        assert proc.returncode == 0, f"{host}: the probe as {user} failed: {proc.stderr}"
        return cluster_ports.parse(proc.stdout)

    def stop_node(self, node: str, sig: signal.Signals = signal.SIGTERM) -> float:
        return self.network.stop(f"loki-{node}", sig)

    def start_keepalived(self, node: str) -> None:
        self.network.start(f"keepalived-{node}", node, keepalived_command(self.run / node / "keepalived"))

    # --- talking to it ---------------------------------------------------------------------

    def identity(self, role: str) -> tuple[Path, Path]:
        """Files of a certificate of the stack with ``role`` (and its key) on the client host."""
        d = self.run / CLIENT / "identities"
        cert, key = d / f"{role}.pem", d / f"{role}.key"
        if not cert.exists():
            d.mkdir(parents=True, exist_ok=True)
            cert.write_text(self.plan.identities[role][0])
            key.write_text(self.plan.identities[role][1])
            key.chmod(0o600)
        return cert, key

    def request(self, node: str, path: str, *, method: str = "GET", data: str | None = None,
                content_type: str = "application/json", client_cert: bool = True,
                role: str = ROLE_OPERATOR, address: str | None = None, max_time: float = 30) -> Response:
        """An HTTPS request from the client host to ``node``'s gateway (or to ``address``: the VIP),
        with a certificate of ``role`` (the operator's by default) or none, given up after
        ``max_time`` seconds. A failed connection has status 0 and curl's message as its body."""
        operator = self.client_home / OPERATOR_DIR
        argv = ["curl", "-sS", "-m", str(max_time), "-w", "\n%{http_code} %{time_total}", "--cacert",
                str(operator / "ca.pem"), "-X", method]
        if client_cert and role == ROLE_OPERATOR:
            argv += ["--cert", str(operator / "operator.pem"), "--key", str(operator / "operator.key")]
        elif client_cert:
            cert, key = self.identity(role)
            argv += ["--cert", str(cert), "--key", str(key)]
        if data is not None:
            argv += ["-H", f"Content-Type: {content_type}", "--data-binary", "@-"]
        proc = self.network.run(CLIENT, [*argv, f"https://{address or LOKI_ADDRESSES[node]}:{HTTP_PORT}{path}"],
                                timeout=max_time + 30, stdin=data)
        return curl_response(proc)

    def local_request(self, node: str, path: str, *, method: str = "GET") -> Response:
        """An HTTPS request to ``node``'s Loki itself, on its loopback listener behind the gateway, from
        the node (as root: the firewall lets root and the gateway's workers in) with the node's own
        certificate, as the gateway sends it."""
        tls = self.run / node / "credentials"
        proc = self.network.run(node, [
            "curl", "-sS", "-m", "30", "-w", "\n%{http_code} %{time_total}", "--cacert", str(tls / "ca.pem"),
            "--cert", str(tls / "server.pem"), "--key", str(tls / "server.key"), "-X", method,
            "--resolve", f"localhost:{LOKI_LOCAL_PORT}:127.0.0.1", f"https://localhost:{LOKI_LOCAL_PORT}{path}"],
            timeout=60)
        return curl_response(proc)

    def push(self, node: str, labels: dict[str, str], lines: list[str], role: str = ROLE_OPERATOR,
             at_ns: int | None = None) -> Response:
        """``lines`` one nanosecond apart, from now or from ``at_ns``."""
        now = time.time_ns() if at_ns is None else at_ns
        values = [[str(now + i), line] for i, line in enumerate(lines)]
        return self.request(node, "/loki/api/v1/push", method="POST", role=role,
                            data=json.dumps({"streams": [{"stream": labels, "values": values}]}))

    def query_lines(self, node: str, query: str, since_s: int = 3600,
                    role: str = ROLE_OPERATOR) -> tuple[list[str], Response]:
        end = time.time_ns()
        params = urllib.parse.urlencode({"query": query, "start": end - since_s * 10**9, "end": end + 10**9,
                                         "limit": 5000, "direction": "forward"})
        response = self.request(node, f"/loki/api/v1/query_range?{params}", role=role)
        if response.status != 200:
            return [], response
        result = response.json()
        assert isinstance(result, dict)
        return [v[1] for stream in result["data"]["result"] for v in stream["values"]], response

    def metric(self, node: str, name: str) -> float | None:
        response = self.request(node, "/metrics")
        assert response.status == 200, f"{node}: /metrics answered {response.status}: {response.body[:300]}"
        match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", response.body, re.MULTILINE)
        return float(match.group(1)) if match else None

    def metric_sum(self, node: str, name: str) -> float:
        """The sum of every series of ``name`` (0 where Loki exposes none yet)."""
        response = self.request(node, "/metrics")
        assert response.status == 200, f"{node}: /metrics answered {response.status}: {response.body[:300]}"
        return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", response.body,
                                                 re.MULTILINE))

    def logcli(self, *args: str, timeout: float = 60) -> tuple[int, str]:
        """logcli on the client host, configured only by ``eval "$(pulumi stack output logcliEnvironment)"``
        with the operator's files where the README puts them; names resolve as on a stack host."""
        script = 'mount --bind "$1" /etc/hosts && eval "$2" && shift 2 && exec "$@"'
        proc = self.network.run(CLIENT, ["unshare", "-m", "sh", "-c", script, "sh", str(self.run / CLIENT / "hosts"),
                                         self.plan.outputs["logcliEnvironment"], str(self.tools.logcli), *args],
                                timeout=timeout, env={"HOME": str(self.client_home)})
        return proc.returncode, proc.stdout + proc.stderr

    def wait_ready(self, nodes: list[str], timeout: float = READY_TIMEOUT_S) -> dict[str, float]:
        """Seconds from each node's start until it answered ``/ready`` with 200."""
        ready: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(ready) < len(nodes):
            for node in nodes:
                if node not in ready and self.request(node, "/ready").status == 200:
                    ready[node] = time.monotonic() - self.started[node]
            if time.monotonic() > deadline:
                waiting = [n for n in nodes if n not in ready]
                raise AssertionError(f"not ready after {timeout}s: {waiting}\n{self.logs(waiting)}")
            time.sleep(0.25)
        return ready

    def log(self, node: str) -> str:
        daemon = self.network.daemons.get(f"loki-{node}")
        path = daemon.log_path if daemon else self.run / f"loki-{node}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self, nodes: list[str]) -> str:
        return "\n".join(f"--- {n}\n{self.log(n)[-4000:]}" for n in nodes)


LOAD_DELETES = "loki_compactor_load_pending_requests_attempts_total"
SWEPT = "loki_boltdb_shipper_retention_sweeper_chunk_deleted_duration_seconds_count"
WAL_CORRUPTIONS = "loki_ingester_wal_corruptions_total"
"""Metrics the alert rules read that Loki shows only once they count (the live tests)."""


def require_lab_tools() -> None:
    require_root()
    for tool in ("ip", "curl", "unshare", "keepalived", "nft", "nginx"):
        require_tool(tool)
    try:
        import moto.server  # noqa: F401, PLC0415 (the S3 stand-in; only these tests need it)
    except ImportError:
        missing("moto[server] is not installed (requirements-dev.txt)")


def start_cluster(lab: LokiLab, nodes: list[str]) -> dict[str, float]:
    """Object store, then every node; returns each node's seconds from start to /ready."""
    lab.add_hosts()
    lab.prepare_client()
    lab.start_object_store()
    for node in nodes:  # as deployed: the firewall is in place before Loki first starts
        lab.load_firewall(node)
    for node in nodes:
        lab.start_gateway(node)
        lab.start_node(node)
    return lab.wait_ready(nodes)
