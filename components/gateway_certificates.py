"""The client certificates the Loki gateways take: those the stack issues now, and no revoked one.

The TLS provider makes no CRL, and a certificate of the stack's CA keeps its role until it ends
(a year): an extra host taken out of ``agentExtraHosts`` could push on as any host, a renewed
certificate's predecessor (a lost operator key) would stay an admin. So each gateway keeps the
serials of the stack CA's client certificates in the state (``render_list``), in a file its
config includes in an nginx ``map`` of ``$ssl_client_serial``: a certificate of the CA whose serial
is not there gets no role, and with no role every path is 403. Prometheus' certificates have a CA
of their own that signs nothing else (``stack.certificates``): the gateways take each until it
ends, so that a renewal never blinds a scrape before the operator exports the new one. A serial in
``certRevokedSerials`` is refused whichever CA issued it.

A renewal must not refuse a client between its switch and the gateways' (an agent pushes with its
old certificate until its Alloy restarts; nginx forwards with a node's old server certificate
until it reloads; Grafana's data source until the API updates it; the VIP's check reads its files
at each run). So each Loki node has two steps around every client's switch:

- ``admit``: before any host's TLS files, any Alloy, the data source change: the list becomes the
  current serials *and* those it held (nothing is refused yet, the new ones are taken);
- ``settle``: after all of them: the list becomes the current serials alone (the superseded and
  the removed get 403).

Both reload nginx only where its gateway config includes the list (not before the gateway is
installed, nor under an earlier version's config), without losing a request on a kept-alive
connection to the VIP (``vip_reload_gateway``). A run cut between the two leaves the old serials
taken (the safe side) until a later run's ``settle``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_command as command
from cryptography import x509

from components.delivery import FileDelivery, FileDeliveryArgs, after, after_all
from components.hostfile import HostFile
from components.loki_gateway import CERTIFICATE_LIST as LIST_FILE
from components.loki_gateway import CONFIG_FILE as GATEWAY_CONFIG
from components.loki_gateway import STAGE_DIR, UNIT
from components.pki import nginx_serial
from components.scripts import render_script
from components.vip_handover import VipHandover

RESOURCE_TYPE = "lokistack:loki:GatewayCertificates"
STAGED_LIST = f"{STAGE_DIR}/certificates.map"
"""The current list, delivered before ``admit``; ``settle`` puts it in place as it is."""
ADMIT, SETTLE = "admit", "settle"


def certificate_serial(pem: str) -> str:
    return nginx_serial(x509.load_pem_x509_certificate(pem.encode()).serial_number)


ISSUED, REVOKED = 1, 2
"""The values of the gateway's ``$lokistack_issued`` (``components.loki_gateway``)."""


def render_list(certificates: Mapping[str, str], revoked: Sequence[str] = ()) -> str:
    """The map file: each certificate (name -> PEM) by its serial, as the gateway takes it
    (``ISSUED``), but the revoked; then each revoked serial (``REVOKED``), first in ``admit``."""
    refused = set(revoked)
    lines = ["# loki-stack: the client certificates of the stack's CA that the gateway takes (1) and the",
             "# serials it refuses whoever issued them (2), by serial as nginx shows it."]
    lines += [f'"{serial}" {REVOKED};  # revoked (certRevokedSerials)' for serial in sorted(refused)]
    for name in sorted(certificates):
        serial = certificate_serial(certificates[name])
        if serial not in refused:
            lines.append(f'"{serial}" {ISSUED};  # {name}')
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class GatewayNode:
    name: str
    connection: pulumi.Input[Any]
    """Its SSH connection, before its TLS files: ``admit`` runs first of all on the node."""


@dataclass(frozen=True)
class GatewayCertificatesArgs:
    nodes: Sequence[GatewayNode]
    certificates: Mapping[str, pulumi.Input[str]]
    """Every client certificate of the stack's CA (name -> PEM) the gateways are to take."""
    revoked: Sequence[str]
    """Serials (as nginx shows them) refused whatever else holds."""
    handover: VipHandover
    """nginx reloads on the VIP holder as the gateway's apply does (``vip_reload_gateway``)."""
    tls: Mapping[str, str]
    """CA_FILE, CERT_FILE, KEY_FILE on the node (the handover asks the gateways who holds the VIP)."""


class GatewayCertificates(pulumi.ComponentResource):
    """``admit`` and ``settle`` on every Loki node; ``settle_after`` orders the ``settle`` steps
    after every client's switch (they are made there, once the program knows those steps)."""

    admits: dict[str, command.remote.Command]
    settles: dict[str, command.remote.Command]
    list_content: pulumi.Output[str]

    def __init__(self, name: str, args: GatewayCertificatesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(RESOURCE_TYPE, name, None, opts)
        self._name, self._args = name, args
        self._child = pulumi.ResourceOptions(parent=self)
        names = sorted(args.certificates)
        revoked = list(args.revoked)
        self.list_content = pulumi.Output.all(*[args.certificates[n] for n in names]).apply(
            lambda pems: render_list(dict(zip(names, pems, strict=True)), revoked))
        self.admits, self.settles, self._staged = {}, {}, {}
        self.host_files: list[HostFile] = []
        for node in args.nodes:
            staged = FileDelivery(f"{name}-{node.name}-staged", FileDeliveryArgs(
                host=node.name, connection=node.connection,
                files=[HostFile(host=node.name, path=STAGED_LIST, content=self.list_content, mode="0600")]),
                opts=self._child)
            self._staged[node.name] = staged
            self.host_files += staged.host_files
            self.admits[node.name] = self._step(node, ADMIT, after(node.connection, staged.command), staged)

    def _script(self, node: str, mode: str) -> str:
        return render_script("gateway-certificates.sh", {
            "MODE": mode, "STAGED": STAGED_LIST, "LIST_FILE": LIST_FILE, "GATEWAY_CONFIG": GATEWAY_CONFIG,
            "UNIT": UNIT, **self._args.tls,
            **self._args.handover.script_parameters(node)},
            libraries=["lib-safe-write.sh", "lib-place.sh", "lib-wait-ready.sh", "lib-gateway-port.sh", "lib-clock.sh",
                       "lib-vip-handover.sh"])

    def _step(self, node: GatewayNode, mode: str, connection: pulumi.Input[Any],
              staged: FileDelivery) -> command.remote.Command:
        script = self._script(node.name, mode)
        return command.remote.Command(
            f"{self._name}-{node.name}-{mode}", connection=connection, create="sudo bash -s", stdin=script,
            triggers=[staged.digest, script], opts=self._child)

    def settle_after(self, steps: Sequence[pulumi.CustomResource]) -> None:
        """The ``settle`` step of every node (``settles``), after ``steps`` (every client's switch)."""
        for node in self._args.nodes:
            connection = after_all(after(node.connection, self.admits[node.name]), steps)
            self.settles[node.name] = self._step(node, SETTLE, connection, self._staged[node.name])
        self.register_outputs({})
