"""The files a host receives: the one shape every component uses to hand them on.

Components list their files as ``HostFile``s on their ``host_files`` attribute; the offline plan
writes each one to ``build/plan/<host>/<path>``, so a reviewer sees exactly what every VM gets.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi


@dataclass(frozen=True, kw_only=True)
class HostFile:
    host: str
    """Host name of the VM that receives the file."""
    path: str
    """Absolute path on that host."""
    content: pulumi.Input[str]
    """The file's text; an Output when it depends on resources (keys, certificates)."""
    owner: str = "root"
    group: str = "root"
    mode: str = "0644"
    """Octal permission bits as a string; private keys are 0600 or 0640."""

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"HostFile for {self.host}: path must be absolute, got {self.path!r}")
        if len(self.mode) != 4 or any(c not in "01234567" for c in self.mode):
            raise ValueError(f"HostFile {self.host}:{self.path}: mode must be 4 octal digits, got {self.mode!r}")
