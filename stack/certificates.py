"""Which certificates the stack issues, with which names, and which files each host receives.

The names are derived from the settings by pure functions (tested without Pulumi). Every client
dials by name or by IP, so every name and address a client uses is in the server's certificate;
``localhost``/``127.0.0.1`` serve the hosts' own health checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.hostfile import HostFile
from components.loki_gateway import ROLE_AGENT, ROLE_HEALTH, ROLE_METRICS, ROLE_OPERATOR, ROLE_READER, ROLE_SERVER
from components.pki import ORGANIZATION, Certificate, CertificateAuthority, CertificateAuthorityArgs, CertificateSpec
from stack.settings import Settings, VmSettings

TLS_DIR = "/etc/lokistack/tls"
"""Where every host keeps the stack's CA, its server certificate and its agent certificate."""
CA_FILE = f"{TLS_DIR}/ca.pem"
SERVER_CERT_FILE, SERVER_KEY_FILE = f"{TLS_DIR}/server.pem", f"{TLS_DIR}/server.key"
AGENT_CERT_FILE, AGENT_KEY_FILE = f"{TLS_DIR}/agent.pem", f"{TLS_DIR}/agent.key"
METRICS_CLIENT_CA_FILE = f"{TLS_DIR}/metrics-client-ca.pem"
"""The CA of Prometheus' client certificates (public), a CA of their own that signs nothing else:
the one issuer the log agent's metrics endpoint accepts (``components.alloy``). A renewed
Prometheus certificate has the same issuer, so the agents take the old one and the new one alike
until the old one ends: the operator exports the new one when it suits (no scrape is refused
meanwhile). Beside the CA, the file holds the certificate earlier versions issued Prometheus
(``StackCertificates.earlier_prometheus``): Go takes a client certificate that is itself in the
pool, so the one an operator's Prometheus presents when the stack is upgraded keeps working."""
PROMETHEUS_CLIENT = "prometheus-scrape-client"
"""Prometheus' client certificate, of ``metrics-ca`` (earlier versions' ``prometheus-client`` was of the stack's CA)."""
GATEWAY_CLIENT_CA_FILE = f"{TLS_DIR}/gateway-client-ca.pem"
"""On the Loki nodes: the CAs the gateway accepts client certificates of, the stack's and
Prometheus' (``components.loki_gateway``; each certificate's role is its subject's OU)."""
RETIRED_FILES = ("/usr/local/share/ca-certificates/loki-stack-ca.crt", f"{TLS_DIR}/metrics-client.pem")
"""Earlier versions put the CA into every host's system trust store; nothing needs it there (every
client of the stack names the CA itself), and whoever holds the CA's key could then intercept any
TLS on the host, apt included. And they gave the agents Prometheus' certificate itself as their
client pool (``metrics-client.pem``), which a renewal of that certificate broke until the operator
exported it again (the agents' pool is now Prometheus' CA). The TLS delivery removes both."""
TRUST_UPDATE = "update-ca-certificates"
"""Run after the TLS delivery changed anything: the system bundle drops the removed CA."""
LOCALHOST_NAMES, LOCALHOST_ADDRESSES = ["localhost"], ["127.0.0.1"]


def server_spec(settings: Settings, vm: VmSettings) -> CertificateSpec:
    """The server certificate of a VM. A Loki node's is also its client certificate towards its
    peers, and carries the VIP's names, which clients of the VIP reach it by."""
    dns = [vm.fqdn, vm.name]
    ips = [str(vm.address)]
    if vm.role == "loki":
        dns += [settings.vip.fqdn, settings.vip.hostname]
        ips += [str(settings.vip.address)]
    if vm.role == "objectstore":
        dns.append(f"*.{vm.fqdn}")  # bucket-as-subdomain requests: <bucket>.<object store FQDN>
    return CertificateSpec(common_name=vm.fqdn, role=ROLE_SERVER, dns_names=[*dns, *LOCALHOST_NAMES],
                           ip_addresses=[*ips, *LOCALHOST_ADDRESSES], server=True, client=vm.role == "loki")


def agent_spec(name: str, address: str) -> CertificateSpec:
    """The log agent's certificate on a host (a VM's FQDN, or an extra host's name): as a client it
    may push; as a server it serves the agent's own metrics to Prometheus, on the host's address."""
    return CertificateSpec(common_name=f"agent {name}", role=ROLE_AGENT, dns_names=[name],
                           ip_addresses=[address], client=True, server=True)


def health_spec(vm: VmSettings) -> CertificateSpec:
    """The VIP's health check on a Loki node: it may ask ``/ready``, nothing else."""
    return CertificateSpec(common_name=f"health {vm.fqdn}", role=ROLE_HEALTH, dns_names=[vm.fqdn], client=True)


def client_specs(settings: Settings) -> dict[str, CertificateSpec]:
    """Client certificates that live off the VMs' agents: Grafana's data source (reads), a
    Prometheus scraper (metrics), and the operator (everything: logcli, curl, the delete API)."""
    domain = settings.network.domain
    return {
        "grafana-datasource": CertificateSpec(common_name="grafana-datasource", role=ROLE_READER,
                                              dns_names=[settings.grafana.fqdn], client=True),
        "prometheus": CertificateSpec(common_name="prometheus", role=ROLE_METRICS,
                                      dns_names=[f"prometheus.{domain}"], client=True),
        "operator": CertificateSpec(common_name="operator", role=ROLE_OPERATOR,
                                    dns_names=[f"operator.{domain}"], client=True),
    }


@dataclass
class StackCertificates:
    ca: CertificateAuthority
    metrics_ca: CertificateAuthority
    """Issues Prometheus' client certificate and nothing else (``METRICS_CLIENT_CA_FILE``)."""
    earlier_prometheus: Certificate
    """Prometheus' certificate as earlier versions issued it (by the stack's CA, the resource
    ``prometheus-client``, unchanged, so Pulumi keeps it as it is): the agents keep it in their pool
    and the gateways take it (role ``metrics``), so that the Prometheus of a stack deployed by an
    earlier version scrapes on after the upgrade until its operator exports the new certificate.
    Nothing else uses it; a later version drops it."""
    servers: dict[str, Certificate]
    """Host name -> its server certificate."""
    agents: dict[str, Certificate]
    """Host name -> its log agent's client certificate."""
    clients: dict[str, Certificate]
    """``grafana-datasource``, ``prometheus``, ``operator``."""
    health: dict[str, Certificate]
    """Loki node -> the client certificate of its VIP health check."""

    def expiries(self) -> list[tuple[str, str, pulumi.Output[str], int]]:
        """Every certificate as (name, host it lives on or "", when it ends, early-renewal hours)."""
        leaves = [(f"{h}-server", h, c) for h, c in self.servers.items()]
        leaves += [(f"{h}-agent", h, c) for h, c in self.agents.items()]
        leaves += [(f"{h}-health", h, c) for h, c in self.health.items()]
        leaves += [(name, "", c) for name, c in self.clients.items()]
        return [("ca", "", self.ca.not_after, self.ca.early_renewal_hours),
                ("metrics-ca", "", self.metrics_ca.not_after, self.metrics_ca.early_renewal_hours),
                *((name, host, c.not_after, c.early_renewal_hours) for name, host, c in leaves)]

    @property
    def metrics_issuer(self) -> str:
        """The subject of Prometheus' CA as nginx shows a client certificate's issuer (RFC 2253)."""
        return f"CN={self.metrics_ca.common_name},O={ORGANIZATION}"

    def gateway_clients(self) -> dict[str, pulumi.Output[str]]:
        """Every client certificate of the stack's CA that the Loki gateways take (name -> PEM): the
        agents', the VIP checks', the Loki nodes' server certificates (a node forwards with its
        own), Grafana's data source's, the operator's and Prometheus' earlier one. (Prometheus'
        own have their CA: ``metrics_issuer``.)"""
        certificates = {f"{h}-agent": c for h, c in self.agents.items()}
        certificates |= {f"{h}-health": c for h, c in self.health.items()}
        certificates |= {f"{h}-server": self.servers[h] for h in self.health}
        certificates |= {name: c for name, c in self.clients.items() if name != "prometheus"}
        certificates["prometheus-earlier"] = self.earlier_prometheus
        return {name: c.cert_pem for name, c in certificates.items()}

    def metrics_client_pool(self) -> pulumi.Output[str]:
        """What the agents' metrics endpoint takes: Prometheus' CA, and the certificate earlier
        versions issued Prometheus."""
        return concatenated(self.metrics_ca.cert_pem, self.earlier_prometheus.cert_pem)

    def host_files(self, host: str) -> list[HostFile]:
        """The TLS files ``host`` receives: the CA, its server certificate (stack VMs only), its
        agent certificate and the CA of Prometheus' client certificates; on a Loki node, the CAs
        its gateway takes client certificates of; keys 0600, root only."""
        ca, agent = self.ca.cert_pem, self.agents[host]
        files = [
            HostFile(host=host, path=CA_FILE, content=ca),
            HostFile(host=host, path=METRICS_CLIENT_CA_FILE, content=self.metrics_client_pool()),
            HostFile(host=host, path=AGENT_CERT_FILE, content=agent.cert_pem),
            HostFile(host=host, path=AGENT_KEY_FILE, content=agent.private_key_pem, mode="0600"),
        ]
        if host in self.health:  # a Loki node
            files.append(HostFile(host=host, path=GATEWAY_CLIENT_CA_FILE,
                                  content=concatenated(ca, self.metrics_ca.cert_pem)))
        if host in self.servers:
            server = self.servers[host]
            files += [HostFile(host=host, path=SERVER_CERT_FILE, content=server.cert_pem),
                      HostFile(host=host, path=SERVER_KEY_FILE, content=server.private_key_pem, mode="0600")]
        return files


def concatenated(*pems: pulumi.Input[str]) -> pulumi.Output[str]:
    """PEM blocks one after the other, each ending in a newline (a bundle)."""
    return pulumi.Output.all(*pems).apply(lambda texts: "".join(t if t.endswith("\n") else t + "\n" for t in texts))


def issue_certificates(settings: Settings, opts: pulumi.ResourceOptions | None = None) -> StackCertificates:
    pki = settings.pki

    def authority(name: str, common_name: str) -> CertificateAuthority:
        return CertificateAuthority(name, CertificateAuthorityArgs(
            common_name=common_name,
            validity_hours=pki.ca_validity_hours, early_renewal_hours=pki.ca_early_renewal_hours,
            leaf_validity_hours=pki.validity_hours, leaf_early_renewal_hours=pki.early_renewal_hours,
        ), opts=opts)

    ca = authority("ca", f"loki-stack CA {settings.network.domain}")
    # Prometheus' client certificate has an issuer of its own: the agents trust it alone, so that a
    # renewed certificate is taken at once, and no other certificate of the stack gets in.
    metrics_ca = authority("metrics-ca", f"loki-stack metrics clients {settings.network.domain}")
    specs = client_specs(settings)
    clients = {name: metrics_ca.issue(PROMETHEUS_CLIENT, spec) if name == "prometheus" else
               ca.issue(f"{name}-client", spec) for name, spec in specs.items()}
    return StackCertificates(
        ca=ca,
        metrics_ca=metrics_ca,
        earlier_prometheus=ca.issue("prometheus-client", specs["prometheus"]),
        servers={vm.name: ca.issue(f"{vm.name}-server", server_spec(settings, vm)) for vm in settings.vms},
        agents={
            **{vm.name: ca.issue(f"{vm.name}-agent", agent_spec(vm.fqdn, str(vm.address))) for vm in settings.vms},
            **{h.name: ca.issue(f"{h.name}-agent", agent_spec(h.name, str(h.address)))
               for h in settings.agents.extra_hosts},
        },
        clients=clients,
        health={vm.name: ca.issue(f"{vm.name}-health", health_spec(vm)) for vm in settings.vms if vm.role == "loki"},
    )
