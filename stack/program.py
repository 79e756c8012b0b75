"""The order in which the stack is built, and what it exports.

``build(settings)`` creates the providers once, then the components in dependency order, each
given only what it needs. It returns a ``Deployment`` so that ``__main__.py`` can export the
outputs and the offline plan can read the components' host files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_command as command
import pulumi_minio as minio
import pulumi_proxmoxve as proxmoxve
import pulumi_tls as tls
import pulumiverse_grafana as grafana

from components.alloy import METRICS_PORT as AGENT_METRICS_PORT
from components.alloy import LogAgent, LogAgentArgs
from components.delivery import FileDelivery, FileDeliveryArgs, after, after_all, ssh_connection
from components.gateway_certificates import (
    GatewayCertificates,
    GatewayCertificatesArgs,
    GatewayNode,
    certificate_serial,
)
from components.grafana import (
    ADMIN_USER,
    GrafanaContent,
    GrafanaContentArgs,
    GrafanaServer,
    GrafanaServerArgs,
)
from components.grafana import (
    HTTPS_PORT as GRAFANA_PORT,
)
from components.hostfile import HostFile
from components.loki import UNIT as LOKI_UNIT
from components.loki import LokiCluster, LokiClusterArgs, LokiHost
from components.loki_config import (
    HTTP_PORT,
    LOKI_LOCAL_PORT,
    WAL_DISK_FULL_THRESHOLD,
    LokiConfigSpec,
    LokiNodeSpec,
    render_logcli_environment,
)
from components.loki_gateway import DRAIN_PORT as GATEWAY_DRAIN_PORT
from components.loki_gateway import KEEPALIVE_TIME_S as GATEWAY_KEEPALIVE_TIME_S
from components.loki_gateway import UNIT as GATEWAY_UNIT
from components.loki_gateway import GatewayHost, LokiGateway, LokiGatewayArgs
from components.loki_gateway import Peer as GatewayPeer
from components.loki_limits import LokiLimits
from components.loki_retire import LokiRetirement, LokiRetirementArgs, RetiringNode
from components.monitoring import CertificateExpiry, MonitoringSpec, Target, render_rules, render_scrape_config
from components.monitoring import signals as monitoring_signals
from components.objectstore import (
    API_PORT,
    LOKI_USER,
    METRICS_USER,
    LokiBucket,
    LokiBucketArgs,
    MetricsReader,
    MetricsReaderArgs,
    ObjectStore,
    ObjectStoreArgs,
)
from components.proxmox_vm import DATA_DISK_PATH, GUEST_INTERFACE, HostEntry, ProxmoxVm, ProxmoxVmArgs
from components.timeouts import Timeouts
from components.vip import CONFIG_FILE as KEEPALIVED_CONFIG
from components.vip import UNIT as KEEPALIVED_UNIT
from components.vip import KeepalivedSettings, VipNode, VirtualIp, VirtualIpArgs
from components.vip_handover import VipHandover
from components.vip_reboot import VipReboot
from components.vrrp_priorities import priorities as vip_priorities
from stack.certificates import (
    AGENT_CERT_FILE,
    AGENT_KEY_FILE,
    CA_FILE,
    GATEWAY_CLIENT_CA_FILE,
    METRICS_CLIENT_CA_FILE,
    RETIRED_FILES,
    SERVER_CERT_FILE,
    SERVER_KEY_FILE,
    TRUST_UPDATE,
    StackCertificates,
    issue_certificates,
)
from stack.settings import ProxmoxSettings, Settings, VmSettings

IMAGE_UPLOAD_TIMEOUT_S = 1800
LOKI_CLUSTER, LOKI_GATEWAY, LOKI_RETIRING = "loki", "loki-gateway", "loki-retiring"
"""The components' names, which begin their steps' names (``components.step_names.host_step``)."""
LOCAL_CA_FILE = ".lokistack/ca.pem"
"""The stack's CA on the machine running Pulumi (the MinIO provider takes its CA as a file)."""


@dataclass
class Host:
    """A host the stack works on over SSH: one of its VMs, or an extra host that gets an agent."""

    name: str
    connection: pulumi.Input[Any]
    """Its SSH connection (a VM's resolves once cloud-init finished and its own host key is in place)."""
    vm: ProxmoxVm | None = None
    """Its VM; None for an extra host."""
    tls: FileDelivery | None = None
    """The delivery of its TLS files, once declared."""

    @property
    def delivery(self) -> FileDelivery:
        if self.tls is None:
            raise RuntimeError(f"{self.name}: its TLS files are not declared yet")
        return self.tls

    @property
    def with_tls(self) -> pulumi.Output[Any]:
        """Its connection once its TLS files are in place: what every later step on it uses."""
        return after(self.connection, self.delivery.command)


@dataclass
class Hosts:
    """Every host by name, in the order of the settings: the VMs, then the extra hosts."""

    by_name: dict[str, Host]

    def __getitem__(self, name: str) -> Host:
        return self.by_name[name]

    def __iter__(self) -> Iterator[Host]:
        return iter(self.by_name.values())

    @property
    def vms(self) -> dict[str, ProxmoxVm]:
        return {h.name: h.vm for h in self if h.vm is not None}


@dataclass
class Deployment:
    hosts: Hosts
    """Every host, its VM and its TLS files' delivery."""
    certificates: StackCertificates
    """The CA and every certificate."""
    object_store: ObjectStore
    loki_bucket: LokiBucket
    loki: LokiCluster
    gateway: LokiGateway
    gateway_certificates: GatewayCertificates
    vip: VirtualIp
    grafana: GrafanaServer
    agents: dict[str, LogAgent]
    monitoring: MonitoringSpec
    """What the scrape jobs reach and the alert rules derive their thresholds from."""
    outputs: dict[str, Any]
    """Stack outputs by name."""
    host_files: list[HostFile] = field(default_factory=list)
    """Every file any host receives, for the offline plan."""


def proxmox_provider(settings: ProxmoxSettings) -> proxmoxve.Provider:
    """The one Proxmox provider; snippets travel over SSH to the node (through your ssh-agent)."""
    return proxmoxve.Provider(
        "proxmox",
        endpoint=settings.endpoint,
        api_token=settings.api_token,
        insecure=settings.insecure,
        ssh={"username": settings.ssh_user, "agent": True},
    )


def host_entries(settings: Settings) -> list[HostEntry]:
    """/etc/hosts lines for every VM and the VIP name."""
    entries = [HostEntry(address=str(vm.address), fqdn=vm.fqdn, name=vm.name) for vm in settings.vms]
    vip = settings.vip
    entries.append(HostEntry(address=str(vip.address), fqdn=vip.fqdn, name=vip.hostname))
    return entries


def vm_args(settings: Settings, vm: VmSettings, image_id: pulumi.Input[str], deploy_key: tls.PrivateKey,
            hosts: list[HostEntry]) -> ProxmoxVmArgs:
    net, pve = settings.network, settings.proxmox
    return ProxmoxVmArgs(
        hostname=vm.name, domain=net.domain, role=vm.role, proxmox_node=vm.proxmox_node,
        cores=vm.cores, memory_mib=vm.memory_mib, disk_gib=vm.disk_gib, data_disk_gib=vm.data_disk_gib,
        address=str(vm.address), prefix_length=net.cidr.prefixlen, gateway=str(net.gateway),
        dns_servers=[str(s) for s in net.dns_servers], bridge=net.bridge, vlan_id=net.vlan_id,
        vm_datastore=pve.vm_datastore, snippet_datastore=pve.snippet_datastore, image_id=image_id,
        admin_user=settings.ssh.admin_user, admin_keys=settings.ssh.admin_keys,
        deploy_public_key=deploy_key.public_key_openssh, deploy_private_key=deploy_key.private_key_openssh,
        hosts=hosts, retiring=vm.name in settings.loki.retiring,
    )


def build(settings: Settings) -> Deployment:
    proxmox = proxmox_provider(settings.proxmox)
    on_proxmox = pulumi.ResourceOptions(provider=proxmox)
    image = settings.proxmox.cloud_image

    # The stack's own SSH key, for the work it does on the VMs after cloud-init.
    deploy_key = tls.PrivateKey("deploy-ssh-key", algorithm="ED25519")

    # One download of the cloud image per Proxmox node, shared by the VMs on that node.
    images = {
        node: proxmoxve.download.File(
            f"cloud-image-{node}",
            node_name=node,
            datastore_id=settings.proxmox.image_datastore,
            content_type="import",
            url=image.url,
            file_name=image.file_name,
            checksum=image.checksum,
            checksum_algorithm=image.checksum_algorithm,
            upload_timeout=IMAGE_UPLOAD_TIMEOUT_S,
            opts=on_proxmox,
        )
        for node in sorted({vm.proxmox_node for vm in settings.vms})
    }

    entries = host_entries(settings)
    vms = [ProxmoxVm(vm.name, vm_args(settings, vm, images[vm.proxmox_node].id, deploy_key, entries),
                     opts=pulumi.ResourceOptions(providers=[proxmox]))
           for vm in settings.vms]

    certificates = issue_certificates(settings)
    # Every host's SSH connection: the VMs' resolve after cloud-init; extra hosts pin the given key.
    hosts = Hosts({spec.name: Host(name=spec.name, connection=vm.connection, vm=vm)
                   for spec, vm in zip(settings.vms, vms, strict=True)})
    hosts.by_name |= {h.name: Host(name=h.name, connection=ssh_connection(
        host=str(h.address), user=settings.ssh.admin_user, private_key=deploy_key.private_key_openssh,
        host_key=h.host_key)) for h in settings.agents.extra_hosts}

    def deliver_tls(host: Host, connection: pulumi.Input[Any]) -> None:
        host.tls = FileDelivery(f"{host.name}-tls", FileDeliveryArgs(
            host=host.name, connection=connection, files=certificates.host_files(host.name), remove=RETIRED_FILES,
            then=TRUST_UPDATE))

    # Scale-in: a retiring node leaves (the VIP, the ring) before any step of the other Loki nodes,
    # after its own TLS files.
    for name in sorted(settings.loki.retiring):
        deliver_tls(hosts[name], hosts[name].connection)
    retire_steps: list[pulumi.CustomResource] = []
    if settings.loki.retiring:
        retire_steps += LokiRetirement(LOKI_RETIRING, LokiRetirementArgs(
            nodes=[RetiringNode(name=name, connection=hosts[name].with_tls) for name in sorted(settings.loki.retiring)],
            loki_unit=LOKI_UNIT, gateway_unit=GATEWAY_UNIT, keepalived_unit=KEEPALIVED_UNIT)).steps
    # The gateways take the client certificates the stack issues now: a new one before any client
    # switches to it (admit, before every other host's TLS files), a superseded one no longer once
    # every client has switched (settle, at the end).
    gateway_certificates = GatewayCertificates("gateway-certificates", GatewayCertificatesArgs(
        nodes=[GatewayNode(name=n.name, connection=after_all(hosts[n.name].connection, retire_steps))
               for n in settings.loki.nodes],
        certificates=certificates.gateway_clients(), revoked=settings.pki.revoked_serials,
        handover=vip_handover(settings),
        tls={"CA_FILE": CA_FILE, "CERT_FILE": SERVER_CERT_FILE, "KEY_FILE": SERVER_KEY_FILE}))
    admitted: list[pulumi.CustomResource] = list(gateway_certificates.admits.values())
    for host in hosts:
        if host.tls is None:
            deliver_tls(host, after_all(host.connection, admitted))
    loki_connections: dict[str, pulumi.Output[Any]] = {}
    for node in settings.loki.nodes:
        connection = hosts[node.name].with_tls
        for step in retire_steps:
            connection = after(connection, step)
        loki_connections[node.name] = connection

    object_store, loki_bucket, metrics_reader = build_object_store(settings, hosts, certificates)
    loki_spec = loki_config_spec(settings)
    monitoring = monitoring_spec(settings, loki_spec)
    # Loki's roll hands the VIP over: it waits for keepalived's steps on every node (below).
    roll_after: pulumi.Output[list[str]]
    start_roll: Callable[[pulumi.Output[list[str]]], None]
    roll_after, start_roll = pulumi.deferred_output()
    try:
        loki = LokiCluster(LOKI_CLUSTER, LokiClusterArgs(
            config=loki_spec,
            hosts=[LokiHost(name=node.name, fqdn=node.fqdn, connection=loki_connections[node.name],
                            tls_digest=hosts[node.name].delivery.digest)
                   for node in settings.loki.nodes],
            version=settings.loki.version, data_device=DATA_DISK_PATH,
            s3_access_key=loki_bucket.access_key, s3_secret_key=loki_bucket.secret_key,
            tls_cert_file=SERVER_CERT_FILE, tls_key_file=SERVER_KEY_FILE, tls_ca_file=CA_FILE,
            handover=vip_handover(settings), roll_after=roll_after,
        ))
        # One package step at a time on each host (apt and dpkg refuse to run beside each other):
        # each host's next step that installs packages waits for the one before.
        package_steps: dict[str, pulumi.CustomResource] = {object_store_host(settings): object_store.setup,
                                                           **loki.setups}
        gateway = LokiGateway(LOKI_GATEWAY, LokiGatewayArgs(
            hosts=[GatewayHost(name=node.name, connection=loki_connections[node.name],
                               tls_digest=hosts[node.name].delivery.digest)
                   for node in settings.loki.nodes],
            require_client_certs=settings.loki.require_client_certs,
            cert_file=SERVER_CERT_FILE, key_file=SERVER_KEY_FILE, ca_file=CA_FILE,
            client_ca_file=GATEWAY_CLIENT_CA_FILE, metrics_issuer=certificates.metrics_issuer,
            after_steps=package_steps,
            peers={node.name: GatewayPeer(fqdn=node.fqdn, address=str(node.address)) for node in settings.loki.nodes},
            handover=vip_handover(settings), timeouts=timeouts(settings),
        ))
        package_steps |= gateway.setups
        # A handover and a keepalived reload on another node never overlap (``VirtualIp.settled``): the
        # gateway's applies (one may hand the VIP over, after an upgrade) come before every keepalived
        # apply, and Loki's roll after every node's last keepalived step.
        vip = build_vip(settings, loki_connections, certificates, after_steps=package_steps,
                        apply_after=list(gateway.applies.values()))
    except BaseException as error:
        # Loki's first apply waits for this value: left unresolved, the program would hang, not fail.
        start_roll(failed_output(error))
        raise
    start_roll(pulumi.Output.all(*[step.id for step in vip.settled]))
    package_steps |= vip.setups
    vip_url = f"https://{settings.vip.fqdn}:{HTTP_PORT}"
    grafana_server, grafana_content = build_grafana(settings, hosts, certificates, loki_url=vip_url,
                                                    monitoring=monitoring)
    package_steps[settings.grafana.name] = grafana_server.setup
    # By address: extra hosts need not resolve the stack's names; Loki's certificates carry it.
    push_url = f"https://{settings.vip.address}:{HTTP_PORT}/loki/api/v1/push"
    addresses = {t.name: t.address for t in monitoring.agents}
    agents = {}
    for host in hosts:
        name, ready = host.name, host.with_tls
        agents[name] = LogAgent(f"agent-{name}", LogAgentArgs(
            host=name, connection=after(ready, package_steps[name]) if name in package_steps else ready,
            version=settings.agents.alloy_version, push_url=push_url, cert_file=AGENT_CERT_FILE,
            key_file=AGENT_KEY_FILE, ca_file=CA_FILE, metrics_client_ca_file=METRICS_CLIENT_CA_FILE,
            metrics_address=addresses[name], tls_digest=host.delivery.digest))

    gateway_certificates.settle_after([
        *(h.delivery.command for h in hosts), *(a.apply for a in agents.values()), *vip.settled,
        *gateway.applies.values(), grafana_content.datasource])
    operator, prometheus = certificates.clients["operator"], certificates.clients["prometheus"]
    outputs: dict[str, Any] = {
        "hosts": {
            vm.name: {"address": str(vm.address), "fqdn": vm.fqdn, "role": vm.role, "proxmoxNode": vm.proxmox_node}
            for vm in settings.vms
        },
        "vmIds": {name: vm.vm_id for name, vm in hosts.vms.items()},
        "vipAddress": vip.address,
        "sshAdminUser": settings.ssh.admin_user,
        "deploySshPublicKey": deploy_key.public_key_openssh.apply(str.strip),
        "sshHostKeys": {name: vm.host_public_key for name, vm in hosts.vms.items()},
        "caCertificate": certificates.ca.cert_pem,
        "operatorCertificate": pulumi.Output.secret(operator.cert_pem),
        "operatorPrivateKey": operator.private_key_pem,
        "prometheusCertificate": pulumi.Output.secret(prometheus.cert_pem),
        "clientCertificateSerials": certificate_serials(certificates),
        "prometheusPrivateKey": prometheus.private_key_pem,
        "objectStoreEndpoint": object_store.endpoint,
        "lokiBucket": loki_bucket.bucket,
        "lokiS3AccessKey": loki_bucket.access_key,
        "lokiS3SecretKey": loki_bucket.secret_key,
        "lokiNodeUrls": loki.node_urls,
        "lokiUrl": vip_url,
        "prometheusScrapeConfig": render_scrape_config(monitoring),
        "prometheusRules": prometheus_rules(monitoring, certificates),
        "prometheusObjectStoreToken": metrics_reader.token,
        "prometheusGrafanaPassword": grafana_server.metrics_password,
        "logcliEnvironment": render_logcli_environment(vip_url),
        "grafanaUrl": grafana_server.url,
        "grafanaAdminUser": ADMIN_USER,
        "grafanaAdminPassword": grafana_server.admin_password,
    }
    host_files = [f for vm in hosts.vms.values() for f in vm.host_files]
    host_files += [f for host in hosts for f in host.delivery.host_files]
    host_files += object_store.host_files
    host_files += loki.host_files
    host_files += gateway.host_files
    host_files += gateway_certificates.host_files
    host_files += vip.host_files
    host_files += grafana_server.host_files
    host_files += [f for agent in agents.values() for f in agent.host_files]
    return Deployment(hosts=hosts, certificates=certificates, object_store=object_store,
                      loki_bucket=loki_bucket, loki=loki, gateway=gateway,
                      gateway_certificates=gateway_certificates, vip=vip, grafana=grafana_server,
                      agents=agents, monitoring=monitoring, outputs=outputs, host_files=host_files)


def monitoring_spec(settings: Settings, loki_spec: LokiConfigSpec) -> MonitoringSpec:
    """What the scrape jobs reach and what the alert rules derive their thresholds from."""
    def target(name: str, address: object) -> Target:
        return Target(name=name, address=str(address))

    store, grafana_vm = settings.object_store.vm, settings.grafana
    return MonitoringSpec(
        cluster=loki_spec.cluster_label,
        loki_nodes=[target(n.name, n.address) for n in settings.loki.nodes], loki_port=HTTP_PORT,
        object_store=target(store.name, store.address), object_store_port=API_PORT,
        grafana=target(grafana_vm.name, grafana_vm.address), grafana_port=GRAFANA_PORT,
        agents=[target(vm.name, vm.address) for vm in settings.vms]
        + [target(h.name, h.address) for h in settings.agents.extra_hosts],
        agent_port=AGENT_METRICS_PORT,
        replication_factor=loki_spec.replication_factor, ingestion_rate_mb=settings.loki.ingestion_rate_mb,
        wal_disk_full_threshold=WAL_DISK_FULL_THRESHOLD,
    )


def prometheus_rules(spec: MonitoringSpec, certificates: StackCertificates) -> pulumi.Output[str]:
    """The rules file: known once every certificate's end is known."""
    expiries = certificates.expiries()

    def render(ends: list[str]) -> str:
        return render_rules(spec, [
            CertificateExpiry(certificate=name, host=host, not_after=end, early_renewal_hours=hours)
            for (name, host, _, hours), end in zip(expiries, ends, strict=True)])

    return pulumi.Output.all(*(end for _, _, end, _ in expiries)).apply(render)


def certificate_serials(certificates: StackCertificates) -> pulumi.Output[dict[str, str]]:
    """Every client certificate the gateways take, by name, with its serial as nginx and
    ``certRevokedSerials`` write it (not secret): what to revoke."""
    pems = {**certificates.gateway_clients(), "prometheus": certificates.clients["prometheus"].cert_pem}
    names = sorted(pems)
    return pulumi.Output.all(*[pems[n] for n in names]).apply(
        lambda texts: {n: certificate_serial(t) for n, t in zip(names, texts, strict=True)})


def build_grafana(settings: Settings, hosts: Hosts, certificates: StackCertificates, *, loki_url: str,
                  monitoring: MonitoringSpec) -> tuple[GrafanaServer, GrafanaContent]:
    """Grafana on its VM, then (through its API, trusting only our CA) the data source and dashboards."""
    vm = settings.grafana
    server = GrafanaServer("grafana", GrafanaServerArgs(
        hostname=vm.name, fqdn=vm.fqdn, version=settings.grafana_version,
        connection=hosts[vm.name].with_tls,
        cert_pem=certificates.servers[vm.name].cert_pem, key_pem=certificates.servers[vm.name].private_key_pem,
        ca_file=CA_FILE))
    auth: pulumi.Output[str] = pulumi.Output.secret(server.admin_password.apply(lambda pw: f"{ADMIN_USER}:{pw}"))
    provider = grafana.Provider(
        "grafana",
        # By address: the machine running Pulumi may not resolve the stack's names.
        url=f"https://{vm.address}:{GRAFANA_PORT}/",
        auth=auth,
        ca_cert=certificates.ca.cert_pem,
        opts=pulumi.ResourceOptions(depends_on=[server.ready]),
    )
    datasource_client = certificates.clients["grafana-datasource"]
    content = GrafanaContent("grafana-content", GrafanaContentArgs(
        loki_url=loki_url, ca_cert_pem=certificates.ca.cert_pem, client_cert_pem=datasource_client.cert_pem,
        client_key_pem=datasource_client.private_key_pem, signals=monitoring_signals(monitoring),
        timeouts=timeouts(settings)),
        opts=pulumi.ResourceOptions(providers=[provider]))
    return server, content


def object_store_host(settings: Settings) -> str:
    return settings.object_store.vm.name


def failed_output(error: BaseException) -> pulumi.Output[list[str]]:
    """A value that never arrives because the program failed first: what waits for it fails too."""
    def fail(_: object) -> list[str]:
        raise RuntimeError(f"not declared: the program failed before ({error!r})") from error
    return pulumi.Output.from_input(None).apply(fail)


def build_vip(settings: Settings, connections: dict[str, pulumi.Output[Any]], certificates: StackCertificates, *,
              after_steps: dict[str, pulumi.CustomResource],
              apply_after: list[pulumi.CustomResource]) -> VirtualIp:
    """keepalived on the Loki nodes, each node's setup after ``after_steps[node]`` (the node's
    previous package step) and its apply after every step of ``apply_after``; the /ready check has
    a certificate of its own (role ``health``)."""
    vip = settings.vip
    return VirtualIp("vip", VirtualIpArgs(
        settings=KeepalivedSettings(
            vip=str(vip.address), vip_fqdn=vip.fqdn, prefix_length=settings.network.cidr.prefixlen,
            interface=GUEST_INTERFACE, router_id=vip.router_id, advert_int=vip.advert_interval,
            nopreempt=vip.nopreempt, check_interval=vip.check_interval, check_fall=vip.check_fall,
            check_rise=vip.check_rise, loki_grace_s=vip.loki_grace_s),
        nodes=[VipNode(name=n.name, address=str(n.address),
                       connection=after(connections[n.name], after_steps[n.name]),
                       client_cert_pem=certificates.health[n.name].cert_pem,
                       client_key_pem=certificates.health[n.name].private_key_pem)
               for n in settings.loki.nodes],
        ca_cert_pem=certificates.ca.cert_pem,
        reboot=VipReboot(handover=vip_handover(settings),
                         tls={"CA_FILE": CA_FILE, "CERT_FILE": SERVER_CERT_FILE, "KEY_FILE": SERVER_KEY_FILE},
                         loki_ready_url=f"https://127.0.0.1:{LOKI_LOCAL_PORT}/ready",
                         services=(KEEPALIVED_UNIT, GATEWAY_UNIT, LOKI_UNIT)),
        apply_after=apply_after,
    ))


def vip_handover(settings: Settings) -> VipHandover:
    """What a Loki node's apply step needs to hand the VIP over before its Loki restarts."""
    return VipHandover(address=str(settings.vip.address), interface=GUEST_INTERFACE, port=HTTP_PORT,
                       priorities=vip_priorities([n.name for n in settings.loki.nodes]),
                       addresses={n.name: str(n.address) for n in settings.loki.nodes},
                       preempt=not settings.vip.nopreempt, check_interval=settings.vip.check_interval,
                       check_rise=settings.vip.check_rise, keepalived_unit=KEEPALIVED_UNIT,
                       keepalived_config=KEEPALIVED_CONFIG, drain_port=GATEWAY_DRAIN_PORT,
                       keepalive_time_s=GATEWAY_KEEPALIVE_TIME_S)


LOKI_DATA_DIR = "/var/lib/loki"


def loki_config_spec(settings: Settings) -> LokiConfigSpec:
    """What every Loki node's config says (the same on every node but the node's own name and address)."""
    loki = settings.loki
    return LokiConfigSpec(
        nodes=[LokiNodeSpec(name=n.name, address=str(n.address)) for n in loki.nodes],
        cluster_label=f"loki-stack.{settings.network.domain}",
        limits=LokiLimits(retention=loki.retention, ingestion_rate_mb=loki.ingestion_rate_mb,
                          ingestion_burst_mb=loki.ingestion_burst_mb),
        schema_from=loki.schema_from,
        s3_endpoint=f"{settings.object_store.vm.fqdn}:{API_PORT}",
        bucket=settings.object_store.bucket,
        data_dir=LOKI_DATA_DIR,
        memory_mib=loki.nodes[0].memory_mib,
        internal_tls=loki.internal_tls,
        timeouts=timeouts(settings),
    )


def timeouts(settings: Settings) -> Timeouts:
    """From Loki's query timeout out to Grafana's data source, each layer longer than the one inside."""
    return Timeouts(query_s=settings.loki.query_timeout_s)


def build_object_store(settings: Settings, hosts: Hosts,
                       certificates: StackCertificates) -> tuple[ObjectStore, LokiBucket, MetricsReader]:
    """The object store host, then (through the MinIO API, trusting only our CA) Loki's bucket and
    keys, and Prometheus' metrics-only user."""
    store = settings.object_store
    host = store.vm.name
    object_store = ObjectStore("objectstore", ObjectStoreArgs(
        hostname=host, fqdn=store.vm.fqdn,
        # After the host's TLS files: the readiness check trusts the CA they install.
        connection=hosts[host].with_tls,
        data_device=DATA_DISK_PATH, root_user=store.root_user, package_url=store.package_url,
        package_sha256=store.package_sha256, server_cert_pem=certificates.servers[host].cert_pem,
        server_key_pem=certificates.servers[host].private_key_pem, ca_cert_pem=certificates.ca.cert_pem,
        ca_file=CA_FILE,
    ))
    ca_file = command.local.Command(
        "objectstore-ca-file",
        create=f"mkdir -p {LOCAL_CA_FILE.rsplit('/', 1)[0]} && cat > {LOCAL_CA_FILE}",
        stdin=certificates.ca.cert_pem,
        triggers=[certificates.ca.cert_pem],
    )
    provider = minio.Provider(
        "objectstore",
        # By address: the machine running Pulumi may not resolve the stack's names; the
        # certificate carries the address too.
        minio_server=f"{store.vm.address}:{API_PORT}",
        minio_ssl=True,
        minio_cacert_file=LOCAL_CA_FILE,
        minio_user=store.root_user,
        minio_password=object_store.root_password,
        opts=pulumi.ResourceOptions(depends_on=[object_store.ready, ca_file]),
    )
    bucket = LokiBucket("loki-bucket", LokiBucketArgs(bucket=store.bucket, user=LOKI_USER),
                        opts=pulumi.ResourceOptions(providers=[provider]))
    metrics_reader = MetricsReader("objectstore-metrics", MetricsReaderArgs(user=METRICS_USER),
                                   opts=pulumi.ResourceOptions(providers=[provider]))
    return object_store, bucket, metrics_reader
