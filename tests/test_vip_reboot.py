"""``components/vip_reboot.py``: a Loki node's part in the VIP across a shutdown and a boot. Here:
the units pass ``systemd-analyze verify`` and are ordered so that the leave unit stops before what
serves the VIP; the tmpfiles.d line puts a booting node in FAULT with the boot mark and leaves a
step's mark alone (the real ``systemd-tmpfiles``); the script passes shellcheck, and its rejoin
leaves alone a node that did not boot in FAULT; every Loki node of the example gets all of it after
its keepalived step, and no step restarts the units. What they do at a real shutdown and boot,
under clients, is rehearsed in ``tests/test_rehearsal.py``."""

from __future__ import annotations

import re
import subprocess

import pytest

from components.systemd import unit_path
from components.vip_handover import MAINTENANCE_FILE, VipHandover
from components.vip_reboot import (
    APPLY,
    BOOT_MARK,
    LEAVE_UNIT,
    REJOIN_UNIT,
    SCRIPT,
    TMPFILES_FILE,
    VipReboot,
    render_leave_unit,
    render_rejoin_unit,
    render_script_file,
    render_tmpfiles,
    stop_timeout_s,
)
from tests.labs.example import files_of
from tests.labs.needs import require_root, require_tool

SERVICES = ("keepalived.service", "nginx.service", "loki.service")
TLS = {"CA_FILE": "/etc/lokistack/tls/ca.pem", "CERT_FILE": "/etc/lokistack/tls/server.pem",
       "KEY_FILE": "/etc/lokistack/tls/server.key"}
HANDOVER = VipHandover(address="198.18.0.100", interface="eth0", port=3100,
                       priorities={"loki-01": 200, "loki-02": 190, "loki-03": 180},
                       addresses={"loki-01": "198.18.0.11", "loki-02": "198.18.0.12", "loki-03": "198.18.0.13"},
                       preempt=True, check_interval=1, check_rise=2, keepalived_unit="keepalived.service",
                       keepalived_config="/etc/keepalived/keepalived.conf", drain_port=3102, keepalive_time_s=5)
READY_URL = "https://127.0.0.1:3101/ready"


def verify(tmp_path, units: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify of ``units``, with the script stubbed at its path in a private mount namespace."""
    tool = require_tool("systemd-analyze")
    require_tool("unshare")
    require_root()  # the stub is mounted in a private mount namespace
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    stub = (f"mount -t tmpfs tmpfs /usr/local/lib && install -d /usr/local/lib/lokistack "
            f"&& install -m 0755 /dev/null {SCRIPT}")
    return subprocess.run(["unshare", "-m", "sh", "-c", f'{stub} && cd "$1" && shift && {tool} verify --man=no "$@"',
                           "sh", str(tmp_path), *units], capture_output=True, text=True, timeout=60, check=False,
                          env={"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_both_units_pass_systemd_analyze_and_the_leave_unit_stops_before_what_serves_the_vip(tmp_path):
    leave, rejoin = render_leave_unit(HANDOVER, SERVICES), render_rejoin_unit(SERVICES)
    proc = verify(tmp_path, {LEAVE_UNIT: leave, REJOIN_UNIT: rejoin})
    assert proc.returncode == 0 and not proc.stderr.strip(), f"{LEAVE_UNIT}, {REJOIN_UNIT}: {proc.stderr}"
    broken = verify(tmp_path, {LEAVE_UNIT: leave.replace("Type=oneshot", "Type=oneshoot"), REJOIN_UNIT: rejoin})
    assert broken.returncode != 0 or "oneshoot" in broken.stderr, "systemd-analyze missed a bad value"
    # Stop order is the reverse of start order: After= these, so stopped before them at shutdown.
    after = re.search(r"^After=(.*)$", leave, re.MULTILINE)
    assert after and set(SERVICES) <= set(after[1].split()), f"{LEAVE_UNIT} must be After= {SERVICES}: {after}"
    assert f"ExecStop={SCRIPT} leave" in leave and "RemainAfterExit=yes" in leave, (
        f"{LEAVE_UNIT} must stay active from boot and hand the VIP over when it stops")
    assert f"TimeoutStopSec={stop_timeout_s(HANDOVER)}" in leave
    assert stop_timeout_s(HANDOVER) >= 5 + 5 + 30 + 60, "the stop must outlast the kept-alive wait, drain and handover"
    # The boot does not wait for Loki (its data disk may come late): not a oneshot.
    assert "Type=exec" in rejoin and f"ExecStart={SCRIPT} rejoin" in rejoin, rejoin


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_a_booting_node_gets_the_boot_mark_and_a_steps_mark_is_left_alone(tmp_path):
    tool = require_tool("systemd-tmpfiles")
    require_root()  # the line makes the file root's: systemd-tmpfiles chowns it
    conf = tmp_path / "lokistack-vip.conf"
    conf.write_text(render_tmpfiles())
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    marked = root / MAINTENANCE_FILE.lstrip("/")
    proc = subprocess.run([tool, "--create", f"--root={root}", str(conf)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, f"systemd-tmpfiles refused {TMPFILES_FILE}: {proc.stderr}"
    assert marked.read_text().strip() == str(BOOT_MARK), f"{MAINTENANCE_FILE} at boot: {marked.read_text()!r}"
    marked.write_text("0\n")
    subprocess.run([tool, "--create", f"--root={root}", str(conf)], capture_output=True, timeout=60, check=True)
    assert marked.read_text() == "0\n", f"systemd-tmpfiles overwrote a step's mark in {MAINTENANCE_FILE}"


def rendered(tmp_path, maintenance: str) -> str:
    """The node's script, with the maintenance file at ``maintenance``."""
    script = render_script_file(HANDOVER, "loki-02", TLS, READY_URL)
    script = script.replace(f"VIP_MAINTENANCE_FILE={MAINTENANCE_FILE}", f"VIP_MAINTENANCE_FILE={maintenance}")
    path = tmp_path / "vip-reboot"
    path.write_text(script)
    path.chmod(0o755)
    return str(path)


@pytest.mark.real_tools
def test_the_script_passes_shellcheck(tmp_path):
    tool = require_tool("shellcheck")
    proc = subprocess.run([tool, "-s", "bash", rendered(tmp_path, MAINTENANCE_FILE)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"shellcheck {SCRIPT}:\n{proc.stdout}"


@pytest.mark.parametrize("mark", ["0\n", "1\n", None])
def test_rejoin_leaves_a_node_that_did_not_boot_in_fault_alone(tmp_path, mark):
    maintenance = tmp_path / "maintenance"
    if mark is not None:
        maintenance.write_text(mark)
    proc = subprocess.run([rendered(tmp_path, str(maintenance)), "rejoin"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 0 and "nothing to do" in proc.stdout, f"rejoin with {mark!r}: {proc.stdout}{proc.stderr}"
    assert (maintenance.read_text() if mark is not None else None) == mark, "rejoin changed a step's mark"
    usage = subprocess.run([rendered(tmp_path, str(maintenance)), "restart"], capture_output=True, text=True,
                           timeout=30, check=False)
    assert usage.returncode == 2 and "usage" in usage.stderr, usage.stderr


def test_the_script_needs_the_nodes_certificate():
    with pytest.raises(ValueError, match=r"needs \['KEY_FILE'\]"):
        render_script_file(HANDOVER, "loki-01", {k: v for k, v in TLS.items() if k != "KEY_FILE"}, READY_URL)


def test_every_loki_node_gets_it_after_its_keepalived_step_and_no_step_restarts_the_units(example):
    reboot = VipReboot(handover=HANDOVER, tls=TLS, loki_ready_url=READY_URL, services=SERVICES)
    expected = {f.path for f in reboot.host_files("loki-01")}
    assert expected == {SCRIPT, unit_path(LEAVE_UNIT), unit_path(REJOIN_UNIT), TMPFILES_FILE}
    for node in ("loki-01", "loki-02", "loki-03"):
        files = files_of(example, node)
        missing = expected - set(files)
        assert not missing, f"{node} does not get {sorted(missing)}"
        assert files[SCRIPT][0].mode == "0755", f"{node}: {SCRIPT} must be executable by root only to change"
        assert f"VIP_SELF={node}" in files[SCRIPT][1].value, f"{node}: {SCRIPT} is not its own"
    for node in ("s3", "grafana"):
        assert SCRIPT not in files_of(example, node), f"{node} holds no VIP and must not get {SCRIPT}"
    commands = {r.name: r for r in example.engine.monitor.registrations if r.type == "command:remote:Command"}
    assert commands["vip-loki-01-apply"].urn in commands["vip-loki-01-reboot-install"].dependencies, (
        "the reboot units must be installed after the node's keepalived step")
    assert "restart" not in APPLY and f"start {LEAVE_UNIT}" in APPLY, (
        f"a step must never restart {LEAVE_UNIT} (its stop hands the VIP over): {APPLY}")
