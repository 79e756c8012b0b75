"""templates/lib-users.sh with Debian 12's real adduser, against what Grafana's loki package does.

Grafana's loki package (tools/packaging/loki-postinstall.sh, built with nfpm) makes its user on a
clean install with `adduser --system --disabled-password --shell /bin/false loki` when there is
no user loki. Everything runs in a private mount namespace with an overlay over /etc: the
machine's own users and groups are untouched.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from components.loki import GUARD_FILE, render_dropin, render_start_guard
from components.scripts import TEMPLATES
from offline.rehearsal.repository import LOKI_UNIT
from tests.labs.needs import require_root, require_tool
from tests.labs.systemd_checks import verify_dropin

PACKAGE_MAKES_ITS_USER = ("if ! id loki >/dev/null 2>&1; then "
                          "adduser --system --disabled-password --shell /bin/false loki; fi")
"""What the package's post-install script does about its user."""
SHOW = 'echo "group=$(id -gn loki)"; echo "loki group: $(getent group loki | cut -d: -f1)"'


def run_users(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    require_root()
    for tool in ("adduser", "addgroup", "unshare"):
        require_tool(tool)
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    script = "\n".join([
        "set -euo pipefail",
        f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc",
        (TEMPLATES / "lib-users.sh").read_text(),
        body,
    ])
    return subprocess.run(["unshare", "-m", "bash", "-c", script], capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_the_packages_own_user_lands_in_nogroup_without_a_loki_group(tmp_path):
    """Why the stack makes the user first: the stack's `chown loki:loki`, `Group=loki` need the group."""
    proc = run_users(tmp_path, f"{PACKAGE_MAKES_ITS_USER}\n{SHOW}")
    assert proc.returncode == 0, proc.stderr
    assert "group=nogroup" in proc.stdout and "loki group: \n" in proc.stdout + "\n", proc.stdout


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_the_user_made_before_the_package_has_its_own_group(tmp_path):
    proc = run_users(tmp_path, f"system_user loki /var/lib/loki\n{PACKAGE_MAKES_ITS_USER}\n{SHOW}\n"
                               "install -d -o root -g loki -m 0750 /etc/loki-check && chown loki:loki /etc/loki-check")
    assert proc.returncode == 0, proc.stderr
    assert "group=loki" in proc.stdout and "loki group: loki" in proc.stdout, proc.stdout


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_a_user_the_package_made_earlier_is_moved_into_its_group_once(tmp_path):
    proc = run_users(tmp_path, f"{PACKAGE_MAKES_ITS_USER}\nsystem_user loki /var/lib/loki\n"
                               f"system_user loki /var/lib/loki\n{SHOW}")
    assert proc.returncode == 0, proc.stderr
    assert "group=loki" in proc.stdout
    assert proc.stdout.count("moved loki into its own group loki") == 1, "not idempotent: " + proc.stdout


def test_the_setup_makes_user_and_start_guard_before_the_package(example):
    stdin = example.engine.monitor.find("command:remote:Command", "loki-loki-01-setup").plain_inputs["stdin"]
    body = stdin.split("set -euo pipefail", 1)[1]
    package = body.index("install_pinned loki")
    assert body.index("system_user loki") < package, "the package would make loki without a group"
    assert body.index('write_whole "$GUARD_FILE" "$GUARD"') < package, "Loki would start with defaults"
    assert f"GUARD_FILE={GUARD_FILE}" in stdin


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_the_start_guard_and_the_dropin_pass_systemd_analyze(tmp_path):
    guard = render_start_guard()
    assert "ConditionPathExists=/etc/loki/lokistack.env" in guard
    proc = verify_dropin(tmp_path / "guard", "loki.service", LOKI_UNIT, guard, "/usr/bin/loki")
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    dropin = render_dropin(data_dir="/var/lib/loki", cert_file="/c", key_file="/k", ca_file="/ca")
    assert "RequiresMountsFor=/var/lib/loki" in dropin, "Loki must not start on the root disk without its data disk"
    proc = verify_dropin(tmp_path / "dropin", "loki.service", LOKI_UNIT, dropin, "/usr/bin/loki")
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
