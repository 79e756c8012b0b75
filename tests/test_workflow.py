"""The pull-request workflow: the tests as in CI, and a preview that skips itself without secrets."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from offline.real_loki import LOKI_SOURCE_COMMIT
from stack.schema import PROJECT_DIR
from tests.labs.needs import missing, require_tool

WORKFLOW = PROJECT_DIR / ".github" / "workflows" / "pull-request.yml"


@pytest.mark.real_tools
def test_the_workflow_is_valid_yaml_for_pull_requests():
    tool = require_tool("yamllint")
    config = ("{extends: default, rules: {line-length: {max: 200}, document-start: disable, "
              "truthy: {check-keys: false}}}")
    proc = subprocess.run([tool, "--strict", "-d", config, str(WORKFLOW)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert "pull_request" in doc[True], "the workflow must run on pull requests"  # YAML 1.1 reads `on` as True


def test_the_test_job_runs_ci_as_root_with_setup_pythons_interpreter():
    """The real-tool tests need root (namespaces, loop devices, file owners); a hosted runner's
    user is not root. sudo resets PATH, which would swap setup-python's 3.11 for the system's."""
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["test"]["steps"]
    runs = [s.get("run", "") for s in steps if ".ci/run" in s.get("run", "")]
    assert runs == ['sudo -E env "PATH=$PATH" bash .ci/run'], runs


def test_the_test_job_checks_out_the_earlier_commits_the_upgrade_rehearsal_deploys():
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["test"]["steps"]
    own = next(s for s in steps if s.get("uses", "").startswith("actions/checkout@") and "repository" not in
               s.get("with", {}))
    assert own.get("with", {}).get("fetch-depth") == 0, (
        f"the test job's checkout must fetch the whole history (fetch-depth: 0), not {own.get('with')}: "
        "tests/test_rehearsal_upgrade.py deploys earlier commits")


def test_the_preview_uses_the_pulumi_action_and_skips_without_secrets():
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["preview"]
    assert job["needs"] == "test"
    steps = job["steps"]
    check = steps[0]
    assert check["id"] == "secrets" and "PULUMI_ACCESS_TOKEN" in check["run"] and "::notice" in check["run"]
    for step in steps[1:]:
        assert step.get("if") == "steps.secrets.outputs.ready == 'true'", f"step {step} runs without the secrets"
    preview = next(s for s in steps if s.get("with", {}).get("command") == "preview")
    assert preview["uses"].startswith("pulumi/actions@") and preview["with"]["stack-name"] == "homelab"
    assert job["env"]["PROXMOX_API_TOKEN"] == "${{ secrets.PROXMOX_API_TOKEN }}"  # noqa: S105 (a reference)
    assert any("config set --secret" in s.get("run", "") for s in steps), "the token must be set as a secret"
    assert any("caCertificate > .lokistack/ca.pem" in s.get("run", "") for s in steps), (
        "a fresh runner needs the CA file the MinIO provider reads")


def test_the_test_job_builds_the_real_loki_from_the_pinned_release_commit():
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["test"]["steps"]
    source = next(s for s in steps if s.get("with", {}).get("repository") == "grafana/loki")
    assert source["with"]["ref"] == LOKI_SOURCE_COMMIT, "the workflow must build the Loki the tests expect"
    build = next(s for s in steps if "go build" in s.get("run", ""))
    for var in ("LOKI_BIN", "LOGCLI_BIN", "LOKI_CONFIG_CHECKER", "LOKI_CONFIG_CHECKER_LISTS"):
        assert f"echo \"{var}=" in build["run"], f"the build step does not hand {var} to .ci/run"
    names = [s.get("name", s.get("uses", "")) for s in steps]
    assert names.index(build["name"]) < next(i for i, s in enumerate(steps) if ".ci/run" in s.get("run", ""))


def schema_check(path: Path) -> subprocess.CompletedProcess[str]:
    """SchemaStore's GitHub workflow schema, as vendored by check-jsonschema (no network)."""
    tool = Path(sys.executable).parent / "check-jsonschema"
    if not tool.is_file():
        missing("check-jsonschema is not installed (requirements-dev.txt)")
    return subprocess.run([str(tool), "--builtin-schema", "vendor.github-workflows", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_workflow_passes_the_github_workflow_schema(tmp_path):
    proc = schema_check(WORKFLOW)
    assert proc.returncode == 0, f"{WORKFLOW.name}: {proc.stdout}{proc.stderr}"
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("timeout-minutes: 60", "timeout-minutes: soon", 1))
    proc = schema_check(broken)
    assert proc.returncode == 1 and "timeout-minutes" in proc.stdout, "the schema check missed a bad value"


@pytest.mark.real_tools
def test_every_run_step_passes_shellcheck(tmp_path):
    """What actionlint does for `run:` blocks: shellcheck them as bash (expressions stubbed)."""
    tool = require_tool("shellcheck")
    workflow = yaml.safe_load(WORKFLOW.read_text())
    scripts = [(job, step.get("name", "?"), step["run"]) for job, spec in workflow["jobs"].items()
               for step in spec["steps"] if "run" in step]
    assert len(scripts) >= 4, scripts
    for job, name, run in scripts:
        script = tmp_path / "step.sh"
        script.write_text("#!/usr/bin/env bash\n" + re.sub(r"\$\{\{[^}]*\}\}", "EXPR", run))
        proc = subprocess.run([tool, "-s", "bash", "-S", "style", str(script)], capture_output=True, text=True,
                              timeout=60, check=False)
        assert proc.returncode == 0, f"{job} / {name}:\n{proc.stdout}"


def test_the_preview_runs_only_for_this_repositorys_branches_after_a_reviewer_approved():
    """Pull-request code on a homelab runner with the state's secrets: never from a fork, and
    only through an environment whose required reviewers approve each run."""
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["preview"]
    assert job["if"] == "github.event.pull_request.head.repo.full_name == github.repository"
    assert job["environment"] == "preview"
    assert "pull_request_target" not in yaml.safe_load(WORKFLOW.read_text())[True], (
        "pull_request_target would run fork code with the repository's secrets")
