"""The Debian 12 system every rehearsal machine boots: built once with debootstrap, cached outside
the repository, and used read-only (each machine is an overlay on it).

What a Proxmox VM from Debian's cloud image has that matters to the stack: systemd, cloud-init,
OpenSSH, sudo, curl, gnupg, CA certificates, ifupdown. What differs, on purpose and only here, is
``DIFFERENCES`` (printed with every rehearsal, and in the README).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from offline.rehearsal.network import PROXY_PORT, apt_mirror_hosts

CACHE = Path("/var/cache/lokistack-rehearsal")
MIRROR_CACHE = CACHE / "mirror"
"""The apt proxy's files that never change (``offline.rehearsal.proxy``), by mirror host and path."""
SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "iproute2", "ifupdown", "curl", "ca-certificates", "openssh-server",
            "sudo", "gnupg", "cloud-init", "python3-cffi-backend")
"""As Debian's cloud images (ifupdown renders cloud-init's network config); ``python3-cffi-backend``
by name: debootstrap does not resolve the virtual package cloud-init's ``python3-cryptography`` needs."""
DIFFERENCES = (
    "the NoCloud seed is a directory in the machine (/var/lib/cloud/seed/nocloud), not a cloud-init drive",
    "qemu-guest-agent is a stand-in unit: a container has no virtio port for the real agent",
    "the data disk is a loop device bound in where udev links it (by-id, by-uuid); from the second boot on "
    "its mount unit is the one systemd-fstab-generator makes from the machine's fstab (run by the rehearsal: "
    "it ignores device entries in a container), without the file system check (no device units in a "
    "container); a disk attached late appears as its links",
    "a shutdown or reboot from the hypervisor is SIGRTMIN+3 to the machine's systemd (an orderly poweroff, as "
    "ACPI's power button or the guest agent's shutdown starts it), then a new boot of the same disks",
    "DNS goes to 127.0.0.1 (nothing answers): the stack's /etc/hosts names every host",
    "apt reaches only the Debian mirrors, through the rehearsal's proxy on the stack's gateway address, which "
    "tries a failed request again and serves the files that never change (pool, by-hash) from its cache",
)
GUEST_AGENT_STANDIN = """# loki-stack rehearsal: stand-in for qemu-guest-agent (no virtio port in a container).
[Unit]
Description=QEMU guest agent (rehearsal stand-in)

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""


def template_key(gateway: str) -> str:
    return hashlib.sha256(f"{SUITE} {' '.join(PACKAGES)} {gateway} 2".encode()).hexdigest()[:12]


@contextlib.contextmanager
def cache_lock(cache: Path = CACHE) -> Iterator[None]:
    """Held while something is put in the cache: a rehearsal in another process (another of pytest's
    workers) waits for it, and then finds it there."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build_template(gateway: str, cache: Path = CACHE, log: Path | None = None) -> Path:
    """The template's root directory: made with debootstrap unless the cache has it."""
    root = cache / f"rootfs-{template_key(gateway)}"
    if (root / ".lokistack-ready").exists():
        return root
    with cache_lock(cache):
        return _debootstrap(root, gateway, cache, log)


def _debootstrap(root: Path, gateway: str, cache: Path, log: Path | None) -> Path:
    if (root / ".lokistack-ready").exists():  # made meanwhile, by another process
        return root
    if root.exists():
        shutil.rmtree(root)
    mirror = f"http://{apt_mirror_hosts()[0]}/debian"
    with open(log or cache / "debootstrap.log", "ab") as out:
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root),
                        mirror], stdout=out, stderr=subprocess.STDOUT, check=True, timeout=1800)
    (root / "etc/default/locale").write_text("LANG=C.UTF-8\n")
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    dbus_id.unlink(missing_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text("nameserver 127.0.0.1\n")
    (root / "etc/apt/apt.conf.d/99-rehearsal-proxy").write_text(
        f'Acquire::http::Proxy "http://{gateway}:{PROXY_PORT}/";\n')
    (root / "etc/cloud/cloud.cfg.d/90-rehearsal.cfg").write_text("datasource_list: [ NoCloud ]\n")
    (root / "etc/systemd/system/qemu-guest-agent.service").write_text(GUEST_AGENT_STANDIN)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/hostname").write_text("localhost\n")
    (root / ".lokistack-ready").write_text("\n".join(DIFFERENCES) + "\n")
    return root
