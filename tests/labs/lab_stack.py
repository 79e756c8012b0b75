"""The example stack moved into the test range, and how its rendered files run in a test lab.

``lab_plan()`` runs the real program on the example stack with its addresses moved into
198.18.0.0/24 through its own settings, and returns every host's files and the stack's outputs,
secrets included: what the offline plan writes with ``--show-secrets``. The keepalived helpers
run the rendered ``keepalived.conf`` the way the VMs do, in a host of a ``PrivateNetwork``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components import firewall, loki_gateway
from components.gateway_certificates import STAGED_LIST
from components.loki_config import SERVICE_USER
from components.monitoring import MonitoringSpec
from components.proxmox_vm import USER_DATA_PATH
from components.vip import CHECK_DIR, GATEWAY_CHECK, SCRIPT_USER
from components.vip import STAGE_DIR as VIP_STAGE_DIR
from components.vip_handover import MAINTENANCE_FILE, YIELD_FILE
from offline.plan import read_stack_config, run_program
from offline.rehearsal.settings import (
    CLIENT_ADDRESS,
    LOKI_ADDRESSES,
    OBJECT_STORE_ADDRESS,
    TEST_RANGE,
    VIP,
)
from stack.certificates import AGENT_CERT_FILE, AGENT_KEY_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE, TLS_DIR
from tests.labs.netns import INTERFACE, PrivateNetwork

__all__ = ["CLIENT_ADDRESS", "LOKI_ADDRESSES", "OBJECT_STORE_ADDRESS", "TEST_RANGE", "VIP"]


@dataclass(frozen=True)
class LabPlan:
    files: dict[str, dict[str, str]]
    """Host -> path -> content, secrets shown."""
    outputs: dict[str, Any]
    """Stack output -> value, secrets shown."""
    scripts: dict[str, str]
    """Name of each remote step -> the script it runs (its stdin), secrets shown."""
    identities: dict[str, tuple[str, str]]
    """Role -> a certificate of the stack with that role and its key, as the stack hands them out
    (the operator's and Prometheus' from the outputs, Grafana's from its data source, the others
    from loki-01's files)."""
    monitoring: MonitoringSpec
    """What the scrape jobs reach and the rules select (``components.monitoring``)."""

    def etc_hosts(self, host: str) -> str:
        """The /etc/hosts that cloud-init writes on ``host`` (from its user-data)."""
        user_data = yaml.safe_load(self.files[host][USER_DATA_PATH])
        return next(f["content"] for f in user_data["write_files"] if f["path"] == "/etc/hosts")


def lab_plan(*, renewed: frozenset[str] = frozenset(), **overrides: Any) -> LabPlan:
    """The example stack in the test range, with ``overrides`` (settings by their key); the
    certificates named in ``renewed`` issued again, as a run inside their renewal window does."""
    result = run_program("homelab", read_stack_config("homelab", overrides={**TEST_RANGE, **overrides}),
                         renewed=renewed)
    files: dict[str, dict[str, str]] = {}
    for i, hf in enumerate(result.returned.host_files):
        resolved = result.resolved[f"file:{i}"]
        assert resolved.known, f"{hf.host}:{hf.path} is unknown after an update-mode run"
        files.setdefault(hf.host, {})[hf.path] = resolved.value
    outputs = {k.split(":", 1)[1]: v.value for k, v in result.resolved.items() if k.startswith("output:")}
    datasource = result.engine.monitor.of_type("grafana:oss/dataSource:DataSource")[0].plain_inputs
    reader = json.loads(datasource["secureJsonDataEncoded"])
    node = files[next(iter(LOKI_ADDRESSES))]
    identities = {
        loki_gateway.ROLE_OPERATOR: (outputs["operatorCertificate"], outputs["operatorPrivateKey"]),
        loki_gateway.ROLE_METRICS: (outputs["prometheusCertificate"], outputs["prometheusPrivateKey"]),
        loki_gateway.ROLE_READER: (reader["tlsClientCert"], reader["tlsClientKey"]),
        loki_gateway.ROLE_AGENT: (node[AGENT_CERT_FILE], node[AGENT_KEY_FILE]),
        loki_gateway.ROLE_HEALTH: (node[f"{CHECK_DIR}/client.pem"], node[f"{CHECK_DIR}/client.key"]),
        loki_gateway.ROLE_SERVER: (node[SERVER_CERT_FILE], node[SERVER_KEY_FILE]),
    }
    scripts = {r.name: r.plain_inputs["stdin"] for r in result.engine.monitor.of_type("command:remote:Command")}
    return LabPlan(files=files, outputs=outputs, scripts=scripts, identities=identities,
                   monitoring=result.returned.monitoring)


# --- the Loki gateway (nginx), as a Loki node runs it ---------------------------------------------

GATEWAY_MAIN = """user {user};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{
    worker_connections 512;
}}
http {{
    include {d}/gateway.conf;
}}
"""
"""What Debian's nginx.conf gives the gateway's file (``user www-data;``, an ``http`` block that
includes conf.d), with the pid file and logs in the lab."""


def lab_firewall_rules(files: dict[str, str]) -> str:
    """A node's rendered nftables rules as a lab loads them: where they name Loki's user (``loki``,
    which this machine need not have: nft resolves names when it loads a file) as the one local
    user that opens cluster connections, they name root, as which the labs run Loki."""
    rendered = files[firewall.RULES_FILE]
    named = f'meta skuid != "{SERVICE_USER}"'
    assert rendered.count(named) == 2, f"the rules no longer name Loki's user twice: {rendered}"
    return rendered.replace(named, 'meta skuid != "root"')


def gateway_command(directory: Path, files: dict[str, str]) -> list[str]:
    """nginx in the foreground with a node's rendered gateway config and TLS files in ``directory``,
    and the list of the certificates it takes as its ``settle`` step leaves it (the staged list).

    Only paths differ from the node: the TLS directory, the list and the access log are the lab's."""
    conf = files[f"{loki_gateway.STAGE_DIR}/gateway.conf"]
    (directory / "tls").mkdir(parents=True, exist_ok=True)
    for name in ("ca.pem", "gateway-client-ca.pem", "server.pem", "server.key"):
        (directory / "tls" / name).write_text(files[f"{TLS_DIR}/{name}"])
    (directory / "certificates.map").write_text(files[STAGED_LIST])
    assert f"{TLS_DIR}/" in conf and loki_gateway.ACCESS_LOG in conf and loki_gateway.CERTIFICATE_LIST in conf, (
        "the gateway config names other files")
    (directory / "gateway.conf").write_text(conf.replace(f"{TLS_DIR}/", f"{directory}/tls/")
                                            .replace(loki_gateway.CERTIFICATE_LIST, f"{directory}/certificates.map")
                                            .replace(loki_gateway.ACCESS_LOG, f"{directory}/access.log"))
    (directory / "nginx.conf").write_text(GATEWAY_MAIN.format(user=loki_gateway.NGINX_USER, d=directory))
    return ["nginx", "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(directory / "nginx.conf")]


# --- keepalived, as a Loki node runs it ---------------------------------------------------------


def handover_files(directory: Path) -> dict[str, Path]:
    """Where a lab node's keepalived and its handover keep the VIP handover's track files (the
    nodes share the test machine's /run)."""
    return {MAINTENANCE_FILE: directory / "run" / Path(MAINTENANCE_FILE).name,
            YIELD_FILE: directory / "run" / Path(YIELD_FILE).name}


def prepare_keepalived(directory: Path, files: dict[str, str]) -> None:
    """Put a node's rendered keepalived.conf and its check's TLS files in ``directory``.

    What differs from the rendered file: ``script_user`` is root instead of keepalived_script,
    which the test machine lacks (and keepalived 2.2.7's ``-t`` cannot check as another user);
    the handover's track files are in ``directory`` (``handover_files``)."""
    (directory / "check").mkdir(parents=True, exist_ok=True)
    (directory / "run").mkdir(exist_ok=True)
    conf = files[f"{VIP_STAGE_DIR}/keepalived.conf"]
    assert f"script_user {SCRIPT_USER}" in conf, "the rendered keepalived.conf names no dedicated script user"
    conf = conf.replace(f"script_user {SCRIPT_USER}", "script_user root")
    for path, lab_path in handover_files(directory).items():
        assert f'"{path}"' in conf, f"the rendered keepalived.conf does not track {path}"
        conf = conf.replace(path, str(lab_path))
    (directory / "keepalived.conf").write_text(conf)
    for name in ("ca.pem", "client.pem", "client.key", Path(GATEWAY_CHECK).name):
        (directory / "check" / name).write_text(files[f"{CHECK_DIR}/{name}"])
    (directory / "check" / Path(GATEWAY_CHECK).name).chmod(0o755)


def keepalived_command(directory: Path) -> list[str]:
    """keepalived in the foreground with ``directory``'s config; the check's files sit on a
    private tmpfs over /etc/keepalived in the daemon's own mount namespace."""
    script = (f'mount -t tmpfs -o mode=0755 tmpfs /etc/keepalived && mkdir -p {CHECK_DIR} '
              f'&& cp -p "$1"/check/* {CHECK_DIR}/ '
              f'&& exec keepalived -n -l -D -f "$1/keepalived.conf" -p "$1/k.pid" -r "$1/v.pid" '
              f'-c "$1/c.pid" -b "$1/b.pid"')
    return ["unshare", "-m", "sh", "-c", script, "sh", str(directory)]


def vip_holders(network: PrivateNetwork) -> list[str]:
    """The Loki nodes that have the VIP on their interface now."""
    found = []
    for node in LOKI_ADDRESSES:
        out = network.run(node, ["ip", "-4", "-o", "addr", "show", "dev", INTERFACE], timeout=10).stdout
        if f"inet {VIP}/" in out:
            found.append(node)
    return found
