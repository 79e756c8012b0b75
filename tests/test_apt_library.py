"""templates/lib-apt.sh: install_pinned picks the repository build of exactly the pinned upstream
version and holds it, with apt stubbed (nothing is installed) in a private mount namespace; and
grafana_repository trusts exactly the pinned keys, with the real gpg."""

from __future__ import annotations

import subprocess

import pytest

from components.scripts import TEMPLATES
from tests.conftest import require_root, require_tool

MADISON = """   alloy | 1.21.2-1 | https://apt.grafana.com stable/main amd64 Packages
   alloy | 1.21.12-1 | https://apt.grafana.com stable/main amd64 Packages
   alloy | 1.21.1-1 | https://apt.grafana.com stable/main amd64 Packages
    loki | 3.7.6 | https://apt.grafana.com stable/main amd64 Packages
"""


def install_pinned(package: str, version: str, *, installed: str = "", existing_guard: bool = False,
                   madison_padding: int = 0, fail_install: bool = False,
                   stale_guard: bool = False) -> subprocess.CompletedProcess[str]:
    """``installed``: dpkg's state and version (``installed 1.21.2-1``, ``deinstall 1.21.2-1``);
    ``stale_guard``: the guard our own install left when it was killed."""
    require_root()
    require_tool("unshare")
    stubs = f"""
apt-cache() {{ grep " {package} " <<'MADISON'
{MADISON}MADISON
for ((i = 0; i < {madison_padding}; i++)); do echo "   {package} | 0.0.$i-1 | https://apt.grafana.com stable/main"; done
}}
apt-get() {{ echo "apt-get $*"; if [ {int(fail_install)} = 1 ] && [[ " $* " == *" install "* ]]; then return 100; fi; }}
apt-mark() {{ echo "apt-mark $*" >&2; }}
dpkg-query() {{ [ -n "{installed}" ] && echo -n "{installed}"; }}
"""
    script = (f"set -euo pipefail\nstatus=0\n{(TEMPLATES / 'lib-apt.sh').read_text()}\n{stubs}\n"
              "mount -t tmpfs tmpfs /usr/sbin\n"  # policy-rc.d goes into a throwaway /usr/sbin
              + ("printf 'admin' > /usr/sbin/policy-rc.d\n" if existing_guard else "")
              + ("printf '%s\\n' \"$POLICY_RC_D_CONTENT\" > /usr/sbin/policy-rc.d\n" if stale_guard else "")
              # errexit must hold inside the function, as in the real scripts (not under `||`)
              + f"set +e\n(set -e; install_pinned {package} {version})\nstatus=$?\nset -e\n"
              + 'echo "guard: $(cat /usr/sbin/policy-rc.d 2>/dev/null || echo none)"\n'
              + 'exit "${status:-0}"\n')
    return subprocess.run(["unshare", "-m", "bash", "-c", script], capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.parametrize(("package", "version", "exact"), [
    ("alloy", "1.21.2", "1.21.2-1"), ("alloy", "1.21.1", "1.21.1-1"), ("loki", "3.7.6", "3.7.6")])
def test_the_pinned_upstream_version_is_installed_and_held(package, version, exact):
    proc = install_pinned(package, version)
    assert proc.returncode == 0, proc.stderr
    assert (f"install -y -q --allow-change-held-packages --allow-downgrades -o Dpkg::Options::=--force-confdef "
            f"-o Dpkg::Options::=--force-confold {package}={exact}") in proc.stdout, proc.stdout
    assert f"apt-mark hold {package}" in proc.stderr and f"installed {package} {exact}" in proc.stdout
    assert "guard: none" in proc.stdout, "the temporary policy-rc.d must be removed again"


def test_a_version_the_repository_lacks_fails_clearly():
    proc = install_pinned("alloy", "1.21.3")
    assert proc.returncode != 0 and "alloy 1.21.3 is not in the package repository" in proc.stderr
    assert "install -y" not in proc.stdout


def test_an_installed_pinned_version_is_left_alone_and_held():
    proc = install_pinned("alloy", "1.21.2", installed="installed 1.21.2-1")
    assert proc.returncode == 0 and "apt-get" not in proc.stdout, f"re-ran apt for an installed version: {proc.stdout}"
    assert "apt-mark hold alloy" in proc.stderr, "the hold must be (re)applied on the installed path too"


def test_a_removed_package_is_installed_again():
    """dpkg-query still reports the version of a removed package (state deinstall/config-files)."""
    proc = install_pinned("alloy", "1.21.2", installed="deinstall 1.21.2-1")
    assert proc.returncode == 0 and "alloy=1.21.2-1" in proc.stdout, proc.stdout


def test_a_long_madison_list_does_not_end_the_script_silently():
    """With pipefail, `apt-cache madison | awk '...exit'` died of SIGPIPE (exit 141, no message)."""
    proc = install_pinned("alloy", "1.21.2", madison_padding=20000)
    assert proc.returncode == 0 and "alloy=1.21.2-1" in proc.stdout, f"rc={proc.returncode} {proc.stderr[-300:]}"


def test_the_guard_is_removed_when_the_install_fails():
    proc = install_pinned("alloy", "1.21.2", fail_install=True)
    assert proc.returncode != 0 and "guard: none" in proc.stdout, "a failed install left policy-rc.d behind"


def test_an_administrators_policy_rc_d_is_kept():
    proc = install_pinned("alloy", "1.21.2", existing_guard=True)
    assert proc.returncode == 0 and "guard: admin" in proc.stdout, "removed a policy-rc.d it did not write"


@pytest.mark.parametrize("installed", ["", "installed 3.7.6"], ids=["to install", "installed already"])
def test_a_guard_a_killed_install_left_is_removed_before_any_package_work(installed):
    """A step killed during an install never ran its EXIT trap: its policy-rc.d (exactly ours) would
    keep every package's services from starting, for good. The next package step removes it, also
    when it has nothing to install."""
    proc = install_pinned("loki", "3.7.6", installed=installed, stale_guard=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "guard: none" in proc.stdout and "removed /usr/sbin/policy-rc.d" in proc.stdout, (
        f"the guard an earlier run left must go: {proc.stdout}")
