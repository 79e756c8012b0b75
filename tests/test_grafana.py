"""Grafana on the example stack: grafana.ini parsed back, its TLS files, the order of its steps,
the provider, the Loki data source and the two dashboards."""

from __future__ import annotations

import configparser
import json
from typing import Any

import pytest
import yaml

from components.dashboards import HEALTH_ROW_TITLE, PROMETHEUS
from components.grafana import CONFIG_FILE, LOKI_DATASOURCE_UID, TLS_DIR
from offline import engine
from tests.labs.example import files_of, shellcheck_commands
from tests.labs.x509_checks import client_verification_error, server_verification_error

CMD = "command:remote:Command"
GRAFANA_DEFAULT_SECRET_KEY = "SW2YcwTIb9zpOOhoPsMm"  # noqa: S105 (Grafana's public default, asserted absent)


def ini(example: engine.RunResult) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(files_of(example, "grafana")[CONFIG_FILE][1].value)
    return parser


def test_grafana_ini_serves_https_with_generated_secrets_and_no_phoning_home(example):
    config = ini(example)
    server = config["server"]
    assert (server["protocol"], server["http_port"], server["domain"]) == ("https", "3000", "grafana.home.arpa")
    assert server["root_url"] == "https://grafana.home.arpa:3000/"
    assert (server["cert_file"], server["cert_key"]) == (f"{TLS_DIR}/grafana.pem", f"{TLS_DIR}/grafana.key")
    security = config["security"]
    secrets = example.engine.cloud.secret_values
    assert secrets.get(security["admin_password"]) == "grafana-admin-password.result"
    assert secrets.get(security["secret_key"]) == "grafana-secret-key.result"
    assert security["secret_key"] != GRAFANA_DEFAULT_SECRET_KEY
    assert security["cookie_secure"] == "true" and security["disable_gravatar"] == "true"
    assert config["analytics"]["reporting_enabled"] == "false" and config["analytics"]["check_for_updates"] == "false"
    assert config["users"]["allow_sign_up"] == "false" and config["auth.anonymous"]["enabled"] == "false"
    hf, resolved = files_of(example, "grafana")[CONFIG_FILE]
    assert (hf.owner, hf.group, hf.mode) == ("root", "grafana", "0640") and resolved.secret


def test_grafana_metrics_ask_for_prometheus_password(example):
    """Grafana's /metrics is public unless both basic-auth keys are set; the password is generated,
    secret, and the same one Prometheus gets (output prometheusGrafanaPassword)."""
    metrics = ini(example)["metrics"]
    secrets = example.engine.cloud.secret_values
    assert metrics["enabled"] == "true" and metrics["basic_auth_username"] == "prometheus", dict(metrics)
    assert secrets.get(metrics["basic_auth_password"]) == "grafana-metrics-password.result", (
        "grafana.ini [metrics]: the password is not the generated one")
    output = example.resolved["output:prometheusGrafanaPassword"]
    assert output.known and output.secret and output.value == metrics["basic_auth_password"], (
        "output prometheusGrafanaPassword: not secret, or not grafana.ini's")


def test_grafana_reads_its_certificate_files_and_cannot_change_them(example):
    files = files_of(example, "grafana")
    ca = example.resolved["output:caCertificate"].value
    for name in ("grafana.pem", "grafana.key"):
        hf, _ = files[f"{TLS_DIR}/{name}"]
        assert (hf.owner, hf.group, hf.mode) == ("root", "grafana", "0640"), name
    cert = files[f"{TLS_DIR}/grafana.pem"][1].value
    for name in ("grafana.home.arpa", "grafana", "192.168.50.40"):
        assert server_verification_error(ca, cert, name) is None, f"grafana.pem does not verify for {name}"


def test_the_steps_run_in_order_and_the_provider_waits_for_health(example):
    monitor = example.engine.monitor
    tls, setup = monitor.find(CMD, "grafana-tls-install"), monitor.find(CMD, "grafana-setup")
    install, ready = monitor.find(CMD, "grafana-config-install"), monitor.find(CMD, "grafana-ready")
    assert tls.urn in setup.dependencies and setup.urn in install.dependencies and install.urn in ready.dependencies
    assert "https://grafana.home.arpa:3000/api/health" in ready.plain_inputs["stdin"]
    assert "install_pinned grafana" in setup.plain_inputs["stdin"] and "GRAFANA_VERSION=13.2.3" in (
        setup.plain_inputs["stdin"])
    provider = monitor.find("pulumi:providers:grafana", "grafana")
    assert ready.urn in provider.dependencies, "the Grafana provider must wait for /api/health"
    assert provider.inputs["url"] == "https://192.168.50.40:3000/"
    assert provider.inputs["caCert"] == example.resolved["output:caCertificate"].value, "the provider trusts our CA"
    assert provider.inputs.get("insecureSkipVerify") in (None, "false")
    assert engine.is_secret(provider.inputs["auth"]), "the admin credentials must reach the provider as a secret"
    ref = f"{provider.urn}::{provider.id}"
    for reg in example.engine.registrations:
        if reg.type.startswith("grafana:"):
            assert reg.provider == ref, f"{reg.type} {reg.name} does not use the stack's Grafana provider"


def test_the_loki_data_source_uses_the_vip_our_ca_and_grafanas_client_certificate(example):
    ds = example.engine.monitor.find("grafana:oss/dataSource:DataSource", "grafana-content-loki")
    i = ds.plain_inputs
    assert (i["type"], i["url"], i["isDefault"], i["uid"]) == ("loki", "https://loki.home.arpa:3100", True,
                                                               LOKI_DATASOURCE_UID)
    assert json.loads(i["jsonDataEncoded"])["tlsAuth"] is True
    assert json.loads(i["jsonDataEncoded"])["tlsAuthWithCACert"] is True
    assert engine.is_secret(ds.inputs["secureJsonDataEncoded"]), "the client key must be a secret field"
    secure = json.loads(i["secureJsonDataEncoded"])
    ca = example.resolved["output:caCertificate"].value
    assert secure["tlsCACert"] == ca
    assert client_verification_error(ca, secure["tlsClientCert"]) is None, "Grafana's client certificate"
    assert "PRIVATE KEY" in secure["tlsClientKey"]
    assert "PRIVATE KEY" not in i["jsonDataEncoded"]


def panels_and_targets(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that draws something (not the rows that title a group) and its queries."""
    panels = [p for p in board["panels"] if p["type"] != "row"]
    return [*panels, *(t for p in panels for t in p["targets"])]


def test_both_dashboards_are_valid_and_every_panel_uses_a_known_data_source(example):
    boards = {r.name: json.loads(r.plain_inputs["configJson"])
              for r in example.engine.monitor.of_type("grafana:oss/dashboard:Dashboard")}
    assert set(boards) == {"grafana-content-cluster-dashboard", "grafana-content-logs-dashboard"}
    folder = example.engine.monitor.find("grafana:oss/folder:Folder", "grafana-content-folder")
    for reg in example.engine.monitor.of_type("grafana:oss/dashboard:Dashboard"):
        assert reg.plain_inputs["folder"] == folder.plain_inputs["uid"], f"{reg.name} is not in the folder"
    cluster, logs = boards["grafana-content-cluster-dashboard"], boards["grafana-content-logs-dashboard"]
    overview = {"Ingest rate per node", "Active streams per node", "Request latency p99 per node",
                "Request errors (5xx) per node", "Ring members by state"}
    assert overview <= {p["title"] for p in cluster["panels"]}, "cluster dashboard: an overview panel is missing"
    assert {p["title"] for p in logs["panels"]} == {"Log volume by host", "Log volume by job", "Recent errors"}
    assert [v["name"] for v in cluster["templating"]["list"]] == ["prometheus"]
    for item in panels_and_targets(cluster):
        assert item["datasource"] == PROMETHEUS, f"cluster dashboard: {item.get('title', item.get('refId'))}"
    for item in panels_and_targets(logs):
        assert item["datasource"] == {"type": "loki", "uid": LOKI_DATASOURCE_UID}
    for board in boards.values():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)) and all(t["expr"] for p in board["panels"] for t in p.get("targets", []))
        places = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in board["panels"]]
        assert len(places) == len(set(places)), f"{board['title']}: two panels at one place"


def test_the_cluster_dashboard_draws_every_signal_an_alert_watches(example):
    """Every expression an alert compares with its threshold is a panel's query, word for word."""
    board = json.loads(example.engine.monitor.find("grafana:oss/dashboard:Dashboard",
                                                   "grafana-content-cluster-dashboard").plain_inputs["configJson"])
    drawn = {t["expr"] for p in board["panels"] if p["type"] != "row" for t in p["targets"]}
    rules = yaml.safe_load(example.resolved["output:prometheusRules"].value)
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 20, f"only {len(alerts)} alerts"
    for alert in alerts:
        used = [expr for expr in drawn if expr in alert["expr"]]
        assert used or alert["alert"] in UNDRAWN, f"{alert['alert']}: the dashboard draws nothing it watches"
    assert any(p["title"] == HEALTH_ROW_TITLE and p["type"] == "row" for p in board["panels"])


UNDRAWN = {"LokiStackCertificateRenewalDue"}
"""It compares the clock with a recorded date; the "Certificates: time left" panel shows the same as time left."""


def test_outputs(example):
    assert example.resolved["output:grafanaUrl"].value == "https://grafana.home.arpa:3000/"
    password = example.resolved["output:grafanaAdminPassword"]
    assert password.known and password.secret and len(password.value) == 32


@pytest.mark.real_tools
def test_the_grafana_setup_passes_shellcheck(example, tmp_path):
    shellcheck_commands(example, ["grafana-setup", "grafana-ready"], tmp_path)
