"""Host scripts: a template from templates/ with its parameters set at the top, shell-quoted.

Scripts travel on stdin (``bash -s``), so parameters are never on a command line and need no
``AcceptEnv`` on the host's sshd.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
PARAMETERS_HEADER = "# Parameters (set by loki-stack):"


def template_lines() -> frozenset[str]:
    """Every line (stripped) of every template, and the parameters' header: text of this
    repository, never a secret, whatever secret value a script holding them is part of."""
    lines = {line.strip() for path in TEMPLATES.iterdir() if path.is_file()
             for line in path.read_text().splitlines()}
    return frozenset(lines | {PARAMETERS_HEADER})


def render_script(template: str, params: Mapping[str, str | int], libraries: Sequence[str] = ()) -> str:
    """``templates/<template>`` with ``NAME=value`` lines after its first line, then the shell
    functions of ``templates/<library>`` for each library, then the rest of the template."""
    first, rest = (TEMPLATES / template).read_text().split("\n", 1)
    lines = []
    for name, value in params.items():
        if not _NAME.match(name):
            raise ValueError(f"{template}: parameter name {name!r} must be upper case")
        lines.append(f"{name}={shlex.quote(str(value))}")
    functions = [(TEMPLATES / library).read_text() for library in libraries]
    return "\n".join([first, PARAMETERS_HEADER, *lines, *functions, rest])
