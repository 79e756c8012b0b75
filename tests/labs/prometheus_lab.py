"""A real Prometheus beside the live Loki lab: it scrapes with the stack's scrape config and
evaluates the stack's rules, as an operator's Prometheus would with the README's files.

- ``start_prometheus``: the Prometheus server (Debian's package) on the lab's client host, its
  ``prometheus.yml`` the output ``prometheusScrapeConfig`` with a ``global`` block (1 s scrapes and
  rule evaluations, so that a test sees them within seconds) and ``rule_files`` naming the output
  ``prometheusRules``; ``loki-stack/`` beside it holds the files the README has written there.
- ``start_agent_stand_in``: a Go TLS server where a log agent serves its metrics, with the files
  the agent's config names: the host's agent certificate and key, and the CA of Prometheus'
  certificates (``metrics-client-ca.pem``) as the client pool. Alloy itself is not installable here (Grafana's
  repository is unreachable); the stand-in is the Prometheus server's own HTTPS (exporter-toolkit),
  which builds its client pool the way Alloy's ``http.tls`` block does (``x509.CertPool`` from the
  file's PEM, ``RequireAndVerifyClientCert``): it shows what Go's TLS does with that pool.

Both run as daemons of the lab's ``PrivateNetwork``: stopped by pid when the lab closes, also when
a test fails.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from components.alloy import METRICS_PORT
from offline.rehearsal.prometheus import instant_query, prometheus_config, readme_files
from stack.certificates import AGENT_CERT_FILE, AGENT_KEY_FILE, METRICS_CLIENT_CA_FILE
from tests.labs.lab_stack import LOKI_ADDRESSES
from tests.labs.loki_lab import CLIENT, LokiLab

PROMETHEUS = "prometheus"
API = "http://127.0.0.1:9090"
START_TIMEOUT_S = 30
"""How long Prometheus may take to answer /-/ready (a clean-clone CI run queried it before it
listened: two tests failed with a refused connection, the next ones passed)."""


def write_files(directory: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        (directory / relative).write_text(text)


def prometheus_files(lab: LokiLab) -> dict[str, str]:
    """The README's files, and prometheus.yml: the scrape config with 1 s scrapes and evaluations
    and the rules file."""
    return {"prometheus.yml": prometheus_config(lab.plan.outputs["prometheusScrapeConfig"]),
            **readme_files(lab.plan.outputs)}


def start_prometheus(lab: LokiLab, binary: str) -> None:
    d = lab.run / CLIENT / PROMETHEUS
    write_files(d, prometheus_files(lab))
    lab.network.start(PROMETHEUS, CLIENT, [binary, f"--config.file={d / 'prometheus.yml'}",
                                           f"--storage.tsdb.path={d / 'data'}", "--web.listen-address=127.0.0.1:9090"])
    deadline = time.monotonic() + START_TIMEOUT_S
    while lab.network.run(CLIENT, ["curl", "-fsS", "-m", "2", "-o", "/dev/null", f"{API}/-/ready"],
                          timeout=10).returncode != 0:
        if time.monotonic() > deadline:
            log = lab.network.daemons[PROMETHEUS].log_text()[-3000:]
            raise AssertionError(f"Prometheus did not answer /-/ready within {START_TIMEOUT_S} s\n{log}")
        time.sleep(0.2)


AGENT_STAND_IN = "agent-stand-in-{node}"
"""The stand-in's daemon label."""


def start_agent_stand_in(lab: LokiLab, node: str, binary: str, files: dict[str, str] | None = None,
                         run_name: str = "agent-stand-in") -> None:
    """On ``node``'s address and the agent's port, with the files ``node``'s agent gets (in the
    lab's plan, or ``files``: another run's), in the directory ``run_name``."""
    files = files if files is not None else lab.plan.files[node]
    d = lab.run / node / run_name
    d.mkdir(parents=True)
    for name, path in (("agent.pem", AGENT_CERT_FILE), ("agent.key", AGENT_KEY_FILE),
                       ("metrics-client-ca.pem", METRICS_CLIENT_CA_FILE)):
        (d / name).write_text(files[path])
    (d / "web.yml").write_text(yaml.safe_dump({"tls_server_config": {
        "cert_file": str(d / "agent.pem"), "key_file": str(d / "agent.key"),
        "client_ca_file": str(d / "metrics-client-ca.pem"), "client_auth_type": "RequireAndVerifyClientCert"}}))
    (d / "prometheus.yml").write_text("global: {}\n")
    lab.network.start(AGENT_STAND_IN.format(node=node), node, [
        binary, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
        f"--web.config.file={d / 'web.yml'}", f"--web.listen-address={LOKI_ADDRESSES[node]}:{METRICS_PORT}"])


def query(lab: LokiLab, expr: str) -> list[dict[str, Any]]:
    """The instant vector ``expr`` evaluates to now, from the lab's Prometheus."""
    return instant_query(lambda argv: lab.network.run(CLIENT, argv, timeout=30), expr)


def values(lab: LokiLab, expr: str, by: str = "") -> dict[str, float]:
    """``expr`` now, keyed by the label ``by`` (or "" for a single series)."""
    return {r["metric"].get(by, ""): float(r["value"][1]) for r in query(lab, expr)}


def wait_for(lab: LokiLab, what: str, check: Any, timeout: float = 60) -> float:
    """Seconds until ``check()`` is true; fails with ``what`` and the Prometheus log after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            log = lab.network.daemons[PROMETHEUS].log_text()[-3000:]
            raise AssertionError(f"after {timeout} s: {what}\n--- prometheus log\n{log}")
        time.sleep(0.5)
    return time.monotonic() - start


def active_alerts(lab: LokiLab, alert: str) -> list[dict[str, str]]:
    """Labels of ``alert``'s pending or firing instances."""
    return [r["metric"] for r in query(lab, f'ALERTS{{alertname="{alert}"}}')]

