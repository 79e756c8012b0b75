"""``offline/rehearsal/fstab_mounts.py``: a rehearsal machine's fstab device entry becomes the mount
unit systemd's own generator makes of it, without the file system check, wanted by local-fs.target;
a unit an earlier boot got for an entry the fstab no longer has goes."""

from __future__ import annotations

from offline.rehearsal.fstab_mounts import GENERATOR, MARK, install_fstab_mounts
from tests.labs.needs import missing

UUID = "0b8f6c1e-1111-2222-3333-444455556666"


def test_the_generators_unit_without_fsck_is_installed_and_an_old_one_goes(tmp_path):
    if not GENERATOR.exists():
        missing(f"{GENERATOR} is not installed (Debian's systemd package)")
    (tmp_path / "etc").mkdir()
    fstab = tmp_path / "etc/fstab"
    fstab.write_text(f"# UNCONFIGURED FSTAB FOR BASE SYSTEM\n"
                     f"UUID={UUID} /var/lib/loki xfs defaults,noatime,nofail 0 2\n")
    assert install_fstab_mounts(tmp_path) == ["var-lib-loki.mount"]
    unit = (tmp_path / "etc/systemd/system/var-lib-loki.mount").read_text()
    assert unit.startswith(MARK) and f"What=/dev/disk/by-uuid/{UUID}\n" in unit and "Where=/var/lib/loki\n" in unit
    assert "Options=defaults,noatime,nofail" in unit and "SourcePath=/etc/fstab\n" in unit
    assert "systemd-fsck@" not in unit, f"a container has no device units: the fsck must go: {unit}"
    wants = tmp_path / "etc/systemd/system/local-fs.target.wants/var-lib-loki.mount"
    assert wants.is_symlink() and str(wants.readlink()) == "../var-lib-loki.mount"
    fstab.write_text("# UNCONFIGURED FSTAB FOR BASE SYSTEM\n")
    assert install_fstab_mounts(tmp_path) == []
    assert not (tmp_path / "etc/systemd/system/var-lib-loki.mount").exists() and not wants.is_symlink()
