"""The real Debian tools on every rendered file: cloud-init schema, yamllint, shellcheck.

Each check also runs on a broken copy, to show that it catches what it is there for.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from components.proxmox_vm import USER_DATA_PATH
from offline.plan import main as plan_main
from stack.schema import PROJECT_DIR
from tests.labs.needs import require_tool

pytestmark = pytest.mark.real_tools

YAMLLINT_CONFIG = ("{extends: default, rules: {comments: {require-starting-space: false}, "
                   "document-start: disable, line-length: {max: 250}}}")
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's cloud-init lives in the system interpreter, not in .venv
KNOWN_KEYS_SCRIPT = """
import json
from cloudinit.config.schema import get_schema
s = get_schema()
known = set()
for d in s["allOf"]:
    ref = d.get("$ref", "")
    if ref.startswith("#/$defs/"):
        known |= set(s["$defs"][ref.split("/")[-1]].get("properties", {}))
print(json.dumps(sorted(known)))
"""


@pytest.fixture(scope="module")
def user_data_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Every cloud-init file of the example stack, with secrets (the tools must see real keys)."""
    out = tmp_path_factory.mktemp("plan")
    with open(out.parent / "plan.log", "w") as log:
        assert plan_main(["--out", str(out / "p"), "--show-secrets"], out=log, err=log) == 0
    files = sorted((out / "p").glob(f"*/{USER_DATA_PATH.lstrip('/')}"))
    assert len(files) == 5, f"expected a user-data file per VM, found {files}"
    return files


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def known_cloud_config_keys() -> set[str]:
    require_tool("cloud-init")
    proc = run(SYSTEM_PYTHON, "-c", KNOWN_KEYS_SCRIPT)
    assert proc.returncode == 0, f"reading cloud-init's schema failed: {proc.stderr}"
    keys = set(json.loads(proc.stdout))
    assert {"write_files", "users", "ssh_keys", "packages"} <= keys, "cloud-init's schema looks wrong"
    return keys


def test_every_user_data_passes_cloud_init_schema(user_data_files, tmp_path):
    tool = require_tool("cloud-init")
    for path in user_data_files:
        proc = run(tool, "schema", "--config-file", str(path))
        assert proc.returncode == 0 and "Valid cloud-config" in proc.stdout, (
            f"{path.parent.parent.parent.parent.name}: cloud-init schema failed: {proc.stdout}{proc.stderr}")
    broken = tmp_path / "broken.yaml"
    broken.write_text(user_data_files[0].read_text().replace("permissions: '0644'", "permissions: 420"))
    proc = run(tool, "schema", "--config-file", str(broken))
    assert proc.returncode == 1 and "is not of type 'string'" in proc.stderr, "cloud-init schema missed a bad type"


def test_every_user_data_passes_yamllint(user_data_files, tmp_path):
    tool = require_tool("yamllint")
    for path in user_data_files:
        proc = run(tool, "--strict", "-d", YAMLLINT_CONFIG, str(path))
        assert proc.returncode == 0, f"yamllint on {path}: {proc.stdout}{proc.stderr}"
    duplicate = tmp_path / "dup.yaml"
    duplicate.write_text(user_data_files[0].read_text() + "hostname: again\n")
    proc = run(tool, "--strict", "-d", YAMLLINT_CONFIG, str(duplicate))
    assert proc.returncode != 0 and "duplication of key" in proc.stdout


def unknown_top_level_keys(text: str, known: set[str]) -> set[str]:
    return set(yaml.safe_load(text)) - known


def test_no_user_data_has_an_unknown_top_level_key(user_data_files, known_cloud_config_keys):
    for path in user_data_files:
        unknown = unknown_top_level_keys(path.read_text(), known_cloud_config_keys)
        assert not unknown, f"{path}: cloud-init ignores unknown keys silently: {sorted(unknown)}"
    typo = user_data_files[0].read_text().replace("write_files:", "write_file:")
    assert unknown_top_level_keys(typo, known_cloud_config_keys) == {"write_file"}


def test_every_shell_script_passes_shellcheck(tmp_path):
    tool = require_tool("shellcheck")
    scripts = sorted((PROJECT_DIR / "templates").glob("*.sh")) + sorted((PROJECT_DIR / ".ci").glob("*"))
    assert scripts, "no shell scripts found"
    for script in scripts:
        proc = run(tool, "-s", "bash", "-S", "style", str(script))
        assert proc.returncode == 0, f"shellcheck {script.name}:\n{proc.stdout}"
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\ncd $1\n")
    assert run(tool, "-s", "bash", str(bad)).returncode == 1, "shellcheck missed an unquoted cd"
