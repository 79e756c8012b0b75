"""Real VRRP failover with the keepalived configs the project renders.

Three keepalived daemons, each in its own network namespace on a private bridge (addresses in
198.18.0.0/24 only, set through the stack's settings), each next to a small HTTPS server that
stands in for Loki's /ready (the node's real server certificate, client certificates required).
The daemons read the rendered keepalived.conf; the health check's certificate files sit on a
private tmpfs over /etc/keepalived in each daemon's own mount namespace. Only script_user differs
from the rendered file (root instead of keepalived_script, which the test host lacks).
Everything started here is stopped, and every namespace deleted, also when a step fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from components.vip import CHECK_DIR, SCRIPT_USER, STAGE_DIR
from stack.certificates import SERVER_CERT_FILE, SERVER_KEY_FILE
from stack.plan import read_stack_config, run_program
from tests.conftest import FAILOVER_TIMINGS, require_root, require_tool

ADDRESSES = {"loki-01": "198.18.0.11", "loki-02": "198.18.0.12", "loki-03": "198.18.0.13"}
VIP = "198.18.0.100"
TEST_RANGE = {  # the example stack, moved into 198.18.0.0/24 through its settings
    "networkCidr": "198.18.0.0/24", "networkGateway": "198.18.0.1", "dnsServers": ["198.18.0.1"],
    "lokiAddresses": list(ADDRESSES.values()), "vipAddress": VIP, "objectStoreAddress": "198.18.0.30",
    "grafanaAddress": "198.18.0.40", "guestInterface": "eth0", "vipCheckInterval": 1,
}
STEP_TIMEOUT_S = 20
STABLE_S = 2.0  # after convergence, every sample in this window must show exactly one holder

READY_SERVER = r'''
import http.server, os, ssl, sys
cert, key, ca, flag = sys.argv[1:5]
class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/ready" and os.path.exists(flag)
        self.send_response(200 if ok else 503); self.end_headers(); self.wfile.write(b"ready\n" if ok else b"no\n")
    def log_message(self, *args): pass
server = http.server.ThreadingHTTPServer(("0.0.0.0", 3100), Ready)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
context.load_verify_locations(ca)
context.verify_mode = ssl.CERT_REQUIRED
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
'''


@dataclass
class Lab:
    prefix: str
    run: Path
    keepalived: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs_open: dict[str, Any] = field(default_factory=dict)
    servers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)

    def ns(self, node: str) -> str:
        return f"{self.prefix}{node[-2:]}"

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def holders(self) -> list[str]:
        found = []
        for node in ADDRESSES:
            out = subprocess.run(["ip", "-n", self.ns(node), "-4", "-o", "addr", "show", "dev", "eth0"],
                                 capture_output=True, text=True, timeout=10, check=False).stdout
            if f"inet {VIP}/" in out:
                found.append(node)
        return found

    def start_keepalived(self, node: str) -> None:
        d = self.run / node
        script = (f'mount -t tmpfs tmpfs /etc/keepalived && mkdir -p {CHECK_DIR} && cp "$1"/check/* {CHECK_DIR}/ '
                  f'&& exec keepalived -n -l -D -f "$1/keepalived.conf" -p "$1/k.pid" -r "$1/v.pid" '
                  f'-c "$1/c.pid" -b "$1/b.pid"')
        log = open(d / "keepalived.log", "ab")  # noqa: SIM115 (the daemon writes it until stopped)
        self.logs_open[node] = log
        self.keepalived[node] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(node), "unshare", "-m", "sh", "-c", script, "sh", str(d)],
            stdout=log, stderr=subprocess.STDOUT)

    def stop_keepalived(self, node: str) -> None:
        proc = self.keepalived.pop(node)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        self.logs_open.pop(node).close()

    def set_ready(self, node: str, ready: bool) -> None:
        flag = self.run / node / "ready"
        if ready:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def wait_for(self, expected: str | None, label: str, since: float) -> float:
        """Seconds from ``since`` (the event) until exactly ``expected`` holds the VIP (any single
        node if None); then every sample for STABLE_S seconds must show that same single holder."""
        start = since
        while True:
            owners = self.holders()
            if len(owners) == 1 and (expected is None or owners == [expected]):
                elapsed = time.monotonic() - start
                break
            if time.monotonic() - start > STEP_TIMEOUT_S:
                pytest.fail(f"{label}: expected {expected or 'one node'} to hold {VIP}, holders {owners} "
                            f"after {STEP_TIMEOUT_S}s\n{self.logs()}")
            time.sleep(0.05)
        holder = owners[0]
        until = time.monotonic() + STABLE_S
        while time.monotonic() < until:
            now = self.holders()
            assert now == [holder], f"{label}: after converging on {holder}, the VIP was held by {now}"
            time.sleep(0.05)
        FAILOVER_TIMINGS.append(f"{label}: VIP on {holder} after {elapsed * 1000:.0f} ms")
        return elapsed

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{(self.run / n / 'keepalived.log').read_text(errors='replace')[-3000:]}"
                         for n in ADDRESSES if (self.run / n / "keepalived.log").exists())


def rendered_files(nopreempt: bool) -> dict[str, dict[str, str]]:
    """The files the project renders for each Loki node, with the test range's addresses."""
    result = run_program("homelab", read_stack_config("homelab", overrides={**TEST_RANGE, "vipNoPreempt": nopreempt}))
    files: dict[str, dict[str, str]] = {n: {} for n in ADDRESSES}
    for i, hf in enumerate(result.returned.host_files):
        if hf.host in files:
            files[hf.host][hf.path] = result.resolved[f"file:{i}"].value
    return files


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    require_root()
    for tool in ("keepalived", "ip", "curl", "unshare"):
        require_tool(tool)
    lab = Lab(prefix=f"lkv{os.getpid() % 100000}-", run=tmp_path)
    try:
        bridge = f"{lab.prefix}br"
        lab.ip("netns", "add", bridge)
        lab.namespaces.append(bridge)
        lab.ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        lab.ip("-n", bridge, "link", "set", "br0", "up")
        for node, address in ADDRESSES.items():
            ns = lab.ns(node)
            lab.ip("netns", "add", ns)
            lab.namespaces.append(ns)
            lab.ip("-n", bridge, "link", "add", f"v{node[-2:]}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            lab.ip("-n", bridge, "link", "set", f"v{node[-2:]}", "master", "br0", "up")
            lab.ip("-n", ns, "link", "set", "lo", "up")
            lab.ip("-n", ns, "link", "set", "eth0", "up")
            lab.ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        yield lab
    finally:
        for node in list(lab.keepalived):
            lab.stop_keepalived(node)
        for log in lab.logs_open.values():
            log.close()
        for proc in lab.servers.values():
            proc.kill()
            proc.wait(timeout=15)
        for ns in lab.namespaces:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=30)
        leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
        assert lab.prefix not in leftover, f"namespaces left behind: {leftover}"


def prepare(lab: Lab, files: dict[str, dict[str, str]]) -> None:
    """Write each node's rendered files where its daemons read them, start the /ready servers."""
    (lab.run / "ready_server.py").write_text(READY_SERVER)
    for node, node_files in files.items():
        d = lab.run / node
        (d / "check").mkdir(parents=True)
        conf = node_files[f"{STAGE_DIR}/keepalived.conf"]
        assert f"script_user {SCRIPT_USER}" in conf and "unicast_peer" in conf
        (d / "keepalived.conf").write_text(conf.replace(f"script_user {SCRIPT_USER}", "script_user root"))
        for name in ("ca.pem", "client.pem", "client.key"):
            (d / "check" / name).write_text(node_files[f"{CHECK_DIR}/{name}"])
        (d / "server.pem").write_text(node_files[SERVER_CERT_FILE])
        (d / "server.key").write_text(node_files[SERVER_KEY_FILE])
        lab.set_ready(node, True)
        lab.servers[node] = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns(node), sys.executable, str(lab.run / "ready_server.py"),
             str(d / "server.pem"), str(d / "server.key"), str(d / "check" / "ca.pem"), str(d / "ready")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for node in files:  # the check itself, as keepalived will run it, must pass before we start
        ca, cert, key = (str(lab.run / node / "check" / n) for n in ("ca.pem", "client.pem", "client.key"))
        for _ in range(100):
            ok = subprocess.run(["ip", "netns", "exec", lab.ns(node), "curl", "-fsS", "-m", "1", "-o", "/dev/null",
                                 "--cacert", ca, "--cert", cert, "--key", key, "https://127.0.0.1:3100/ready"],
                                capture_output=True, timeout=10, check=False).returncode == 0
            if ok:
                break
            time.sleep(0.1)
        assert ok, f"{node}: the HTTPS /ready stand-in does not answer the check's request"


def test_the_vip_follows_loki_readiness_and_keepalived(lab):
    prepare(lab, rendered_files(nopreempt=False))
    t = time.monotonic()
    for node in ADDRESSES:
        lab.start_keepalived(node)
    lab.wait_for("loki-01", "cold start: the main compactor's node takes the VIP", t)
    t = time.monotonic()
    lab.stop_keepalived("loki-01")
    lab.wait_for("loki-02", "loki-01 keepalived stopped (SIGTERM): next priority takes over", t)
    t = time.monotonic()
    lab.start_keepalived("loki-01")
    lab.wait_for("loki-01", "loki-01 keepalived back: preempts", t)
    t = time.monotonic()
    lab.set_ready("loki-01", False)
    lab.wait_for("loki-02", "loki-01 /ready fails: gives the VIP away", t)
    t = time.monotonic()
    lab.set_ready("loki-01", True)
    lab.wait_for("loki-01", "loki-01 /ready recovers: takes the VIP back", t)
    t = time.monotonic()
    lab.set_ready("loki-01", False)
    lab.set_ready("loki-02", False)
    lab.wait_for("loki-03", "loki-01 and loki-02 not ready: the last healthy node holds it", t)


def test_with_nopreempt_the_vip_stays_where_it_is(lab):
    prepare(lab, rendered_files(nopreempt=True))
    t = time.monotonic()
    for node in ADDRESSES:
        lab.start_keepalived(node)
    lab.wait_for(None, "nopreempt cold start: one node takes the VIP", t)
    first = lab.holders()[0]
    t = time.monotonic()
    lab.stop_keepalived(first)
    lab.wait_for(None, f"nopreempt: {first} keepalived stopped, another takes over", t)
    second = lab.holders()[0]
    assert second != first
    lab.start_keepalived(first)
    time.sleep(6)  # longer than master_down: a preempting node would have taken the VIP back by now
    lab.wait_for(second, f"nopreempt: {first} back, the VIP stays on {second}", time.monotonic())
