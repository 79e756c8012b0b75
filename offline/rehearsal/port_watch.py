"""Whether a port answers, watched through a change: the rehearsal's check for a dead port.

``python -m offline.rehearsal.port_watch OUT PORT ADDRESS...`` (in the runner's namespace) opens a
TCP connection to each address's port every ``PERIOD_S`` until SIGTERM, then writes to OUT, per
address, the windows in which the port did not accept (refused, or no answer within
``CONNECT_TIMEOUT_S``). ``PortWatch`` runs it around a change and stops it by its pid.

Accepting is all it asks: during a Loki restart the gateway answers 503 or sends requests to the
peers, and that is the clients' business (``clients.py``); a port nobody accepts on is a dead port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

from stack.schema import PROJECT_DIR

PERIOD_S = 0.2
CONNECT_TIMEOUT_S = 3.0
"""As the clients wait for a connection: a SYN dropped by a drain is sent again after 1 s, to the VIP's
new holder."""
START_TIMEOUT_S = 10


def watch(addresses: list[str], port: int, out: Path) -> None:
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    probes = 0
    dead: dict[str, list[list[object]]] = {a: [] for a in addresses}
    open_since: dict[str, tuple[float, str]] = {}
    out.with_suffix(".started").touch()
    while not stopping:
        for address in addresses:
            now = time.time()
            try:
                with socket.create_connection((address, port), timeout=CONNECT_TIMEOUT_S):
                    pass
                if address in open_since:
                    began, why = open_since.pop(address)
                    dead[address].append([began, now, why])
            except OSError as error:
                open_since.setdefault(address, (now, type(error).__name__))
        probes += 1
        time.sleep(PERIOD_S)
    for address, (began, why) in open_since.items():
        dead[address].append([began, time.time(), why])
    out.write_text(json.dumps({"probes": probes, "dead": dead}))


@dataclass
class PortWatch:
    """``with PortWatch(netns, port, addresses, work, label) as w:`` then ``w.problems``, ``w.figure()``."""

    netns: str
    port: int
    addresses: dict[str, str]
    """Name -> address."""
    work: Path
    label: str
    probes: int = 0
    dead: dict[str, list[tuple[float, float, str]]] = field(default_factory=dict)
    _process: subprocess.Popen[str] | None = None

    @property
    def out(self) -> Path:
        return self.work / f"port-watch-{self.label.replace(' ', '-')}.json"

    def __enter__(self) -> PortWatch:
        self.out.unlink(missing_ok=True)
        started = self.out.with_suffix(".started")
        started.unlink(missing_ok=True)
        self._process = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, "-m", "offline.rehearsal.port_watch", str(self.out),
             str(self.port), *self.addresses.values()], env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not started.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self._stop()
                raise RuntimeError(f"the port watch did not start: {self._output()}")
            time.sleep(0.1)
        return self

    def _output(self) -> str:
        assert self._process is not None
        if self._process.poll() is None:
            return "(still running)"
        out, _ = self._process.communicate()
        return out

    def _stop(self) -> None:
        assert self._process is not None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop()
        output = self._output()  # also closes the pipe
        if not self.out.exists():
            if kind is None:
                raise RuntimeError(f"the port watch wrote nothing: {output}")
            return
        data = json.loads(self.out.read_text())
        self.probes = data["probes"]
        by_address = {a: n for n, a in self.addresses.items()}
        self.dead = {by_address[a]: [(b, e, w) for b, e, w in windows] for a, windows in data["dead"].items()}

    @property
    def problems(self) -> list[str]:
        return [f"{self.label}: port {self.port} on {name} accepted no connection for {end - began:.1f} s ({why})"
                for name, windows in self.dead.items() for began, end, why in windows]

    def figure(self) -> str:
        dead = {n: f"{sum(e - b for b, e, _ in w):.1f} s" for n, w in self.dead.items() if w}
        return (f"{self.label}: port {self.port} of {', '.join(self.addresses)} probed {self.probes} times: "
                + (f"dead on {dead}" if dead else "always accepted"))


if __name__ == "__main__":
    watch(sys.argv[3:], int(sys.argv[2]), Path(sys.argv[1]))
