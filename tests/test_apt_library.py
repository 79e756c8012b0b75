"""templates/lib-apt.sh: install_pinned picks the repository build of exactly the pinned upstream
version and holds it, with apt stubbed (nothing is installed) in a private mount namespace; one
`apt-get update` serves the package steps that follow it for a while, and waits (bounded) for
another apt's lock on the lists, with the real apt-get; and grafana_repository trusts exactly the
pinned keys, with the real gpg."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.scripts import TEMPLATES
from tests.labs.needs import require_root, require_tool

pytestmark = [pytest.mark.needs_root, pytest.mark.real_tools]

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
APT_LISTS_STAMP="$(mktemp -d)/apt-lists.stamp"  # not the host's
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


def package_steps(body: str, *, fail_installs: int = 0,
                  madison_after_update: int = 0) -> subprocess.CompletedProcess[str]:
    """``body`` after lib-apt.sh with apt stubbed: nothing is installed; the first ``fail_installs``
    installs fail (as one from lists that name a build the mirror no longer has); apt-cache knows
    loki 3.7.6 only after ``madison_after_update`` updates. The sources are a file the body may
    change (``$SOURCES``); the stamp is private."""
    require_root()
    require_tool("unshare")
    stubs = f"""
work=$(mktemp -d)
SOURCES="$work/sources.list"; echo "deb http://deb.debian.org/debian bookworm main" >"$SOURCES"
APT_LISTS_STAMP="$work/state/apt-lists.stamp"
apt_sources_digest() {{ sha256sum <"$SOURCES" | cut -d ' ' -f 1; }}
apt-get() {{
  echo "apt-get $*"
  if [[ " $* " == *" update "* ]]; then echo x >>"$work/updates"; fi
  if [[ " $* " == *" install "* ]]; then
    echo x >>"$work/installs"
    [ "$(wc -l <"$work/installs")" -gt {fail_installs} ] || return 100
  fi
}}
apt-cache() {{
  [ "$(cat "$work/updates" 2>/dev/null | wc -l)" -ge {madison_after_update} ] || return 0
  echo "    loki | 3.7.6 | https://apt.grafana.com stable/main amd64 Packages"
}}
apt-mark() {{ :; }}
dpkg-query() {{ :; }}
"""
    script = (f"set -euo pipefail\n{(TEMPLATES / 'lib-apt.sh').read_text()}\n{stubs}\n"
              "mount -t tmpfs tmpfs /usr/sbin\n" + body
              + '\necho "updates: $(cat "$work/updates" 2>/dev/null | wc -l)"\n')
    return subprocess.run(["unshare", "-m", "bash", "-c", script], capture_output=True, text=True, timeout=60,
                          check=False)


def updates(proc: subprocess.CompletedProcess[str]) -> int:
    return int(proc.stdout.rsplit("updates: ", 1)[1].split()[0])


def test_one_update_serves_the_package_steps_that_follow_it():
    """A first deploy's setups on a Loki node (the firewall's packages, Loki, nginx, keepalived)
    ran `apt-get update` four to six times in a row; the lists of a few minutes ago serve them."""
    proc = package_steps("ensure_packages nftables\ninstall_pinned loki 3.7.6\nensure_packages nginx\n"
                         "ensure_packages keepalived curl")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert updates(proc) == 1, f"one update for four package steps in a row, not {updates(proc)}: {proc.stdout}"


def test_changed_sources_old_lists_or_a_failed_install_update_again():
    proc = package_steps('ensure_packages nftables\necho "deb https://apt.grafana.com stable main" >>"$SOURCES"\n'
                         "ensure_packages nginx")
    assert proc.returncode == 0 and updates(proc) == 2, f"a new source needs its lists: {proc.stdout}"
    proc = package_steps('ensure_packages nftables\ntouch -d "11 minutes ago" "$APT_LISTS_STAMP"\n'
                         "ensure_packages nginx")
    assert proc.returncode == 0 and updates(proc) == 2, f"lists older than APT_LISTS_FRESH_S: {proc.stdout}"
    proc = package_steps('ensure_packages nftables\ntouch -d "1 hour" "$APT_LISTS_STAMP"\nensure_packages nginx')
    assert proc.returncode == 0 and updates(proc) == 2, f"a stamp from the future (a clock set back): {proc.stdout}"
    proc = package_steps("ensure_packages nftables\nensure_packages nginx", fail_installs=1)
    assert proc.returncode == 0 and updates(proc) == 2 and "trying once more" in proc.stdout, (
        f"an install that fails from fresh lists updates them and tries once more: {proc.stdout}")
    proc = package_steps("ensure_packages nftables\ninstall_pinned loki 3.7.6", madison_after_update=2)
    assert proc.returncode == 0 and "loki=3.7.6" in proc.stdout and updates(proc) == 2, (
        f"a pinned version the fresh lists lack is looked for again after an update: {proc.stdout}")
    proc = package_steps("apt_update\napt-get() { echo 'E: Could not get lock' >&2; return 100; }\n"
                         'rm "$APT_LISTS_STAMP"\n(apt_update) || echo "failed as it should"\n'
                         '[ ! -e "$APT_LISTS_STAMP" ] && echo "no stamp"')
    assert "failed as it should" in proc.stdout and "no stamp" in proc.stdout, (
        f"a failed update must leave no stamp behind: {proc.stdout} {proc.stderr}")


APT_LOCK_HOLDER = """import fcntl, sys, time
lock = open(sys.argv[1], "w")
fcntl.lockf(lock, fcntl.LOCK_EX)  # as apt locks (fcntl): what another apt-get update holds
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def real_update(tmp_path: Path, *, hold_s: float, timeout_s: int, sources: str = "") -> tuple[
        subprocess.CompletedProcess[str], float]:
    """``apt_update force`` with the real apt-get, on lists and sources of its own (``APT_CONFIG``:
    no source unless ``sources``, so it reaches no network), while another process holds the lock on
    those lists for ``hold_s`` seconds (stopped by its pid afterwards). Returns the run and its
    seconds."""
    require_root()
    require_tool("apt-get")
    for d in ("lists/partial", "cache/archives/partial", "sources.list.d"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "sources.list").write_text(sources)
    (tmp_path / "apt.conf").write_text(
        f'Dir::State::Lists "{tmp_path}/lists";\nDir::Cache "{tmp_path}/cache";\n'
        f'Dir::Etc::sourcelist "{tmp_path}/sources.list";\nDir::Etc::sourceparts "{tmp_path}/sources.list.d";\n')
    holder = subprocess.Popen([sys.executable, "-c", APT_LOCK_HOLDER, str(tmp_path / "lists/lock"), str(hold_s)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        script = (f"set -euo pipefail\n{(TEMPLATES / 'lib-apt.sh').read_text()}\n"
                  f"APT_LOCK_TIMEOUT_S={timeout_s}\nAPT_LOCK_POLL_S=0.5\nAPT_LISTS_STAMP={tmp_path}/stamp\n"
                  "apt_update force\n")
        t0 = time.monotonic()
        proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, check=False,
                              env={**os.environ, "APT_CONFIG": str(tmp_path / "apt.conf")})
        return proc, time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()


def test_an_update_waits_while_another_apt_holds_the_lists_lock(tmp_path):
    """apt 2.6's `apt-get update` fails at once on a held lists lock, whatever DPkg::Lock::Timeout
    says (as right after a first boot, while apt-daily or cloud-init update the lists): the stack's
    update waits for it, and then updates."""
    proc, took = real_update(tmp_path, hold_s=3, timeout_s=60)
    assert proc.returncode == 0, f"the update did not wait for the lists lock: {proc.stdout} {proc.stderr}"
    assert took >= 2.5, f"the update ended after {took:.1f} s while the lists were locked for 3 s: {proc.stdout}"
    assert "waiting for it" in proc.stdout, f"the update must say what it waits for: {proc.stdout}"
    assert (tmp_path / "stamp").exists(), "a successful update leaves its stamp"


def test_an_update_gives_up_on_a_lists_lock_held_too_long_with_a_clear_error(tmp_path):
    proc, took = real_update(tmp_path, hold_s=60, timeout_s=3)
    assert proc.returncode != 0, f"the update succeeded although the lists stayed locked: {proc.stdout}"
    assert 2 <= took < 15, f"the update gave up after {took:.1f} s, its bound being 3 s (in whole seconds of the clock)"
    assert "still locked by another apt" in proc.stderr and "It is held by process" in proc.stdout, (
        f"the error must name the lock and its holder: {proc.stdout} {proc.stderr}")
    assert not (tmp_path / "stamp").exists(), "a failed update must leave no stamp"


def test_an_update_that_fails_for_another_reason_does_not_wait(tmp_path):
    proc, took = real_update(tmp_path, hold_s=0, timeout_s=60, sources="deb this-is-not-a-uri\n")
    assert proc.returncode != 0 and "waiting" not in proc.stdout and took < 10, (
        f"a broken sources file is no lock to wait for ({took:.1f} s): {proc.stdout} {proc.stderr}")
