"""A real Prometheus where the operator's would be (the rehearsal's runner), scraping the rehearsal's
machines with the stack's own scrape config and evaluating the stack's own rules: the output
``prometheusScrapeConfig`` with a ``global`` block (1 s scrapes and evaluations, so that a check sees
them within seconds) and ``rule_files`` naming the output ``prometheusRules``; ``loki-stack/`` beside
it holds the files the README has the operator write there.

It runs as a process of its own in the runner's namespace, stopped by its pid when the block ends,
also when a check fails. The server is Debian's (``.ci/run`` installs its binary).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from offline.rehearsal.run import Rehearsal

API = "http://127.0.0.1:9090"
INTERVAL = "1s"
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 10


def readme_files(outputs: dict[str, Any]) -> dict[str, str]:
    """Relative path -> content of what the README's commands write beside prometheus.yml (its paths,
    written out here rather than taken from the code, so that a scrape config naming other files
    fails the checks of the Prometheus that reads it: here and in the live lab)."""
    return {
        "loki-stack/ca.pem": outputs["caCertificate"],
        "loki-stack/prometheus.pem": outputs["prometheusCertificate"],
        "loki-stack/prometheus.key": outputs["prometheusPrivateKey"],
        "loki-stack/objectstore.token": outputs["prometheusObjectStoreToken"],
        "loki-stack/grafana.password": outputs["prometheusGrafanaPassword"],
        "loki-stack/rules.yml": outputs["prometheusRules"],
    }


def prometheus_config(scrape_config: str) -> str:
    """prometheus.yml: the stack's scrape config with 1 s scrapes and evaluations and its rules file."""
    config = {"global": {"scrape_interval": INTERVAL, "scrape_timeout": INTERVAL, "evaluation_interval": INTERVAL},
              "rule_files": ["loki-stack/rules.yml"], **yaml.safe_load(scrape_config)}
    return yaml.safe_dump(config, sort_keys=False)


def instant_query(run: Callable[[list[str]], subprocess.CompletedProcess[str]], expr: str) -> list[dict[str, Any]]:
    """The instant vector ``expr`` evaluates to now, asked with curl through ``run`` (in the
    namespace where the server listens)."""
    proc = run(["curl", "-sS", "-m", "10", f"{API}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"])
    if proc.returncode != 0:
        raise AssertionError(f"Prometheus did not answer {expr}: {proc.stderr}")
    answer = json.loads(proc.stdout)
    if answer.get("status") != "success":
        raise AssertionError(f"Prometheus refused {expr}: {answer}")
    return list(answer["data"]["result"])


@dataclass
class RehearsalPrometheus:
    run: Callable[[list[str]], subprocess.CompletedProcess[str]]
    """Runs a command in the runner's namespace."""
    log: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now."""
        return instant_query(self.run, expr)

    def values(self, expr: str, by: str) -> dict[str, float]:
        return {r["metric"].get(by, ""): float(r["value"][1]) for r in self.query(expr)}

    def alerts(self, alert: str, state: str = "firing") -> list[dict[str, str]]:
        """The labels of ``alert``'s instances in ``state`` (firing or pending)."""
        return [r["metric"] for r in self.query(f'ALERTS{{alertname="{alert}", alertstate="{state}"}}')]

    def wait_for(self, what: str, check: Callable[[], object], timeout: float = 60) -> float:
        """Seconds until ``check()`` is true; fails naming ``what``, with the server's log, after ``timeout``."""
        start = time.monotonic()
        while not check():
            if time.monotonic() - start > timeout:
                raise AssertionError(f"after {timeout} s: {what}\n--- prometheus log\n"
                                     f"{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        return time.monotonic() - start


@contextlib.contextmanager
def rehearsal_prometheus(lab: Rehearsal) -> Iterator[RehearsalPrometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("the rehearsal's Prometheus needs the prometheus server (Debian's prometheus package)")
    outputs = lab.outputs()
    directory = lab.run_dir / "prometheus"
    files = {"prometheus.yml": prometheus_config(outputs["prometheusScrapeConfig"]), **readme_files(outputs)}
    for relative, text in files.items():
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        (directory / relative).write_text(text)
    network, runner = lab.net, lab.net.ns("runner")
    log = directory / "prometheus.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            ["ip", "netns", "exec", runner, binary, f"--config.file={directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'data'}", "--web.listen-address=127.0.0.1:9090"],
            stdout=out, stderr=subprocess.STDOUT, cwd=directory)
    server = RehearsalPrometheus(run=lambda argv: network.run("runner", argv, timeout=30), log=log)
    try:
        server.wait_for("Prometheus answers /-/ready", lambda: server.run(
            ["curl", "-fsS", "-m", "2", "-o", "/dev/null", f"{API}/-/ready"]).returncode == 0, START_TIMEOUT_S)
        yield server
    finally:
        process.terminate()  # its own pid: ip netns exec replaced itself with the server
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
