"""The stack's settings as the program uses them: frozen dataclasses, built and checked by
``stack.config.load_settings`` (the only reader of ``pulumi.Config``)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from urllib.parse import urlsplit

import pulumi

from components.timeouts import DEFAULT_QUERY_TIMEOUT_S


@dataclass(frozen=True, kw_only=True)
class NetworkSettings:
    domain: str
    """DNS domain of every host."""
    cidr: IPv4Network
    """Network of every VM and the VIP."""
    gateway: IPv4Address
    """Default gateway, inside ``cidr``."""
    dns_servers: tuple[IPv4Address, ...]
    """Resolvers for the VMs (the gateway when none were given)."""
    bridge: str
    """Proxmox bridge the VMs attach to."""
    vlan_id: int | None
    """VLAN tag, or None for untagged."""


@dataclass(frozen=True, kw_only=True)
class CloudImageSettings:
    url: str
    """Pinned (dated) cloud image URL."""
    checksum: str
    """Hex digest of the image."""
    checksum_algorithm: str
    """``sha256`` or ``sha512``."""

    @property
    def file_name(self) -> str:
        """File name in the Proxmox datastore; content type ``import`` needs a .qcow2 name."""
        base = urlsplit(self.url).path.rsplit("/", 1)[-1]
        return base if base.endswith(".qcow2") else f"{base.rsplit('.', 1)[0]}.qcow2"


@dataclass(frozen=True, kw_only=True)
class ProxmoxSettings:
    endpoint: str
    """Proxmox VE API URL."""
    api_token: pulumi.Output[str]
    """API token (secret)."""
    insecure: bool
    """Skip TLS verification of the API (off by default)."""
    ssh_user: str
    """SSH user on the Proxmox nodes, for snippet uploads."""
    image_datastore: str
    """Datastore for the cloud image (content type import)."""
    snippet_datastore: str
    """Datastore for cloud-init snippets."""
    vm_datastore: str
    """Datastore for VM disks."""
    cloud_image: CloudImageSettings
    """The image every VM boots from."""


@dataclass(frozen=True, kw_only=True)
class VmSettings:
    name: str
    """Host name (RFC 1123 label); also the VM name in Proxmox."""
    fqdn: str
    """``<name>.<domain>``."""
    role: str
    """``loki``, ``objectstore`` or ``grafana``."""
    address: IPv4Address
    """Static IPv4 address."""
    proxmox_node: str
    """Proxmox node that runs the VM."""
    cores: int
    memory_mib: int
    disk_gib: int
    """System disk, grown from the cloud image."""
    data_disk_gib: int
    """Second disk for the role's data; 0 for none."""


@dataclass(frozen=True, kw_only=True)
class SshSettings:
    admin_user: str
    """Admin user on every VM."""
    admin_keys: tuple[str, ...]
    """The operator's OpenSSH public keys."""


@dataclass(frozen=True, kw_only=True)
class PkiSettings:
    revoked_serials: tuple[str, ...] = ()
    """Serials of certificates the gateways refuse (as nginx shows them: upper-case hex)."""
    validity_hours: int
    """Lifetime of every leaf certificate."""
    early_renewal_hours: int
    """A leaf this close to its end is renewed by the next ``pulumi up``."""
    ca_validity_hours: int
    """Lifetime of the CA certificate."""

    @property
    def ca_early_renewal_hours(self) -> int:
        """The CA is renewed one leaf lifetime before its end, so no leaf outlives its CA."""
        return self.validity_hours


@dataclass(frozen=True, kw_only=True)
class LokiSettings:
    version: str
    """Pinned Loki release, X.Y.Z."""
    retention: str
    """Loki duration; ``0s`` keeps logs forever."""
    ingestion_rate_mb: int
    """MiB/s the cluster accepts through the VIP."""
    ingestion_burst_mb: int
    """MiB accepted at once above the rate (at least the rate)."""
    vms: tuple[VmSettings, ...]
    """Every Loki VM, in the order of ``lokiNodes``: the running nodes and those retiring."""
    retiring: frozenset[str] = frozenset()
    """Nodes of ``lokiNodes`` being taken out (``lokiRetiring``): their VMs stay until the next run, Loki
    and everything around it stop there first, and no other node counts on them any more."""
    schema_from: str
    """First day of the schema period, YYYY-MM-DD."""
    internal_tls: bool
    """TLS and client certificates between the nodes."""
    require_client_certs: bool
    """Client certificates required on HTTP."""
    query_timeout_s: int = DEFAULT_QUERY_TIMEOUT_S
    """Longest a query may run; the layers outside Loki wait longer (``components.timeouts``)."""

    @property
    def nodes(self) -> tuple[VmSettings, ...]:
        """The nodes that run Loki: 1 (single-node mode) or 3 and more."""
        return tuple(vm for vm in self.vms if vm.name not in self.retiring)

    @property
    def replication_factor(self) -> int:
        return 1 if len(self.nodes) == 1 else 3


@dataclass(frozen=True, kw_only=True)
class ObjectStoreSettings:
    vm: VmSettings
    """The object store's VM."""
    bucket: str
    """Loki's bucket."""
    root_user: str
    """Root user name (the password is generated)."""
    package_url: str
    """Pinned server release archive."""
    package_sha256: str
    """Its SHA-256."""


@dataclass(frozen=True, kw_only=True)
class ExtraHost:
    """A host outside the stack that gets a log agent."""

    name: str
    address: IPv4Address
    host_key: str
    """Its SSH host public key (OpenSSH format), pinned for every connection."""


@dataclass(frozen=True, kw_only=True)
class AgentSettings:
    alloy_version: str
    extra_hosts: tuple[ExtraHost, ...]


@dataclass(frozen=True, kw_only=True)
class VipSettings:
    address: IPv4Address
    hostname: str
    fqdn: str
    router_id: int
    """VRRP virtual router id, 1-255."""
    advert_interval: int
    """Seconds between adverts."""
    nopreempt: bool
    """Leave the VIP where it is when a higher-priority node returns."""
    check_interval: int
    check_fall: int
    check_rise: int
    """The health checks: every ``check_interval`` s, give the VIP away after ``check_fall``
    failures, take it again after ``check_rise`` successes."""
    loki_grace_s: int
    """How long a node whose own Loki is not ready keeps the VIP while its gateway serves."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    network: NetworkSettings
    proxmox: ProxmoxSettings
    ssh: SshSettings
    pki: PkiSettings
    loki: LokiSettings
    vip: VipSettings
    object_store: ObjectStoreSettings
    grafana: VmSettings
    grafana_version: str
    """Pinned Grafana release."""
    agents: AgentSettings

    @property
    def vms(self) -> tuple[VmSettings, ...]:
        """Every VM of the stack, in a fixed order: Loki nodes (as listed in ``lokiNodes``, retiring ones
        included), object store, Grafana."""
        return (*self.loki.vms, self.object_store.vm, self.grafana)
