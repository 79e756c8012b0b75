"""One booted Debian 12 container per VM of the program, as the VM would be on Proxmox.

Each machine is an overlay on the read-only template, with the VM's NoCloud seed (its user-data
from the program, the network config Proxmox writes from its ``ip_configs`` matched by its MAC,
and meta-data whose instance-id Proxmox derives from both), its data disk as a loop device at the
VM's by-id path, booted by systemd-nspawn in the VM's own network namespace. Everything is taken
down by pid, mount and device, also when the rehearsal fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from components.proxmox_vm import DATA_DISK_PATH
from offline.rehearsal.fstab_mounts import fstab_uuids, install_fstab_mounts

CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
DATA_DISK_SIZE = 2 * 1024**3
BOOT_TIMEOUT_S = 60
HIDDEN_DISK = "/dev/.rehearsal-data-disk"
"""The data disk's device node is always bound here (a container may open only the devices bound at
its start); where udev links it on a VM (by-id, by-uuid) only while the disk is attached."""
STOP_TIMEOUT_S = 30


def proxmox_meta_data(user_data: str, network_config: str) -> str:
    """``meta-data`` as Proxmox writes it (``nocloud_gen_metadata``): the instance-id is the SHA-1
    of the user-data and the network config."""
    return f"instance-id: {hashlib.sha1(f'{user_data}{network_config}'.encode()).hexdigest()}\n"  # noqa: S324


def _pid1_of(nspawn_pid: int) -> int | None:
    """The container's init: a descendant of nspawn that is PID 1 in a PID namespace of its own."""
    parents: dict[int, int] = {}
    inits = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parents[int(entry.name)] = int(fields.get("PPid", "0").strip() or 0)
        nspid = fields.get("NSpid", "").split()
        if len(nspid) > 1 and nspid[-1] == "1":
            inits.append(int(entry.name))
    for pid in inits:
        ancestor = parents.get(pid, 0)
        while ancestor > 1:
            if ancestor == nspawn_pid:
                return pid
            ancestor = parents.get(ancestor, 0)
    return None


def cgroup_pids(path: Path) -> list[int]:
    """Every process in a cgroup and the cgroups below it (the container's systemd makes its own)."""
    pids = []
    for directory, _subdirs, files in os.walk(path):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError):
                pids += [int(p) for p in (Path(directory) / "cgroup.procs").read_text().split()]
    return pids


def kill_cgroup(path: Path) -> None:
    """SIGKILL every process of a machine's cgroup tree, by pid, until none is left."""
    for _ in range(50):
        pids = cgroup_pids(path) if path.exists() else []
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise RuntimeError(f"processes left in {path}: {cgroup_pids(path)}")


def remove_cgroup(path: Path) -> None:
    """Remove a cgroup and the ones the container's systemd made below it, deepest first, once
    their processes are gone (a cgroup is removed with rmdir, and only when empty)."""
    for _ in range(50):
        if not path.exists():
            return
        for directory, _subdirs, _files in sorted(os.walk(path, topdown=False), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        time.sleep(0.1)
    raise RuntimeError(f"cgroup {path} is still in use")


@dataclass
class Machine:
    name: str
    netns: str
    run_dir: Path
    template: Path
    user_data: str
    network_config: str
    data_disk: bool
    process: subprocess.Popen[bytes] | None = None
    loop_device: str | None = None
    mounted: bool = False
    cgroups: list[Path] = field(default_factory=list)
    started_at: float = 0.0
    boots: int = 0

    @property
    def root(self) -> Path:
        return self.run_dir / self.name / "merged"

    @property
    def log_path(self) -> Path:
        return self.run_dir / f"{self.name}.console.log"

    def prepare(self) -> None:
        base = self.run_dir / self.name
        for d in ("upper", "work", "merged"):
            (base / d).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={self.template},upperdir={base / 'upper'},workdir={base / 'work'}",
                        str(self.root)], check=True, capture_output=True, timeout=30)
        self.mounted = True
        seed = self.root / "var/lib/cloud/seed/nocloud"
        seed.mkdir(parents=True, exist_ok=True)
        (seed / "user-data").write_text(self.user_data)
        (seed / "network-config").write_text(self.network_config)
        (seed / "meta-data").write_text(proxmox_meta_data(self.user_data, self.network_config))
        if self.data_disk:
            image = base / "data-disk.img"
            with open(image, "wb") as f:
                f.truncate(DATA_DISK_SIZE)
            self.loop_device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                                              capture_output=True, text=True, timeout=30).stdout.strip()

    def _own_cgroups(self) -> None:
        """Runs in the launcher before it execs nspawn: a cgroup of its own in each hierarchy
        nspawn uses, so that containers started from one process do not share one tree."""
        for path in self.cgroups:
            (path / "cgroup.procs").write_text(str(os.getpid()))

    def start(self, *, disk_attached: bool = True) -> None:
        """Boots the machine. From its second boot on, its fstab's device entries are mounted as on
        a VM (``fstab_mounts``); ``disk_attached=False`` boots it as if its data disk were missing
        (``attach_data_disk`` attaches it later)."""
        if self.boots and self.loop_device:
            install_fstab_mounts(self.root)
        self.boots += 1
        tag = f"lokistack-rehearsal-{self.netns}"
        self.cgroups = [root / tag for root in CGROUP_ROOTS if root.is_dir()]
        for path in self.cgroups:
            path.mkdir(exist_ok=True)
        argv = ["nsenter", f"--net=/run/netns/{self.netns}", "systemd-nspawn", "--boot", "--quiet",
                f"--directory={self.root}", f"--network-namespace-path=/run/netns/{self.netns}", "--register=no",
                "--keep-unit", "--capability=CAP_NET_ADMIN", f"--machine={self.name}", "--link-journal=no",
                "--resolv-conf=off", "--timezone=off", "--console=passive"]
        if self.loop_device:
            argv.append(f"--bind={self.loop_device}:{HIDDEN_DISK}")
            if disk_attached:
                argv += [f"--bind={self.loop_device}:{path}" for path in self.data_disk_links()]
        self.started_at = time.monotonic()
        with open(self.log_path, "ab") as log:  # nspawn keeps its own descriptor
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            preexec_fn=self._own_cgroups)  # noqa: PLW1509 (before exec, on purpose)

    def data_disk_links(self) -> list[str]:
        """Where udev links the data disk on a VM: its by-id path, and its by-uuid path once it
        holds a file system the fstab names."""
        return [DATA_DISK_PATH, *(f"/dev/disk/by-uuid/{u}" for u in fstab_uuids(self.root))]

    def attach_data_disk(self) -> None:
        """The data disk appears in the running machine as on a VM: its links, as udev makes them."""
        links = self.data_disk_links()
        script = " && ".join(f"mkdir -p {os.path.dirname(link)} && ln -sfn {HIDDEN_DISK} {link}" for link in links)
        proc = self.exec(["sh", "-c", script])
        if proc.returncode != 0:
            raise RuntimeError(f"{self.name}: attaching the data disk failed: {proc.stderr}")

    def pid1(self) -> int | None:
        return _pid1_of(self.process.pid) if self.process and self.process.poll() is None else None

    def memory_mib(self) -> float:
        """The proportional set size of every process of the machine (its cgroup tree), in MiB."""
        total = 0
        for pid in {p for path in self.cgroups[:1] for p in cgroup_pids(path)}:
            with contextlib.suppress(OSError):
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
                total += sum(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
        return total / 1024

    def exec(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the machine (all its namespaces), as root: for the checks."""
        pid = self.pid1()
        if pid is None:
            raise RuntimeError(f"{self.name} is not running")
        return subprocess.run(["nsenter", "-t", str(pid), "-a", *argv], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def request_poweroff(self, *, at_once: bool = False) -> None:
        """Ask the machine's init to power off, without waiting for it: as a host would (SIGRTMIN+3,
        every unit stops in order), or ``at_once`` (SIGRTMIN+14, systemd's immediate poweroff: no
        unit stops; for a lab that is taken down)."""
        pid = self.pid1()
        if pid is not None:
            # The machine's init may end between finding it and signalling it (it was powering off
            # already): nothing is left to ask, and poweroff() waits for the machine as usual.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGRTMIN + (14 if at_once else 3))

    def poweroff(self, timeout: float = STOP_TIMEOUT_S, *, at_once: bool = False) -> float:
        """Power the machine off (``request_poweroff``) and wait for it, killing it after ``timeout``;
        returns the seconds it took."""
        start = time.monotonic()
        self.request_poweroff(at_once=at_once)
        if self.process is not None:
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        return time.monotonic() - start

    def teardown(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.poweroff(at_once=True)
        for path in self.cgroups:  # anything left in the machine's cgroups, by pid
            kill_cgroup(path)
        if self.mounted:
            subprocess.run(["umount", "--recursive", str(self.root)], capture_output=True, timeout=60, check=False)
            self.mounted = False
        if self.loop_device:
            subprocess.run(["losetup", "-d", self.loop_device], capture_output=True, timeout=30, check=False)
            self.loop_device = None
        for path in self.cgroups:
            remove_cgroup(path)
