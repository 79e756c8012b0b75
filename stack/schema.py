"""The project's config schema, read from Pulumi.yaml: the one place that declares every key.

The Pulumi CLI checks stack files against the same schema and fills in its defaults before the
program runs; the settings loader and the offline plan use this module to do the same, so a key's
type and default are written down exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

PROJECT_DIR = Path(__file__).resolve().parent.parent
PROJECT_FILE = PROJECT_DIR / "Pulumi.yaml"

_PYTHON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "boolean": bool,
    "array": list,
}


@dataclass(frozen=True, kw_only=True)
class KeySpec:
    """One declared config key."""

    name: str
    """Key without the project namespace, e.g. ``lokiNodes``."""
    type: str
    """``string``, ``integer``, ``boolean`` or ``array``."""
    item_type: str | None
    """Type of an array's items; None for scalars."""
    description: str
    secret: bool
    required: bool
    """True when the key has no default."""
    default: Any

    def type_name(self) -> str:
        return f"array of {self.item_type}" if self.item_type else self.type

    def accepts(self, value: Any) -> bool:
        """True when ``value`` (as parsed from YAML/JSON) has this key's declared type."""
        return _is_type(value, self.type) and (
            self.item_type is None or all(_is_type(v, self.item_type) for v in value)
        )


def _is_type(value: Any, type_name: str) -> bool:
    if type_name in ("integer", "string", "array") and isinstance(value, bool):
        return False  # bool is an int subclass in Python, never an integer here
    return isinstance(value, _PYTHON_TYPES[type_name])


@dataclass(frozen=True, kw_only=True)
class ProjectSchema:
    project: str
    keys: dict[str, KeySpec]

    def qualified(self, key: str) -> str:
        """``lokiNodes`` -> ``loki-stack:lokiNodes``."""
        return f"{self.project}:{key}"


@cache
def load_schema(path: Path = PROJECT_FILE) -> ProjectSchema:
    """Parse Pulumi.yaml's ``config:`` block. Raises ValueError on a malformed declaration."""
    doc = yaml.safe_load(path.read_text())
    keys: dict[str, KeySpec] = {}
    for name, decl in (doc.get("config") or {}).items():
        if not isinstance(decl, dict) or decl.get("type") not in _PYTHON_TYPES:
            raise ValueError(f"{path.name}: config key {name!r} needs a type of {sorted(_PYTHON_TYPES)}")
        item_type = (decl.get("items") or {}).get("type") if decl["type"] == "array" else None
        spec = KeySpec(
            name=name,
            type=decl["type"],
            item_type=item_type,
            description=decl.get("description", ""),
            secret=bool(decl.get("secret", False)),
            required="default" not in decl,
            default=decl.get("default"),
        )
        if not spec.required and not spec.accepts(spec.default):
            raise ValueError(f"{path.name}: default of {name!r} is not of type {spec.type_name()}")
        keys[name] = spec
    return ProjectSchema(project=doc["name"], keys=keys)
