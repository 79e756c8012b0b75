"""The data disk's mount at boot, as a VM gets it, in a container that does not.

On a VM, ``systemd-fstab-generator`` turns the ``UUID=... /var/lib/loki xfs ...,nofail`` line the
setup writes into ``var-lib-loki.mount`` at every boot. In a container it ignores every fstab entry
of a device ("Running in a container, ignoring fstab device entry"), so a rebooted machine came up
without its data disk and Loki started on the root filesystem. Before each boot after the first,
the rehearsal runs the same generator (this host's systemd 252, Debian 12's) on the machine's own
fstab and installs what it makes for device entries into the machine's ``/etc/systemd/system``,
with one change: without the file system check (``systemd-fsck@`` binds to the disk's device unit,
and a container has no device units, so the mount would fail as a dependency). The disk's device
node is bound where udev would link it (``machines.Machine``).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

GENERATOR = Path("/usr/lib/systemd/system-generators/systemd-fstab-generator")
UNIT_DIR = "etc/systemd/system"
MARK = "# loki-stack rehearsal: systemd-fstab-generator's unit, without fsck (offline/rehearsal/fstab_mounts.py)\n"


def fstab_uuids(root: Path) -> list[str]:
    """The file system UUIDs the machine's fstab mounts."""
    fstab = root / "etc/fstab"
    text = fstab.read_text() if fstab.exists() else ""
    return re.findall(r"^UUID=([0-9a-fA-F-]+)\s", text, re.MULTILINE)


def install_fstab_mounts(root: Path) -> list[str]:
    """Writes the mount units of the machine's fstab device entries as the generator makes them
    (fsck left out) into ``root``'s unit directory, wanted by ``local-fs.target``; removes those an
    earlier boot got that the fstab no longer names. Returns the units' names."""
    if not GENERATOR.exists():
        raise RuntimeError(f"{GENERATOR} is missing: the rehearsal needs systemd's fstab generator")
    units = root / UNIT_DIR
    wants = units / "local-fs.target.wants"
    for old in units.glob("*.mount"):
        if old.read_text().startswith(MARK):
            old.unlink()
            (wants / old.name).unlink(missing_ok=True)
    names = []
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([str(GENERATOR), out, out, out], check=True, capture_output=True, timeout=30,
                       env={**os.environ, "SYSTEMD_FSTAB": str(root / "etc/fstab"), "SYSTEMD_IN_INITRD": "0"})
        for made in sorted(Path(out).glob("*.mount")):
            text = made.read_text()
            if "\nWhat=/dev/" not in text:
                continue
            text = "".join(line for line in text.splitlines(keepends=True) if "systemd-fsck@" not in line)
            text = re.sub(r"^SourcePath=.*$", "SourcePath=/etc/fstab", text, flags=re.MULTILINE)
            wants.mkdir(parents=True, exist_ok=True)
            (units / made.name).write_text(MARK + text)
            link = wants / made.name
            link.unlink(missing_ok=True)
            link.symlink_to(f"../{made.name}")
            names.append(made.name)
    return names
