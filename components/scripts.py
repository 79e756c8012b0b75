"""Host scripts: a template from templates/ with its parameters set at the top, shell-quoted.

Scripts travel on stdin (``bash -s``), so parameters are never on a command line and need no
``AcceptEnv`` on the host's sshd.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def render_script(template: str, params: Mapping[str, str | int]) -> str:
    """``templates/<template>`` with ``NAME=value`` lines inserted after its first line."""
    first, rest = (TEMPLATES / template).read_text().split("\n", 1)
    lines = []
    for name, value in params.items():
        if not _NAME.match(name):
            raise ValueError(f"{template}: parameter name {name!r} must be upper case")
        lines.append(f"{name}={shlex.quote(str(value))}")
    return "\n".join([first, "# Parameters (set by loki-stack):", *lines, rest])
