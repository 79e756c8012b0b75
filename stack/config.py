"""Settings: the only reader of ``pulumi.Config``.

``load_settings()`` reads every key declared in Pulumi.yaml (falling back to its default, as the
CLI does), checks it, and returns frozen dataclasses. Every problem is reported before any
resource exists, all at once, each naming the key, the rule, the value and a valid example.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import difflib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_address
from typing import Any
from urllib.parse import SplitResult, urlsplit

import pulumi
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from pulumi.runtime import config as runtime_config

from components.objectstore import LOKI_USER, METRICS_USER
from components.pki import normalized_serial
from components.timeouts import DEFAULT_QUERY_TIMEOUT_S, MAX_QUERY_TIMEOUT_S, MIN_QUERY_TIMEOUT_S
from stack.schema import ProjectSchema, load_schema

# --- Settings ---------------------------------------------------------------------------


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


# --- Errors -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    key: str
    """Qualified key, e.g. ``loki-stack:lokiAddresses[1]``."""
    rule: str
    value: str
    """The offending value as shown to the user (never a secret)."""
    example: str

    def __str__(self) -> str:
        return f"{self.key}: {self.rule}; got {self.value}. Example: {self.example}"


class SettingsError(ValueError):
    """Raised by ``load_settings`` with every problem found; nothing has been created yet."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid stack settings ({len(problems)} problem(s)):\n{lines}")


# --- Rules --------------------------------------------------------------------------------

_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")  # RFC 1123 host label
_IFACE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # Linux IFNAMSIZ - 1
_DATASTORE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")  # Proxmox storage id
_UNIX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_API_TOKEN = re.compile(r"^[^@\s!=]+@[^@\s!=]+![A-Za-z][A-Za-z0-9._-]*=[0-9a-fA-F-]{36}$")
_LOKI_VERSION = re.compile(r"^3\.(\d+)\.(\d+)$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3 bucket naming rules
_ROOT_USER = re.compile(r"^[A-Za-z0-9_.-]{3,64}$")
_DURATION = re.compile(r"^(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")
_DURATION_UNITS = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
_CHECKSUM_LENGTHS = {"sha256": 64, "sha512": 128}
_RESERVED_USERS = {"root", "daemon", "bin", "sys", "nobody", "loki", "grafana", "alloy", "minio", "keepalived_script"}
MIN_LOKI_MINOR = 7
MIN_MEMORY_MIB = 1024
MIN_DISK_GIB = 8
MIN_DATA_DISK_GIB = 10
MIN_RETENTION_SECONDS = 24 * 3600
MAX_INGESTION_MB = 1024
MAX_LOKI_NODES = 50


def duration_seconds(text: str) -> float | None:
    """Seconds in a Loki/Prometheus duration (``744h``, ``31d``, ``1h30m``); None if malformed."""
    match = _DURATION.match(text)
    if not text or not match:
        return None
    total = 0.0
    for part in match.groups():
        if part:
            unit = part.lstrip("0123456789")
            total += int(part[: -len(unit)]) * _DURATION_UNITS[unit]
    return total


def is_hostname_label(text: str) -> bool:
    return bool(_LABEL.match(text))


def is_domain(text: str) -> bool:
    return len(text) <= 253 and all(is_hostname_label(label) for label in text.split("."))


_SECURITY_KEY_TYPES = ("sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")


def public_key_problem(text: str) -> str | None:
    """Why ``text`` is not an OpenSSH public key in its one-line form (``TYPE BASE64 [COMMENT]``),
    or None. Every parser failure is a reason here, never an exception."""
    fields = text.split()
    if text.lstrip().startswith(("---- BEGIN SSH2", "-----BEGIN")):
        return ("it is in PEM/RFC 4716 form; give the one-line OpenSSH form "
                "(ssh-keygen -i -f key.pub converts it)")
    if len(fields) < 2:
        return "it is not in OpenSSH's one-line form: TYPE BASE64 [COMMENT]"
    kind, body = fields[0], fields[1]
    if kind in _SECURITY_KEY_TYPES:
        return _security_key_problem(kind, body)
    try:
        load_ssh_public_key(f"{kind} {body}".encode())
    except UnsupportedAlgorithm:
        return f"{kind[:40]!r} is not an OpenSSH public key type (ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa, ...)"
    except (ValueError, TypeError) as err:
        return f"it does not parse ({err})"
    return None


def _security_key_problem(kind: str, body: str) -> str | None:
    """FIDO keys (``sk-...``): valid for OpenSSH, unknown to ``cryptography``; the key data must
    at least be base64 of a blob that names the same type."""
    try:
        blob = base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error):
        return f"its key data is not base64 ({kind})"
    length = int.from_bytes(blob[:4], "big")
    return None if blob[4:4 + length] == kind.encode() else f"its key data is not a {kind} key"


def url_problem(text: str, *, path_suffixes: tuple[str, ...] = ()) -> str | None:
    """Why ``text`` is not a whole https:// URL (scheme, host, port 1-65535, no credentials,
    query or fragment, the path ending as asked), or None."""
    try:
        parts: SplitResult = urlsplit(text)
        port = parts.port
    except ValueError as err:  # a bad port or IPv6 literal
        return f"must be a well-formed https:// URL ({err})"
    host = parts.hostname or ""
    rules = (
        (any(c.isspace() for c in text), "must be an https:// URL without spaces"),
        (parts.scheme != "https", "must be an https:// URL"),
        (not host or not (is_domain(host) or _is_ip(host)), "must name a host: a DNS name or an IP address"),
        (port == 0, "must have a port between 1 and 65535 (or none)"),
        (parts.username is not None or parts.password is not None, "must not carry credentials (user:password@)"),
        (bool(parts.query or parts.fragment), "must not have a query (?...) or fragment (#...)"),
        (bool(path_suffixes) and not parts.path.endswith(path_suffixes),
         f"must be the URL of a {' or '.join(path_suffixes)} file"),
    )
    return next((message for failed, message in rules if failed), None)


def _is_ip(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True


class _Checker:
    """Collects problems; each ``check_*`` returns the parsed value or None when it failed."""

    def __init__(self, schema: ProjectSchema):
        self.schema = schema
        self.problems: list[Problem] = []

    def fail(self, key: str, rule: str, value: Any, example: str, *, secret: bool = False) -> None:
        shown = "<secret, not shown>" if secret else repr(value)
        self.problems.append(Problem(self.schema.qualified(key), rule, shown, example))

    def label(self, key: str, value: str, example: str) -> str | None:
        if not is_hostname_label(value):
            self.fail(key, "must be an RFC 1123 host name: letters, digits and '-', 1-63 characters, "
                      "not starting or ending with '-'", value, example)
            return None
        return value

    def address(self, key: str, value: str, example: str, network: IPv4Network | None) -> IPv4Address | None:
        try:
            addr = IPv4Address(value)
        except ValueError:
            self.fail(key, "must be an IPv4 address", value, example)
            return None
        if network is not None:
            if addr not in network:
                self.fail(key, f"must be inside networkCidr {network}", value, example)
                return None
            if addr in (network.network_address, network.broadcast_address):
                self.fail(key, f"must be a host address, not the network or broadcast address of {network}",
                          value, example)
                return None
        return addr

    def in_range(self, key: str, value: int, low: int, high: int | None, *, example: str,
                 rule: str = "") -> int | None:
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            self.fail(key, rule or f"must be {bounds}", value, example)
            return None
        return value


# --- Reading --------------------------------------------------------------------------------


def _configured_keys(project: str) -> set[str]:
    """Every config key given to the program in the project namespace, declared or not."""
    keys = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    return {k.split(":", 1)[1] for k in keys if k.startswith(f"{project}:")}


def _parse(text: str, type_name: str) -> Any:
    """Parse a config value as the Pulumi runtime hands it over (strings; JSON for arrays)."""
    if type_name == "string":
        return text
    if type_name == "integer":
        return int(text)
    if type_name == "boolean":
        if text not in ("true", "false"):
            raise ValueError(text)
        return text == "true"
    return json.loads(text)


def _unknown_keys(schema: ProjectSchema, check: _Checker) -> None:
    """Report keys in the project namespace that Pulumi.yaml does not declare (typos)."""
    for name in sorted(_configured_keys(schema.project) - set(schema.keys)):
        close = difflib.get_close_matches(name, list(schema.keys), n=1)
        hint = f"{schema.qualified(close[0])}: ..." if close else "see the key table in README.md"
        qualified = schema.qualified(name)
        check.fail(name, "is not a setting of this project (declared in Pulumi.yaml)",
                   runtime_config.get_config(qualified), hint, secret=runtime_config.is_config_secret(qualified))


def _read_values(schema: ProjectSchema, check: _Checker) -> dict[str, Any]:
    """Each declared key's value (or its default), type-checked against Pulumi.yaml."""
    values: dict[str, Any] = {}
    for name, spec in schema.keys.items():
        text = runtime_config.get_config(schema.qualified(name))
        if text is None:
            if spec.required:
                how = "pulumi config set --secret" if spec.secret else "pulumi config set"
                check.fail(name, f"is required ({spec.description})", None, f"{how} {name} ...")
            else:
                values[name] = spec.default
            continue
        try:
            value = _parse(text, spec.type)
        except ValueError:
            value = text
        if not spec.accepts(value):
            check.fail(name, f"must be of type {spec.type_name()}", "<secret>" if spec.secret else value,
                       json.dumps(spec.default) if spec.default is not None else spec.description,
                       secret=spec.secret)
            continue
        values[name] = value
    return values


# --- Building -------------------------------------------------------------------------------


def _network(v: dict[str, Any], check: _Checker) -> NetworkSettings | None:
    domain = v["domain"]
    if not is_domain(domain):
        check.fail("domain", "must be a DNS domain of RFC 1123 labels separated by dots", domain, "home.arpa")
    try:
        cidr = IPv4Network(v["networkCidr"])
    except ValueError:
        check.fail("networkCidr", "must be an IPv4 network with its host bits zero",
                   v["networkCidr"], "192.168.50.0/24")
        return None
    if cidr.prefixlen > 29:
        check.fail("networkCidr", "must leave room for the VMs and the VIP (prefix at most /29)",
                   v["networkCidr"], "192.168.50.0/24")
    gateway = check.address("networkGateway", v["networkGateway"], str(cidr.network_address + 1), cidr)
    dns = tuple(
        a for i, s in enumerate(v["dnsServers"])
        if (a := check.address(f"dnsServers[{i}]", s, "192.168.50.1", None)) is not None
    )
    if not _IFACE.match(v["bridge"]):
        check.fail("bridge", "must be a network interface name: 1-15 of letters, digits, '_', '.', '-'",
                   v["bridge"], "vmbr0")
    vlan = check.in_range("vlanId", v["vlanId"], 0, 4094, example="0 (untagged) or 20",
                          rule="must be 0 (untagged) or a VLAN tag between 1 and 4094")
    if gateway is None or vlan is None:
        return None
    return NetworkSettings(domain=domain, cidr=cidr, gateway=gateway, dns_servers=dns or (gateway,),
                           bridge=v["bridge"], vlan_id=vlan or None)


def _proxmox(v: dict[str, Any], check: _Checker, token: pulumi.Output[str] | None) -> ProxmoxSettings | None:
    endpoint = v.get("proxmoxEndpoint")
    if endpoint is not None:
        problem = url_problem(endpoint)
        if problem:
            check.fail("proxmoxEndpoint", f"{problem} (the Proxmox VE API)", endpoint, "https://pve.home.arpa:8006/")
    raw_token = runtime_config.get_config(check.schema.qualified("proxmoxApiToken"))
    if raw_token is not None and not _API_TOKEN.match(raw_token):
        check.fail("proxmoxApiToken", "must be a Proxmox API token USER@REALM!TOKENID=UUID", None,
                   "root@pam!pulumi=01234567-89ab-cdef-0123-456789abcdef", secret=True)
    check.label("proxmoxNode", v["proxmoxNode"], "pve")
    for key in ("objectStoreProxmoxNode", "grafanaProxmoxNode"):  # empty: proxmoxNode
        if v[key]:
            check.label(key, v[key], "pve")
    for i, node in enumerate(v["lokiProxmoxNodes"]):
        check.label(f"lokiProxmoxNodes[{i}]", node, "pve")
    for key in ("proxmoxImageDatastore", "proxmoxSnippetDatastore", "proxmoxVmDatastore"):
        if not _DATASTORE.match(v[key]):
            check.fail(key, "must be a Proxmox storage id (a letter, then letters, digits, '-', '_', '.')",
                       v[key], "local-lvm")
    if not _UNIX_USER.match(v["proxmoxSshUser"]):
        check.fail("proxmoxSshUser", "must be a user name on the Proxmox nodes", v["proxmoxSshUser"], "root")
    image = _cloud_image(v, check)
    if endpoint is None or token is None or image is None:
        return None
    return ProxmoxSettings(endpoint=endpoint, api_token=token, insecure=v["proxmoxInsecure"],
                           ssh_user=v["proxmoxSshUser"], image_datastore=v["proxmoxImageDatastore"],
                           snippet_datastore=v["proxmoxSnippetDatastore"],
                           vm_datastore=v["proxmoxVmDatastore"], cloud_image=image)


def _cloud_image(v: dict[str, Any], check: _Checker) -> CloudImageSettings | None:
    url, checksum, algorithm = v["cloudImageUrl"], v["cloudImageChecksum"], v["cloudImageChecksumAlgorithm"]
    example_url = "https://cloud.debian.org/images/cloud/bookworm/20250210-2019/debian-12-genericcloud-amd64-20250210-2019.qcow2"
    ok = True
    problem = url_problem(url, path_suffixes=(".qcow2", ".img"))
    if problem:
        check.fail("cloudImageUrl", f"{problem} (a cloud image)", url, example_url)
        ok = False
    elif "/latest/" in urlsplit(url).path or "latest" in urlsplit(url).path.rsplit("/", 1)[-1]:
        check.fail("cloudImageUrl", "must name a dated build, not 'latest' (its checksum changes under you)",
                   url, example_url)
        ok = False
    if algorithm not in _CHECKSUM_LENGTHS:
        check.fail("cloudImageChecksumAlgorithm", f"must be one of {sorted(_CHECKSUM_LENGTHS)}", algorithm, "sha512")
        return None
    if not re.fullmatch(f"[0-9a-f]{{{_CHECKSUM_LENGTHS[algorithm]}}}", checksum):
        check.fail("cloudImageChecksum",
                   f"must be the {_CHECKSUM_LENGTHS[algorithm]}-digit lower-case hex {algorithm} of the image",
                   checksum, "the image's line in SHA512SUMS")
        ok = False
    return CloudImageSettings(url=url, checksum=checksum, checksum_algorithm=algorithm) if ok else None


def _ssh(v: dict[str, Any], check: _Checker) -> SshSettings | None:
    user = v["sshAdminUser"]
    if not _UNIX_USER.match(user) or user in _RESERVED_USERS:
        check.fail("sshAdminUser", "must be a Linux user name (lower case, at most 32 characters) that is "
                   f"not reserved ({', '.join(sorted(_RESERVED_USERS))})", user, "ops")
    keys = v.get("sshAdminKeys")
    if keys is None:
        return None
    example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... you@laptop"
    if not keys:
        check.fail("sshAdminKeys", "must list at least one OpenSSH public key", keys, example)
    for i, key in enumerate(keys):
        if "PRIVATE KEY" in key:
            check.fail(f"sshAdminKeys[{i}]", "must be a public key; this is a PRIVATE key, remove it from the "
                       "stack file and rotate it", None, example, secret=True)
            continue
        problem = public_key_problem(key)
        if problem:
            shown = key if len(key) <= 40 else key[:37] + "..."
            check.fail(f"sshAdminKeys[{i}]", f"must be an OpenSSH public key: {problem}", shown, example)
    return SshSettings(admin_user=user, admin_keys=tuple(keys))


@dataclass(frozen=True)
class _Placed:
    """A VM with the config keys its name and address came from (for error messages)."""

    vm: VmSettings
    name_key: str
    address_key: str


def _role_vms(
    v: dict[str, Any], check: _Checker, network: NetworkSettings | None
) -> tuple[list[_Placed], list[_Placed], list[_Placed]]:
    """The Loki nodes, the object store and Grafana; each list is empty where a problem was reported."""
    cidr = network.cidr if network else None
    domain = v["domain"]
    host = str(cidr.network_address + 21) if cidr else "192.168.50.21"

    def sizes(prefix: str, *, needs_data: bool) -> dict[str, int] | None:
        cores = check.in_range(f"{prefix}Cores", v[f"{prefix}Cores"], 1, 64, example="2")
        memory = check.in_range(f"{prefix}MemoryMiB", v[f"{prefix}MemoryMiB"], MIN_MEMORY_MIB, None, example="4096")
        disk = check.in_range(f"{prefix}DiskGiB", v[f"{prefix}DiskGiB"], MIN_DISK_GIB, None, example="16")
        data = v[f"{prefix}DataDiskGiB"]
        if needs_data:
            data = check.in_range(f"{prefix}DataDiskGiB", data, MIN_DATA_DISK_GIB, None, example="50",
                                  rule=f"must be at least {MIN_DATA_DISK_GIB}: this role keeps its data there")
        else:
            data = check.in_range(f"{prefix}DataDiskGiB", data, 0, None, example="0")
        if None in (cores, memory, disk, data):
            return None
        return {"cores": cores, "memory_mib": memory, "disk_gib": disk, "data_disk_gib": data}  # type: ignore[dict-item]

    def vm(role: str, *, name_key: str, name: str, addr_key: str, addr: str, node: str,
           size: dict[str, int] | None) -> list[_Placed]:
        label = check.label(name_key, name, "loki-01")
        ip = check.address(addr_key, addr, host, cidr)
        if label is None or ip is None or size is None:
            return []
        return [_Placed(VmSettings(name=name, fqdn=f"{name}.{domain}", role=role, address=ip,
                                   proxmox_node=node or v["proxmoxNode"], **size), name_key, addr_key)]

    names, addresses, pnodes = v["lokiNodes"], v.get("lokiAddresses"), v["lokiProxmoxNodes"]
    if len(names) == 2 or not names:
        check.fail("lokiNodes", "must list 1 node (single-node mode) or at least 3 (replication factor 3 "
                   "needs 3 replicas)", names, '["loki-01", "loki-02", "loki-03"]')
    if addresses is not None and len(addresses) != len(names):
        check.fail("lokiAddresses", f"must give one address per entry of lokiNodes ({len(names)})",
                   addresses, json.dumps([str(IPv4Address(host) + i) for i in range(len(names))]))
        addresses = None
    if pnodes and len(pnodes) != len(names):
        check.fail("lokiProxmoxNodes", f"must be empty or give one Proxmox node per entry of lokiNodes "
                   f"({len(names)})", pnodes, json.dumps(["pve1", "pve2", "pve3"][: len(names)]))
        pnodes = []
    loki_size = sizes("loki", needs_data=True)
    loki = [
        placed
        for i, (name, address) in enumerate(zip(names, addresses or [], strict=False))
        for placed in vm("loki", name_key=f"lokiNodes[{i}]", name=name, addr_key=f"lokiAddresses[{i}]",
                         addr=address, node=pnodes[i] if pnodes else "", size=loki_size)
    ]
    store = vm("objectstore", name_key="objectStoreName", name=v["objectStoreName"], addr_key="objectStoreAddress",
               addr=v["objectStoreAddress"], node=v["objectStoreProxmoxNode"],
               size=sizes("objectStore", needs_data=True))
    grafana = vm("grafana", name_key="grafanaName", name=v["grafanaName"], addr_key="grafanaAddress",
                 addr=v["grafanaAddress"], node=v["grafanaProxmoxNode"], size=sizes("grafana", needs_data=False))
    return (loki if len(loki) == len(names) else []), store, grafana


def _vip(v: dict[str, Any], check: _Checker, network: NetworkSettings | None) -> VipSettings | None:
    hostname = check.label("vipHostname", v["vipHostname"], "loki")
    router_id = check.in_range("vipRouterId", v["vipRouterId"], 1, 255, example="51",
                               rule="must be a VRRP virtual router id between 1 and 255")
    advert = check.in_range("vipAdvertInterval", v["vipAdvertInterval"], 1, 255, example="1",
                            rule="must be whole seconds between 1 and 255 (VRRPv2)")
    interval = check.in_range("vipCheckInterval", v["vipCheckInterval"], 1, 60, example="2")
    fall = check.in_range("vipCheckFall", v["vipCheckFall"], 1, 10, example="2")
    rise = check.in_range("vipCheckRise", v["vipCheckRise"], 1, 10, example="2")
    grace = check.in_range("vipLokiGraceSeconds", v["vipLokiGraceSeconds"], 0, 600, example="60",
                           rule="must be whole seconds between 0 and 600 (0: no grace)")
    if len(v["lokiNodes"]) > MAX_LOKI_NODES:
        check.fail("lokiNodes", f"must list at most {MAX_LOKI_NODES} nodes (each needs its own VRRP priority "
                   "below 255 and a health-check weight that outweighs them all)", v["lokiNodes"],
                   '["loki-01", "loki-02", "loki-03"]')
    if v.get("vipAddress") is None or network is None:
        return None
    address = check.address("vipAddress", v["vipAddress"], str(network.cidr.network_address + 20), network.cidr)
    if (address is None or hostname is None or router_id is None or advert is None or interval is None
            or fall is None or rise is None or grace is None):
        return None
    return VipSettings(address=address, hostname=hostname, fqdn=f"{hostname}.{v['domain']}", router_id=router_id,
                       advert_interval=advert, nopreempt=v["vipNoPreempt"], check_interval=interval,
                       check_fall=fall, check_rise=rise, loki_grace_s=grace)


def _unique(check: _Checker, entries: Iterable[tuple[str, str, str]], what: str, example: Callable[[str], str]) -> None:
    """Report every (key, value) whose value an earlier entry already uses."""
    seen: dict[str, str] = {}
    for key, value, shown in entries:
        if value in seen:
            check.fail(key, f"must be unique: {seen[value]} already uses this {what}", shown, example(shown))
        else:
            seen[value] = key


def _loki(v: dict[str, Any], check: _Checker, nodes: tuple[VmSettings, ...]) -> LokiSettings | None:
    version = v["lokiVersion"]
    match = _LOKI_VERSION.match(version)
    if not match or int(match.group(1)) < MIN_LOKI_MINOR:
        rule = ("must be a pinned release, not a moving tag" if not re.match(r"^\d", version)
                else f"must be a pinned Loki release 3.{MIN_LOKI_MINOR}.0 or later in 3.x, as X.Y.Z")
        check.fail("lokiVersion", rule, version, "3.7.6")
    seconds = duration_seconds(v["lokiRetention"])
    if seconds is None:
        check.fail("lokiRetention", "must be a Loki duration: a number and unit (y, w, d, h, m, s, ms), "
                   "largest unit first", v["lokiRetention"], "744h")
    elif 0 < seconds < MIN_RETENTION_SECONDS:
        check.fail("lokiRetention", "must be at least 24h (Loki's index period), or 0s to keep logs forever",
                   v["lokiRetention"], "744h")
    rate = check.in_range("lokiIngestionRateMb", v["lokiIngestionRateMb"], 1, MAX_INGESTION_MB, example="16")
    burst = v["lokiIngestionBurstMb"]
    if rate is not None:
        check.in_range("lokiIngestionBurstMb", burst, rate, MAX_INGESTION_MB, example=str(max(64, rate)),
                       rule=f"must be at least lokiIngestionRateMb ({rate}) and at most {MAX_INGESTION_MB}: the "
                            "burst is what Loki takes at once above the rate, and a push larger than it is refused")
    query_timeout = check.in_range("lokiQueryTimeoutSeconds", v["lokiQueryTimeoutSeconds"], MIN_QUERY_TIMEOUT_S,
                                   MAX_QUERY_TIMEOUT_S, example=str(DEFAULT_QUERY_TIMEOUT_S),
                                   rule=f"must be whole seconds between {MIN_QUERY_TIMEOUT_S} and "
                                        f"{MAX_QUERY_TIMEOUT_S}")
    schema_from = v["lokiSchemaFrom"]
    try:
        day = datetime.date.fromisoformat(schema_from)
        if len(schema_from) != 10 or day > datetime.datetime.now(datetime.UTC).date():
            raise ValueError(schema_from)
    except ValueError:
        check.fail("lokiSchemaFrom", "must be a date YYYY-MM-DD that is not in the future (Loki needs a schema "
                   "for today); keep it once data exists", schema_from, "2025-01-01")
        return None
    retiring = _retiring(v, check)
    if not nodes or retiring is None or query_timeout is None:
        return None
    return LokiSettings(version=version, retention=v["lokiRetention"], ingestion_rate_mb=v["lokiIngestionRateMb"],
                        ingestion_burst_mb=burst, vms=nodes, retiring=retiring, schema_from=schema_from,
                        internal_tls=v["lokiInternalTls"], require_client_certs=v["lokiRequireClientCerts"],
                        query_timeout_s=query_timeout)


def _retiring(v: dict[str, Any], check: _Checker) -> frozenset[str] | None:
    """``lokiRetiring``: nodes of ``lokiNodes``, each once, leaving at least 3 (replication factor 3)."""
    names, retiring = list(v["lokiNodes"]), list(v["lokiRetiring"])
    example = json.dumps(names[-1:]) if len(names) > 3 else '[]'
    problems = 0
    for i, name in enumerate(retiring):
        if name not in names:
            check.fail(f"lokiRetiring[{i}]", "must name a node of lokiNodes (remove a node from lokiNodes only in the "
                       "run after it retired)", name, example)
            problems += 1
        elif name in retiring[:i]:
            check.fail(f"lokiRetiring[{i}]", "must name each node once", name, example)
            problems += 1
    if not problems and retiring and len(names) - len(retiring) < 3:
        check.fail("lokiRetiring", f"must leave at least 3 of the {len(names)} nodes of lokiNodes running "
                   "(replication factor 3; single-node mode cannot be reached by retiring nodes)", retiring, example)
        problems += 1
    return None if problems else frozenset(retiring)


def _pki(v: dict[str, Any], check: _Checker) -> PkiSettings | None:
    validity = check.in_range("certValidityHours", v["certValidityHours"], 24, 5 * 8760, example="8760")
    early = check.in_range("certEarlyRenewalHours", v["certEarlyRenewalHours"], 1, None, example="720")
    ca = v["caValidityHours"]
    if validity is not None and early is not None and early >= validity:
        check.fail("certEarlyRenewalHours", f"must be less than certValidityHours ({validity}), or every "
                   "`pulumi up` renews every certificate", early, str(min(720, validity // 4)))
        return None
    if validity is not None and ca < 2 * validity:
        check.fail("caValidityHours", f"must be at least twice certValidityHours ({2 * validity}): the CA "
                   "is renewed certValidityHours before its end", ca, "87600")
        return None
    revoked: list[str] = []
    bad = False
    for i, text in enumerate(v["certRevokedSerials"]):
        serial = normalized_serial(str(text))
        if serial is None:
            bad = True
            check.fail(f"certRevokedSerials[{i}]", "must be a certificate's serial number in hex (as `openssl x509 "
                       "-noout -serial` or the output clientCertificateSerials shows it)", text,
                       '"5A3C9E1F0B7D2468ACE13579BDF02468"')
        elif serial not in revoked:
            revoked.append(serial)
    if validity is None or early is None or bad:
        return None
    return PkiSettings(validity_hours=validity, early_renewal_hours=early, ca_validity_hours=ca,
                       revoked_serials=tuple(revoked))


def _object_store(v: dict[str, Any], check: _Checker, vm: VmSettings | None) -> ObjectStoreSettings | None:
    bucket, user, url, digest = (v["objectStoreBucket"], v["objectStoreRootUser"], v["objectStorePackageUrl"],
                                 v["objectStorePackageSha256"])
    ok = True
    if not _BUCKET.match(bucket) or ".." in bucket or re.fullmatch(r"[\d.]+", bucket):
        check.fail("objectStoreBucket", "must be an S3 bucket name: 3-63 lower-case letters, digits, '.' and '-', "
                   "starting and ending with a letter or digit, not an IP address", bucket, "loki")
        ok = False
    if not _ROOT_USER.match(user):
        check.fail("objectStoreRootUser", "must be 3-64 letters, digits, '_', '.' or '-'", user, "lokistack-admin")
        ok = False
    elif user in (LOKI_USER, METRICS_USER):
        check.fail("objectStoreRootUser", f"must not be a user the stack makes ({LOKI_USER}, {METRICS_USER})", user,
                   "lokistack-admin")
        ok = False
    problem = url_problem(url, path_suffixes=(".tar.gz", ".tgz"))
    if problem or "latest" in urlsplit(url).path:
        check.fail("objectStorePackageUrl", f"{problem or 'must be pinned, not latest'} (a pinned release archive)",
                   url, "https://github.com/pgsty/silo/releases/download/RELEASE.2026-08-06T00-00-00Z/"
                   "silo_20260806000000.0.0_linux_amd64.tar.gz")
        ok = False
    if not re.fullmatch("[0-9a-f]{64}", digest):
        check.fail("objectStorePackageSha256", "must be the 64-digit lower-case hex SHA-256 of the archive", digest,
                   "d63d57cc7f0535e1aa116f9e5f42117dbfc4f63492da692b64d3ba6ded30e574")
        ok = False
    if not ok or vm is None:
        return None
    return ObjectStoreSettings(vm=vm, bucket=bucket, root_user=user, package_url=url, package_sha256=digest)


_RELEASE = re.compile(r"^\d+\.\d+\.\d+$")


def _release(v: dict[str, Any], check: _Checker, key: str, example: str) -> str | None:
    if not _RELEASE.match(v[key]):
        check.fail(key, "must be a pinned release X.Y.Z (not 'latest')", v[key], example)
        return None
    return str(v[key])


def _agents(v: dict[str, Any], check: _Checker) -> AgentSettings | None:
    version = _release(v, check, "alloyVersion", "1.21.2")
    hosts = []
    example = "backup-01 192.168.50.60 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA..."
    for i, entry in enumerate(v["agentExtraHosts"]):
        key = f"agentExtraHosts[{i}]"
        parts = entry.split(maxsplit=2)
        if len(parts) != 3:
            check.fail(key, 'must be "NAME ADDRESS HOSTKEY"', entry, example)
            continue
        name, address, host_key = parts
        if _is_ip(name) or not _is_ip(address):
            check.fail(key, 'must be "NAME ADDRESS HOSTKEY" in this order: a host name, its IPv4 address, its SSH '
                       "host key", entry if len(entry) <= 60 else entry[:57] + "...", example)
            continue
        label = check.label(key, name, "backup-01")
        ip = check.address(key, address, "192.168.50.60", None)
        problem = public_key_problem(host_key)
        if problem:
            check.fail(key, f"must end with the host's SSH host public key: {problem}", host_key[:40], example)
            continue
        if label is not None and ip is not None:
            hosts.append(ExtraHost(name=name, address=ip, host_key=host_key))
    if version is None or len(hosts) != len(v["agentExtraHosts"]):
        return None
    return AgentSettings(alloy_version=version, extra_hosts=tuple(hosts))


def load_settings(schema: ProjectSchema | None = None) -> Settings:
    """Read, check and return the stack's settings; raise SettingsError listing every problem."""
    schema = schema or load_schema()
    check = _Checker(schema)
    v = _read_values(schema, check)
    blocking = bool(check.problems)  # a missing or mistyped key: the rules below would only repeat it
    _unknown_keys(schema, check)  # a typo of a key explains a missing one: report both
    if blocking:
        raise SettingsError(check.problems)

    token = pulumi.Config().get_secret("proxmoxApiToken")
    network = _network(v, check)
    proxmox = _proxmox(v, check, token)
    ssh = _ssh(v, check)
    pki = _pki(v, check)
    loki_nodes, store, grafana = _role_vms(v, check, network)
    vip = _vip(v, check, network)
    loki = _loki(v, check, tuple(p.vm for p in loki_nodes))
    object_store = _object_store(v, check, store[0].vm if store else None)
    grafana_version = _release(v, check, "grafanaVersion", "13.2.3")
    agents = _agents(v, check)

    placed = [*loki_nodes, *store, *grafana]
    if network is not None:
        addresses = [("networkGateway", str(network.gateway))]
        addresses += [(p.address_key, str(p.vm.address)) for p in placed]
        addresses += [("vipAddress", str(vip.address))] if vip else []
        addresses += [(f"agentExtraHosts[{i}]", str(h.address)) for i, h in enumerate(agents.extra_hosts)] if (
            agents) else []
        used = {a for _, a in addresses}
        free = next((str(h) for h in network.cidr.hosts() if str(h) not in used), "another address")
        _unique(check, [(k, a, a) for k, a in addresses], "address", lambda shown: free)
    names = [(p.name_key, p.vm.name.lower(), p.vm.name) for p in placed]
    names += [("vipHostname", vip.hostname.lower(), vip.hostname)] if vip else []
    names += [(f"agentExtraHosts[{i}]", h.name.lower(), h.name) for i, h in enumerate(agents.extra_hosts)] if (
        agents) else []
    _unique(check, names, "host name", lambda shown: f"{shown}-2")

    if check.problems:
        raise SettingsError(check.problems)
    assert network and proxmox and ssh and pki and loki and vip and object_store and grafana  # all reported
    assert grafana_version and agents
    return Settings(network=network, proxmox=proxmox, ssh=ssh, pki=pki, loki=loki, vip=vip,
                    object_store=object_store, grafana=grafana[0].vm, grafana_version=grafana_version,
                    agents=agents)
