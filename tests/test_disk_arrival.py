"""``components/disk_arrival.py``: the path unit and its oneshot pass ``systemd-analyze verify``
together, and bad names or devices are refused. What they do on a booted system (the disk missing
at boot, then there) is rehearsed in ``tests/test_rehearsal.py``."""

from __future__ import annotations

import subprocess

import pytest

from components.disk_arrival import render_path_unit, render_starter_unit, unit_names
from tests.labs.needs import require_tool

DEVICE = "/dev/disk/by-id/virtio-lokistack-data"


def verify(tmp_path, path_text: str, starter_text: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("systemd-analyze")
    path_unit, starter = unit_names("loki.service")
    (tmp_path / path_unit).write_text(path_text)
    (tmp_path / starter).write_text(starter_text)
    return subprocess.run([tool, "verify", "--man=no", str(tmp_path / path_unit), str(tmp_path / starter)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/bin:/bin"})


@pytest.mark.real_tools
def test_the_path_unit_and_its_oneshot_pass_systemd_analyze(tmp_path):
    path_text, starter_text = render_path_unit("loki.service", DEVICE), render_starter_unit("loki.service")
    proc = verify(tmp_path, path_text, starter_text)
    assert proc.returncode == 0 and not proc.stderr.strip(), f"the data disk's units: {proc.stderr}"
    assert f"PathExists={DEVICE}\nUnit=lokistack-data-disk-loki.service" in path_text
    assert "RemainAfterExit=yes" in starter_text and "start --no-block loki.service" in starter_text, (
        "the oneshot must ask for Loki once per boot without waiting for it (a later stop is not undone)")
    broken = verify(tmp_path, path_text, starter_text.replace("Type=oneshot", "Type=oneshoot"))
    assert broken.returncode != 0 or "oneshoot" in broken.stderr, "systemd-analyze missed a bad value"


@pytest.mark.parametrize(("service", "device", "message"), [
    ("loki", DEVICE, "is not a service unit name"),
    ("Loki.service", DEVICE, "is not a service unit name"),
    ("loki.service", "disk/by-id/x", "must be a /dev path"),
])
def test_bad_names_are_refused(service, device, message):
    with pytest.raises(ValueError, match=message):
        render_path_unit(service, device)
