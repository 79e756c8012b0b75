"""VirtualIp: keepalived on the Loki nodes, moving one address to a node whose Loki is ready.

Every node starts in BACKUP; priorities follow the node order (first node highest), so the VIP's
home is predictable (``components.vrrp_priorities``: the levels and why they are apart). Nothing
else depends on which node holds it: every node serves pushes, queries and the delete API, and the
compactor is elected by Loki's own ring. A node whose gateway does not serve drops below every
healthy node and gives the VIP away at once (with ``nopreempt``, where no backup takes the VIP from
a live master, it enters FAULT instead); a node whose own Loki is not ready keeps the VIP for
``loki_grace_s`` while its gateway answers and another node is ready (the gateway sends what its
Loki cannot take there), so that a crash of Loki, which systemd restarts, moves neither the VIP nor
the connections to it. A planned restart hands the VIP over first (``components.vip_handover``,
through two track files). Unicast VRRP, PASS authentication with a generated 8-character secret (all
VRRPv2 uses), in a root-only file.

keepalived docs: https://keepalived.readthedocs.io/en/latest/configuration_synopsis.html
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import pulumi
import pulumi_command as command
import pulumi_random as random

from components.delivery import FileDelivery, FileDeliveryArgs, after
from components.hostfile import HostFile
from components.loki import UNIT as LOKI_UNIT
from components.loki_config import HTTP_PORT
from components.scripts import render_script
from components.vip_handover import MAINTENANCE_FILE, YIELD_FILE
from components.vip_reboot import APPLY as REBOOT_APPLY
from components.vip_reboot import VipReboot
from components.vrrp_priorities import check_weight, priorities

RESOURCE_TYPE = "lokistack:vip:VirtualIp"
UNIT = "keepalived.service"
CONFIG_FILE = "/etc/keepalived/keepalived.conf"
STAGE_DIR = "/etc/keepalived/lokistack-staged"
CHECK_DIR = "/etc/keepalived/check"
"""The health check's CA and client certificate, readable only by the script user."""
SCRIPT_USER = "keepalived_script"
"""Runs the health check (keepalived's default name for it); never root."""
AUTH_PASS_LENGTH = 8  # VRRPv2 PASS authentication uses exactly 8 characters
READY_URL = f"https://127.0.0.1:{HTTP_PORT}/ready"
GATEWAY_CHECK = f"{CHECK_DIR}/gateway-serves"
"""keepalived's check that the node's gateway serves clients (``templates/vip-gateway-check.sh``)."""

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent.parent / "templates"),
    undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    autoescape=False,  # noqa: S701 (a keepalived config, not HTML)
)


def check_command(timeout: int) -> str:
    return (f"/usr/bin/curl -fsS -m {timeout} -o /dev/null --cacert {CHECK_DIR}/ca.pem "
            f"--cert {CHECK_DIR}/client.pem --key {CHECK_DIR}/client.key {READY_URL}")


def loki_fall(settings: KeepalivedSettings) -> int:
    """Failed /ready checks in a row after which a node whose gateway still serves gives the VIP
    away: ``loki_grace_s`` of them, never fewer than ``check_fall``."""
    return max(settings.check_fall, math.ceil(settings.loki_grace_s / settings.check_interval))


def render_gateway_check(settings: KeepalivedSettings, nodes: Sequence[tuple[str, str]], node: str) -> str:
    """``node``'s check that its gateway serves; ``nodes`` is every (name, address) of the cluster."""
    return render_script("vip-gateway-check.sh", {
        "LOCAL_URL": READY_URL,
        "PEER_URLS": " ".join(f"https://{address}:{HTTP_PORT}/ready" for name, address in nodes if name != node),
        "CA_FILE": f"{CHECK_DIR}/ca.pem", "CERT_FILE": f"{CHECK_DIR}/client.pem", "KEY_FILE": f"{CHECK_DIR}/client.key",
        # Its own gateway, then every peer at once: both within keepalived's timeout (the interval).
        "TIMEOUT_S": f"{settings.check_interval / 2:g}",
    })


@dataclass(frozen=True, kw_only=True)
class VipNode:
    name: str
    address: str
    connection: pulumi.Input[command.remote.ConnectionArgsDict]
    """SSH connection to the ready host, after its TLS files are in place (secret)."""
    client_cert_pem: pulumi.Input[str]
    client_key_pem: pulumi.Input[str]
    """A client certificate of the stack's CA for the /ready check (the key is secret)."""


@dataclass(frozen=True, kw_only=True)
class KeepalivedSettings:
    """What every node's keepalived.conf says, apart from the node's own values."""

    vip: str
    vip_fqdn: str
    prefix_length: int
    interface: str
    """Interface inside the VMs that carries the VIP."""
    router_id: int
    advert_int: int
    nopreempt: bool
    check_interval: int
    check_fall: int
    check_rise: int
    loki_grace_s: int
    """How long a node keeps the VIP while its own Loki is not ready and its gateway serves."""


def render_keepalived_conf(settings: KeepalivedSettings, nodes: Sequence[tuple[str, str]], node: str,
                           auth_pass: str) -> str:
    """keepalived.conf for ``node``; ``nodes`` is every (name, address) of the cluster."""
    if len(auth_pass) != AUTH_PASS_LENGTH:
        raise ValueError(f"VRRP auth_pass must be {AUTH_PASS_LENGTH} characters, got {len(auth_pass)}")
    prios = priorities([n for n, _ in nodes])
    address = dict(nodes)[node]
    return _TEMPLATES.get_template("keepalived.conf.j2").render(
        node=node, address=address, peers=[a for n, a in nodes if n != node], priority=prios[node],
        # With nopreempt no backup takes the VIP from a live master whatever its priority (measured
        # in tests/test_vip_failover.py): a failing check must put the node in FAULT (weight 0).
        check_weight=0 if settings.nopreempt else check_weight(prios),
        check_command=check_command(settings.check_interval), gateway_check=GATEWAY_CHECK,
        loki_fall=loki_fall(settings), loki_grace=settings.loki_grace_s,
        script_user=SCRIPT_USER, auth_pass=auth_pass, vip=settings.vip, vip_fqdn=settings.vip_fqdn,
        prefix_length=settings.prefix_length, interface=settings.interface, router_id=settings.router_id,
        advert_int=settings.advert_int, nopreempt=settings.nopreempt, check_interval=settings.check_interval,
        check_fall=settings.check_fall, check_rise=settings.check_rise, maintenance_file=MAINTENANCE_FILE,
        yield_file=YIELD_FILE,
    )


@dataclass(frozen=True, kw_only=True)
class VirtualIpArgs:
    settings: KeepalivedSettings
    nodes: Sequence[VipNode]
    """Every Loki node."""
    ca_cert_pem: pulumi.Input[str]
    """The stack's CA (the check trusts only it)."""
    reboot: VipReboot
    """Each node's part in the VIP across a reboot (``components.vip_reboot``), installed once keepalived is."""
    apply_after: Sequence[pulumi.CustomResource] = ()
    """Steps every node's keepalived apply waits for: those that may hand the VIP over (a keepalived
    that reloads while another node hands the VIP over misses the election: ``settled``)."""


class VirtualIp(pulumi.ComponentResource):
    """keepalived on every Loki node, holding the VIP on a ready node."""

    address: pulumi.Output[str]
    """The virtual IP."""
    auth_pass: pulumi.Output[str]
    """The generated VRRP password (secret)."""
    host_files: list[HostFile]
    setups: dict[str, command.remote.Command]
    """Node name -> the step that installs keepalived there (the host's next package step waits for it)."""
    settled: list[command.remote.Command]
    """Each node's last step: once all of them ran, no keepalived reloads until the next run. A step
    that hands the VIP over waits for them: a backup whose keepalived reloads just then restarts its
    timers and lets a node of lower priority take the VIP, which the backup then takes from it by
    preemption, with no drain (a push on a kept-alive connection is cut)."""

    @staticmethod
    def _render(settings: KeepalivedSettings, pairs: list[tuple[str, str]], node: str, auth_pass: str) -> str:
        return render_keepalived_conf(settings, pairs, node, auth_pass)

    def __init__(self, name: str, args: VirtualIpArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(RESOURCE_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        password = random.RandomPassword(f"{name}-auth-pass", length=AUTH_PASS_LENGTH, special=False, opts=child)
        self.auth_pass = pulumi.Output.secret(password.result)
        pairs = [(n.name, n.address) for n in args.nodes]
        setup_script = render_script("keepalived-setup.sh", {
            "SCRIPT_USER": SCRIPT_USER, "CHECK_DIR": CHECK_DIR, "STAGE_DIR": STAGE_DIR}, libraries=["lib-apt.sh"])
        apply_script = render_script("keepalived-apply.sh", {
            "STAGED": f"{STAGE_DIR}/keepalived.conf", "TARGET": CONFIG_FILE, "UNIT": UNIT, "LOKI_UNIT": LOKI_UNIT,
            "MAINTENANCE_FILE": MAINTENANCE_FILE})
        self.host_files = []
        self.setups = {}
        self.settled = []
        for node in args.nodes:
            setup = command.remote.Command(f"{name}-{node.name}-setup", connection=node.connection,
                                           create="sudo bash -s", stdin=setup_script, triggers=[setup_script],
                                           opts=child)
            self.setups[node.name] = setup
            conf = self.auth_pass.apply(functools.partial(self._render, args.settings, pairs, node.name))
            checker: dict[str, Any] = {"owner": SCRIPT_USER, "group": SCRIPT_USER}
            files = [
                HostFile(host=node.name, path=f"{STAGE_DIR}/keepalived.conf", content=conf, mode="0600"),
                # keepalived runs a check only if no one but root can change it (enable_script_security).
                HostFile(host=node.name, path=GATEWAY_CHECK, content=render_gateway_check(args.settings, pairs,
                                                                                           node.name), mode="0755"),
                HostFile(host=node.name, path=f"{CHECK_DIR}/ca.pem", content=args.ca_cert_pem, mode="0644",
                         **checker),
                HostFile(host=node.name, path=f"{CHECK_DIR}/client.pem", content=node.client_cert_pem,
                         mode="0644", **checker),
                HostFile(host=node.name, path=f"{CHECK_DIR}/client.key", content=node.client_key_pem,
                         mode="0600", **checker),
            ]
            staged = FileDelivery(f"{name}-{node.name}-staged", FileDeliveryArgs(
                host=node.name, connection=after(node.connection, setup), files=files), opts=child)
            apply_connection = after(node.connection, staged.command)
            for step in args.apply_after:
                apply_connection = after(apply_connection, step)
            apply = command.remote.Command(f"{name}-{node.name}-apply", connection=apply_connection,
                                           create="sudo bash -s", stdin=apply_script,
                                           # keepalived.conf alone: the check's certificate files are read
                                           # by every check run, and a renewal needs no reload.
                                           triggers=[conf.apply(lambda t: hashlib.sha256(t.encode()).hexdigest()),
                                                     apply_script], opts=child)
            reboot = FileDelivery(f"{name}-{node.name}-reboot", FileDeliveryArgs(
                host=node.name, connection=after(node.connection, apply), files=args.reboot.host_files(node.name),
                then=REBOOT_APPLY), opts=child)
            self.settled.append(reboot.command)
            self.host_files += staged.host_files + reboot.host_files
        self.address = pulumi.Output.from_input(args.settings.vip)
        self.register_outputs({"address": self.address, "auth_pass": self.auth_pass})
