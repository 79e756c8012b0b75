"""The rules a setting must keep, and the error that lists every broken one.

``RANGES`` and ``PATTERNS`` hold the rules that are a range or a pattern of one key (the settings
reference, docs/settings.md, shows them next to each key); the checks across keys are in
``stack.config``.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from ipaddress import ip_address
from urllib.parse import SplitResult, urlsplit

import pulumi
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from components.timeouts import DEFAULT_QUERY_TIMEOUT_S, MAX_QUERY_TIMEOUT_S, MIN_QUERY_TIMEOUT_S


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


class SettingsError(pulumi.RunError):
    """Raised by ``load_settings`` with every problem found; nothing has been created yet.

    A ``pulumi.RunError``: Pulumi's Python language host (``pulumi-language-python-exec``) catches it
    and logs ``str(error)`` alone (``except pulumi.RunError as e: pulumi.log.error(str(e))``); any
    other exception is logged with ``traceback.format_exc()``."""

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
_RELEASE = re.compile(r"^\d+\.\d+\.\d+$")


@dataclass(frozen=True)
class Range:
    """An integer setting's bounds (``high`` None: no upper bound)."""

    low: int
    high: int | None
    example: str
    rule: str = ""

    def describe(self) -> str:
        bounds = f"between {self.low} and {self.high}" if self.high is not None else f"at least {self.low}"
        return self.rule or f"must be {bounds}"


@dataclass(frozen=True)
class Pattern:
    """A text setting's form."""

    regex: re.Pattern[str]
    rule: str
    example: str


def _sizes(prefix: str, *, data_min: int) -> dict[str, Range]:
    data_rule = f"must be at least {data_min}: this role keeps its data there" if data_min else ""
    return {
        f"{prefix}Cores": Range(1, 64, "2"),
        f"{prefix}MemoryMiB": Range(MIN_MEMORY_MIB, None, "4096"),
        f"{prefix}DiskGiB": Range(MIN_DISK_GIB, None, "16"),
        f"{prefix}DataDiskGiB": Range(data_min, None, "50" if data_min else "0", data_rule),
    }


RANGES: dict[str, Range] = {
    "vlanId": Range(0, 4094, "0 (untagged) or 20", "must be 0 (untagged) or a VLAN tag between 1 and 4094"),
    "vipRouterId": Range(1, 255, "51", "must be a VRRP virtual router id between 1 and 255"),
    "vipAdvertInterval": Range(1, 255, "1", "must be whole seconds between 1 and 255 (VRRPv2)"),
    "vipCheckInterval": Range(1, 60, "2"),
    "vipCheckFall": Range(1, 10, "2"),
    "vipCheckRise": Range(1, 10, "2"),
    "vipLokiGraceSeconds": Range(0, 600, "60", "must be whole seconds between 0 and 600 (0: no grace)"),
    "lokiIngestionRateMb": Range(1, MAX_INGESTION_MB, "16"),
    "lokiQueryTimeoutSeconds": Range(MIN_QUERY_TIMEOUT_S, MAX_QUERY_TIMEOUT_S, str(DEFAULT_QUERY_TIMEOUT_S),
                                     f"must be whole seconds between {MIN_QUERY_TIMEOUT_S} and {MAX_QUERY_TIMEOUT_S}"),
    "certValidityHours": Range(24, 5 * 8760, "8760"),
    "certEarlyRenewalHours": Range(1, None, "720"),
    **_sizes("loki", data_min=MIN_DATA_DISK_GIB),
    **_sizes("objectStore", data_min=MIN_DATA_DISK_GIB),
    **_sizes("grafana", data_min=0),
}
"""Every integer setting whose rule is a range of its own value (cross-key rules are in stack.config)."""

_DATASTORE_RULE = Pattern(_DATASTORE, "must be a Proxmox storage id (a letter, then letters, digits, '-', '_', '.')",
                          "local-lvm")
_PINNED = "must be a pinned release X.Y.Z (not 'latest')"
PATTERNS: dict[str, Pattern] = {
    "bridge": Pattern(_IFACE, "must be a network interface name: 1-15 of letters, digits, '_', '.', '-'", "vmbr0"),
    "proxmoxImageDatastore": _DATASTORE_RULE,
    "proxmoxSnippetDatastore": _DATASTORE_RULE,
    "proxmoxVmDatastore": _DATASTORE_RULE,
    "proxmoxSshUser": Pattern(_UNIX_USER, "must be a user name on the Proxmox nodes", "root"),
    "objectStorePackageSha256": Pattern(re.compile("^[0-9a-f]{64}$"),
                                        "must be the 64-digit lower-case hex SHA-256 of the archive",
                                        "d63d57cc7f0535e1aa116f9e5f42117dbfc4f63492da692b64d3ba6ded30e574"),
    "alloyVersion": Pattern(_RELEASE, _PINNED, "1.21.2"),
    "grafanaVersion": Pattern(_RELEASE, _PINNED, "13.2.3"),
}
"""Every text setting whose rule is a pattern of its own value alone."""


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
