"""Grafana: the OSS server on its VM over HTTPS, and, through the Grafana API, the Loki data
source (the VIP, our CA, Grafana's client certificate), a folder and the two dashboards.

``GrafanaServer`` works over SSH: setup (Grafana's repository with a pinned key fingerprint, the
pinned package, held), then grafana.ini and the TLS files (restart only when one changed), then a
wait until ``/api/health`` answers over HTTPS with the stack's CA. ``GrafanaContent`` is made
with a ``pulumiverse_grafana`` provider the stack builds from the server's outputs.
"""

from __future__ import annotations

import configparser
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_random as random
import pulumiverse_grafana as grafana

from components.dashboards import logs_overview_dashboard, loki_cluster_dashboard
from components.delivery import setup_deliver_wait
from components.grafana_repository import repository_parameters
from components.hostfile import HostFile
from components.monitoring import Signal
from components.scripts import render_script
from components.timeouts import DEFAULT as DEFAULT_TIMEOUTS
from components.timeouts import Timeouts

SERVER_TYPE = "lokistack:grafana:GrafanaServer"
CONTENT_TYPE = "lokistack:grafana:GrafanaContent"
HTTPS_PORT = 3000
UNIT = "grafana-server.service"
CONFIG_FILE = "/etc/grafana/grafana.ini"
TLS_DIR = "/etc/grafana/tls"
ADMIN_USER = "admin"
LOKI_DATASOURCE_UID = "lokistack-loki"
READY_TIMEOUT_S = 180
RESTART = f"systemctl daemon-reload && systemctl enable {UNIT} && systemctl restart {UNIT}"


METRICS_USER = "prometheus"


def grafana_ini(*, fqdn: str, admin_password: str, secret_key: str,
                metrics_password: str) -> dict[str, dict[str, str]]:
    """grafana.ini as sections (https://grafana.com/docs/grafana/latest/setup-grafana/configure-grafana/)."""
    return {
        "server": {
            "protocol": "https", "http_port": str(HTTPS_PORT), "domain": fqdn,
            "root_url": f"https://{fqdn}:{HTTPS_PORT}/",
            "cert_file": f"{TLS_DIR}/grafana.pem", "cert_key": f"{TLS_DIR}/grafana.key",
        },
        "security": {
            "admin_user": ADMIN_USER, "admin_password": admin_password,
            # Grafana's default secret_key is public; it encrypts the data sources' secure fields.
            "secret_key": secret_key,
            "cookie_secure": "true", "cookie_samesite": "strict", "disable_gravatar": "true",
            "strict_transport_security": "true",
        },
        "analytics": {
            "reporting_enabled": "false", "check_for_updates": "false", "check_for_plugin_updates": "false",
            "feedback_links_enabled": "false",
        },
        "users": {"allow_sign_up": "false"},
        # /metrics is public by default; with both set, it asks for this user and password.
        "metrics": {"enabled": "true", "basic_auth_username": METRICS_USER, "basic_auth_password": metrics_password},
        "auth.anonymous": {"enabled": "false"},
    }


def render_grafana_ini(*, fqdn: str, admin_password: str, secret_key: str, metrics_password: str) -> str:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_dict(grafana_ini(fqdn=fqdn, admin_password=admin_password, secret_key=secret_key,
                                 metrics_password=metrics_password))
    out = io.StringIO()
    out.write("; Written by loki-stack. admin_password applies when Grafana first starts.\n")
    parser.write(out)
    return out.getvalue()


@dataclass(frozen=True, kw_only=True)
class GrafanaServerArgs:
    hostname: str
    fqdn: str
    connection: pulumi.Input[command.remote.ConnectionArgsDict]
    """SSH connection to the ready host, after its TLS files are in place (secret)."""
    version: str
    """Pinned Grafana release."""
    cert_pem: pulumi.Input[str]
    key_pem: pulumi.Input[str]
    """Grafana's server certificate and key (secret)."""
    ca_file: str
    """Path of the stack's CA on the host (for the health check)."""


class GrafanaServer(pulumi.ComponentResource):
    url: pulumi.Output[str]
    """``https://<fqdn>:3000/``."""
    admin_password: pulumi.Output[str]
    """Generated admin password (secret)."""
    metrics_password: pulumi.Output[str]
    """Generated password of ``/metrics`` for the user ``prometheus`` (secret)."""
    ready: command.remote.Command
    """Exists once ``/api/health`` answered; depend on it to use the API."""
    setup: command.remote.Command
    """The step that installs packages on the host (the host's next package step waits for it)."""
    host_files: list[HostFile]

    def __init__(self, name: str, args: GrafanaServerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(SERVER_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        password = random.RandomPassword(f"{name}-admin-password", length=32, special=False, opts=child)
        secret_key = random.RandomPassword(f"{name}-secret-key", length=40, special=False, opts=child)
        metrics_password = random.RandomPassword(f"{name}-metrics-password", length=32, special=False, opts=child)
        self.admin_password = pulumi.Output.secret(password.result)
        self.metrics_password = pulumi.Output.secret(metrics_password.result)
        ini: pulumi.Output[str] = pulumi.Output.all(password.result, secret_key.result, metrics_password.result).apply(
            lambda s: render_grafana_ini(fqdn=args.fqdn, admin_password=s[0], secret_key=s[1], metrics_password=s[2]))
        setup_script = render_script("grafana-setup.sh", {
            "GRAFANA_VERSION": args.version, "TLS_DIR": TLS_DIR, **repository_parameters(),
        }, libraries=["lib-apt.sh"])
        owned = {"owner": "root", "group": "grafana", "mode": "0640"}  # readable by Grafana, written by root only
        files = [
            HostFile(host=args.hostname, path=CONFIG_FILE, content=pulumi.Output.secret(ini), owner="root",
                     group="grafana", mode="0640"),
            HostFile(host=args.hostname, path=f"{TLS_DIR}/grafana.pem", content=args.cert_pem, **owned),
            HostFile(host=args.hostname, path=f"{TLS_DIR}/grafana.key", content=args.key_pem, **owned),
        ]
        wait_script = render_script("wait-https-ready.sh", {
            "URL": f"https://{args.fqdn}:{HTTPS_PORT}/api/health", "CA_FILE": args.ca_file,
            "TIMEOUT_S": READY_TIMEOUT_S, "UNIT": UNIT}, libraries=["lib-wait-ready.sh"])
        steps = setup_deliver_wait(name, host=args.hostname, connection=args.connection, setup_script=setup_script,
                                   files=files, restart=RESTART, wait_script=wait_script, parent=self)
        self.ready = steps.ready
        self.setup = steps.setup
        self.url = pulumi.Output.from_input(f"https://{args.fqdn}:{HTTPS_PORT}/")
        self.host_files = steps.delivery.host_files
        self.register_outputs({"url": self.url, "admin_password": self.admin_password,
                               "metrics_password": self.metrics_password})


@dataclass(frozen=True, kw_only=True)
class GrafanaContentArgs:
    loki_url: str
    """Loki through the VIP."""
    ca_cert_pem: pulumi.Input[str]
    client_cert_pem: pulumi.Input[str]
    client_key_pem: pulumi.Input[str]
    """Grafana's client certificate for Loki (the key is secret)."""
    signals: Mapping[str, Signal]
    """What the stack's alert rules watch (``components.monitoring``): the cluster dashboard draws them."""
    timeouts: Timeouts = DEFAULT_TIMEOUTS
    """The data source waits longer than the gateway (``components.timeouts``)."""


class GrafanaContent(pulumi.ComponentResource):
    """The Loki data source, the folder and the dashboards. Give it the Grafana provider."""

    datasource_uid: pulumi.Output[str]

    def __init__(self, name: str, args: GrafanaContentArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(CONTENT_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        secure: pulumi.Output[str] = pulumi.Output.all(
            args.ca_cert_pem, args.client_cert_pem, args.client_key_pem).apply(
            lambda p: json.dumps({"tlsCACert": p[0], "tlsClientCert": p[1], "tlsClientKey": p[2]}))
        secret_json: pulumi.Output[str] = pulumi.Output.secret(secure)
        datasource = grafana.oss.DataSource(
            f"{name}-loki", type="loki", name="Loki", uid=LOKI_DATASOURCE_UID, url=args.loki_url,
            access_mode="proxy", is_default=True,
            json_data_encoded=json.dumps({"tlsAuth": True, "tlsAuthWithCACert": True, "maxLines": 1000,
                                          "timeout": args.timeouts.grafana_s}),
            secure_json_data_encoded=secret_json, opts=child)
        folder = grafana.oss.Folder(f"{name}-folder", title="loki-stack", uid="lokistack", opts=child)
        boards = {"cluster": loki_cluster_dashboard(args.signals), "logs": logs_overview_dashboard(LOKI_DATASOURCE_UID)}
        for key, board in boards.items():
            grafana.oss.Dashboard(f"{name}-{key}-dashboard", config_json=json.dumps(board, sort_keys=True),
                                  folder=folder.uid, overwrite=True,
                                  opts=pulumi.ResourceOptions(parent=self, depends_on=[datasource]))
        self.datasource = datasource
        """What Grafana's data source reads with: its client certificate changes here."""
        self.datasource_uid = datasource.uid
        self.register_outputs({"datasource_uid": self.datasource_uid})
