"""The rehearsal's apt proxy (offline/rehearsal/proxy.py) absorbs a mirror's blip and keeps the files
that never change: a request that failed upstream is tried again before a machine sees an error,
a pool or by-hash file is fetched once and then served from its cache, and nothing else is kept or
forwarded. Proxy and a scripted mirror on loopback, in threads of this process (stopped at the
end of each test)."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from offline.rehearsal import proxy

DEB = "/debian/pool/main/q/qemu/qemu-guest-agent_7.2+dfsg-7+deb12u7_amd64.deb"
BODY = bytes(range(256)) * 4096
"""1 MiB, every byte value: what a machine receives must be this, byte for byte."""


@dataclass
class Mirror:
    """A mirror on loopback whose answers for a path are scripted: "503", "reset" (the connection
    closed without an answer), "short" (the body cut short), then "ok" for every later request."""
    script: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    port: int = 0

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                mirror.hits[self.path] += 1
                mirror.seen_headers.append(dict(self.headers.items()))
                step = mirror.script.get(self.path, []).pop(0) if mirror.script.get(self.path) else "ok"
                body = mirror.files.get(self.path)
                if step == "reset":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if step == "503":
                    self.send_response(503, "Service Unavailable")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.headers.get("If-Modified-Since"):
                    self.send_response(304)
                    self.end_headers()
                    return
                if range_ := self.headers.get("Range"):
                    start = int(range_.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                    body = body[start:]
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body[: len(body) // 3] if step == "short" else body)

        return Handler


@dataclass
class Lab:
    mirror: Mirror
    proxy_port: int
    cache: Path
    log: list[str]

    def get(self, path: str, headers: dict[str, str] | None = None, host: str = "127.0.0.1",
            method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
        """A request as apt sends it to its proxy: the absolute URL, on a connection of its own."""
        connection = http.client.HTTPConnection("127.0.0.1", self.proxy_port, timeout=30)
        try:
            connection.request(method, f"http://{host}:{self.mirror.port}{path}", headers=headers or {})
            answer = connection.getresponse()
            return answer.status, answer.read(), dict(answer.getheaders())
        finally:
            connection.close()


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    monkeypatch.setattr(proxy, "BACKOFF_S", (0.05,) * proxy.ATTEMPTS)
    log: list[str] = []
    monkeypatch.setattr(proxy, "log", log.append)
    mirror = Mirror(files={DEB: BODY, "/debian/dists/bookworm/InRelease": b"signed index\n"})
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), mirror.handler())
    mirror.port = upstream.server_address[1]
    server = proxy.serve(socket.create_server(("127.0.0.1", 0)), ["127.0.0.1"], tmp_path / "cache")
    threads = [threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True) for s in (upstream, server)]
    for thread in threads:
        thread.start()
    try:
        yield Lab(mirror, server.server_address[1], tmp_path / "cache", log)
    finally:
        for s in (server, upstream):
            s.shutdown()
            s.server_close()
        for thread in threads:
            thread.join(timeout=10)


def cached_files(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def test_a_package_whose_first_attempts_fail_upstream_arrives_whole(lab: Lab) -> None:
    lab.mirror.script[DEB] = ["503", "reset", "short"]
    status, body, _ = lab.get(DEB)
    assert status == 200 and body == BODY, (
        f"the proxy answered {status} with {len(body)} B for {DEB} after the mirror failed three times "
        f"(503, reset, cut short): a machine's apt would have failed; its log: {lab.log}")
    assert lab.mirror.hits[DEB] == 4, f"the mirror saw {lab.mirror.hits[DEB]} requests for {DEB}, not 4"
    retries = [line for line in lab.log if line.startswith("retry")]
    assert len(retries) == 3 and "503" in retries[0] and "IncompleteRead" in retries[2], (
        f"the proxy's log does not name each failed attempt and its reason: {lab.log}")


def test_a_package_is_fetched_once_and_then_served_from_the_cache_also_by_a_new_proxy(lab: Lab) -> None:
    assert lab.get(DEB)[:2] == (200, BODY)
    assert cached_files(lab.cache) == [f"127.0.0.1{DEB}"], f"the cache holds {cached_files(lab.cache)}"
    assert lab.get(DEB)[:2] == (200, BODY)
    assert lab.mirror.hits[DEB] == 1, f"the mirror was asked {lab.mirror.hits[DEB]} times for a cached package"
    # the next rehearsal's proxy (a new process) finds it there too
    other = proxy.serve(socket.create_server(("127.0.0.1", 0)), ["127.0.0.1"], lab.cache)
    thread = threading.Thread(target=other.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        again = Lab(lab.mirror, other.server_address[1], lab.cache, lab.log).get(DEB)
    finally:
        other.shutdown()
        other.server_close()
        thread.join(timeout=10)
    assert again[:2] == (200, BODY) and lab.mirror.hits[DEB] == 1, (
        f"a new proxy on the same cache answered {again[0]} and the mirror was asked {lab.mirror.hits[DEB]} times")


def test_a_package_cut_short_every_time_is_an_error_and_is_never_kept(lab: Lab) -> None:
    lab.mirror.script[DEB] = ["short"] * proxy.ATTEMPTS
    status, body, _ = lab.get(DEB)
    assert status == 502, f"the proxy answered {status} with {len(body)} B for a package cut short every time"
    assert lab.mirror.hits[DEB] == proxy.ATTEMPTS, f"{lab.mirror.hits[DEB]} attempts, not {proxy.ATTEMPTS}"
    assert cached_files(lab.cache) == [], f"a package cut short was kept: {cached_files(lab.cache)}"
    assert any(line.startswith("failed") and "IncompleteRead" in line for line in lab.log), lab.log
    assert lab.get(DEB)[:2] == (200, BODY), "the next request (the mirror well again) did not get the package"


def test_a_mirror_that_keeps_failing_passes_its_last_answer_on(lab: Lab) -> None:
    lab.mirror.script[DEB] = ["503"] * proxy.ATTEMPTS
    status, _, _ = lab.get(DEB)
    assert (status, lab.mirror.hits[DEB]) == (503, proxy.ATTEMPTS), (
        f"the proxy answered {status} after {lab.mirror.hits[DEB]} attempts; expected the mirror's 503 after "
        f"{proxy.ATTEMPTS}")
    assert cached_files(lab.cache) == []


def test_index_files_are_forwarded_every_time_with_their_conditions(lab: Lab) -> None:
    index = "/debian/dists/bookworm/InRelease"
    assert lab.get(index)[:2] == (200, b"signed index\n")
    status, body, _ = lab.get(index, {"If-Modified-Since": "Sat, 05 Dec 2026 06:00:00 GMT"})
    assert (status, body) == (304, b""), f"a conditional request for {index} got {status} with {body!r}"
    assert lab.mirror.hits[index] == 2 and cached_files(lab.cache) == [], (
        f"{index} (changes under its name) was kept or not asked for: hits {lab.mirror.hits[index]}, "
        f"cache {cached_files(lab.cache)}")
    assert lab.mirror.seen_headers[-1].get("If-Modified-Since"), "the condition did not reach the mirror"


def test_a_by_hash_file_is_kept_only_when_its_body_has_the_hash_of_its_name(lab: Lab) -> None:
    good = f"/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/{hashlib.sha256(b'packages').hexdigest()}"
    bad = f"/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/{hashlib.sha256(b'other').hexdigest()}"
    lab.mirror.files.update({good: b"packages", bad: b"packages"})
    assert lab.get(good)[0] == 200 and lab.get(bad)[0] == 200
    assert cached_files(lab.cache) == [f"127.0.0.1{good}"], f"the cache holds {cached_files(lab.cache)}"


def test_a_range_request_is_forwarded_and_its_part_never_kept(lab: Lab) -> None:
    status, body, headers = lab.get(DEB, {"Range": "bytes=1000-", "If-Range": "x"})
    assert (status, body) == (206, BODY[1000:]), f"a range request got {status} with {len(body)} B"
    assert headers.get("Content-Range") == f"bytes 1000-{len(BODY) - 1}/{len(BODY)}", headers
    assert cached_files(lab.cache) == [], f"a part of a package was kept: {cached_files(lab.cache)}"


def test_other_hosts_methods_and_paths_out_of_the_pool_are_not_served(lab: Lab) -> None:
    assert lab.get(DEB, host="localhost")[0] == 403, "a host that is not a mirror was forwarded"
    assert lab.get(DEB, method="POST")[0] == 403, "a POST was forwarded"
    assert lab.mirror.hits[DEB] == 0, "the mirror saw a request the proxy should have refused"
    assert proxy.Cache(lab.cache).path("127.0.0.1", "/debian/pool/../../../etc/passwd") is None
    assert proxy.Cache(lab.cache).path("127.0.0.1", "/debian/dists/bookworm/Release") is None


def test_a_head_request_gets_the_length_without_a_body(lab: Lab) -> None:
    status, body, headers = lab.get(DEB, method="HEAD")
    assert (status, body, headers.get("Content-Length")) == (200, b"", str(len(BODY))), (status, body, headers)
    assert cached_files(lab.cache) == []


def test_headers_of_the_connection_stay_and_the_others_reach_the_mirror(lab: Lab) -> None:
    lab.get("/debian/dists/bookworm/InRelease", {"Proxy-Authorization": "Basic eA==", "TE": "trailers",
                                                  "Test-Run": "1", "Cache-Control": "max-age=0"})
    seen = {k.lower() for k in lab.mirror.seen_headers[-1]}
    assert {"test-run", "cache-control"} <= seen, f"the mirror did not get the request's own headers: {sorted(seen)}"
    assert not {"proxy-authorization", "te"} & seen, f"headers of the connection to the proxy went on: {sorted(seen)}"
