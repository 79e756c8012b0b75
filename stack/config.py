"""Settings: the only reader of ``pulumi.Config``.

``load_settings()`` reads every key declared in Pulumi.yaml (falling back to its default, as the
CLI does), checks it against the rules (``stack.rules``), and returns the frozen dataclasses of
``stack.settings``. Every problem is reported before any resource exists, all at once, each naming
the key, the rule, the value and a valid example; ``SettingsError`` is a ``pulumi.RunError``, which
the Pulumi CLI prints without a traceback.
"""

from __future__ import annotations

import datetime
import difflib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any
from urllib.parse import urlsplit

import pulumi
from pulumi.runtime import config as runtime_config

from components.objectstore import LOKI_USER, METRICS_USER
from components.pki import normalized_serial
from stack.rules import (
    _API_TOKEN,
    _BUCKET,
    _CHECKSUM_LENGTHS,
    _LOKI_VERSION,
    _RESERVED_USERS,
    _ROOT_USER,
    _UNIX_USER,
    MAX_INGESTION_MB,
    MAX_LOKI_NODES,
    MIN_LOKI_MINOR,
    MIN_RETENTION_SECONDS,
    PATTERNS,
    RANGES,
    Problem,
    SettingsError,
    _is_ip,
    duration_seconds,
    is_domain,
    is_hostname_label,
    public_key_problem,
    url_problem,
)
from stack.schema import ProjectSchema, load_schema
from stack.settings import (
    AgentSettings,
    CloudImageSettings,
    ExtraHost,
    LokiSettings,
    NetworkSettings,
    ObjectStoreSettings,
    PkiSettings,
    ProxmoxSettings,
    Settings,
    SshSettings,
    VipSettings,
    VmSettings,
)


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

    def in_range(self, key: str, value: int) -> int | None:
        """``value`` if ``RANGES[key]`` holds it."""
        allowed = RANGES[key]
        if value < allowed.low or (allowed.high is not None and value > allowed.high):
            self.fail(key, allowed.describe(), value, allowed.example)
            return None
        return value

    def matches(self, key: str, value: str) -> str | None:
        """``value`` if it has the form ``PATTERNS[key]``."""
        form = PATTERNS[key]
        if not form.regex.match(value):
            self.fail(key, form.rule, value, form.example)
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
    check.matches("bridge", v["bridge"])
    vlan = check.in_range("vlanId", v["vlanId"])
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
    for key in ("proxmoxImageDatastore", "proxmoxSnippetDatastore", "proxmoxVmDatastore", "proxmoxSshUser"):
        check.matches(key, v[key])
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

    def sizes(prefix: str) -> dict[str, int] | None:
        size = {field: check.in_range(f"{prefix}{key}", v[f"{prefix}{key}"])
                for field, key in (("cores", "Cores"), ("memory_mib", "MemoryMiB"), ("disk_gib", "DiskGiB"),
                                   ("data_disk_gib", "DataDiskGiB"))}
        return None if None in size.values() else size  # type: ignore[return-value]

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
    loki_size = sizes("loki")
    loki = [
        placed
        for i, (name, address) in enumerate(zip(names, addresses or [], strict=False))
        for placed in vm("loki", name_key=f"lokiNodes[{i}]", name=name, addr_key=f"lokiAddresses[{i}]",
                         addr=address, node=pnodes[i] if pnodes else "", size=loki_size)
    ]
    store = vm("objectstore", name_key="objectStoreName", name=v["objectStoreName"], addr_key="objectStoreAddress",
               addr=v["objectStoreAddress"], node=v["objectStoreProxmoxNode"],
               size=sizes("objectStore"))
    grafana = vm("grafana", name_key="grafanaName", name=v["grafanaName"], addr_key="grafanaAddress",
                 addr=v["grafanaAddress"], node=v["grafanaProxmoxNode"], size=sizes("grafana"))
    return (loki if len(loki) == len(names) else []), store, grafana


def _vip(v: dict[str, Any], check: _Checker, network: NetworkSettings | None) -> VipSettings | None:
    hostname = check.label("vipHostname", v["vipHostname"], "loki")
    router_id, advert, interval, fall, rise, grace = (
        check.in_range(key, v[key]) for key in ("vipRouterId", "vipAdvertInterval", "vipCheckInterval", "vipCheckFall",
                                                "vipCheckRise", "vipLokiGraceSeconds"))
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
    rate = check.in_range("lokiIngestionRateMb", v["lokiIngestionRateMb"])
    burst = v["lokiIngestionBurstMb"]
    if rate is not None and not rate <= burst <= MAX_INGESTION_MB:
        check.fail("lokiIngestionBurstMb", f"must be at least lokiIngestionRateMb ({rate}) and at most "
                   f"{MAX_INGESTION_MB}: the burst is what Loki takes at once above the rate, and a push larger "
                   "than it is refused", burst, str(max(64, rate)))
    query_timeout = check.in_range("lokiQueryTimeoutSeconds", v["lokiQueryTimeoutSeconds"])
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
    validity = check.in_range("certValidityHours", v["certValidityHours"])
    early = check.in_range("certEarlyRenewalHours", v["certEarlyRenewalHours"])
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
    if check.matches("objectStorePackageSha256", digest) is None:
        ok = False
    if not ok or vm is None:
        return None
    return ObjectStoreSettings(vm=vm, bucket=bucket, root_user=user, package_url=url, package_sha256=digest)


def _agents(v: dict[str, Any], check: _Checker) -> AgentSettings | None:
    version = check.matches("alloyVersion", v["alloyVersion"])
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
    grafana_version = check.matches("grafanaVersion", v["grafanaVersion"])
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
