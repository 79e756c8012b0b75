"""templates/lib-data-disk.sh on a real (loop) disk: formatted once, never again, by UUID in fstab.

Everything happens in a private mount namespace with a throwaway /etc/fstab bound over the real
one; the loop device is detached afterwards."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.scripts import TEMPLATES
from tests.labs.needs import require_root, require_tool

pytestmark = [pytest.mark.needs_root, pytest.mark.real_tools]

LIBRARY = (TEMPLATES / "lib-apt.sh").read_text() + (TEMPLATES / "lib-data-disk.sh").read_text()


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[str]:
    require_root()
    for tool in ("losetup", "mkfs.xfs", "blkid", "unshare", "sfdisk"):
        require_tool(tool)
    image = tmp_path / "disk.img"
    with open(image, "wb") as handle:
        handle.truncate(320 * 1024 * 1024)  # xfs wants at least 300 MiB
    device = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=True,
                            timeout=30).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False, timeout=30)


def run_in_namespace(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    fstab = tmp_path / "fstab"
    if not fstab.exists():
        fstab.write_text("# test fstab\n")
    script = f"set -euo pipefail\n{LIBRARY}\nsystemctl() {{ :; }}\nmount --bind {fstab} /etc/fstab\n{body}\n"
    return subprocess.run(["unshare", "-m", "bash", "-c", script], capture_output=True, text=True, timeout=120,
                          check=False)


def test_a_disk_is_formatted_once_and_keeps_its_data(loop_disk, tmp_path):
    mnt = tmp_path / "data"
    proc = run_in_namespace(tmp_path, f"""
prepare_data_disk {loop_disk} {mnt} testdata
echo keep > {mnt}/marker
umount {mnt}
prepare_data_disk {loop_disk} {mnt} testdata
cat {mnt}/marker
umount {mnt}""")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("formatting the empty data disk") == 1, f"formatted more than once:\n{proc.stdout}"
    assert proc.stdout.strip().endswith("keep"), "the data written after the first run is gone"
    entries = [line for line in (tmp_path / "fstab").read_text().splitlines() if line.startswith("UUID=")]
    assert len(entries) == 1 and entries[0].endswith(f" {mnt} xfs defaults,noatime,nofail 0 2"), entries


def test_a_disk_with_a_partition_table_is_never_formatted(loop_disk, tmp_path):
    subprocess.run(["sfdisk", "-q", loop_disk], input="label: gpt\n", text=True, check=True, timeout=30)
    proc = run_in_namespace(tmp_path, f"prepare_data_disk {loop_disk} {tmp_path / 'data'} testdata")
    assert "formatting" not in proc.stdout, "a partitioned disk was formatted"
    assert proc.returncode != 0 and "has a gpt partition table and no filesystem" in proc.stderr, (
        "a disk that is not ours to format must fail the step, saying why")
    assert subprocess.run(["blkid", "-o", "value", "-s", "PTTYPE", loop_disk], capture_output=True, text=True,
                          check=False, timeout=30).stdout.strip() == "gpt", "the partition table was touched"
