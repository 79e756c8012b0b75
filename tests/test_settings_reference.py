"""The rules the settings reference shows (stack/rules.py's RANGES and PATTERNS, docs/settings.md)
are the ones load_settings enforces: a value just outside a range, or not of a pattern's form, is
refused with exactly that rule, and the edge of the range is taken."""

from __future__ import annotations

import pytest

from stack.config import load_settings
from stack.rules import PATTERNS, RANGES, SettingsError


def problems_of(key: str) -> list[str]:
    try:
        load_settings()
    except SettingsError as error:
        return [p.rule for p in error.problems if p.key == f"loki-stack:{key}"]
    return []


@pytest.mark.parametrize("key", sorted(RANGES))
def test_each_range_is_enforced_as_the_reference_shows_it(use_config, key):
    allowed = RANGES[key]
    use_config({key: allowed.low - 1})
    assert problems_of(key) == [allowed.describe()], f"{key}={allowed.low - 1} must be refused with its range"
    if allowed.high is not None:
        use_config({key: allowed.high + 1})
        assert problems_of(key) == [allowed.describe()], f"{key}={allowed.high + 1} must be refused with its range"
    use_config({key: allowed.low})
    assert problems_of(key) == [], f"{key}={allowed.low}, its least, must be taken"


@pytest.mark.parametrize("key", sorted(PATTERNS))
def test_each_pattern_is_enforced_as_the_reference_shows_it(use_config, key):
    form = PATTERNS[key]
    use_config({key: "not a valid value!"})
    assert problems_of(key) == [form.rule], f"{key}: a value of another form must be refused with its rule"
    use_config({key: form.example})
    assert problems_of(key) == [], f"{key}={form.example!r}, the rule's own example, must be taken"
