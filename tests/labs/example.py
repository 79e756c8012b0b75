"""The example stack as the tests run it, and its files as the hosts receive them."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from components.loki import STAGE_DIR
from offline import engine
from stack.schema import load_schema
from tests.labs.needs import require_tool

SCHEMA = load_schema()
EXAMPLE_STACK = "homelab"
EXAMPLE_NODES = {"loki-01": "192.168.50.21", "loki-02": "192.168.50.22", "loki-03": "192.168.50.23"}
"""The example stack's Loki nodes and their addresses (Pulumi.homelab.yaml)."""
COMMAND = "command:remote:Command"
"""The type of every step the stack runs on a host."""


def files_of(result: engine.RunResult, host: str) -> dict[str, tuple[Any, engine.Resolved]]:
    """Path -> (HostFile, resolved content) of every file ``host`` receives in ``result``."""
    return {hf.path: (hf, result.resolved[f"file:{i}"]) for i, hf in enumerate(result.returned.host_files)
            if hf.host == host}


def staged(result: engine.RunResult, host: str, name: str) -> tuple[Any, engine.Resolved]:
    """The file ``name`` of a Loki node's staging directory."""
    for i, hf in enumerate(result.returned.host_files):
        if hf.host == host and hf.path == f"{STAGE_DIR}/{name}":
            return hf, result.resolved[f"file:{i}"]
    raise LookupError(f"{host} receives no {STAGE_DIR}/{name}")


def config_of(result: engine.RunResult, host: str) -> dict[str, Any]:
    """A Loki node's rendered config.yml, parsed."""
    _, resolved = staged(result, host, "config.yml")
    return yaml.safe_load(resolved.value)


def shellcheck_commands(result: engine.RunResult, names: list[str], tmp_path: Path) -> None:
    """Every named command's script (its stdin, as rendered) passes shellcheck."""
    tool = require_tool("shellcheck")
    for name in names:
        script = tmp_path / f"{name}.sh"
        script.write_text(result.engine.monitor.find("command:remote:Command", name).plain_inputs["stdin"])
        proc = subprocess.run([tool, "-s", "bash", "-S", "style", str(script)], capture_output=True, text=True,
                              timeout=60, check=False)
        assert proc.returncode == 0, f"shellcheck {name}:\n{proc.stdout}"
