"""templates/lib-wait-ready.sh with the real bash and curl against a server on loopback whose answer
the test sets: what each wait accepts, refuses at once, and waits for."""

from __future__ import annotations

import http.server
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.labs.needs import require_tool

pytestmark = pytest.mark.real_tools

LIBRARY = Path(__file__).resolve().parent.parent / "templates" / "lib-wait-ready.sh"


class Answer(http.server.BaseHTTPRequestHandler):
    status = 502

    def do_GET(self) -> None:
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[Answer]]]:
    handler = type("Handler", (Answer,), {"status": 502})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/ready", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def wait(call: str, timeout: float = 60) -> tuple[int, str, float]:
    require_tool("curl")
    start = time.monotonic()
    proc = subprocess.run(["bash", "-c", f'set -euo pipefail; . "{LIBRARY}"; {call}'], capture_output=True,
                          text=True, timeout=timeout, check=False)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def test_wait_https_ready_waits_until_the_url_answers_200(server):
    url, handler = server
    threading.Timer(3, lambda: setattr(handler, "status", 200)).start()
    rc, out, took = wait(f"wait_https_ready {url} 30 x.service")
    assert (rc, took >= 2.5) == (0, True), f"returned {rc} after {took:.1f}s (must wait for the 200): {out}"


def test_a_refused_status_fails_at_once_and_an_accepted_one_passes(server):
    url, _ = server
    rc, out, took = wait(f'wait_https_status {url} 30 x.service "200" "502"')
    assert rc == 1 and took < 10 and "answered 502" in out, f"a refused 502 must fail at once: {rc} {took:.1f}s {out}"
    rc, out, _ = wait(f'wait_https_status {url} 30 x.service "200 502" "403"')
    assert rc == 0 and "answers 502" in out, f"an accepted 502 must pass: {out}"


def test_no_answer_in_time_fails_with_the_last_status(server):
    url, _ = server
    rc, out, took = wait(f'wait_https_status {url} 3 x.service "200" ""')
    assert rc == 1 and 3 <= took < 20 and "last answer: 502" in out, f"{rc} {took:.1f}s {out}"
    rc, out, _ = wait('wait_https_status http://127.0.0.1:9/ready 2 x.service "200" ""')
    assert rc == 1 and "last answer: 000" in out, f"no server at all must fail after the timeout: {out}"
