"""Every test runs against a fresh fake engine (offline/engine.py) loaded with the example stack."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pulumi
import pytest

from offline import engine
from offline.plan import read_stack_config, run_program
from offline.real_loki import LokiTools, MissingBinaryError, find_tools
from stack.schema import load_schema

SCHEMA = load_schema()
EXAMPLE_STACK = "homelab"
FIGURES: dict[str, list[str]] = {}
"""What the real-tool tests measured, by section; printed at the end of the run."""


def figure(section: str, line: str) -> None:
    """Record a measured figure for the end-of-run summary."""
    FIGURES.setdefault(section, []).append(line)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "preview: run the test's program in preview mode")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands its figures to the controller, which prints them (``pytest_testnodedown``)."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["figures"] = FIGURES


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    for section, lines in (getattr(node, "workeroutput", None) or {}).get("figures", {}).items():
        FIGURES.setdefault(section, []).extend(lines)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for section, lines in FIGURES.items():
        terminalreporter.section(section)
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def fake_engine(request: pytest.FixtureRequest) -> engine.Engine:
    preview = request.node.get_closest_marker("preview") is not None
    cfg = read_stack_config(EXAMPLE_STACK)
    return engine.install(project=SCHEMA.project, stack="test", preview=preview,
                          config=cfg.config, secret_keys=cfg.secret_keys)


@pytest.fixture(scope="module")
def example() -> engine.RunResult:
    """The whole example stack, run once per test module against the fake engine."""
    return run_program(EXAMPLE_STACK, read_stack_config(EXAMPLE_STACK))


def files_of(result: engine.RunResult, host: str) -> dict[str, tuple[Any, engine.Resolved]]:
    """Path -> (HostFile, resolved content) of every file ``host`` receives in ``result``."""
    return {hf.path: (hf, result.resolved[f"file:{i}"]) for i, hf in enumerate(result.returned.host_files)
            if hf.host == host}


@pytest.fixture
def use_config(fake_engine: engine.Engine) -> Callable[..., None]:
    """Replace the config with the example stack's, changed by ``overrides`` and ``remove``."""

    def apply(overrides: dict[str, Any] | None = None, remove: tuple[str, ...] = ()) -> None:
        cfg = read_stack_config(EXAMPLE_STACK, overrides=overrides, remove=remove)
        pulumi.runtime.set_all_config(cfg.config, secret_keys=cfg.secret_keys)

    return apply


def shellcheck_commands(result: engine.RunResult, names: list[str], tmp_path: Any) -> None:
    """Every named command's script (its stdin, as rendered) passes shellcheck."""
    tool = require_tool("shellcheck")
    for name in names:
        script = tmp_path / f"{name}.sh"
        script.write_text(result.engine.monitor.find("command:remote:Command", name).plain_inputs["stdin"])
        proc = subprocess.run([tool, "-s", "bash", "-S", "style", str(script)], capture_output=True, text=True,
                              timeout=60, check=False)
        assert proc.returncode == 0, f"shellcheck {name}:\n{proc.stdout}"


def missing(message: str) -> NoReturn:
    """Skip, or fail when REQUIRE_REAL_TOOLS=1 (as in CI)."""
    if os.environ.get("REQUIRE_REAL_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def require_root() -> None:
    """Skip unless root, or fail when REQUIRE_REAL_TOOLS=1 (CI runs as root)."""
    if os.geteuid() != 0:
        missing("this test needs root (mounts, loop devices, file owners); CI runs as root")


@pytest.fixture(scope="session")
def loki_tools(tmp_path_factory: pytest.TempPathFactory) -> LokiTools:
    """The real Loki, logcli and deprecated-config checker (offline/real_loki.py says from where)."""
    try:
        return find_tools(Path(tmp_path_factory.mktemp("real-loki")))
    except MissingBinaryError as error:
        missing(f"real Loki binaries: {error}")


def require_tool(name: str) -> str:
    """Path of a real tool; skip without it, or fail when REQUIRE_REAL_TOOLS=1 (as in CI)."""
    path = shutil.which(name)
    if path is None:
        missing(f"real tool {name!r} is not installed (.ci/run installs it)")
    return path
