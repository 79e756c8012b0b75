#!/usr/bin/python3
"""The rehearsal's stand-in for the object store's server: shipped as ``minio`` in the archive the
object store's setup downloads, run by the stack's unit as ``server --address :9000
--console-address :9001 --certs-dir DIR VOLUME`` with the unit's environment.

It answers what the stack checks and what Loki uses, with Python's standard library only (it runs
on the machine's own python3): HTTPS with ``DIR/public.crt`` and ``DIR/private.key``, the health
endpoints ``/minio/health/live`` and ``/minio/health/ready``, readiness to systemd
(``Type=notify``), the cluster metrics Prometheus scrapes (``/minio/v2/metrics/cluster``, with the
series the stack's rules read: requests and 5xx answers by API, usable capacity of the volume's
file system), and path-style S3 for buckets and objects in VOLUME: create and look at
buckets, put (also aws-chunked), get (also ranges), head, delete, multi-object delete, list (v1
and v2, prefix, delimiter, pages). It does not check signatures: any key is accepted, so the
object store's user, policy and keys are not rehearsed. The metrics want a bearer token as
MinIO's do: a JWT whose issuer is ``prometheus`` and that has not expired (its signature is not
checked either); anything else gets 403, as from MinIO.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import datetime
import email.utils
import hashlib
import http.server
import json
import os
import re
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from xml.sax.saxutils import escape

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
PAGE = 1000
METRICS_PATH = "/minio/v2/metrics/cluster"
METRICS_ISSUER = "prometheus"
"""MinIO refuses a metrics token from any other issuer (cmd/metrics.go, AuthMiddleware)."""


def notify_ready() -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(b"READY=1")


def dechunk(body: bytes) -> bytes:
    """The payload of an aws-chunked body: ``<hex size>;chunk-signature=...\\r\\n<data>\\r\\n`` ..."""
    out, pos = bytearray(), 0
    while pos < len(body):
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end].split(b";")[0], 16)
        if size == 0:
            break
        out += body[end + 2:end + 2 + size]
        pos = end + 2 + size + 2
    return bytes(out)


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root

    def bucket(self, name: str) -> Path:
        return self.root / name

    def path(self, bucket: str, key: str) -> Path:
        return self.bucket(bucket) / urllib.parse.quote(key, safe="")

    def keys(self, bucket: str) -> list[str]:
        return sorted(urllib.parse.unquote(p.name) for p in self.bucket(bucket).iterdir()
                      if p.is_file() and not p.name.startswith(".tmp-"))


def bearer_claims(authorization: str) -> dict[str, object] | None:
    """The claims of an ``Authorization: Bearer <JWT>`` header, or None if it is not one."""
    scheme, _, token = authorization.partition(" ")
    parts = token.strip().split(".")
    if scheme.lower() != "bearer" or len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


class Requests:
    """S3 requests answered, and those answered with a 5xx, by MinIO's API name."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()

    def count(self, api: str, status: int) -> None:
        with self.lock:
            self.total[api] += 1
            if status >= 500:
                self.errors[api] += 1

    def exposition(self, volume: Path) -> str:
        stat = os.statvfs(volume)
        lines = ["# HELP minio_s3_requests_total Total number of S3 requests",
                 "# TYPE minio_s3_requests_total counter",
                 "# HELP minio_s3_requests_5xx_errors_total Total number of S3 requests with (5xx) errors",
                 "# TYPE minio_s3_requests_5xx_errors_total counter"]
        with self.lock:
            for api in sorted(self.total):
                lines.append(f'minio_s3_requests_total{{api="{api}",server="standin"}} {self.total[api]}')
                lines.append(f'minio_s3_requests_5xx_errors_total{{api="{api}",server="standin"}} {self.errors[api]}')
        lines += ["# HELP minio_cluster_capacity_usable_free_bytes Total cluster usable storage free in bytes",
                  "# TYPE minio_cluster_capacity_usable_free_bytes gauge",
                  f"minio_cluster_capacity_usable_free_bytes {stat.f_bavail * stat.f_frsize}",
                  "# HELP minio_cluster_capacity_usable_total_bytes Total cluster usable storage capacity in bytes",
                  "# TYPE minio_cluster_capacity_usable_total_bytes gauge",
                  f"minio_cluster_capacity_usable_total_bytes {stat.f_blocks * stat.f_frsize}"]
        return "\n".join(lines) + "\n"


def api_name(method: str, key: str, query: dict[str, list[str]]) -> str:
    """MinIO's name for the S3 API a request calls (the ``api`` label of its request metrics)."""
    if method == "POST":
        return "deletemultipleobjects"
    if not key:
        names = {"PUT": "putbucket", "HEAD": "headbucket", "DELETE": "deletebucket"}
        if method in names:
            return names[method]
        return "getbucketlocation" if "location" in query else (
            "listobjectsv2" if query.get("list-type") == ["2"] else "listobjectsv1")
    return {"GET": "getobject", "HEAD": "headobject", "PUT": "putobject", "DELETE": "deleteobject"}.get(method, method)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    store: Store
    requests = Requests()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/xml") -> None:
        if not self.path.startswith("/minio/"):
            _, key, query = self.target()
            self.requests.count(api_name(self.command, key, query), status)
        self.send_response(status)
        for name, value in {"Content-Type": content_type, **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if headers is None or "Content-Length" not in headers
                                               else headers["Content-Length"]))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status: int, code: str) -> None:
        self.reply(status, f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code></Error>'.encode())

    def target(self) -> tuple[str, str, dict[str, list[str]]]:
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.lstrip("/").split("/", 1)
        return (urllib.parse.unquote(parts[0]), urllib.parse.unquote(parts[1]) if len(parts) > 1 else "",
                urllib.parse.parse_qs(url.query, keep_blank_values=True))

    def body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            data = bytearray()
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
        else:
            data = bytearray(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        if self.headers.get("x-amz-content-sha256", "").startswith("STREAMING-"):
            return dechunk(bytes(data))
        return bytes(data)

    def do_GET(self) -> None:
        if self.path.startswith("/minio/health/"):
            self.reply(200, content_type="text/plain")
            return
        if urllib.parse.urlsplit(self.path).path == METRICS_PATH:
            self.metrics()
            return
        bucket, key, query = self.target()
        if not self.store.bucket(bucket).is_dir():
            self.error(404, "NoSuchBucket")
        elif key:
            self.get_object(bucket, key)
        elif "location" in query:
            self.reply(200, f'<?xml version="1.0" encoding="UTF-8"?><LocationConstraint xmlns="{NS}">'
                            "</LocationConstraint>".encode())
        else:
            self.list_objects(bucket, query)

    do_HEAD = do_GET  # noqa: N815 (the stdlib's name)

    def metrics(self) -> None:
        claims = bearer_claims(self.headers.get("Authorization", ""))
        expires = claims.get("exp") if claims else None
        if (claims is None or claims.get("iss") != METRICS_ISSUER or not isinstance(expires, int | float)
                or expires < time.time()):
            self.error(403, "AccessDenied")
            return
        self.reply(200, self.requests.exposition(self.store.root).encode(),
                   content_type="text/plain; version=0.0.4; charset=utf-8")

    def get_object(self, bucket: str, key: str) -> None:
        path = self.store.path(bucket, key)
        if not path.is_file():
            self.error(404, "NoSuchKey")
            return
        data = path.read_bytes()
        stat = path.stat()
        headers = {"ETag": f'"{hashlib.md5(data).hexdigest()}"',  # noqa: S324 (S3's ETag)
                   "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True), "Accept-Ranges": "bytes"}
        status = 200
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1)) if match.group(1) else max(0, len(data) - int(match.group(2)))
            end = int(match.group(2)) if match.group(1) and match.group(2) else len(data) - 1
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        self.reply(status, data, headers, content_type="application/octet-stream")

    def list_objects(self, bucket: str, query: dict[str, list[str]]) -> None:
        def arg(name: str) -> str:
            return query.get(name, [""])[0]
        prefix, delimiter, v2 = arg("prefix"), arg("delimiter"), arg("list-type") == "2"
        after = arg("continuation-token") or arg("start-after") if v2 else arg("marker")
        limit = min(int(arg("max-keys") or PAGE), PAGE)
        entries: list[tuple[str, bool]] = []
        for key in self.store.keys(bucket):
            if not key.startswith(prefix) or (after and key <= after):
                continue
            rest = key[len(prefix):]
            if delimiter and delimiter in rest:
                common = prefix + rest.split(delimiter, 1)[0] + delimiter
                if not entries or entries[-1] != (common, True):
                    entries.append((common, True))
            else:
                entries.append((key, False))
        page, truncated = entries[:limit], len(entries) > limit
        xml = [f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{NS}">',
               f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix><MaxKeys>{limit}</MaxKeys>",
               f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"]
        if delimiter:
            xml.append(f"<Delimiter>{escape(delimiter)}</Delimiter>")
        if v2:
            xml.append(f"<KeyCount>{len(page)}</KeyCount>")
            if truncated:
                xml.append(f"<NextContinuationToken>{escape(page[-1][0])}</NextContinuationToken>")
        elif truncated:
            xml.append(f"<NextMarker>{escape(page[-1][0])}</NextMarker>")
        for name, is_prefix in page:
            if is_prefix:
                xml.append(f"<CommonPrefixes><Prefix>{escape(name)}</Prefix></CommonPrefixes>")
                continue
            path = self.store.path(bucket, name)
            data = path.read_bytes()
            modified = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC)
            xml.append(f"<Contents><Key>{escape(name)}</Key>"
                       f"<LastModified>{modified.strftime('%Y-%m-%dT%H:%M:%S.000Z')}</LastModified>"
                       f'<ETag>"{hashlib.md5(data).hexdigest()}"</ETag><Size>{len(data)}</Size>'  # noqa: S324
                       "<StorageClass>STANDARD</StorageClass></Contents>")
        xml.append("</ListBucketResult>")
        self.reply(200, "".join(xml).encode())

    def do_PUT(self) -> None:
        bucket, key, _ = self.target()
        data = self.body()
        if not key:
            self.store.bucket(bucket).mkdir(parents=True, exist_ok=True)
            self.reply(200)
            return
        if not self.store.bucket(bucket).is_dir():
            self.error(404, "NoSuchBucket")
            return
        path = self.store.path(bucket, key)
        tmp = path.with_name(f".tmp-{os.getpid()}-{id(self)}")
        tmp.write_bytes(data)
        tmp.replace(path)
        self.reply(200, headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"',  # noqa: S324
                                 "Content-Length": "0"})

    def do_DELETE(self) -> None:
        bucket, key, _ = self.target()
        if key:
            self.store.path(bucket, key).unlink(missing_ok=True)
        self.reply(204, headers={"Content-Length": "0"})

    def do_POST(self) -> None:
        bucket, _, query = self.target()
        data = self.body()
        if "delete" not in query:
            self.error(501, "NotImplemented")
            return
        keys = [urllib.parse.unquote(k) for k in re.findall(r"<Key>(.*?)</Key>", data.decode())]
        for key in keys:
            self.store.path(bucket, key.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")).unlink(
                missing_ok=True)
        deleted = "".join(f"<Deleted><Key>{escape(k)}</Key></Deleted>" for k in keys)
        self.reply(200, f'<?xml version="1.0" encoding="UTF-8"?><DeleteResult xmlns="{NS}">{deleted}'
                        "</DeleteResult>".encode())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="minio (rehearsal stand-in)")
    parser.add_argument("command", choices=["server"])
    parser.add_argument("--address", default=":9000")
    parser.add_argument("--console-address", default=":9001")
    parser.add_argument("--certs-dir", required=True)
    parser.add_argument("volumes", nargs="+")
    args = parser.parse_args(argv)
    host, _, port = args.address.rpartition(":")
    Handler.store = Store(Path(args.volumes[0]))
    server = http.server.ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)  # noqa: S104 (as MinIO)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(f"{args.certs_dir}/public.crt", f"{args.certs_dir}/private.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    notify_ready()
    print(f"S3 stand-in on {args.address}, data in {args.volumes[0]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
