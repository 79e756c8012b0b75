"""LokiCluster: Loki 3.7 on every Loki node, restarted one node at a time.

Per node, over SSH: ``setup`` (data disk, Grafana's repository with a pinned key fingerprint,
the pinned ``loki`` package, held), then ``FileDelivery`` of the config, the env file with the S3
keys and the systemd drop-in into a root-only staging directory; ``runtime``: the limits Loki
reloads without a restart (``components.loki_limits``), checked, placed and proved reloaded; then
``apply``: the staged config is checked with ``loki -verify-config``, put in place, and if anything
changed the node hands the VIP over (``components.vip_handover``), Loki restarts, and the step ends
when the node answers ``/ready`` over HTTPS with a client certificate and a ready node holds the
VIP. Each node's apply starts only after the previous node's has finished, from the lowest VRRP
priority to the highest: a rolling restart that keeps quorum and moves the VIP once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from posixpath import dirname
from typing import Any

import pulumi
import pulumi_command as command

from components import firewall as firewall_rules
from components import loki_gateway as gateway
from components.delivery import FileDelivery, FileDeliveryArgs, after, after_value
from components.disk_arrival import render_path_unit, render_starter_unit, unit_names
from components.grafana_repository import repository_parameters
from components.hostfile import HostFile
from components.loki_config import (
    CREDENTIALS_DIR,
    HTTP_PORT,
    LOKI_LOCAL_PORT,
    SERVICE_USER,
    LokiConfigSpec,
    render_env_file,
    render_loki_config,
)
from components.loki_limits import RELOAD_TIMEOUT_S, RUNTIME_FILE, TENANT, render_runtime_config
from components.loki_ring import ring_parameters
from components.scripts import render_script
from components.step_names import host_step
from components.systemd import hardening
from components.vip_handover import VipHandover, roll_order

RESOURCE_TYPE = "lokistack:loki:LokiCluster"
UNIT = "loki.service"
LOKI_BINARY = "/usr/bin/loki"
CONFIG_FILE = "/etc/loki/config.yml"
ENV_FILE = "/etc/loki/lokistack.env"
DROPIN_FILE = "/etc/systemd/system/loki.service.d/10-lokistack.conf"
GUARD_FILE = "/etc/systemd/system/loki.service.d/00-lokistack-guard.conf"
"""Made by the setup before the package: no Loki start until the stack's env file exists."""
STAGE_DIR = "/etc/loki/lokistack-staged"
"""Delivered files wait here (root only) until ``loki -verify-config`` accepted them."""
GATEWAY_WAIT_S = 300
"""How long the Loki apply waits for the gateway before it stops an earlier version's Loki that holds
the gateway's port (the upgrade from before the gateway: the gateway's steps run beside Loki's)."""
STARTED_RECORD = "/run/lokistack/loki-started-with"
"""The SHA-256 of the config, env file and drop-in as the running Loki started with them, written by
the unit itself before each start (also a restart systemd makes on its own): what the apply step
compares with what should run. In /run: a boot starts Loki afresh, and writes it anew."""
RECORD_START = (f"ExecStartPre=-+/bin/sh -c 'umask 022 && mkdir -p {dirname(STARTED_RECORD)} && sha256sum "
                f"{CONFIG_FILE} {ENV_FILE} {DROPIN_FILE} | cut -d \" \" -f 1 >{STARTED_RECORD}'")
STOP_TIMEOUT_S = 120
"""The packaged unit's own bound (``TimeoutSec=120``), stated in the drop-in so that it stays."""
READY_TIMEOUT_S = 300  # a fresh ingester waits min_ready_duration (15 s), a WAL replay takes longer


def render_start_guard() -> str:
    """A drop-in the setup writes before the package is installed: the package's post-install
    script restarts loki.service itself (policy-rc.d does not stop it), which would run its example
    config; until the apply step has placed the stack's env file, the unit's condition fails and
    systemd skips the start."""
    return f"""# loki-stack: Loki starts only once the stack's config is in place (the package's
# post-install script restarts it directly, with its example config).
[Unit]
ConditionPathExists={ENV_FILE}
"""


def render_dropin(*, data_dir: str, cert_file: str, key_file: str, ca_file: str) -> str:
    """systemd drop-in for the packaged loki.service: our flags, the env file, the TLS files as
    credentials (readable only by the service), and hardening."""
    return f"""# loki-stack: flags, S3 keys, TLS credentials and hardening for the packaged loki.service.
[Unit]
# The data disk mounts with nofail: Loki must not start on the root disk without it.
RequiresMountsFor={data_dir}
# Nor without the firewall's rules: after their unit, and checked at each start below. (Not
# Requires=: a restart of the firewall would restart Loki with it, outside any roll.)
Wants={firewall_rules.UNIT}
After={firewall_rules.UNIT}

[Service]
# What this start reads, for the apply step to compare with what should run (as root: "+"; a
# failure here only costs one more restart later: "-").
{RECORD_START}
{firewall_rules.LOADED_CHECK}
ExecStart=
ExecStart={LOKI_BINARY} -config.file={CONFIG_FILE} -config.expand-env=true -target=all
EnvironmentFile={ENV_FILE}
LoadCredential=server.pem:{cert_file}
LoadCredential=server.key:{key_file}
LoadCredential=ca.pem:{ca_file}
User={SERVICE_USER}
Group={SERVICE_USER}
LimitNOFILE=65536
# A stop flushes the ingester's chunks to the object store, leaves the rings and waits for peers
# to drop their gRPC streams (1.4-9.6 s measured); in-flight queries end within Loki's query
# timeout (1m). Past this bound systemd kills Loki: what was not flushed is still in the WAL and on
# the other replicas, and is replayed at the next start.
TimeoutStopSec={STOP_TIMEOUT_S}
{hardening(data_dir)}"""


@dataclass(frozen=True, kw_only=True)
class LokiHost:
    name: str
    """Host name; must be a node of the config spec."""
    fqdn: str
    connection: pulumi.Input[command.remote.ConnectionArgsDict]
    """SSH connection to the ready host, after its TLS files are in place (secret)."""
    tls_digest: pulumi.Input[str]
    """Digest of the host's TLS files: a renewed certificate restarts Loki (credentials are read at start)."""


@dataclass(frozen=True, kw_only=True)
class LokiClusterArgs:
    config: LokiConfigSpec
    """What every node's config says."""
    hosts: Sequence[LokiHost]
    """The nodes' hosts."""
    version: str
    """Pinned Loki package version."""
    data_device: str
    """Device path of each node's data disk."""
    s3_access_key: pulumi.Input[str]
    s3_secret_key: pulumi.Input[str]
    """Loki's S3 keys (secret): into the root-only env file."""
    tls_cert_file: str
    tls_key_file: str
    tls_ca_file: str
    """Host paths of the node's certificate, key and the CA (handed to Loki as credentials)."""
    handover: VipHandover
    """The VIP in front of the nodes: a node hands it over before its Loki restarts, and the nodes
    roll from the lowest VRRP priority to the highest (``components.vip_handover``)."""
    roll_after: pulumi.Input[Any] | None = None
    """A value every apply waits for, with the resources behind it: keepalived's steps on every node
    (``VirtualIp.settled``), so that no keepalived reloads during a handover and a new node's
    keepalived starts before its Loki (in FAULT: ``keepalived-apply.sh``)."""


class LokiCluster(pulumi.ComponentResource):
    """Loki on every node, applied in order."""

    node_urls: pulumi.Output[dict[str, str]]
    """Host name -> ``https://<fqdn>:3100``."""
    applies: list[command.remote.Command]
    """The per-node apply steps, in rollout order (each waits for the one before)."""
    setups: dict[str, command.remote.Command]
    """Host name -> the step that installs packages there (the host's next package step waits for it)."""
    host_files: list[HostFile]

    def __init__(self, name: str, args: LokiClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(RESOURCE_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        rendered: pulumi.Output[str] = pulumi.Output.all(args.s3_access_key, args.s3_secret_key).apply(
            lambda keys: render_env_file(keys[0], keys[1]))
        env_file: pulumi.Output[str] = pulumi.Output.secret(rendered)
        dropin = render_dropin(data_dir=args.config.data_dir, cert_file=args.tls_cert_file,
                               key_file=args.tls_key_file, ca_file=args.tls_ca_file)
        runtime = render_runtime_config(args.config.limits)
        rules = firewall_rules.render_rules([n.address for n in args.config.nodes])
        tls = {"CA_FILE": args.tls_ca_file, "CERT_FILE": args.tls_cert_file, "KEY_FILE": args.tls_key_file}
        runtime_script = render_script("loki-limits-apply.sh", {
            "STAGED": f"{STAGE_DIR}/runtime.yml", "STAGED_CONFIG": f"{STAGE_DIR}/config.yml",
            "STAGED_ENV": f"{STAGE_DIR}/lokistack.env", "RUNTIME_FILE": RUNTIME_FILE, "TENANT": TENANT, "UNIT": UNIT,
            "LOKI_URL": f"https://127.0.0.1:{LOKI_LOCAL_PORT}", "TIMEOUT_S": RELOAD_TIMEOUT_S, **tls,
        }, libraries=["lib-safe-write.sh", "lib-place.sh", "lib-clock.sh"])
        self.applies = []
        self.setups = {}
        self.host_files = []
        hosts = {h.name: h for h in args.hosts}
        order = roll_order(list(hosts), args.handover.priorities)
        disk_path_unit, disk_starter_unit = unit_names(UNIT)
        previous: command.remote.Command | None = None
        firewalls: dict[str, FileDelivery] = {}
        staged_by_host: dict[str, tuple[FileDelivery, command.remote.Command, str]] = {}
        for host in (hosts[n] for n in order):
            setup_script = render_script("loki-setup.sh", {
                "DATA_DEVICE": args.data_device, "DATA_DIR": args.config.data_dir, "LOKI_VERSION": args.version,
                "STAGE_DIR": STAGE_DIR, "GUARD_FILE": GUARD_FILE, "GUARD": render_start_guard(),
                "DISK_PATH_UNIT": disk_path_unit, "DISK_PATH_CONTENT": render_path_unit(UNIT, args.data_device),
                "DISK_STARTER_UNIT": disk_starter_unit, "DISK_STARTER_CONTENT": render_starter_unit(UNIT),
                **repository_parameters(),
            }, libraries=["lib-apt.sh", "lib-data-disk.sh", "lib-users.sh"])
            setup = command.remote.Command(host_step(name, host.name, "setup"), connection=host.connection,
                                           create="sudo bash -s", stdin=setup_script, triggers=[setup_script],
                                           opts=child)
            self.setups[host.name] = setup
            files = [
                HostFile(host=host.name, path=f"{STAGE_DIR}/config.yml", mode="0600",
                         content=render_loki_config(args.config, host.name)),
                HostFile(host=host.name, path=f"{STAGE_DIR}/lokistack.env", mode="0600", content=env_file),
                HostFile(host=host.name, path=f"{STAGE_DIR}/10-lokistack.conf", mode="0600", content=dropin),
            ]
            # The cluster ports closed to all but the Loki nodes before Loki first starts.
            firewall = FileDelivery(host_step(name, host.name, "firewall"), FileDeliveryArgs(
                host=host.name, connection=after(host.connection, setup), files=[
                    HostFile(host=host.name, path=firewall_rules.RULES_FILE, content=rules),
                    HostFile(host=host.name, path=firewall_rules.UNIT_FILE, content=firewall_rules.render_unit()),
                    HostFile(host=host.name, path=firewall_rules.NFTABLES_DROPIN_FILE,
                             content=firewall_rules.render_nftables_dropin()),
                ], then=firewall_rules.APPLY), opts=child)
            staged = FileDelivery(host_step(name, host.name, "staged"), FileDeliveryArgs(
                host=host.name, connection=after(host.connection, firewall.command), files=files), opts=child)
            # The limits Loki reloads: their own delivery and step, so that a change restarts nothing.
            # Before the node's apply: Loki does not start without the file.
            runtime_staged = FileDelivery(host_step(name, host.name, "runtime"), FileDeliveryArgs(
                host=host.name, connection=after(host.connection, staged.command), files=[
                    HostFile(host=host.name, path=f"{STAGE_DIR}/runtime.yml", mode="0600", content=runtime)]),
                opts=child)
            runtime_apply = command.remote.Command(
                host_step(name, host.name, "runtime-apply"), connection=after(host.connection, runtime_staged.command),
                create="sudo bash -s", stdin=runtime_script, triggers=[runtime_staged.digest, runtime_script],
                opts=child)
            firewalls[host.name] = firewall
            staged_by_host[host.name] = (staged, runtime_apply, setup_script)
            self.host_files += firewall.host_files + staged.host_files + runtime_staged.host_files
        # A node's Loki starts (or restarts) only once every node's firewall lets every node in:
        # a node added joins memberlist through the others, which must let it in first.
        every_firewall = [f.command for f in firewalls.values()]
        for host in (hosts[n] for n in order):
            staged, runtime_apply, setup_script = staged_by_host[host.name]
            apply_script = render_script("loki-apply.sh", {
                "STAGE_DIR": STAGE_DIR, "CONFIG_FILE": CONFIG_FILE, "ENV_FILE": ENV_FILE, "DROPIN_FILE": DROPIN_FILE,
                # Loki itself, on loopback (not through the gateway, which may not be there yet).
                "UNIT": UNIT, "READY_URL": f"https://127.0.0.1:{LOKI_LOCAL_PORT}/ready",
                "BUILDINFO_URL": f"https://127.0.0.1:{LOKI_LOCAL_PORT}/loki/api/v1/status/buildinfo",
                "TIMEOUT_S": READY_TIMEOUT_S, "CREDENTIALS_DIR": CREDENTIALS_DIR, "STARTED_RECORD": STARTED_RECORD,
                **tls, **args.handover.script_parameters(host.name),
                "GATEWAY_CONFIG": gateway.CONFIG_FILE, "GATEWAY_UNIT": gateway.UNIT,
                "GATEWAY_WAIT_S": GATEWAY_WAIT_S, **gateway.port_check_parameters(),
                **ring_parameters(host.name, {n.name: n.address for n in args.config.nodes}),
            }, libraries=["lib-safe-write.sh", "lib-place.sh", "lib-wait-ready.sh", "lib-clock.sh",
                          "lib-vip-handover.sh", "lib-ring-check.sh", "lib-gateway-port.sh"])
            connection: pulumi.Output[Any] = after(after(host.connection, staged.command), runtime_apply)
            for firewall_step in every_firewall:
                connection = after(connection, firewall_step)
            if previous is not None:  # rolling: only after the previous node is ready again
                connection = after(connection, previous)
            # Every apply, not only the roll's first: where only this node's steps run (a VM created
            # again, a node added), the previous node's apply does not run, and Loki would start
            # before its own keepalived, which would then take the VIP by preemption.
            if args.roll_after is not None:
                connection = after_value(connection, args.roll_after)
            apply = command.remote.Command(host_step(name, host.name, "apply"), connection=connection,
                                           create="sudo bash -s", stdin=apply_script,
                                           triggers=[staged.digest, setup_script, host.tls_digest], opts=child)
            self.applies.append(apply)
            previous = apply

        self.node_urls = pulumi.Output.from_input({h.name: f"https://{h.fqdn}:{HTTP_PORT}" for h in args.hosts})
        self.register_outputs({"node_urls": self.node_urls})
