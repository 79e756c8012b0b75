"""The VIP lab: three Loki nodes' keepalived with the rendered configs, in network namespaces.

Each node runs keepalived with its rendered ``keepalived.conf`` (``lab_stack.prepare_keepalived``
says what differs) next to a small HTTPS server that stands in for the node's gateway: the node's
real server certificate, client certificates of the stack's CA required, ``/ready`` answering 200
while the node's ready flag exists, ``POST`` (a push) answered 204 once the body is read,
connections kept alive (HTTP/1.1) and closed after an answer once they are ``KEEPALIVE_TIME_S`` old
(nginx's ``keepalive_time``), the node's name in the header the gateway sets
(``X-Lokistack-Node``), and the gateway's twin for a drain on ``DRAIN_PORT`` (one request per
connection). The VIP handover (``templates/lib-vip-handover.sh``) runs in a node's
namespace as the node's Loki apply step would run it, with the parameters that step is rendered
with; only the paths of its track files and keepalived's config are the lab's, and ``systemctl``
is a stand-in that knows whether the node's keepalived runs. Addresses are in 198.18.0.0/24 only.
Every process is stopped by its pid and every namespace deleted, also when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.loki_gateway import DRAIN_PORT, KEEPALIVE_TIME_S
from components.scripts import TEMPLATES
from components.vip_handover import LOCK_FILE, MAINTENANCE_FILE, YIELD_FILE
from stack.certificates import SERVER_CERT_FILE, SERVER_KEY_FILE
from tests.labs.figures import figure
from tests.labs.lab_stack import (
    LOKI_ADDRESSES,
    VIP,
    LabPlan,
    handover_files,
    keepalived_command,
    prepare_keepalived,
    vip_holders,
)
from tests.labs.needs import require_root, require_tool
from tests.labs.netns import Daemon, PrivateNetwork, private_network

STEP_TIMEOUT_S = 20
STABLE_S = 2.0  # after convergence, every sample in this window must show exactly one holder
CLIENT = "client"
CLIENT_ADDRESS = "198.18.0.50"

READY_SERVER = r'''
import http.server, os, ssl, sys, threading, time
cert, key, ca, flag, node, twin_port, keepalive_time = sys.argv[1:8]
class Ready(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as nginx: a client may keep its connection
    keepalive_s = float(keepalive_time)  # as nginx's keepalive_time; 0: one request per connection
    def setup(self):
        super().setup()
        self.opened = time.monotonic()
    def answer(self, status, body):
        self.send_response(status)
        self.send_header("X-Lokistack-Node", node)
        self.send_header("Content-Length", str(len(body)))
        if time.monotonic() - self.opened > self.keepalive_s:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        ok = self.path == "/ready" and os.path.exists(flag)
        self.answer(200 if ok else 503, b"ready\n" if ok else b"no\n")
    def do_POST(self):  # a push: the body is read whole, nothing is kept
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.answer(204, b"")
    def log_message(self, *args): pass
class Twin(Ready):
    keepalive_s = -1.0
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
context.load_verify_locations(ca)
context.verify_mode = ssl.CERT_REQUIRED
servers = [http.server.ThreadingHTTPServer(("0.0.0.0", port), handler)
           for port, handler in ((3100, Ready), (int(twin_port), Twin))]
for server in servers:
    server.socket = context.wrap_socket(server.socket, server_side=True)
threading.Thread(target=servers[1].serve_forever, daemon=True).start()
servers[0].serve_forever()
'''

SYSTEMCTL = """#!/bin/sh
# The lab's systemctl: "is-active [--quiet] keepalived.service" asks whether the node's keepalived
# runs (its pid file); "reload UNIT" has nothing to reload here: it says how many connections to
# the VIP's port were open when it was asked (a reload would close those that are idle), once the
# file LAB_RELOAD_HOLD_UNTIL exists (at most 60 s; when set: a test holds the reload there while
# something happens).
case "$1" in
  is-active)
    [ "$2" = "--quiet" ] && shift
    [ "$2" = keepalived.service ] && [ -f "$LAB_KEEPALIVED_PID" ] && kill -0 "$(cat "$LAB_KEEPALIVED_PID")" 2>/dev/null
    exit $? ;;
  reload)
    i=0
    while [ -n "${LAB_RELOAD_HOLD_UNTIL:-}" ] && [ ! -e "$LAB_RELOAD_HOLD_UNTIL" ] && [ "$i" -lt 600 ]; do
      sleep 0.1; i=$((i + 1))
    done
    open=$(ss -Htn state established src "$LAB_VIP:3100" | wc -l)
    echo "(lab) reload $2 with ${open} connection(s) to the VIP open"
    exit 0 ;;
  *) echo "lab systemctl: $*" >&2; exit 1 ;;
esac
"""


@contextlib.contextmanager
def vip_lab(prefix: str, run_dir: Path, section: str, tools: tuple[str, ...],
            extra_hosts: dict[str, str] | None = None) -> Iterator[VipLab]:
    """A ``VipLab`` of the three Loki nodes (and ``extra_hosts``: name -> address) in namespaces
    named ``prefix`` + pid, taken down afterwards, also on failure."""
    require_root()
    for tool in ("keepalived", "ip", "curl", "unshare", *tools):
        require_tool(tool)
    with private_network(f"{prefix}{os.getpid() % 100000}-", run_dir) as network:
        for node, address in {**LOKI_ADDRESSES, **(extra_hosts or {})}.items():
            network.add_host(node, address)
        yield VipLab(network, section)


@dataclass
class VipLab:
    network: PrivateNetwork
    section: str

    @property
    def run(self) -> Path:
        return self.network.run_dir

    def holders(self) -> list[str]:
        return vip_holders(self.network)

    def start_keepalived(self, node: str) -> None:
        self.network.start(f"keepalived-{node}", node, keepalived_command(self.run / node))

    def stop_keepalived(self, node: str) -> None:
        self.network.stop(f"keepalived-{node}", timeout=15)
        (self.run / node / "k.pid").unlink(missing_ok=True)

    def set_ready(self, node: str, ready: bool) -> None:
        flag = self.run / node / "ready"
        if ready:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def start_gateway(self, node: str) -> None:
        """The node's gateway stand-in (answering /ready while the node's ready flag exists)."""
        d = self.run / node
        self.network.start(f"ready-{node}", node, [sys.executable, str(self.run / "ready_server.py"),
                                                   str(d / "server.pem"), str(d / "server.key"),
                                                   str(d / "check" / "ca.pem"), str(d / "ready"), node,
                                                   str(DRAIN_PORT), str(KEEPALIVE_TIME_S)])

    def stop_gateway(self, node: str) -> None:
        """Nothing answers on the node's port 3100 any more (nginx down)."""
        self.network.stop(f"ready-{node}", timeout=15)

    def keeps(self, node: str, seconds: float, label: str) -> None:
        """``node`` holds the VIP, alone, in every sample for ``seconds``."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            now = self.holders()
            assert now == [node], f"{label}: {node} must keep the VIP for {seconds:g} s, holders {now}\n{self.logs()}"
            time.sleep(0.1)

    def wait_for(self, expected: str | None, label: str, since: float) -> float:
        """Seconds from ``since`` (the event) until exactly ``expected`` holds the VIP (any single
        node if None); then every sample for STABLE_S seconds must show that same single holder."""
        while True:
            owners = self.holders()
            if len(owners) == 1 and (expected is None or owners == [expected]):
                elapsed = time.monotonic() - since
                break
            if time.monotonic() - since > STEP_TIMEOUT_S:
                pytest.fail(f"{label}: expected {expected or 'one node'} to hold {VIP}, holders {owners} "
                            f"after {STEP_TIMEOUT_S}s\n{self.logs()}")
            time.sleep(0.05)
        holder = owners[0]
        until = time.monotonic() + STABLE_S
        while time.monotonic() < until:
            now = self.holders()
            assert now == [holder], f"{label}: after converging on {holder}, the VIP was held by {now}"
            time.sleep(0.05)
        figure(self.section, f"{label}: VIP on {holder} after {elapsed * 1000:.0f} ms")
        return elapsed

    def logs(self) -> str:
        return "\n".join(f"--- {d}\n{daemon.log_text()[-3000:]}" for d, daemon in self.network.daemons.items()
                         if d.startswith("keepalived-"))

    # --- the handover, as a node's Loki apply step runs it -----------------------------------

    def handover(self, plan: LabPlan, node: str, call: str, **overrides: str) -> subprocess.CompletedProcess[str]:
        """Run ``call`` (``vip_leave``, ``vip_rejoin``, ...) in ``node``'s namespace with the handover
        functions and the parameters of the node's rendered Loki apply step; ``overrides`` replace
        parameters, or, named ``LAB_*``, go to the lab's commands' environment."""
        argv, env = self._handover_command(plan, node, call, overrides)
        return self.network.run(node, argv, timeout=120, env=env)

    def start_handover(self, plan: LabPlan, node: str, call: str, label: str, **overrides: str) -> Daemon:
        """``call`` as ``handover`` runs it, but in the background (stopped with ``network.stop(label)``)."""
        argv, env = self._handover_command(plan, node, call, overrides)
        return self.network.start(label, node, argv, env=env)

    def _handover_command(self, plan: LabPlan, node: str, call: str,
                          overrides: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        d = self.run / node
        rendered = plan.scripts[f"loki-{node}-apply"]
        params = dict(re.findall(r"^(VIP_\w+)=(.*)$", rendered, re.MULTILINE))
        assert params, f"loki-{node}-apply is rendered without the VIP handover's parameters"
        lab_paths = handover_files(d)
        assert shlex.split(params["VIP_MAINTENANCE_FILE"]) == [MAINTENANCE_FILE]
        assert shlex.split(params["VIP_YIELD_FILE"]) == [YIELD_FILE]
        assert shlex.split(params["VIP_LOCK_FILE"]) == [LOCK_FILE]
        lab = {"VIP_MAINTENANCE_FILE": str(lab_paths[MAINTENANCE_FILE]), "VIP_YIELD_FILE": str(lab_paths[YIELD_FILE]),
               "VIP_LOCK_FILE": str(d / "run" / Path(LOCK_FILE).name),  # the nodes share the test machine's /run
               "VIP_CONFIG": str(d / "keepalived.conf"), "CA_FILE": str(d / "check" / "ca.pem"),
               "CERT_FILE": str(d / "server.pem"), "KEY_FILE": str(d / "server.key"),
               **{k: v for k, v in overrides.items() if not k.startswith("LAB_")}}
        params |= {k: shlex.quote(v) for k, v in lab.items()}  # the rendered values are quoted already
        bindir = self.run / "bin"
        if not (bindir / "systemctl").exists():
            bindir.mkdir(exist_ok=True)
            (bindir / "systemctl").write_text(SYSTEMCTL)
            (bindir / "systemctl").chmod(0o755)
        script = "\n".join(["set -euo pipefail", *(f"{k}={v}" for k, v in params.items()),
                             (TEMPLATES / "lib-clock.sh").read_text(), (TEMPLATES / "lib-vip-handover.sh").read_text(),
                             call, ""])
        return ["bash", "-c", script], {"PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin",
                                        "LAB_KEEPALIVED_PID": str(d / "k.pid"), "LAB_VIP": VIP,
                                        **{k: v for k, v in overrides.items() if k.startswith("LAB_")}}

    def track_file(self, node: str, path: str) -> str:
        file = handover_files(self.run / node)[path]
        return file.read_text().strip() if file.exists() else "(missing)"


def prepare(lab: VipLab, files: dict[str, dict[str, str]]) -> None:
    """Write each node's rendered files where its daemons read them, start the /ready servers."""
    (lab.run / "ready_server.py").write_text(READY_SERVER)
    for node, node_files in files.items():
        d = lab.run / node
        prepare_keepalived(d, node_files)
        assert "unicast_peer" in (d / "keepalived.conf").read_text()
        (d / "server.pem").write_text(node_files[SERVER_CERT_FILE])
        (d / "server.key").write_text(node_files[SERVER_KEY_FILE])
        lab.set_ready(node, True)
        lab.start_gateway(node)
    for node in files:  # the check itself, as keepalived will run it, must pass before we start
        ca, cert, key = (str(lab.run / node / "check" / n) for n in ("ca.pem", "client.pem", "client.key"))
        for _ in range(100):
            ok = lab.network.run(node, ["curl", "-fsS", "-m", "1", "-o", "/dev/null", "--cacert", ca, "--cert", cert,
                                        "--key", key, "https://127.0.0.1:3100/ready"], timeout=10).returncode == 0
            if ok:
                break
            time.sleep(0.1)
        assert ok, f"{node}: the HTTPS /ready stand-in does not answer the check's request"


def node_files(plan: LabPlan) -> dict[str, dict[str, str]]:
    return {node: plan.files[node] for node in LOKI_ADDRESSES}
