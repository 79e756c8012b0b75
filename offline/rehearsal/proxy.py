"""The rehearsal's narrow path out: an HTTP proxy bound inside the private network that forwards
plain GET and HEAD requests to the Debian mirrors this machine's apt uses, and to nothing else.

``python -m offline.rehearsal.proxy NETNS ADDRESS PORT CACHE HOST...``: the listening socket is
made inside the network namespace NETNS (``setns`` for the time of ``bind``), while every
connection out is made from the machine's own namespace. Requests for any other host get 403.

What a blip of a mirror does is not what a rehearsal tests, so the proxy absorbs it:

- a request that fails upstream (no connection, a 5xx status, a response cut short) is tried
  again, ``ATTEMPTS`` times in all over about half a minute (``BACKOFF_S``), before the machine
  sees an error; every retry and every failure is written to the proxy's log with its reason;
- files that never change under their name (Debian's ``/pool/`` and the content-addressed
  ``/by-hash/`` index files) are kept in CACHE once fetched whole and served from there: every
  machine of every rehearsal installs the same packages, and the mirrors see each file once.

A machine's ``apt`` still checks every file against the signed index, so a file in the cache is
trusted no more than one from the mirror; ``/by-hash/SHA256/`` files are checked before they are
kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import http.client
import os
import re
import socket
import socketserver
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000
HEADER_LIMIT = 64 * 1024
ATTEMPTS = 5
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0)
"""Pause before attempt 2, 3, …: 31 s in all before the last one."""
UPSTREAM_TIMEOUT_S = 60.0
RETRY_STATUSES = frozenset({500, 502, 503, 504})
IMMUTABLE = re.compile(r"/(?:pool|by-hash)/")
BY_SHA256 = re.compile(r"/by-hash/SHA256/([0-9a-f]{64})$")
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"})
"""Headers of one connection (RFC 9110 7.6.1), never forwarded; nor are ``Proxy-*`` ones."""

_log_lock = threading.Lock()


def log(message: str) -> None:
    with _log_lock:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def listening_socket_in(netns_path: str, address: str, port: int) -> socket.socket:
    """A TCP socket listening on ``address:port`` inside the namespace at ``netns_path``."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns_path, os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns_path}")
        try:
            sock = socket.create_server((address, port), reuse_port=False)
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)
    return sock


def hop_by_hop(name: str) -> bool:
    return name.lower() in HOP_BY_HOP or name.lower().startswith("proxy-")


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


def fetch_once(method: str, host: str, port: int, path: str, headers: list[tuple[str, str]]) -> Response:
    """One request upstream, its whole response read (``http.client`` raises on a body cut short)."""
    connection = http.client.HTTPConnection(host, port, timeout=UPSTREAM_TIMEOUT_S)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.putheader("Connection", "close")
        connection.endheaders()
        answer = connection.getresponse()
        body = answer.read()
        return Response(answer.status, answer.reason, answer.getheaders(), body)
    finally:
        connection.close()


def fetch(method: str, host: str, port: int, path: str,
          headers: list[tuple[str, str]]) -> tuple[Response | None, int, str]:
    """The upstream's answer, tried again on a failure: (response or None, attempts, last failure)."""
    failure = ""
    response: Response | None = None
    for attempt in range(1, ATTEMPTS + 1):
        try:
            response = fetch_once(method, host, port, path, headers)
        except (OSError, http.client.HTTPException) as error:
            response, failure = None, f"{type(error).__name__}: {error}"
        else:
            if response.status not in RETRY_STATUSES:
                return response, attempt, failure
            failure = f"{response.status} {response.reason}"
        if attempt < ATTEMPTS:
            log(f"retry  {method} {host}{path}: attempt {attempt} failed ({failure}); "
                f"again in {BACKOFF_S[attempt - 1]:.0f} s")
            time.sleep(BACKOFF_S[attempt - 1])
    return response, ATTEMPTS, failure


class Cache:
    """Files that never change under their name, by host and path, written whole or not at all."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, host: str, url_path: str) -> Path | None:
        if not IMMUTABLE.search(url_path) or "/../" in f"{url_path}/" or "\x00" in url_path:
            return None
        return self.root / host / url_path.lstrip("/")

    def get(self, host: str, url_path: str) -> bytes | None:
        path = self.path(host, url_path)
        if path is None:
            return None
        with contextlib.suppress(FileNotFoundError):
            return path.read_bytes()
        return None

    def put(self, host: str, url_path: str, body: bytes) -> bool:
        path = self.path(host, url_path)
        if path is None:
            return False
        by_hash = BY_SHA256.search(url_path)
        if by_hash and hashlib.sha256(body).hexdigest() != by_hash.group(1):
            log(f"not kept {host}{url_path}: its body does not have the hash its name says")
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".part-", delete=False) as part:
            part.write(body)
        os.replace(part.name, path)
        return True


class Forward(socketserver.StreamRequestHandler):
    allowed: frozenset[str] = frozenset()
    cache: Cache | None = None

    def send(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes,
             head_only: bool = False) -> None:
        kept = [(k, v) for k, v in headers if not hop_by_hop(k) and k.lower() != "content-length"]
        if not (head_only or status == 304 or 100 <= status < 200 or status == 204):
            kept.append(("Content-Length", str(len(body))))
        else:
            kept += [(k, v) for k, v in headers if k.lower() == "content-length"]
        lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in kept), "Connection: close", "", ""]
        self.wfile.write("\r\n".join(lines).encode("latin-1"))
        if not head_only and status != 304:
            self.wfile.write(body)

    def refuse(self, status: int, reason: str) -> None:
        self.send(status, reason, [], b"")

    def handle(self) -> None:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = self.rfile.readline(HEADER_LIMIT)
            if not line or len(head) > HEADER_LIMIT:
                return
            head += line
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        url = urllib.parse.urlsplit(target)
        if method not in ("GET", "HEAD") or url.scheme != "http" or url.hostname not in self.allowed:
            log(f"refused {method} {target}")
            self.refuse(403, "Forbidden")
            return
        path = urllib.parse.urlunsplit(("", "", url.path or "/", url.query, ""))
        headers = [(k.strip(), v.strip()) for k, _, v in (h.partition(":") for h in header_lines if h)
                   if not hop_by_hop(k.strip())]
        whole = method == "GET" and not any(k.lower() in ("range", "if-range") for k, _ in headers)
        if whole and self.cache is not None and (body := self.cache.get(url.hostname, url.path)) is not None:
            log(f"cached {method} {url.hostname}{url.path}: {len(body)} B")
            self.send(200, "OK", [("Content-Type", "application/octet-stream")], body)
            return
        response, attempts, failure = fetch(method, url.hostname, url.port or 80, path, headers)
        if response is None:
            log(f"failed {method} {url.hostname}{path} after {attempts} attempts: {failure}")
            self.refuse(502, "Bad Gateway")
            return
        kept = ""
        if whole and response.status == 200 and self.cache is not None and self.cache.put(
                url.hostname, url.path, response.body):
            kept = ", kept"
        log(f"upstream {method} {url.hostname}{path}: "
            f"{response.status} {len(response.body)} B, attempt {attempts}{kept}")
        self.send(response.status, response.reason, response.headers, response.body, head_only=method == "HEAD")


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True


def serve(sock: socket.socket, hosts: list[str], cache: Path | None) -> Server:
    """A proxy server on the listening socket ``sock`` (call its ``serve_forever``)."""
    handler = type("Handler", (Forward,), {"allowed": frozenset(hosts), "cache": Cache(cache) if cache else None})
    server = Server(sock.getsockname()[:2], handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    return server


def main(argv: list[str]) -> int:
    netns, address, port, cache, *hosts = argv
    server = serve(listening_socket_in(netns, address, int(port)), hosts, Path(cache))
    log(f"proxy on {address}:{port} in {netns}, forwarding to {sorted(hosts)}, files that never change kept "
        f"in {cache}")
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
