"""A private network for tests that run real daemons: network namespaces on one bridge.

Every host is a network namespace with an ``eth0`` on a bridge that lives in a namespace of its
own, so nothing is added to the machine's own network. Addresses must lie in 198.18.0.0/24 (the
benchmarking range, never routed). Processes are started inside a host's namespace and tracked
by pid; ``close()`` stops each one by its pid (never by name) and deletes every namespace, and
``private_network()`` calls it also when the test fails.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from components.proxmox_vm import GUEST_INTERFACE
from tests.labs.needs import expect_marker

TEST_NETWORK = ipaddress.ip_network("198.18.0.0/24")
INTERFACE = GUEST_INTERFACE
"""Each host's NIC has the name a stack VM's NIC has."""
STOP_TIMEOUT_S = 60
CLOSE_TIMEOUT_S = 5
"""At the end of a lab, a daemon still running this long after SIGTERM is killed (a Loki whose peers
are gone waits on them in its graceful stop; nothing is checked after)."""


@dataclass
class Daemon:
    """A process started in a host's namespace."""

    host: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class PrivateNetwork:
    prefix: str
    """Namespace names start with it (unique per test run)."""
    run_dir: Path
    """Logs and per-host files."""
    addresses: dict[str, str] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    daemons: dict[str, Daemon] = field(default_factory=dict)

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    def ns(self, host: str) -> str:
        return f"{self.prefix}{host}"

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def _add_namespace(self, name: str) -> None:
        self.ip("netns", "add", name)
        self.namespaces.append(name)

    def create(self) -> None:
        self._add_namespace(self.bridge)
        self.ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        self.ip("-n", self.bridge, "link", "set", "br0", "up")

    def add_host(self, host: str, address: str) -> str:
        """A namespace for ``host`` with ``address``/24 on ``eth0``, plugged into the bridge."""
        if ipaddress.ip_address(address) not in TEST_NETWORK:
            raise ValueError(f"{host}: test addresses must be in {TEST_NETWORK}, got {address}")
        ns = self.ns(host)
        self._add_namespace(ns)
        veth = f"v{len(self.addresses)}"
        self.ip("-n", self.bridge, "link", "add", veth, "type", "veth", "peer", "name", INTERFACE, "netns", ns)
        self.ip("-n", self.bridge, "link", "set", veth, "master", "br0", "up")
        self.ip("-n", ns, "link", "set", "lo", "up")
        self.ip("-n", ns, "link", "set", INTERFACE, "up")
        self.ip("-n", ns, "addr", "add", f"{address}/{TEST_NETWORK.prefixlen}", "dev", INTERFACE)
        self.addresses[host] = address
        return ns

    def run(self, host: str, argv: Sequence[str], *, timeout: float = 60,
            env: Mapping[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``host``'s namespace and wait for it."""
        return subprocess.run(["ip", "netns", "exec", self.ns(host), *argv], capture_output=True, text=True,
                              timeout=timeout, check=False, input=stdin,
                              env={**os.environ, **env} if env else None)

    def start(self, label: str, host: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> Daemon:
        """Start a daemon in ``host``'s namespace; its output goes to ``<run_dir>/<label>.log``.
        ``ip netns exec`` execs ``argv``, so the pid is the daemon's own (or that of a wrapper that
        execs it)."""
        if label in self.daemons:
            raise ValueError(f"a daemon labelled {label} is already running")
        log_path = self.run_dir / f"{label}.log"
        log = open(log_path, "ab")  # noqa: SIM115 (the daemon writes it until it is stopped)
        process = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *argv], stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **env} if env else None)
        self.daemons[label] = Daemon(host=host, process=process, log_path=log_path, log=log)
        return self.daemons[label]

    def stop(self, label: str, sig: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> float:
        """Send ``sig`` to the daemon's pid and wait for it to exit; SIGKILL after ``timeout``.
        Returns the seconds from the signal to the exit."""
        daemon = self.daemons.pop(label)
        start = time.monotonic()
        if daemon.process.poll() is None:
            daemon.process.send_signal(sig)
            try:
                daemon.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                daemon.process.kill()
                daemon.process.wait(timeout=15)
        daemon.log.close()
        return time.monotonic() - start

    def close(self) -> None:
        """Stop every daemon by pid (SIGTERM to all at once, so that they stop side by side; SIGKILL
        to any still running 5 s later: nothing is checked after), then delete every namespace; fail if one is left."""
        daemons = list(self.daemons.values())
        self.daemons.clear()
        for daemon in daemons:
            if daemon.process.poll() is None:
                daemon.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        for daemon in daemons:
            try:
                daemon.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                daemon.process.kill()
                daemon.process.wait(timeout=15)
            daemon.log.close()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=30)
        self.namespaces.clear()
        leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
        if self.prefix in leftover:
            raise RuntimeError(f"namespaces left behind: {leftover}")


@contextmanager
def private_network(prefix: str, run_dir: Path) -> Iterator[PrivateNetwork]:
    """A ``PrivateNetwork`` that is torn down when the block ends, also on failure."""
    expect_marker("live", "a private network of namespaces")
    network = PrivateNetwork(prefix=prefix, run_dir=run_dir)
    try:
        network.create()
        yield network
    finally:
        network.close()
