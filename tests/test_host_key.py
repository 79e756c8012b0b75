"""The VM's own SSH host key replaces the snippet's bootstrap key: the real sshd, ssh-keygen, ssh-keyscan.

A host of a private network runs the real sshd with the bootstrap key, as a new VM does after
cloud-init. The rendered step (``templates/install-host-key.sh``, with the VM's own key from the
program) runs against it; ``systemctl reload ssh`` is stood in for by a command that sends sshd
SIGHUP, which is what the unit's ``ExecReload`` does. ssh-keyscan from another host shows which
key the server presents.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519

from components.proxmox_vm import CLOUD_CFG_FILE, HOST_KEY_FILE, SSH_UNIT
from components.scripts import render_script
from tests.labs.needs import require_root, require_tool
from tests.labs.netns import PrivateNetwork, private_network

VM, CLIENT = "vm", "client"
ADDRESSES = {VM: "198.18.0.21", CLIENT: "198.18.0.50"}

SSHD_START = 'mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -m 0755 /run/sshd && exec "$@"'
"""sshd wants its privilege-separation directory, which ssh.service makes on a VM."""

FAKE_SYSTEMCTL = """#!/bin/sh
# systemctl reload <unit>, as the test's stand-in: ExecReload of ssh.service sends sshd SIGHUP.
echo "$*" >>"{log}"
[ "$1" = reload ] && [ "$2" = "{unit}" ] && exec kill -HUP "$(cat "{pid}")"
exit 1
"""


def keypair() -> tuple[str, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()).decode()
    public = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
    return private, public


@dataclass
class Vm:
    network: PrivateNetwork
    root: Path

    @property
    def key_file(self) -> Path:
        return self.root / "etc-ssh" / Path(HOST_KEY_FILE).name

    def presented_key(self) -> str:
        """The ed25519 key the VM's sshd presents (type and base64), as ssh-keyscan sees it; sshd
        re-executes itself on SIGHUP and is briefly not listening, so a few tries."""
        for _ in range(25):
            proc = self.network.run(CLIENT, ["ssh-keyscan", "-T", "5", "-t", "ed25519", ADDRESSES[VM]], timeout=30)
            found = re.search(r"(ssh-ed25519 \S+)", proc.stdout)
            if found:
                return found.group(1)
            self.network.run(CLIENT, ["sleep", "0.2"])
        raise AssertionError(f"ssh-keyscan got no ed25519 key from the VM: {proc.stdout} {proc.stderr}")

    def install(self, private: str, public: str) -> subprocess.CompletedProcess[str]:
        """The rendered step, as root, with the VM's paths moved into the test directory."""
        script = render_script("install-host-key.sh", {
            "HOST_PRIVATE_KEY": private.strip(), "HOST_PUBLIC_KEY": public, "KEY_FILE": str(self.key_file),
            "CLOUD_CFG": str(self.root / "cloud.cfg.d" / Path(CLOUD_CFG_FILE).name), "SSH_UNIT": SSH_UNIT})
        path = f"{self.root / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin"
        start = SSHD_START.replace('exec "$@"', f"PATH={path} exec bash -s")  # sshd -t wants /run/sshd too
        return subprocess.run(["unshare", "-m", "sh", "-c", start], input=script, capture_output=True, text=True,
                              timeout=60, check=False)

    def probe(self, bootstrap: str, own: str, timeout_s: int = 20,
              address: str = ADDRESSES[VM]) -> subprocess.CompletedProcess[str]:
        """The rendered host-key probe, from the client host, as Pulumi runs it where it runs."""
        script = render_script("host-key-probe.sh", {"ADDRESS": address, "BOOTSTRAP_KEY": bootstrap,
                                                     "OWN_KEY": own, "TIMEOUT_S": timeout_s})
        return self.network.run(CLIENT, ["bash", "-s"], stdin=script, timeout=timeout_s + 30)

    def reloads(self) -> list[str]:
        log = self.root / "systemctl.log"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[Vm]:
    require_root()
    for tool in ("sshd", "ssh-keygen", "ssh-keyscan", "ip", "unshare"):
        require_tool(tool)
    bootstrap_private, _ = keypair()
    (tmp_path / "etc-ssh").mkdir()
    key = tmp_path / "etc-ssh" / Path(HOST_KEY_FILE).name
    key.write_text(bootstrap_private)
    key.chmod(0o600)
    pid = tmp_path / "sshd.pid"
    (tmp_path / "sshd_config").write_text(
        f"ListenAddress {ADDRESSES[VM]}\nHostKey {key}\nPidFile {pid}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\n")
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "systemctl"
    fake.write_text(FAKE_SYSTEMCTL.format(log=tmp_path / "systemctl.log", unit=SSH_UNIT, pid=pid))
    fake.chmod(0o755)
    (tmp_path / "net").mkdir()
    with private_network("hk", tmp_path / "net") as network:
        for host, address in ADDRESSES.items():
            network.add_host(host, address)
        sshd = require_tool("sshd")
        network.start("sshd", VM, ["unshare", "-m", "sh", "-c", SSHD_START, "sh", sshd, "-D", "-e",
                                   "-f", str(tmp_path / "sshd_config")])
        lab = Vm(network=network, root=tmp_path)
        for _ in range(50):
            if pid.exists() and network.run(CLIENT, ["ssh-keyscan", "-T", "2", ADDRESSES[VM]], timeout=10).stdout:
                break
            network.run(CLIENT, ["sleep", "0.2"])
        yield lab


def public_of(private: str) -> str:
    key = ser.load_ssh_private_key(private.encode(), password=None)
    return " ".join(key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode().split()[:2])


@pytest.mark.live
def test_the_vm_presents_its_own_key_after_the_step_and_a_second_run_changes_nothing(vm):
    bootstrap = public_of(vm.key_file.read_text())
    assert vm.presented_key() == bootstrap, "before the step the VM presents the snippet's bootstrap key"
    own_private, own_public = keypair()
    first = vm.install(own_private, f"{own_public} loki-01")
    assert first.returncode == 0, f"install-host-key.sh failed: {first.stdout}{first.stderr}"
    assert vm.presented_key() == " ".join(own_public.split()[:2]) != bootstrap, (
        "after the step the VM must present its own key, which later steps pin")
    assert oct(vm.key_file.stat().st_mode & 0o777) == "0o600", "the host private key must be 0600"
    cfg = vm.root / "cloud.cfg.d" / Path(CLOUD_CFG_FILE).name
    assert cfg.read_text() == "manual_cache_clean: true\n", (
        "cloud-init must trust its cache, or a changed snippet brings the bootstrap key back at the next boot")
    assert vm.reloads() == [f"reload {SSH_UNIT}"], f"sshd must be reloaded once: {vm.reloads()}"
    second = vm.install(own_private, own_public)
    assert second.returncode == 0 and "unchanged" in second.stdout, f"second run: {second.stdout}{second.stderr}"
    assert vm.reloads() == [f"reload {SSH_UNIT}"], "a second run must not reload sshd"


@pytest.mark.live
def test_a_key_that_does_not_match_its_public_half_changes_nothing(vm):
    before = vm.key_file.read_text()
    own_private, _ = keypair()
    _, other_public = keypair()
    proc = vm.install(own_private, other_public)
    assert proc.returncode == 1 and "does not match" in proc.stderr, f"{proc.stdout}{proc.stderr}"
    assert vm.key_file.read_text() == before and vm.reloads() == [], "a refused key must change nothing"
    assert not list(vm.key_file.parent.glob(".lokistack-host-key.*")), "the step left its temporary directory"


def test_the_rendered_step_quotes_the_key_so_the_shell_reads_it_back_whole():
    private, public = keypair()
    script = render_script("install-host-key.sh", {"HOST_PRIVATE_KEY": private.strip(), "HOST_PUBLIC_KEY": public,
                                                   "KEY_FILE": HOST_KEY_FILE, "CLOUD_CFG": CLOUD_CFG_FILE,
                                                   "SSH_UNIT": SSH_UNIT})
    quoted = re.search(r"^HOST_PRIVATE_KEY=('[^']*')$", script, re.MULTILINE)
    assert quoted and shlex.split(quoted.group(1))[0] == private.strip()


@pytest.mark.live
def test_the_probe_names_the_key_the_vm_presents_before_and_after_the_host_key_step(vm):
    """The VM's first steps pin what the probe prints: the bootstrap key on a new VM, its own once the
    host-key step ran (the first steps run again after an upgrade, on a VM that has it)."""
    bootstrap = public_of(vm.key_file.read_text())
    own_private, own_public = keypair()
    before = vm.probe(bootstrap, own_public)
    assert before.returncode == 0 and before.stdout == bootstrap + "\n", (
        f"host-key-probe.sh on a new VM must print its bootstrap key: {before.stdout!r} {before.stderr}")
    assert vm.install(own_private, own_public).returncode == 0
    after = vm.probe(bootstrap, own_public)
    assert after.returncode == 0 and after.stdout == " ".join(own_public.split()[:2]) + "\n", (
        f"host-key-probe.sh must print the VM's own key once it is installed: {after.stdout!r} {after.stderr}")


@pytest.mark.live
def test_the_probe_refuses_a_key_that_is_neither_and_a_vm_that_does_not_answer(vm):
    _, one = keypair()
    _, other = keypair()
    t0 = time.monotonic()
    stranger = vm.probe(one, other, timeout_s=3)
    assert stranger.returncode == 1 and stranger.stdout == "" and "neither its bootstrap key nor its own" in (
        stranger.stderr), f"host-key-probe.sh must refuse a key it does not know: {stranger.stdout!r} {stranger.stderr}"
    assert time.monotonic() - t0 < 30, "host-key-probe.sh must give up at its deadline"
    silent = vm.probe(one, other, timeout_s=3, address="198.18.0.99")
    assert silent.returncode == 1 and "did not answer on SSH within 3 s" in silent.stderr, (
        f"host-key-probe.sh with no SSH server: {silent.stdout!r} {silent.stderr}")
