"""Every rendered Loki node config, checked by the real Loki 3.7.6 and Loki's own checker.

For several stacks (the example, a single node, five nodes, and the example with each boolean
setting flipped), each node's staged config is checked the way its apply step checks it
(``loki -verify-config`` with the drop-in's flags and the S3 keys from the env file), and by
Loki's deprecated-config checker: nothing deprecated or deleted, so the configs are ready for the
next major release. Each tool also runs on a broken copy, to show that it catches what it is
there for.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from components.loki import CONFIG_FILE, STAGE_DIR
from offline.plan import read_stack_config, run_program
from offline.real_loki import LOKI_VERSION, LokiTools
from tests.labs.example import EXAMPLE_STACK, SCHEMA
from tests.labs.loki_lab import env_values, parse_dropin

pytestmark = pytest.mark.real_tools

CLEAN = "No deprecated or deleted configs found."


def boolean_flips() -> dict[str, dict[str, Any]]:
    """The example stack with each boolean setting set to the other value."""
    config = read_stack_config(EXAMPLE_STACK).config
    flips = {}
    for key, spec in SCHEMA.keys.items():
        if spec.type == "boolean":
            current = config.get(SCHEMA.qualified(key), str(spec.default).lower()) == "true"
            flips[f"{key}={str(not current).lower()}"] = {key: not current}
    return flips


STACKS: dict[str, dict[str, Any]] = {
    "example": {},
    "single node": {"lokiNodes": ["loki-01"], "lokiAddresses": ["192.168.50.21"]},
    "five nodes": {"lokiNodes": [f"loki-0{i}" for i in range(1, 6)],
                   "lokiAddresses": [f"192.168.50.{20 + i}" for i in range(1, 6)]},
    **boolean_flips(),
}


def node_configs(overrides: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    """Loki node -> (config, env file, drop-in) as the stack renders them."""
    result = run_program(EXAMPLE_STACK, read_stack_config(EXAMPLE_STACK, overrides=overrides))
    files: dict[str, dict[str, str]] = {}
    for i, hf in enumerate(result.returned.host_files):
        if hf.path.startswith(f"{STAGE_DIR}/"):
            files.setdefault(hf.host, {})[hf.path.rsplit("/", 1)[1]] = result.resolved[f"file:{i}"].value
    return {host: (f["config.yml"], f["lokistack.env"], f["10-lokistack.conf"]) for host, f in files.items()}


def verify(tools: LokiTools, directory: Path, config: str, env_file: str,
           dropin: str) -> subprocess.CompletedProcess[str]:
    """``loki -verify-config`` with the flags the node starts with and the env file's S3 keys."""
    (directory / "config.yml").write_text(config)
    args = parse_dropin(dropin).exec_start[1:]
    args = [f"-config.file={directory / 'config.yml'}" if a == f"-config.file={CONFIG_FILE}" else a for a in args]
    env = env_values(env_file)
    assert set(env) == {"LOKI_S3_ACCESS_KEY", "LOKI_S3_SECRET_KEY"}, f"unexpected env file: {sorted(env)}"
    return subprocess.run([str(tools.loki), *args, "-verify-config"], capture_output=True, text=True, timeout=60,
                          check=False, env={"PATH": "/usr/bin:/bin", **env})


def check_deprecated(tools: LokiTools, directory: Path, config: str) -> subprocess.CompletedProcess[str]:
    (directory / "config.yml").write_text(config)
    return subprocess.run([str(tools.checker), "-config.file", str(directory / "config.yml"),
                           "-deprecates-file", str(tools.checker_lists / "deprecated-config.yaml"),
                           "-deletes-file", str(tools.checker_lists / "deleted-config.yaml")],
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_binaries_are_the_version_the_stack_installs(loki_tools):
    proc = subprocess.run([str(loki_tools.loki), "-version"], capture_output=True, text=True, timeout=30, check=False)
    assert f"version {LOKI_VERSION}" in proc.stdout, proc.stdout
    assert SCHEMA.keys["lokiVersion"].default == LOKI_VERSION, (
        f"the stack installs Loki {SCHEMA.keys['lokiVersion'].default}, the tests run {LOKI_VERSION}")


@pytest.mark.parametrize("stack", list(STACKS))
def test_every_node_config_passes_verify_config_and_the_deprecation_checker(stack, loki_tools, tmp_path):
    configs = node_configs(STACKS[stack])
    expected_nodes = len(STACKS[stack].get("lokiNodes", ["loki-01", "loki-02", "loki-03"]))
    assert len(configs) == expected_nodes, f"{stack}: configs for {sorted(configs)}"

    def check(host: str) -> list[str]:
        directory = tmp_path / host
        directory.mkdir()
        config, env_file, dropin = configs[host]
        problems = []
        proc = verify(loki_tools, directory, config, env_file, dropin)
        if proc.returncode != 0 or "config is valid" not in proc.stdout + proc.stderr:
            problems.append(f"{stack}/{host}: loki -verify-config rc={proc.returncode}: {proc.stdout}{proc.stderr}")
        proc = check_deprecated(loki_tools, directory, config)
        if proc.returncode != 0 or CLEAN not in proc.stdout:
            problems.append(f"{stack}/{host}: deprecated-config checker rc={proc.returncode}: "
                            f"{proc.stdout}{proc.stderr}")
        return problems

    with ThreadPoolExecutor(max_workers=4) as pool:
        problems = [p for found in pool.map(check, sorted(configs)) for p in found]
    assert not problems, "\n".join(problems)


def test_both_tools_reject_what_they_are_there_for(loki_tools, tmp_path):
    config, env_file, dropin = node_configs({})["loki-01"]
    unknown = config.replace("compactor:\n", "compactor:\n  no_such_key: 1\n", 1)
    proc = verify(loki_tools, tmp_path, unknown, env_file, dropin)
    assert proc.returncode == 1 and "no_such_key" in proc.stdout + proc.stderr, (
        f"loki -verify-config accepted an unknown key: {proc.stdout}{proc.stderr}")
    deleted = config.replace("compactor:\n", "compactor:\n  shared_store: s3\n", 1)
    proc = check_deprecated(loki_tools, tmp_path, deleted)
    assert proc.returncode != 0 and "compactor.shared_store" in proc.stdout, (
        f"the checker missed a deleted key: {proc.stdout}{proc.stderr}")
    assert CLEAN in check_deprecated(loki_tools, tmp_path, config).stdout
