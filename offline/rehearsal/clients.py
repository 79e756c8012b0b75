"""The two clients of the VIP that watch a change (``traffic.py``), run on the rehearsal's runner.

- ``steady``: one push of one line every 100 ms, each on a new TLS connection, without retries (a
  script, or a client that does not keep connections);
- ``kept-alive``: as Grafana Alloy pushes: one connection kept open, a batch of about 1 MiB (1,024
  lines of 1 KiB) every second, without retries.

``VipClients`` starts both, and when the change is over stops them (by their pids) and says what
each saw: failures, the slowest request (a stall), and whether every accepted line reads back
exactly once (the steady client's lines one by one, the kept-alive client's by count: a retried
batch that Loki took twice would show as more lines than accepted).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from offline.rehearsal.traffic import SteadyRecord, summarize_steady
from stack.schema import PROJECT_DIR

START_TIMEOUT_S = 30
STALL_S = 5.0
"""A request slower than this is a stall (Alloy's push timeout is 10 s; a SYN resent twice is 3 s)."""
BATCH_KIB = 1024


@dataclass
class ClientReport:
    name: str
    record: SteadyRecord
    lines_accepted: int
    lines_read: int
    problems: list[str] = field(default_factory=list)

    def figure(self) -> str:
        return (f"{self.name}: {self.record.requests} pushes, {self.record.failures} failed, slowest "
                f"{self.record.slowest_s:.1f} s, {self.record.redials} connection(s) dialled again, "
                f"{self.lines_accepted} lines accepted, {self.lines_read} read back")


@dataclass
class VipClients:
    """Both clients against ``url`` from ``netns``, with the operator's ``tls`` files (CA, cert, key).
    ``count_lines(job)`` reads back how many lines of ``job`` Loki has (through the VIP);
    ``read_lines(job)`` the lines themselves."""

    netns: str
    url: str
    tls: tuple[str, str, str]
    work: Path
    label: str
    count_lines: Callable[[str], int]
    read_lines: Callable[[str], list[str]]
    reports: list[ClientReport] = field(default_factory=list)
    _procs: dict[str, tuple[subprocess.Popen[bytes], Path, str]] = field(default_factory=dict)

    def __enter__(self) -> VipClients:
        tag = uuid.uuid4().hex[:8]
        ca, cert, key = self.tls
        for name, extra in (("steady", ["--interval", "0.1"]),
                            ("kept-alive", ["--interval", "1", "--batch-kib", str(BATCH_KIB)])):
            job = f"{self.label}-{name}-{tag}"
            record = self.work / f"{job}.jsonl"
            log = self.work / f"{job}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", self.netns, sys.executable, "-m", "offline.rehearsal.traffic", name,
                     self.url, str(record), "--ca", ca, "--cert", cert, "--key", key, "--push", job, *extra],
                    stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)})
            self._procs[name] = (proc, record, job)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            for name, (proc, record, job) in self._procs.items():
                while not (record.exists() and record.read_text().count("\n") >= 3):
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError(f"the {name} client pushes nothing: "
                                           f"{(self.work / f'{job}.log').read_text()[-2000:]}")
                    time.sleep(0.2)
        except BaseException:
            self._stop()
            raise
        return self

    def _stop(self) -> None:
        for proc, _, _ in self._procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc, _, _ in self._procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __exit__(self, *exc: object) -> None:
        self._stop()
        if exc[0] is not None:
            return
        time.sleep(2)  # the last accepted lines are queryable at once; a little slack for the ingesters
        for name, (_, record, job) in self._procs.items():
            seen = summarize_steady(record)
            rows = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
            if name == "steady":
                read = [int(line.split()[-1]) for line in self.read_lines(job)]
                accepted, count = len(seen.accepted), len(read)
                lost = sorted(set(seen.accepted) - set(read))
                twice = len(read) - len(set(read))
                problems = [f"{len(lost)} accepted line(s) do not read back: seq {lost[:20]}"] if lost else []
                problems += [f"{twice} line(s) read back twice"] if twice else []
            else:
                accepted = sum(r["lines"] for r in rows if 200 <= r["status"] < 300)
                count = self.count_lines(job)
                problems = [f"{accepted} lines accepted, {count} read back"] if count != accepted else []
            problems += [f"a push failed: {e}" for e in seen.errors[:10]]
            if seen.slowest_s > STALL_S:
                problems.append(f"a push took {seen.slowest_s:.1f} s (a stall: more than {STALL_S:g} s)")
            self.reports.append(ClientReport(name=f"{self.label} {name} client", record=seen, lines_accepted=accepted,
                                             lines_read=count, problems=[f"{self.label}, {name} client: {p}"
                                                                         for p in problems]))

    @property
    def problems(self) -> list[str]:
        return [p for r in self.reports for p in r.problems]

    def figures(self) -> list[str]:
        return [r.figure() for r in self.reports]
