"""The real Loki binaries for tests: Loki, logcli and Loki's deprecated-config checker.

Where they come from, first match wins:
1. ``LOKI_BIN``, ``LOGCLI_BIN``, ``LOKI_CONFIG_CHECKER`` and ``LOKI_CONFIG_CHECKER_LISTS`` (the
   directory with the checker's ``deprecated-config.yaml`` and ``deleted-config.yaml``);
2. the xz-compressed binaries in ``../shared/tools/`` beside the project (or, in a clone made
   from a local repository, beside that repository), decompressed into a temporary directory
   and checked against their published SHA-256.

``python -m offline.real_loki DIR`` decompresses them into DIR and prints ``export`` lines: that is
how ``.ci/run`` hands them to the tests (and fails when they are missing).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from stack.schema import PROJECT_DIR

LOKI_VERSION = "3.7.6"
"""The version of the binaries; the stack's default ``lokiVersion`` must be the same (a test checks)."""
LOKI_SOURCE_COMMIT = "5003600d7c787b5f047c8d1b0198559471b0caa5"
"""The v3.7.6 release commit: ../shared/tools was built from it, the pull-request workflow builds it."""
SHARED = Path("shared") / "tools"
SHA256 = {  # of the decompressed binaries (../shared/tools/README.md)
    "loki": "9458a97c7b99f6c5f02eb6ea8eb87c9a1aa6e139457ccddeb50c693dfb233daa",
    "logcli": "8aade7521e54d905350db2532ecb4644948b8af8f34be30a26a817e1b5a42fb4",
    "loki-deprecated-config-checker": "65d7872781a273a5d128708efdc946db76423abf3a75568065c7ba535452a4dc",
}
ENV = {"loki": "LOKI_BIN", "logcli": "LOGCLI_BIN", "loki-deprecated-config-checker": "LOKI_CONFIG_CHECKER"}
LISTS_ENV = "LOKI_CONFIG_CHECKER_LISTS"
LISTS = ("deprecated-config.yaml", "deleted-config.yaml")


class MissingBinaryError(LookupError):
    pass


@dataclass(frozen=True)
class LokiTools:
    loki: Path
    logcli: Path
    checker: Path
    checker_lists: Path
    """Holds ``deprecated-config.yaml`` and ``deleted-config.yaml``."""

    def environment(self) -> dict[str, str]:
        return {"LOKI_BIN": str(self.loki), "LOGCLI_BIN": str(self.logcli), "LOKI_CONFIG_CHECKER": str(self.checker),
                LISTS_ENV: str(self.checker_lists)}


def shared_tools() -> Path:
    """``../shared/tools`` beside the project, else beside the local repository it was cloned from
    (a clean clone in a temporary directory, as CI makes one)."""
    candidates = [PROJECT_DIR.parent / SHARED]
    origin = subprocess.run(["git", "-C", str(PROJECT_DIR), "config", "--get", "remote.origin.url"],
                            capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    if origin and Path(origin).is_dir():
        candidates.append(Path(origin).resolve().parent / SHARED)
    return next((c for c in candidates if c.is_dir()), candidates[0])


def _from_shared(name: str, into: Path) -> Path:
    archive = shared_tools() / f"{name}-{LOKI_VERSION}-linux-amd64.xz"
    if not archive.is_file():
        raise MissingBinaryError(f"{name}: ${ENV[name]} is not set and {archive} does not exist")
    target = into / name
    if not target.is_file():
        data = lzma.decompress(archive.read_bytes())
        digest = hashlib.sha256(data).hexdigest()
        if digest != SHA256[name]:
            raise MissingBinaryError(f"{archive}: sha256 of the binary is {digest}, expected {SHA256[name]}")
        partial = target.with_suffix(".partial")
        partial.write_bytes(data)
        partial.chmod(0o755)
        partial.rename(target)
    return target


def find_tools(cache: Path) -> LokiTools:
    """The binaries from the environment, else from ../shared/tools decompressed into ``cache``."""
    paths: dict[str, Path] = {}
    for name, var in ENV.items():
        given = os.environ.get(var)
        if given:
            path = Path(given)
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise MissingBinaryError(f"${var}={given} is not an executable file")
            paths[name] = path
        else:
            paths[name] = _from_shared(name, cache)
    lists = Path(os.environ.get(LISTS_ENV) or shared_tools() / f"loki-deprecated-config-checker-{LOKI_VERSION}")
    missing = [n for n in LISTS if not (lists / n).is_file()]
    if missing:
        raise MissingBinaryError(f"the deprecated-config checker's lists {missing} are not in {lists} (${LISTS_ENV})")
    return LokiTools(loki=paths["loki"], logcli=paths["logcli"], checker=paths["loki-deprecated-config-checker"],
                     checker_lists=lists)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m offline.real_loki DIR   (prints export lines)", file=sys.stderr)
        return 2
    try:
        tools = find_tools(Path(argv[0]))
    except MissingBinaryError as error:
        print(f"real Loki binaries: {error}", file=sys.stderr)
        return 1
    for var, value in tools.environment().items():
        print(f"export {var}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
