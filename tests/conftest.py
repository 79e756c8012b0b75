"""Fixtures and hooks only; what tests share is in ``tests/labs`` (nothing is imported from here).

Every test runs against a fresh fake engine (offline/engine.py) loaded with the example stack.
The markers of ``tests/labs/needs.py`` are registered here, and a ``needs_root`` test is skipped
here, with the reason, when not root (a failure with ``REQUIRE_REAL_TOOLS=1``, as in CI).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pulumi
import pytest

from offline import engine
from offline.plan import read_stack_config, run_program
from offline.real_loki import LokiTools, MissingBinaryError, find_tools
from tests.labs import needs
from tests.labs.example import EXAMPLE_STACK, SCHEMA
from tests.labs.figures import FIGURES


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "preview: run the test's program in preview mode")
    for marker, meaning in needs.MARKERS.items():
        config.addinivalue_line("markers", f"{marker}: {meaning}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    needs.running(item)
    if needs.carries(item, "needs_root") and (reason := needs.root_missing()):
        needs.missing(reason)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    needs.running(item)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    needs.running(None)  # a module fixture's teardown asks for nothing new
    return (yield)


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
def fake_engine(request: pytest.FixtureRequest) -> Iterator[engine.Engine]:
    """A fresh fake engine for each test; the Pulumi runtime's state as it was before, afterwards."""
    preview = request.node.get_closest_marker("preview") is not None
    cfg = read_stack_config(EXAMPLE_STACK)
    with engine.installed(project=SCHEMA.project, stack="test", preview=preview, config=cfg.config,
                          secret_keys=cfg.secret_keys) as installed:
        yield installed


@pytest.fixture(scope="module")
def example() -> engine.RunResult:
    """The whole example stack, run once per test module against the fake engine."""
    return run_program(EXAMPLE_STACK, read_stack_config(EXAMPLE_STACK))


@pytest.fixture
def use_config(fake_engine: engine.Engine) -> Callable[..., None]:
    """Replace the config with the example stack's, changed by ``overrides`` and ``remove``."""

    def apply(overrides: dict[str, Any] | None = None, remove: tuple[str, ...] = ()) -> None:
        cfg = read_stack_config(EXAMPLE_STACK, overrides=overrides, remove=remove)
        pulumi.runtime.set_all_config(cfg.config, secret_keys=cfg.secret_keys)

    return apply


@pytest.fixture(scope="session")
def loki_tools(tmp_path_factory: pytest.TempPathFactory) -> LokiTools:
    """The real Loki, logcli and deprecated-config checker (offline/real_loki.py says from where)."""
    needs.expect_marker("real_tools", "the real Loki")
    try:
        return find_tools(Path(tmp_path_factory.mktemp("real-loki")))
    except MissingBinaryError as error:
        needs.missing(f"real Loki binaries: {error}")
