"""Alloy on every host: each config names its host, the VIP URL and its client certificate; the
drop-in passes systemd-analyze; the scripts pass shellcheck; extra hosts are reached with a pinned
host key and get only their agent certificate."""

from __future__ import annotations

import re
import subprocess

import pytest

from components.alloy import CREDENTIALS_DIR, METRICS_PORT, STAGE_DIR, render_dropin
from offline import engine
from offline.plan import read_stack_config, run_program
from stack.certificates import AGENT_CERT_FILE, CA_FILE, METRICS_CLIENT_CA_FILE, SERVER_KEY_FILE
from tests.labs.example import files_of
from tests.labs.needs import require_tool
from tests.labs.systemd_checks import verify_dropin
from tests.labs.x509_checks import client_verification_error, load, server_verification_error

HOSTS = ["loki-01", "loki-02", "loki-03", "s3", "grafana"]
CMD = "command:remote:Command"
EXTRA_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJpr/dRGxU8CQFAAYlnNpNTENGvp7bPiqQowbP0PnG7"
PACKAGED_UNIT = """[Unit]
Description=Vendor-agnostic OpenTelemetry Collector distribution with programmable pipelines
Wants=network-online.target
After=network-online.target

[Service]
Restart=always
User=alloy
Environment=HOSTNAME=%H
EnvironmentFile=/etc/default/alloy
WorkingDirectory=/var/lib/alloy
ExecStart=/usr/bin/alloy run $CUSTOM_ARGS --storage.path=/var/lib/alloy/data $CONFIG_FILE
ExecReload=/usr/bin/env kill -HUP $MAINPID
TimeoutStopSec=20s
SendSIGKILL=no

[Install]
WantedBy=multi-user.target
"""
"""A stand-in for the unit Grafana's alloy package installs; the drop-in is verified on top of it."""


def config_of(result: engine.RunResult, host: str) -> str:
    return files_of(result, host)[f"{STAGE_DIR}/config.alloy"][1].value


@pytest.mark.parametrize("host", HOSTS)
def test_each_config_names_its_host_the_vip_and_its_client_certificate(example, host):
    config = config_of(example, host)
    assert config.count("{") == config.count("}"), f"{host}: unbalanced braces in config.alloy"
    assert config.count(f'host     = "{host}"') == 1 and config.count(f'host = "{host}"') == 1, f"{host}: host label"
    assert 'url = "https://192.168.50.20:3100/loki/api/v1/push"' in config, f"{host}: not pushing through the VIP"
    for name in ("ca.pem", "agent.pem", "agent.key"):
        assert f'"{CREDENTIALS_DIR}/{name}"' in config
    assert '__path__ = "/var/log/*.log"' in config and 'job      = "varlogs"' in config
    assert 'source_labels = ["__journal__systemd_unit"]' in config and 'target_label  = "unit"' in config
    assert 'source_labels = ["__journal_priority_keyword"]' in config and 'target_label  = "level"' in config
    assert re.search(r"loki\.source\.journal \"journal\" \{.*forward_to\s+= \[loki\.write\.lokistack\.receiver\]",
                     config, re.DOTALL)


@pytest.mark.parametrize("host", HOSTS)
def test_the_agent_certificate_handed_to_alloy_is_this_hosts(example, host):
    dropin = files_of(example, host)[f"{STAGE_DIR}/10-lokistack.conf"][1].value
    assert f"LoadCredential=agent.pem:{AGENT_CERT_FILE}" in dropin and f"LoadCredential=ca.pem:{CA_FILE}" in dropin
    assert SERVER_KEY_FILE not in dropin, "Alloy must not get the host's server key"
    cert = files_of(example, host)[AGENT_CERT_FILE][1].value
    assert f"agent {host}.home.arpa" in load(cert).subject.rfc4514_string(), f"{host}: someone else's certificate"


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_the_dropin_passes_systemd_analyze_verify(tmp_path):
    dropin = render_dropin(cert_file=AGENT_CERT_FILE, key_file="/etc/lokistack/tls/agent.key", ca_file=CA_FILE,
                           metrics_client_ca_file=METRICS_CLIENT_CA_FILE)
    proc = verify_dropin(tmp_path, "alloy.service", PACKAGED_UNIT, dropin, "/usr/bin/alloy")
    assert proc.returncode == 0 and proc.stderr.strip() == "", f"alloy drop-in: {proc.stderr}"
    broken = verify_dropin(tmp_path, "alloy.service", PACKAGED_UNIT,
                           dropin.replace("PrivateTmp=yes", "PrivateTmp=maybe"), "/usr/bin/alloy")
    assert "Failed to parse boolean value" in broken.stderr, "systemd-analyze missed a bad value"
    for directive in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=/var/lib/alloy"):
        assert directive in dropin


@pytest.mark.real_tools
def test_setup_and_apply(example, tmp_path):
    tool = require_tool("shellcheck")
    monitor = example.engine.monitor
    setup, apply = monitor.find(CMD, "agent-s3-setup"), monitor.find(CMD, "agent-s3-apply")
    assert "install_pinned alloy" in setup.plain_inputs["stdin"] and "ALLOY_VERSION=1.21.2" in (
        setup.plain_inputs["stdin"])
    assert "for group in adm systemd-journal" in setup.plain_inputs["stdin"]
    stdin = apply.plain_inputs["stdin"]
    assert stdin.index("alloy validate") < stdin.index('place "${STAGE_DIR}/config.alloy"') < stdin.index(
        'systemctl restart "$UNIT"'), "the config must be checked before it replaces the running one"
    assert "is-active --quiet" in stdin.split('systemctl restart "$UNIT"')[1], "the apply must check Alloy came back"
    assert monitor.find(CMD, "s3-tls-install").urn in setup.dependencies
    assert monitor.find(CMD, "objectstore-setup").urn in setup.dependencies, "two package steps at once on s3"
    for name, text in (("setup", setup.plain_inputs["stdin"]), ("apply", stdin)):
        script = tmp_path / f"{name}.sh"
        script.write_text(text)
        proc = subprocess.run([tool, "-s", "bash", "-S", "style", str(script)], capture_output=True, text=True,
                              timeout=60, check=False)
        assert proc.returncode == 0, f"shellcheck alloy {name}:\n{proc.stdout}"


def test_an_extra_host_gets_an_agent_over_a_pinned_connection():
    result = run_program("homelab", read_stack_config("homelab", overrides={
        "agentExtraHosts": [f"backup-01 192.168.50.60 {EXTRA_KEY} root@backup-01"]}))
    monitor = result.engine.monitor
    tls = monitor.find(CMD, "backup-01-tls-install")
    conn = tls.plain_inputs["connection"]
    assert (conn["host"], conn["user"], conn["hostKey"]) == ("192.168.50.60", "ops",
                                                              f"{EXTRA_KEY} root@backup-01")
    assert engine.is_secret(tls.inputs["connection"])
    files = files_of(result, "backup-01")
    assert SERVER_KEY_FILE not in files, "an extra host has no server certificate of the stack"
    ca = result.resolved["output:caCertificate"].value
    assert client_verification_error(ca, files[AGENT_CERT_FILE][1].value) is None
    assert 'host     = "backup-01"' in files[f"{STAGE_DIR}/config.alloy"][1].value
    assert tls.urn in monitor.find(CMD, "agent-backup-01-setup").dependencies


def test_alloy_reports_nothing_to_grafana_labs(example):
    defaults = files_of(example, "s3")[f"{STAGE_DIR}/alloy.defaults"][1].value
    assert 'CONFIG_FILE="/etc/alloy/config.alloy"' in defaults, f"s3: {defaults}"
    args = re.search(r'^CUSTOM_ARGS="([^"]*)"$', defaults, re.MULTILINE)
    assert args and "--disable-reporting" in args.group(1).split(), f"s3: Alloy reports usage: {defaults}"
    apply = example.engine.monitor.find(CMD, "agent-s3-apply").plain_inputs["stdin"]
    assert "DEFAULTS_FILE=/etc/default/alloy" in apply


@pytest.mark.parametrize("host", HOSTS)
def test_the_metrics_endpoint_is_tls_on_the_hosts_address_for_prometheus_only(example, host):
    """Alloy's HTTP server listens on the host's address (not loopback, not every address) and
    serves TLS with the host's agent certificate, which is valid there; its client pool is the CA
    of Prometheus' certificates (delivered with the TLS files), which Prometheus' certificate
    chains to and no other certificate of the stack does (not the CA that signed every client)."""
    files = files_of(example, host)
    address = example.resolved["output:hosts"].value[host]["address"]
    defaults = files[f"{STAGE_DIR}/alloy.defaults"][1].value
    assert f"--server.http.listen-addr={address}:{METRICS_PORT}" in defaults, f"{host}: {defaults}"
    ca = example.resolved["output:caCertificate"].value
    agent_cert = files[AGENT_CERT_FILE][1].value
    assert server_verification_error(ca, agent_cert, address) is None, f"{host}: agent certificate not for {address}"
    pool = files[METRICS_CLIENT_CA_FILE][1].value
    prometheus = example.resolved["output:prometheusCertificate"].value
    assert client_verification_error(pool, prometheus) is None, (
        f"{host}: Prometheus' certificate does not chain to {METRICS_CLIENT_CA_FILE}")
    for other in (example.resolved["output:operatorCertificate"].value, agent_cert):
        assert client_verification_error(pool, other) is not None, (
            f"{host}: {METRICS_CLIENT_CA_FILE} lets in a certificate that is not Prometheus'")
    config = config_of(example, host)
    http = re.search(r"^http \{\n  tls \{\n(.*?)\n  \}\n\}", config, re.MULTILINE | re.DOTALL)
    assert http, f"{host}: no http {{ tls {{ ... }} }} block in config.alloy"
    tls = dict(re.findall(r'^\s+(\w+)\s+= "([^"]*)"$', http.group(1), re.MULTILINE))
    assert tls == {"cert_file": f"{CREDENTIALS_DIR}/agent.pem", "key_file": f"{CREDENTIALS_DIR}/agent.key",
                   "client_ca_file": f"{CREDENTIALS_DIR}/metrics-client-ca.pem",
                   "client_auth_type": "RequireAndVerifyClientCert", "min_version": "TLS12"}, f"{host}: {tls}"
    dropin = files[f"{STAGE_DIR}/10-lokistack.conf"][1].value
    assert f"LoadCredential=metrics-client-ca.pem:{METRICS_CLIENT_CA_FILE}" in dropin, f"{host}: {dropin}"
