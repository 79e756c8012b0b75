"""The rehearsal's private network: one bridge namespace, a namespace per machine, and the proxy.

Every address is in the test range (198.18.0.0/24). The bridge namespace holds the stack's
gateway address (the proxy listens there); each machine's namespace gets a veth named ``ens18``
(the kernel's name for a Proxmox VM's first NIC) with the VM's MAC and no address: cloud-init
renames it ``eth0`` and configures it from the network config, as on the VM. The runner's own
namespace (the machine that runs ``pulumi up``) has an address of its own. Everything is removed
by name of the namespaces this object made, and processes are stopped by pid.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

TEST_NETWORK = ipaddress.ip_network("198.18.0.0/24")
KERNEL_NIC = "ens18"
PROXY_PORT = 3142


def apt_mirror_hosts(sources: Sequence[Path] = (Path("/etc/apt/sources.list"),
                                                 *sorted(Path("/etc/apt/sources.list.d").glob("*")))) -> list[str]:
    """The hosts of the Debian mirrors this machine's apt uses (the proxy forwards to these only)."""
    hosts: set[str] = set()
    for path in sources:
        if not path.is_file() or path.name.endswith((".disabled-by-farm", ".save")):
            continue
        text = path.read_text(errors="replace")
        urls = re.findall(r"^\s*URIs:\s*(.+)$", text, re.MULTILINE)
        urls += [m for m in re.findall(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.MULTILINE)]
        for url in " ".join(urls).split():
            match = re.match(r"https?://([^/:]+)", url)
            if match:
                hosts.add(match.group(1))
    return sorted(hosts)


def ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@dataclass
class RehearsalNetwork:
    prefix: str
    gateway: str
    """The stack's gateway address: the bridge namespace's address, where the proxy listens."""
    run_dir: Path
    namespaces: list[str] = field(default_factory=list)
    services: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    """The proxy and the package repository, by label."""
    plugged: int = 0
    """Hosts plugged into the bridge so far (names its veth ends)."""

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    def ns(self, host: str) -> str:
        return f"{self.prefix}{host}"

    def _add(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def create(self) -> None:
        if ipaddress.ip_address(self.gateway) not in TEST_NETWORK:
            raise ValueError(f"the rehearsal's gateway must be in {TEST_NETWORK}, got {self.gateway}")
        self._add(self.bridge)
        ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge, "addr", "add", f"{self.gateway}/{TEST_NETWORK.prefixlen}", "dev", "br0")
        ip("-n", self.bridge, "link", "set", "br0", "up")

    def _plug(self, host: str, nic: str, mac: str | None = None) -> str:
        ns = self.ns(host)
        self._add(ns)
        self.plugged += 1
        veth = f"v{self.plugged}"
        ip("-n", self.bridge, "link", "add", veth, "type", "veth", "peer", "name", nic, "netns", ns)
        ip("-n", self.bridge, "link", "set", veth, "master", "br0", "up")
        if mac:
            ip("-n", ns, "link", "set", nic, "address", mac)
        return ns

    def add_machine(self, host: str, mac: str) -> str:
        """A namespace for a VM: its NIC as the kernel names it, with its MAC, unconfigured."""
        return self._plug(host, KERNEL_NIC, mac)

    def replace_machine(self, host: str, mac: str) -> str:
        """A VM's namespace made anew (``add_machine``), as for a VM created again: the old one goes
        with its NIC (named and configured by the machine that was there) and its end on the bridge."""
        ns = self.ns(host)
        ip("netns", "del", ns)
        self.namespaces.remove(ns)
        return self.add_machine(host, mac)

    def add_runner(self, host: str, address: str) -> str:
        """A namespace for the machine that runs the steps (``pulumi up``), with ``address``."""
        if ipaddress.ip_address(address) not in TEST_NETWORK:
            raise ValueError(f"{host}: rehearsal addresses must be in {TEST_NETWORK}, got {address}")
        ns = self._plug(host, "eth0")
        ip("-n", ns, "addr", "add", f"{address}/{TEST_NETWORK.prefixlen}", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        return ns

    def start_service(self, label: str, module: str, args: Sequence[str], ready: bytes) -> None:
        """A helper of the rehearsal (``python -m <module> <bridge netns> ...``) that binds inside the
        bridge namespace; returns once its log says ``ready``."""
        log_path = self.run_dir / f"{label}.log"
        with open(log_path, "ab") as log:  # the service keeps its own descriptor
            process = subprocess.Popen([sys.executable, "-m", module, f"/run/netns/{self.bridge}", *args],
                                       stdout=log, stderr=subprocess.STDOUT)
        self.services[label] = process
        deadline = time.monotonic() + 30
        while ready not in log_path.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{label} did not start: {log_path.read_text()}")
            time.sleep(0.05)

    def start_proxy(self, hosts: Sequence[str], cache: Path) -> None:
        """The apt proxy to ``hosts``; it keeps the files that never change in ``cache``."""
        self.start_service("proxy", "offline.rehearsal.proxy", [self.gateway, str(PROXY_PORT), str(cache), *hosts],
                           b"proxy on")

    def run(self, host: str, argv: Sequence[str], *, timeout: float = 60, stdin: str | None = None,
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns(host), *argv], capture_output=True, text=True,
                              timeout=timeout, check=False, input=stdin)

    def close(self) -> None:
        for process in self.services.values():
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=15)
        self.services.clear()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)
        self.namespaces.clear()
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
        if re.search(rf"^{re.escape(self.prefix)}", left, re.MULTILINE):
            raise RuntimeError(f"namespaces left behind: {left}")
