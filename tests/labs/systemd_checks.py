"""`systemd-analyze verify` of a drop-in on top of a packaged unit whose binary is not installed
here: the binary is stubbed in an overlay over its directory, in a private mount namespace."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.labs.needs import require_root, require_tool


def verify_dropin(tmp_path: Path, unit: str, packaged: str, dropin: str,
                  binary: str) -> subprocess.CompletedProcess[str]:
    require_tool("systemd-analyze")
    require_tool("unshare")
    require_root()  # the overlay is mounted in a private mount namespace
    units = tmp_path / "units"
    (units / f"{unit}.d").mkdir(parents=True, exist_ok=True)
    (units / unit).write_text(packaged)
    (units / f"{unit}.d" / "10-lokistack.conf").write_text(dropin)
    directory = binary.rsplit("/", 1)[0]
    script = (f'u=$(mktemp -d) && mkdir "$u/up" "$u/work" && mount -t overlay overlay -o '
              f'lowerdir={directory},upperdir="$u/up",workdir="$u/work" {directory} && '
              f'install -m 0755 /dev/null {binary} && '
              f'SYSTEMD_UNIT_PATH="$1": systemd-analyze verify --man=no {unit}')
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(units)], capture_output=True, text=True,
                          timeout=60, check=False)
