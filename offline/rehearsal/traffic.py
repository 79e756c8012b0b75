"""Clients that put traffic on the VIP and record what they see, run inside a network namespace.

``python -m offline.rehearsal.traffic steady URL OUT --ca CA --cert CERT --key KEY [--interval 0.1]
[--push JOB]``: one request every interval, each on a new TLS connection and without retries,
as a client without retries sees a VIP (Grafana's queries, logcli, a script); with ``--push`` each
request pushes one line ``<JOB> <seq>`` to Loki. One JSON line per request goes to OUT; it runs
until SIGTERM or SIGINT.

``python -m offline.rehearsal.traffic kept-alive URL OUT --ca ... --push JOB [--interval 1]
[--batch-kib 1024]``: as Grafana Alloy's ``loki.write`` pushes: one TLS connection kept open, a batch
of about 1 MiB every interval, no retries. Its lines read as a service's access log (a request
id, a trace id, a client address, a duration each line its own), so that they compress in Loki's
chunks about as real logs do, not as a repeated character would. A connection the server closed while it was idle (nginx
closes them on a reload) is dialled again before the next batch, as Go's HTTP transport does without
an error; any other failure is recorded. One JSON line per batch goes to OUT, as ``steady`` writes.

``python -m offline.rehearsal.traffic load URL OUT --ca ... --mib-per-s R --total-mib T``: pushes on
one kept-open TLS connection in batches of 1000 lines over 10 streams, paced to R MiB/s of log
line bytes (what Loki's rate limit counts) until T MiB are sent, and writes a summary to OUT.

``summarize_steady`` reads a steady client's record.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import select
import signal
import socket
import ssl
import sys
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REQUEST_TIMEOUT_S = 10.0
BATCH_LINES = 1000
STREAMS = 10
MIB = 1 << 20


def tls_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    return context


def push_body(lines: list[tuple[dict[str, str], str]]) -> bytes:
    """A push request: ``lines`` of (stream labels, line), each stream once, timestamps now."""
    now = time.time_ns()
    streams: dict[str, dict[str, Any]] = {}
    for i, (labels, line) in enumerate(lines):
        stream = streams.setdefault(json.dumps(labels, sort_keys=True), {"stream": labels, "values": []})
        stream["values"].append([str(now + i), line])
    return json.dumps({"streams": list(streams.values())}).encode()


def exchange(connection: http.client.HTTPSConnection, path: str, body: bytes | None) -> tuple[int, str]:
    """One request on ``connection``, without a retry: a push (POST) when there is a ``body``, else
    a GET. Returns the status (0: no answer) and, unless it is 2xx, what went wrong; a connection
    that failed is closed (the next request dials again)."""
    try:
        connection.request("POST" if body else "GET", path, body=body,
                           headers={"Content-Type": "application/json"} if body else {})
        response = connection.getresponse()
        status, text = response.status, response.read()
    except (OSError, http.client.HTTPException) as failure:
        connection.close()
        return 0, f"{type(failure).__name__}: {failure}"
    return status, "" if 200 <= status < 300 else text[:200].decode(errors="replace")


def steady(url: str, out: Path, context: ssl.SSLContext, interval: float, job: str | None) -> None:
    parsed = urllib.parse.urlsplit(url)
    stop = stop_on_signals()
    with out.open("a") as record:
        seq = 0
        next_at = time.monotonic()
        while not stop[0]:
            seq += 1
            started, wall = time.monotonic(), time.time()
            body = push_body([({"job": job}, f"{job} {seq}")]) if job else None
            connection = http.client.HTTPSConnection(parsed.hostname or "", parsed.port or 443, context=context,
                                                     timeout=REQUEST_TIMEOUT_S)
            status, error = exchange(connection, parsed.path, body)
            connection.close()
            record.write(json.dumps({"seq": seq, "at": wall, "start": started, "seconds": time.monotonic() - started,
                                     "status": status, "error": error}) + "\n")
            record.flush()
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))


def stop_on_signals() -> list[bool]:
    """A flag that SIGTERM or SIGINT sets: ``[True]`` once the client should end."""
    stop = [False]

    def finish(*_: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    return stop


def closed_by_server(sock: socket.socket | None) -> bool:
    """Whether the server has closed this idle connection (what Go's transport learns from its read
    loop before it reuses a connection): readable with nothing to read but the end, or reset."""
    if sock is None:
        return True
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    sock.setblocking(False)
    try:
        return not sock.recv(1)  # b"": the end; data on an idle connection: not reusable either
    except ssl.SSLWantReadError:  # a TLS record that is not data (a session ticket): still open
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


LEVELS = ("info", "info", "info", "debug", "warn", "error")
TAGS = tuple(f"{key}={value}" for key in ("service", "namespace", "pod", "region", "tenant", "upstream", "cache",
                                          "feature")
             for value in ("checkout", "payments", "search", "frontend", "eu-west", "blue", "green", "hit", "miss"))
"""Fields a service's log lines carry again and again (what makes real logs compress)."""
PATHS = ("/api/v1/orders", "/api/v1/orders/{id}", "/api/v1/users/{id}", "/healthz", "/api/v1/search", "/static/app.js")


def access_line(prefix: str, rng: random.Random, size: int = 1024) -> str:
    """``prefix`` and then a line of a service's access log, ``size`` characters long: fixed words,
    and values that differ from line to line (ids, addresses, durations, sizes, a user agent)."""
    path = rng.choice(PATHS).replace("{id}", str(rng.randrange(1, 10**6)))
    line = (f'{prefix}ts={time.strftime("%Y-%m-%dT%H:%M:%S")}.{rng.randrange(1000):03d}Z level={rng.choice(LEVELS)} '
            f'caller=http/server.go:{rng.randrange(80, 400)} msg="request served" method={rng.choice(("GET", "POST"))} '
            f"path={path} status={rng.choice((200, 200, 200, 201, 204, 304, 404, 500))} "
            f"duration_ms={rng.expovariate(1 / 40):.3f} bytes={rng.randrange(100, 200000)} "
            f"client=10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)} "
            f"request_id={rng.getrandbits(128):032x} trace_id={rng.getrandbits(128):032x} "
            f"span_id={rng.getrandbits(64):016x} user_agent=\"Mozilla/5.0 (X11; Linux x86_64; "
            f'rv:{rng.randrange(100, 140)}.0) Gecko/20100101 Firefox/{rng.randrange(100, 140)}.0" '
            f"session={rng.getrandbits(96):024x}")
    while len(line) < size:
        line += " " + rng.choice(TAGS)
    return line[:size]


def kept_alive(url: str, out: Path, context: ssl.SSLContext, *, interval: float, job: str, batch_kib: int) -> None:
    parsed = urllib.parse.urlsplit(url)
    stop = stop_on_signals()
    connection = http.client.HTTPSConnection(parsed.hostname or "", parsed.port or 443, context=context,
                                             timeout=REQUEST_TIMEOUT_S)
    lines_per_batch = batch_kib  # lines of 1 KiB
    rng = random.Random(job)  # noqa: S311 (log-like filler, not a secret)
    with out.open("a") as record:
        seq = 0
        next_at = time.monotonic()
        while not stop[0]:
            seq += 1
            if connection.sock is not None and closed_by_server(connection.sock):
                connection.close()  # dialled again by the request, as Go's transport does
            redials = int(connection.sock is None)
            started, wall = time.monotonic(), time.time()
            body = push_body([({"job": job}, access_line(f"{job} {seq} {i:04d} ", rng))
                              for i in range(lines_per_batch)])
            status, error = exchange(connection, parsed.path, body)
            record.write(json.dumps({"seq": seq, "at": wall, "start": started, "seconds": time.monotonic() - started,
                                     "status": status, "error": error, "redials": redials,
                                     "lines": lines_per_batch}) + "\n")
            record.flush()
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
    connection.close()


@dataclass(frozen=True)
class SteadyRecord:
    requests: int
    failures: int
    longest_failure_s: float
    """From the start of the first request of a run of failures to the start of the next success."""
    accepted: list[int]
    """Sequence numbers the server accepted."""
    errors: list[str]
    slowest_s: float = 0.0
    """The longest request (a stall, also one that succeeded in the end)."""
    redials: int = 0
    """Connections a kept-alive client dialled again after the server closed one while idle."""


def summarize_steady(path: Path) -> SteadyRecord:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    failures, longest, since = 0, 0.0, None
    errors = []
    for row in rows:
        ok = 200 <= row["status"] < 300
        if not ok:
            failures += 1
            errors.append(f"#{row['seq']} at {time.strftime('%H:%M:%S', time.localtime(row['at']))}: "
                          f"{row['status']} {row['error']}")
            since = row["start"] if since is None else since
        elif since is not None:
            longest, since = max(longest, row["start"] - since), None
    if since is not None and rows:
        longest = max(longest, rows[-1]["start"] + rows[-1]["seconds"] - since)
    return SteadyRecord(requests=len(rows), failures=failures, longest_failure_s=longest,
                        accepted=[r["seq"] for r in rows if 200 <= r["status"] < 300], errors=errors,
                        slowest_s=max((r["seconds"] for r in rows), default=0.0),
                        redials=sum(r.get("redials", 0) for r in rows[1:]))


def load(url: str, out: Path, context: ssl.SSLContext, *, mib_per_s: float, total_mib: float,
         line_bytes: int) -> None:
    """Batches of BATCH_LINES lines over STREAMS streams on one connection, paced to ``mib_per_s``."""
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPSConnection(parsed.hostname or "", parsed.port or 443, context=context,
                                             timeout=60)
    statuses: Counter[int] = Counter()
    first_refusal = ""
    sent_bytes = sent_lines = batches = 0
    started = time.monotonic()
    filler = "x" * line_bytes
    while sent_bytes < total_mib * MIB:
        lines = [({"job": "load", "stream": str(i % STREAMS)}, f"{batches:06d} {i:04d} {filler}"[:line_bytes])
                 for i in range(BATCH_LINES)]
        connection.request("POST", parsed.path, body=push_body(lines), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        text = response.read()
        statuses[response.status] += 1
        if response.status != 204 and not first_refusal:
            first_refusal = f"{response.status} {text[:300].decode(errors='replace')}"
        batches += 1
        sent_lines += BATCH_LINES
        sent_bytes += BATCH_LINES * line_bytes
        ahead = started + sent_bytes / (mib_per_s * MIB) - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    seconds = time.monotonic() - started
    connection.close()
    out.write_text(json.dumps({"batches": batches, "lines": sent_lines, "mib": sent_bytes / MIB, "seconds": seconds,
                               "lines_per_s": sent_lines / seconds, "mib_per_s": sent_bytes / MIB / seconds,
                               "statuses": {str(k): v for k, v in statuses.items()}, "first_refusal": first_refusal}))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline.rehearsal.traffic")
    parser.add_argument("mode", choices=["steady", "kept-alive", "load"])
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--push", metavar="JOB", help="push as job JOB (steady: one line per request)")
    parser.add_argument("--batch-kib", type=int, default=1024, help="kept-alive: KiB per batch (lines of 1 KiB)")
    parser.add_argument("--mib-per-s", type=float, default=1.0)
    parser.add_argument("--total-mib", type=float, default=10.0)
    parser.add_argument("--line-bytes", type=int, default=256)
    args = parser.parse_args(argv)
    context = tls_context(args.ca, args.cert, args.key)
    if args.mode == "steady":
        steady(args.url, args.out, context, args.interval, args.push)
    elif args.mode == "kept-alive":
        if not args.push:
            parser.error("kept-alive needs --push JOB")
        kept_alive(args.url, args.out, context, interval=args.interval, job=args.push, batch_kib=args.batch_kib)
    else:
        load(args.url, args.out, context, mib_per_s=args.mib_per_s, total_mib=args.total_mib,
             line_bytes=args.line_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
