"""Figures the real-tool tests measured, by section; ``tests/conftest.py`` prints them at the end."""

from __future__ import annotations

FIGURES: dict[str, list[str]] = {}


def figure(section: str, line: str) -> None:
    """Record a measured figure for the end-of-run summary."""
    FIGURES.setdefault(section, []).append(line)
