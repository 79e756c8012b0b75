"""The rehearsal's S3 stand-in (offline/rehearsal/s3_standin.py) answers Prometheus as the object
store's server does: its cluster metrics only with a metrics bearer token, in the exposition format
``promtool`` accepts, with the series the stack's rules read, counting what it answered. Run on
loopback, stopped by its pid."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.objectstore import metrics_token
from offline.rehearsal.repository import server_certificate
from offline.rehearsal.s3_standin import METRICS_PATH
from tests.labs.needs import require_tool

STANDIN = Path(__file__).resolve().parent.parent / "offline/rehearsal/s3_standin.py"
USER, SECRET = "prometheus-user", "a-secret-key-of-forty-characters-xxxxxxx"
"""A made-up user and key: the stand-in checks no signature, only the token's shape, issuer and expiry."""


@dataclass
class Standin:
    url: str
    context: ssl.SSLContext

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method,  # noqa: S310 (https)
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, context=self.context, timeout=10) as answer:  # noqa: S310 (https)
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def metrics(self, token: str | None) -> tuple[int, str]:
        status, body = self.request("GET", METRICS_PATH, headers={"Authorization": f"Bearer {token}"} if token else {})
        return status, body.decode()


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[Standin]:
    ca, cert, key = server_certificate("127.0.0.1", tmp_path / "tls")
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(cert, certs / "public.crt")
    shutil.copy(key, certs / "private.key")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "volume").mkdir()
    log = tmp_path / "standin.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, str(STANDIN), "server", "--address", f"127.0.0.1:{port}",
                                    "--certs-dir", str(certs), str(tmp_path / "volume")], stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        server = Standin(url=f"https://127.0.0.1:{port}", context=ssl.create_default_context(cafile=str(ca)))
        deadline = time.monotonic() + 15
        while True:
            try:
                if server.request("GET", "/minio/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail(f"the S3 stand-in did not start: {log.read_text()}")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)


def series(exposition: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
            if line and not line.startswith("#")}


def test_its_metrics_want_a_metrics_token_as_the_object_stores_do(standin):
    good = metrics_token(USER, SECRET)
    assert standin.metrics(None)[0] == 403, "the stand-in's metrics answered without a bearer token"
    assert standin.metrics("not-a-jwt")[0] == 403, "the stand-in's metrics took a bearer that is no JWT"
    header, _, signature = good.split(".")
    other = json.dumps({"exp": 2**31, "iss": "grafana", "sub": "x"}).encode()
    forged = f"{header}.{base64.urlsafe_b64encode(other).decode().rstrip('=')}.{signature}"
    assert standin.metrics(forged)[0] == 403, "the stand-in's metrics took a token of another issuer"
    expired = metrics_token(USER, SECRET, expires=1)
    assert standin.metrics(expired)[0] == 403, "the stand-in's metrics took an expired token"
    assert standin.metrics(good)[0] == 200, "the stand-in's metrics refused the stack's metrics token"


@pytest.mark.real_tools
def test_its_metrics_count_what_it_answered_and_its_volumes_space_and_promtool_reads_them(standin):
    token = metrics_token(USER, SECRET)
    assert standin.request("PUT", "/loki")[0] == 200
    assert standin.request("PUT", "/loki/chunk-1", b"data")[0] == 200
    assert standin.request("GET", "/loki/chunk-1")[0] == 200
    assert standin.request("GET", "/loki/missing")[0] == 404
    status, text = standin.metrics(token)
    assert status == 200
    found = series(text)
    expected = {'minio_s3_requests_total{api="putbucket",server="standin"}': 1,
                'minio_s3_requests_total{api="putobject",server="standin"}': 1,
                'minio_s3_requests_total{api="getobject",server="standin"}': 2,
                'minio_s3_requests_5xx_errors_total{api="getobject",server="standin"}': 0}
    wrong = {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}
    assert not wrong, f"the stand-in's request counts (found, expected): {wrong}\n{text}"
    free, total = found["minio_cluster_capacity_usable_free_bytes"], found["minio_cluster_capacity_usable_total_bytes"]
    assert 0 < free <= total, f"the stand-in's capacity: {free} free of {total}"
    require_tool("promtool")
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert check.returncode == 0, f"promtool check metrics refused the stand-in's metrics: {check.stderr}{check.stdout}"
