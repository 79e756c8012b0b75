"""What a test needs beyond Python, as pytest markers, and the one rule for when it is not there.

A test that needs root, a real tool, a live lab or booted systems carries the marker (``MARKERS``);
``tests/conftest.py`` registers them and skips a test marked ``needs_root`` when not root, with the
reason. The functions below are where a test asks for what it needs: they also check that the
test carries the marker, so that ``make check`` (which deselects the marked tests) never runs a
test that needs more than Python. Without the thing: skip, or fail when ``REQUIRE_REAL_TOOLS=1``
(as in CI).
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

MARKERS = {
    "needs_root": "runs as root: mount namespaces, network namespaces, loop devices, file owners",
    "real_tools": "runs a real tool: shellcheck, systemd-analyze, nginx, keepalived, promtool, the real Loki, ...",
    "live": "starts real services in network namespaces (Loki cluster, keepalived, nginx, Prometheus); seconds "
            "to minutes",
    "rehearsal": "deploys the stack onto booted Debian 12 systems (root, systemd-container, debootstrap; minutes)",
}
"""Marker -> what it means; ``make check`` runs the tests that carry none of them."""

IMPLIED = {"live": ("needs_root", "real_tools"), "rehearsal": ("needs_root", "real_tools")}
"""A live lab and booted systems need root and real tools: their marker says so too."""


def carries(item: pytest.Item, marker: str) -> bool:
    """Whether ``item`` carries ``marker``, itself or through a marker that implies it."""
    return any(item.get_closest_marker(m) is not None
               for m in (marker, *(outer for outer, implied in IMPLIED.items() if marker in implied)))

_running: list[pytest.Item] = []
"""The test being set up or run (set by tests/conftest.py), to check it carries the marker it needs."""


def running(item: pytest.Item | None) -> None:
    """Called by tests/conftest.py around each test."""
    _running.clear()
    if item is not None:
        _running.append(item)


def expect_marker(marker: str, what: str) -> None:
    """Fail the running test if it asks for ``what`` without carrying ``marker``."""
    if _running and not carries(_running[0], marker):
        pytest.fail(f"{_running[0].nodeid} needs {what} but is not marked {marker}: add "
                    f"@pytest.mark.{marker} (or pytestmark) so that `make check` leaves it out", pytrace=False)


def missing(message: str) -> NoReturn:
    """Skip, or fail when REQUIRE_REAL_TOOLS=1 (as in CI)."""
    if os.environ.get("REQUIRE_REAL_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def root_missing() -> str | None:
    """Why a ``needs_root`` test cannot run here, or None."""
    return None if os.geteuid() == 0 else "needs root (mounts, namespaces, loop devices, file owners); CI runs as root"


def require_root() -> None:
    """Skip unless root, or fail when REQUIRE_REAL_TOOLS=1 (CI runs as root)."""
    expect_marker("needs_root", "root")
    reason = root_missing()
    if reason:
        missing(reason)


def require_tool(name: str) -> str:
    """Path of a real tool; skip without it, or fail when REQUIRE_REAL_TOOLS=1 (as in CI)."""
    expect_marker("real_tools", f"the real tool {name!r}")
    path = shutil.which(name)
    if path is None:
        missing(f"real tool {name!r} is not installed (.ci/run installs it)")
    return path
