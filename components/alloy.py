"""LogAgent: Grafana Alloy on one host, shipping /var/log/*.log and the journal to Loki.

Over SSH: setup (Grafana's repository with a pinned key fingerprint, the pinned ``alloy``
package, held, the alloy user in ``adm`` and ``systemd-journal``), then the config and a systemd
drop-in into a root-only staging directory, then apply (``alloy fmt`` checks the config, changed
files are put in place, Alloy restarts). The TLS files reach Alloy as systemd credentials.

Alloy docs: https://grafana.com/docs/alloy/latest/reference/components/
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2
import pulumi
import pulumi_command as command

from components.delivery import FileDelivery, FileDeliveryArgs, after
from components.grafana_repository import repository_parameters
from components.hostfile import HostFile
from components.scripts import render_script
from components.systemd import hardening

RESOURCE_TYPE = "lokistack:agents:LogAgent"
UNIT = "alloy.service"
CONFIG_FILE = "/etc/alloy/config.alloy"
DROPIN_FILE = "/etc/systemd/system/alloy.service.d/10-lokistack.conf"
DEFAULTS_FILE = "/etc/default/alloy"
"""The packaged unit's EnvironmentFile (a conffile): the config path and Alloy's flags."""
STAGE_DIR = "/etc/lokistack/staged/alloy"
"""Root-only, and not in /etc/alloy, which Alloy's package makes writable by the alloy group."""
DATA_DIR = "/var/lib/alloy"
CREDENTIALS_DIR = "/run/credentials/alloy.service"
METRICS_PORT = 12345
"""Alloy's HTTP server (its default port): its own metrics, over TLS, for Prometheus only."""

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent.parent / "templates"),
    undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
    autoescape=False,  # noqa: S701 (an Alloy config, not HTML)
)


def render_alloy_config(*, host: str, push_url: str) -> str:
    return _TEMPLATES.get_template("config.alloy.j2").render(
        host=host, push_url=push_url, ca_file=f"{CREDENTIALS_DIR}/ca.pem", cert_file=f"{CREDENTIALS_DIR}/agent.pem",
        key_file=f"{CREDENTIALS_DIR}/agent.key", metrics_client_ca_file=f"{CREDENTIALS_DIR}/metrics-client-ca.pem")


def render_defaults(metrics_address: str) -> str:
    """/etc/default/alloy: the packaged unit runs ``alloy run $CUSTOM_ARGS ... $CONFIG_FILE``.
    No usage reports to Grafana Labs (on by default). Alloy's HTTP server (its UI, its API and its
    metrics) listens on the host's address instead of loopback, for Prometheus: the config's
    ``http`` block puts it on TLS and accepts Prometheus' certificates only (their own CA)."""
    return f"""# loki-stack: Alloy's settings for the packaged alloy.service.
CONFIG_FILE="{CONFIG_FILE}"
CUSTOM_ARGS="--disable-reporting --server.http.listen-addr={metrics_address}:{METRICS_PORT}"
# The package restarts Alloy after an upgrade (its post-install script).
RESTART_ON_UPGRADE=true
"""


def render_dropin(*, cert_file: str, key_file: str, ca_file: str, metrics_client_ca_file: str) -> str:
    """systemd drop-in for the packaged alloy.service: the TLS files as credentials, hardening."""
    return f"""# loki-stack: TLS credentials and hardening for the packaged alloy.service.
[Service]
LoadCredential=agent.pem:{cert_file}
LoadCredential=agent.key:{key_file}
LoadCredential=ca.pem:{ca_file}
LoadCredential=metrics-client-ca.pem:{metrics_client_ca_file}
{hardening(DATA_DIR)}"""


@dataclass(frozen=True, kw_only=True)
class LogAgentArgs:
    host: str
    """Host name: the ``host`` label of its logs."""
    connection: pulumi.Input[command.remote.ConnectionArgsDict]
    """SSH connection, after the host's TLS files are in place (secret)."""
    version: str
    """Pinned Alloy release."""
    push_url: str
    """Loki's push endpoint through the VIP."""
    cert_file: str
    key_file: str
    ca_file: str
    """Host paths of the host's agent certificate, key and the stack's CA."""
    metrics_client_ca_file: str
    """Host path of the CA of Prometheus' client certificates: the only issuer the metrics endpoint accepts."""
    metrics_address: str
    """The host's address, where Alloy serves its metrics (its certificate carries it)."""
    tls_digest: pulumi.Input[str]
    """Digest of the host's TLS files: a renewed certificate restarts Alloy (credentials are
    copied at start only)."""


class LogAgent(pulumi.ComponentResource):
    host_files: list[HostFile]

    def __init__(self, name: str, args: LogAgentArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(RESOURCE_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        setup_script = render_script("alloy-setup.sh", {
            "ALLOY_VERSION": args.version, "STAGE_DIR": STAGE_DIR, **repository_parameters(),
        }, libraries=["lib-apt.sh"])
        setup = command.remote.Command(f"{name}-setup", connection=args.connection, create="sudo bash -s",
                                       stdin=setup_script, triggers=[setup_script], opts=child)
        files = [
            HostFile(host=args.host, path=f"{STAGE_DIR}/config.alloy", mode="0600",
                     content=render_alloy_config(host=args.host, push_url=args.push_url)),
            HostFile(host=args.host, path=f"{STAGE_DIR}/10-lokistack.conf", mode="0600",
                     content=render_dropin(cert_file=args.cert_file, key_file=args.key_file, ca_file=args.ca_file,
                                           metrics_client_ca_file=args.metrics_client_ca_file)),
            HostFile(host=args.host, path=f"{STAGE_DIR}/alloy.defaults", mode="0600",
                     content=render_defaults(args.metrics_address)),
        ]
        staged = FileDelivery(f"{name}-staged", FileDeliveryArgs(
            host=args.host, connection=after(args.connection, setup), files=files), opts=child)
        apply_script = render_script("alloy-apply.sh", {
            "STAGE_DIR": STAGE_DIR, "CONFIG_FILE": CONFIG_FILE, "DROPIN_FILE": DROPIN_FILE,
            "DEFAULTS_FILE": DEFAULTS_FILE, "UNIT": UNIT,
        }, libraries=["lib-safe-write.sh", "lib-place.sh"])
        self.apply = command.remote.Command(f"{name}-apply", connection=after(args.connection, staged.command),
                                            create="sudo bash -s", stdin=apply_script,
                                            triggers=[staged.digest, setup_script, args.tls_digest], opts=child)
        self.host_files = staged.host_files
        self.register_outputs({})
