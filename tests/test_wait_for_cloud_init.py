"""templates/wait-for-cloud-init.sh, run for real by bash against a stand-in cloud-init state.

``cloud-init`` and ``systemctl`` are stubs on PATH that record their calls; the result file is
the script's parameter, written by the test the way cloud-init writes
``/run/cloud-init/result.json`` at the end of its last stage.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

from components.proxmox_vm import CLOUD_INIT_RESULT
from components.scripts import render_script

STUB = """#!/bin/sh
echo "$0 $*" >> "{calls}"
exit {rc}
"""


def run_wait(tmp_path: Path, *, timeout_s: int = 10, status_rc: int = 0,
             agent_rc: int = 0) -> tuple[subprocess.CompletedProcess[str], float]:
    """The script as the VM receives it, with the result file in ``tmp_path``; ``cloud-init status``
    answers ``status_rc`` at once (as 22.4.2 does at the first error)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    for name, rc in (("cloud-init", status_rc), ("systemctl", agent_rc)):
        (bin_dir / name).write_text(STUB.format(calls=calls, rc=rc))
        (bin_dir / name).chmod(0o755)
    script = render_script("wait-for-cloud-init.sh", {"RESULT_FILE": str(tmp_path / "result.json"),
                                                      "TIMEOUT_S": timeout_s})
    start = time.monotonic()
    proc = subprocess.run(["bash", "-s"], input=script, capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    return proc, time.monotonic() - start


def write_result_later(path: Path, delay: float, errors: list[str],
                       recoverable: dict[str, list[str]] | None = None) -> None:
    def write() -> None:
        time.sleep(delay)
        v1: dict[str, object] = {"datasource": "DataSourceNoCloud [seed=/dev/sr0]", "errors": errors}
        if recoverable is not None:
            v1["recoverable_errors"] = recoverable
        path.write_text(json.dumps({"v1": v1}))

    threading.Thread(target=write, daemon=True).start()


def test_every_vm_waits_for_the_result_file_cloud_init_writes_last(example):
    for reg in example.engine.monitor.of_type("command:remote:Command"):
        if reg.name.endswith("-cloud-init"):
            stdin = reg.plain_inputs["stdin"]
            assert f"RESULT_FILE={CLOUD_INIT_RESULT}" in stdin and "status --wait" not in stdin.split("set -euo")[1], (
                f"{reg.name}: the wait must not trust `cloud-init status --wait`")
    assert CLOUD_INIT_RESULT == "/run/cloud-init/result.json"


def test_it_waits_for_the_last_stage_even_when_status_returns_at_once(tmp_path):
    write_result_later(tmp_path / "result.json", 2.0, [])
    proc, took = run_wait(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert took >= 2.0, f"returned after {took:.1f}s, before cloud-init wrote its result"
    assert "cloud-init finished" in proc.stdout


def test_every_recorded_error_is_reported_and_fails_the_step(tmp_path):
    errors = ["('scripts_user', RuntimeError('Runparts: 1 failures (runcmd) in 1 attempted commands'))",
              "('package_update_upgrade_install', ProcessExecutionError('apt-get failed'))"]
    write_result_later(tmp_path / "result.json", 0.5, errors)
    proc, _ = run_wait(tmp_path)
    assert proc.returncode == 1
    for error in errors:
        assert f"error: {error}" in proc.stderr, f"not reported: {error}\n{proc.stderr}"


def test_recoverable_errors_are_warnings(tmp_path):
    write_result_later(tmp_path / "result.json", 0.1, [], {"WARNING": ["Could not resolve host"]})
    proc, _ = run_wait(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "warning (WARNING): Could not resolve host" in proc.stdout


def test_it_gives_up_after_its_timeout_with_cloud_init_s_own_status(tmp_path):
    proc, took = run_wait(tmp_path, timeout_s=2)
    assert proc.returncode == 1 and "did not finish" in proc.stderr
    assert 2 <= took < 10
    assert "cloud-init status --long" in (tmp_path / "calls").read_text()


def test_a_stopped_guest_agent_fails_the_step(tmp_path):
    write_result_later(tmp_path / "result.json", 0.1, [])
    proc, _ = run_wait(tmp_path, agent_rc=3)
    assert proc.returncode == 1 and "qemu-guest-agent is not running" in proc.stderr
