"""Real VRRP failover with the keepalived configs the project renders.

Three keepalived daemons, each in its own network namespace on a private bridge (addresses in
198.18.0.0/24 only, set through the stack's settings), each next to a small HTTPS server that
stands in for Loki's /ready (the node's real server certificate, client certificates required).
The daemons read the rendered keepalived.conf; the health check's certificate files sit on a
private tmpfs over /etc/keepalived in each daemon's own mount namespace. Only script_user differs
from the rendered file (root instead of keepalived_script, which the test host lacks).
Everything started here is stopped by pid, and every namespace deleted, also when a step fails.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stack.certificates import SERVER_CERT_FILE, SERVER_KEY_FILE
from tests.conftest import figure, require_root, require_tool
from tests.lab_stack import LOKI_ADDRESSES, VIP, keepalived_command, lab_plan, prepare_keepalived, vip_holders
from tests.netns import PrivateNetwork, private_network

SECTION = "VIP failover with the real keepalived (measured)"
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
    network: PrivateNetwork

    @property
    def run(self) -> Path:
        return self.network.run_dir

    def holders(self) -> list[str]:
        return vip_holders(self.network)

    def start_keepalived(self, node: str) -> None:
        self.network.start(f"keepalived-{node}", node, keepalived_command(self.run / node))

    def stop_keepalived(self, node: str) -> None:
        self.network.stop(f"keepalived-{node}", timeout=15)

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
        figure(SECTION, f"{label}: VIP on {holder} after {elapsed * 1000:.0f} ms")
        return elapsed

    def logs(self) -> str:
        return "\n".join(f"--- {d}\n{daemon.log_text()[-3000:]}" for d, daemon in self.network.daemons.items()
                         if d.startswith("keepalived-"))


def rendered_files(nopreempt: bool) -> dict[str, dict[str, str]]:
    """The files the project renders for each Loki node, with the test range's addresses."""
    files = lab_plan(vipNoPreempt=nopreempt, vipCheckInterval=1).files
    return {node: files[node] for node in LOKI_ADDRESSES}


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    require_root()
    for tool in ("keepalived", "ip", "curl", "unshare"):
        require_tool(tool)
    with private_network(f"lkv{os.getpid() % 100000}-", tmp_path) as network:
        for node, address in LOKI_ADDRESSES.items():
            network.add_host(node, address)
        yield Lab(network)


def prepare(lab: Lab, files: dict[str, dict[str, str]]) -> None:
    """Write each node's rendered files where its daemons read them, start the /ready servers."""
    (lab.run / "ready_server.py").write_text(READY_SERVER)
    for node, node_files in files.items():
        d = lab.run / node
        prepare_keepalived(d, node_files)
        assert "unicast_peer" in (d / "keepalived.conf").read_text()
        (d / "server.pem").write_text(node_files[SERVER_CERT_FILE])
        (d / "server.key").write_text(node_files[SERVER_KEY_FILE])
        lab.set_ready(node, True)
        lab.network.start(f"ready-{node}", node, [sys.executable, str(lab.run / "ready_server.py"),
                                                  str(d / "server.pem"), str(d / "server.key"),
                                                  str(d / "check" / "ca.pem"), str(d / "ready")])
    for node in files:  # the check itself, as keepalived will run it, must pass before we start
        ca, cert, key = (str(lab.run / node / "check" / n) for n in ("ca.pem", "client.pem", "client.key"))
        for _ in range(100):
            ok = lab.network.run(node, ["curl", "-fsS", "-m", "1", "-o", "/dev/null", "--cacert", ca, "--cert", cert,
                                        "--key", key, "https://127.0.0.1:3100/ready"], timeout=10).returncode == 0
            if ok:
                break
            time.sleep(0.1)
        assert ok, f"{node}: the HTTPS /ready stand-in does not answer the check's request"


def test_the_vip_follows_loki_readiness_and_keepalived(lab):
    prepare(lab, rendered_files(nopreempt=False))
    t = time.monotonic()
    for node in LOKI_ADDRESSES:
        lab.start_keepalived(node)
    lab.wait_for("loki-01", "cold start: the first node takes the VIP", t)
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
    for node in LOKI_ADDRESSES:
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
