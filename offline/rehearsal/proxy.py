"""The rehearsal's narrow path out: an HTTP proxy bound inside the private network that forwards
plain GET requests to the Debian mirrors this machine's apt uses, and to nothing else.

``python -m offline.rehearsal.proxy NETNS ADDRESS PORT HOST...``: the listening socket is made
inside the network namespace NETNS (``setns`` for the time of ``bind``), while every connection
out is made from the machine's own namespace. Requests for any other host get 403.
"""

from __future__ import annotations

import ctypes
import os
import socket
import socketserver
import sys
import urllib.parse

CLONE_NEWNET = 0x40000000
HEADER_LIMIT = 64 * 1024


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


class Forward(socketserver.StreamRequestHandler):
    allowed: frozenset[str] = frozenset()

    def refuse(self, status: str) -> None:
        self.wfile.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())

    def handle(self) -> None:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = self.rfile.readline(HEADER_LIMIT)
            if not line or len(head) > HEADER_LIMIT:
                return
            head += line
        request_line, *headers = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        url = urllib.parse.urlsplit(target)
        if method not in ("GET", "HEAD") or url.scheme != "http" or url.hostname not in self.allowed:
            self.refuse("403 Forbidden")
            return
        path = urllib.parse.urlunsplit(("", "", url.path or "/", url.query, ""))
        kept = [h for h in headers if h and not h.lower().startswith(("connection:", "proxy-", "keep-alive:"))]
        upstream_request = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
        try:
            upstream = socket.create_connection((url.hostname, url.port or 80), timeout=60)
        except OSError:
            self.refuse("502 Bad Gateway")
            return
        with upstream:
            upstream.sendall(upstream_request.encode("latin-1"))
            while chunk := upstream.recv(65536):
                self.wfile.write(chunk)


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True


def main(argv: list[str]) -> int:
    netns, address, port, *hosts = argv
    Forward.allowed = frozenset(hosts)
    server = Server((address, int(port)), Forward, bind_and_activate=False)
    server.socket.close()
    server.socket = listening_socket_in(netns, address, int(port))
    print(f"proxy on {address}:{port} in {netns}, forwarding to {sorted(hosts)}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
