"""Root never writes through a link a service planted (templates/lib-safe-write.sh), run for real.

A "service" here is the user nobody: it owns files and links in a directory it may write to, as
Alloy may in /etc/alloy (its package makes that directory group-writable). The file delivery
(install-files.sh) and the apply steps' `place` must leave everything outside their target alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from components.delivery import render_install_script
from components.hostfile import HostFile
from components.scripts import TEMPLATES
from tests.labs.needs import require_root

pytestmark = [pytest.mark.needs_root, pytest.mark.real_tools]

SECRET = "the stack's secret\n"  # noqa: S105 (test content, not a password)


@pytest.fixture
def service_dir(tmp_path: Path) -> tuple[Path, Path]:
    """(a root-owned directory the service may write to, a file outside it the service wants hit)."""
    require_root()
    shutil.chown(tmp_path, "root", "root")
    tmp_path.chmod(0o755)
    writable = tmp_path / "etc-service"
    writable.mkdir()
    shutil.chown(writable, "root", "nogroup")
    writable.chmod(0o775)
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    victim.chmod(0o600)
    return writable, victim


def run(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-s"], input=script, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "SAFE_WRITE_STAGING": str(tmp_path / "staging")})


def place_script(staged: Path, target: Path) -> str:
    return "\n".join(["set -euo pipefail", "changed=0", (TEMPLATES / "lib-safe-write.sh").read_text(),
                      (TEMPLATES / "lib-place.sh").read_text(), f"place {staged} {target} 0640 root nogroup",
                      'echo "changed=$changed"'])


def assert_untouched(victim: Path) -> None:
    assert victim.read_text() == "untouched\n", "root wrote through the service's link"
    assert (victim.stat().st_uid, oct(victim.stat().st_mode & 0o777)) == (0, "0o600"), "root chowned the link's target"


def test_place_replaces_a_link_at_the_target_instead_of_writing_through_it(service_dir, tmp_path):
    writable, victim = service_dir
    target = writable / "config.alloy"
    target.symlink_to(victim)
    staged = tmp_path / "staged"
    staged.write_text(SECRET)
    proc = run(place_script(staged, target), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_untouched(victim)
    assert not target.is_symlink() and target.read_text() == SECRET and "changed=1" in proc.stdout
    assert (target.stat().st_uid, oct(target.stat().st_mode & 0o777)) == (0, "0o640")


def test_the_delivery_replaces_a_link_at_the_target(service_dir, tmp_path):
    writable, victim = service_dir
    target = writable / "server.key"
    target.symlink_to(victim)
    script = render_install_script([(HostFile(host="h", path=str(target), content="", mode="0600"), SECRET)])
    proc = run(script, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_untouched(victim)
    assert not target.is_symlink() and target.read_text() == SECRET


def test_the_delivery_refuses_a_linked_directory_on_the_way(service_dir, tmp_path):
    """The service replaced a directory it may write into (certs/CAs) with a link elsewhere."""
    writable, victim = service_dir
    (writable / "CAs").symlink_to(victim.parent)
    target = writable / "CAs" / "victim"
    script = render_install_script([(HostFile(host="h", path=str(target), content=""), SECRET)])
    proc = run(script, tmp_path)
    assert proc.returncode != 0 and "a link is on the way" in proc.stderr, proc.stderr
    assert_untouched(victim)


def test_the_delivery_refuses_a_directory_the_service_owns(service_dir, tmp_path):
    writable, victim = service_dir
    owned = writable / "tls"
    owned.mkdir()
    shutil.chown(owned, "nobody", "nogroup")
    script = render_install_script([(HostFile(host="h", path=str(owned / "grafana.key"), content=""), SECRET)])
    proc = run(script, tmp_path)
    assert proc.returncode != 0 and "belongs to nobody, not root" in proc.stderr, proc.stderr
    assert not (owned / "grafana.key").exists()
    assert_untouched(victim)


def test_the_delivery_refuses_a_directory_below_one_others_may_change(service_dir, tmp_path):
    writable, victim = service_dir
    below = writable / "conf.d"
    below.mkdir()
    script = render_install_script([(HostFile(host="h", path=str(below / "x.conf"), content=""), SECRET)])
    proc = run(script, tmp_path)
    assert proc.returncode != 0 and f"{writable} (root 775) can be changed by others than root" in proc.stderr
    assert_untouched(victim)
