"""The settings reference (docs/settings.md): every key of Pulumi.yaml with its type, its default
and, where the rule is a range or a pattern of the key alone, the rule ``load_settings`` enforces
(``stack.rules.RANGES`` and ``PATTERNS``). ``python -m offline keys --write`` writes it below the
page's marker; a test checks that the page and this table agree."""

from __future__ import annotations

import json
from pathlib import Path

from stack.rules import PATTERNS, RANGES
from stack.schema import PROJECT_DIR, KeySpec, ProjectSchema

PAGE = PROJECT_DIR / "docs" / "settings.md"
MARKER = ("<!-- The table below is written by `python -m offline keys --write` from Pulumi.yaml and "
          "stack/rules.py. -->\n")


def _default(spec: KeySpec) -> str:
    if spec.required:
        return "required"
    if isinstance(spec.default, str):
        return f"`{spec.default}`" if spec.default else '`""`'
    return f"`{json.dumps(spec.default)}`"


def _rule(name: str) -> str:
    if name in RANGES:
        return RANGES[name].describe()
    if name in PATTERNS:
        return PATTERNS[name].rule
    return ""


def settings_table(schema: ProjectSchema) -> str:
    """Every key: type, default (or "required"), the rule of its own value, and what it is."""
    rows = ["| key | type | default | rule | what it is |", "|---|---|---|---|---|"]
    for spec in schema.keys.values():
        rule = _rule(spec.name).replace("|", "\\|")
        rows.append(f"| `{spec.name}` | {spec.type_name()} | {_default(spec)} | {rule} | {spec.description} |")
    return "\n".join(rows) + "\n"


def write_page(schema: ProjectSchema, page: Path = PAGE) -> bool:
    """Put the table below the page's marker; True when the page changed."""
    text = page.read_text()
    if MARKER not in text:
        raise ValueError(f"{page}: no marker line {MARKER.strip()!r} to write the table below")
    new = text.split(MARKER, 1)[0] + MARKER + "\n" + settings_table(schema)
    if new == text:
        return False
    page.write_text(new)
    return True
