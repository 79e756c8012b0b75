"""The runtime-config step (``templates/loki-limits-apply.sh``) as the program renders it, with the
real Loki 3.7.6: Loki only logs a bad runtime file at a reload and refuses to start with one, and
``-verify-config`` never reads it, so the step checks the staged limits itself and must refuse
what Loki would refuse, before anything is put in place.

The step runs as rendered for loki-01, in a private mount namespace with an overlay over /etc
(the ``loki`` group the node's setup makes; the machine's own users are untouched); only the
paths of its staged files are the test's, and ``systemctl`` says Loki is not running (the reload proof
runs in the rehearsal, on booted systems).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from components.loki import STAGE_DIR
from components.loki_limits import RUNTIME_FILE
from offline.real_loki import LokiTools
from tests.labs.lab_stack import LabPlan, lab_plan
from tests.labs.needs import require_root, require_tool

pytestmark = [pytest.mark.needs_root, pytest.mark.real_tools]

NODE = "loki-01"
STOPPED = "#!/bin/sh\n# Loki is not running here.\n[ \"$1\" = is-active ] && exit 3\nexit 1\n"


@pytest.fixture(scope="module")
def plan() -> LabPlan:
    return lab_plan()


def run_step(plan: LabPlan, tools: LokiTools, tmp_path: Path, runtime: str) -> tuple[subprocess.CompletedProcess[str],
                                                                                     Path]:
    require_root()
    require_tool("unshare")
    files = plan.files[NODE]
    staged = tmp_path / "staged"
    staged.mkdir()
    for name in ("config.yml", "lokistack.env"):
        (staged / name).write_text(files[f"{STAGE_DIR}/{name}"])
    (staged / "runtime.yml").write_text(runtime)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "loki").symlink_to(tools.loki)
    (bindir / "systemctl").write_text(STOPPED)
    (bindir / "systemctl").chmod(0o755)
    script = plan.scripts[f"loki-{NODE}-runtime-apply"]
    for name, value in {"STAGED": staged / "runtime.yml", "STAGED_CONFIG": staged / "config.yml",
                        "STAGED_ENV": staged / "lokistack.env"}.items():
        script, count = re.subn(rf"^{name}=.*$", f"{name}={shlex.quote(str(value))}", script, flags=re.MULTILINE)
        assert count == 1, f"the rendered step has no parameter {name}"
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    # The node's setup makes the loki group and /etc/loki; here they exist only in the overlay over /etc.
    wrapper = (f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc && "
               "groupadd --system loki && install -d -m 0750 /etc/loki && exec bash -s")
    proc = subprocess.run(["unshare", "-m", "bash", "-c", wrapper], input=script, capture_output=True, text=True,
                          timeout=120, check=False, env={"PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin"})
    assert f"RUNTIME_FILE={RUNTIME_FILE}" in script
    return proc, upper / Path(RUNTIME_FILE).relative_to("/etc")


def test_the_programs_own_limits_pass_and_are_placed_for_loki(plan, loki_tools, tmp_path):
    runtime = plan.files[NODE][f"{STAGE_DIR}/runtime.yml"]
    proc, target = run_step(plan, loki_tools, tmp_path, runtime)
    assert proc.returncode == 0, f"the step refused the program's own limits: {proc.stdout}{proc.stderr}"
    assert target.read_text() == runtime and oct(target.stat().st_mode & 0o777) == "0o640", target.stat()
    assert "Loki reads it when it starts" in proc.stdout, proc.stdout


@pytest.mark.parametrize("change", [
    {"retention_perio": "48h"},  # a misspelled limit
    {"ingestion_rate_mb": "lots"},  # a value Loki cannot read
    {"retention_period": "31days"},  # not a Loki duration
])
def test_limits_loki_would_refuse_are_refused_before_anything_is_placed(plan, loki_tools, tmp_path, change):
    runtime = yaml.safe_load(plan.files[NODE][f"{STAGE_DIR}/runtime.yml"])
    runtime["overrides"]["fake"].update(change)
    proc, target = run_step(plan, loki_tools, tmp_path, yaml.safe_dump(runtime))
    assert proc.returncode != 0 and "rejected the limits" in proc.stderr, f"{change}: {proc.stdout}{proc.stderr}"
    assert not target.exists(), f"{change}: the file was placed although the step refused it"


@pytest.mark.parametrize("runtime", [
    {"overrides": {"someone-else": {"retention_period": "48h"}}},
    {"overrides": {"fake": {"retention_period": "48h"}}, "multi_kv_config": {}},
    "just text",
])
def test_anything_but_the_tenants_overrides_is_refused(plan, loki_tools, tmp_path, runtime):
    proc, target = run_step(plan, loki_tools, tmp_path, yaml.safe_dump(runtime))
    assert proc.returncode != 0 and "must hold only 'overrides:' for the tenant 'fake'" in proc.stderr, (
        f"{runtime}: {proc.stdout}{proc.stderr}")
    assert not target.exists()
