"""A local stand-in for the Pulumi engine and the cloud, used by the offline plan and by the tests.

``FakeCloud`` answers resource registrations as the real providers would: ids, and computed
outputs such as real private keys (made with ``cryptography``, derived from the resource name so
that two runs of the same program give the same keys and the same manifest). Provider-computed
secrets come back marked secret, as the real engine marks them. ``RecordingMonitor`` keeps every
registration with its parent, dependencies and options. ``run()`` runs a program under both and
resolves what it returns.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import ipaddress
import json
import shlex
import struct
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pulumi.runtime import config as runtime_config
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as runtime_settings

SECRET_SIG = "4dabf18193072939515e22adb298388d"  # noqa: S105 (a format marker, not a password)
"""The property-value signature the Pulumi SDK uses for a secret."""
_SECRET_MARK = "1b47061264138c4ac30d75fd1eb44270"  # noqa: S105 (a format marker)
UNKNOWN = rpc.UNKNOWN
"""How the SDK hands the engine a value that is not known yet (preview)."""


def secret(value: Any) -> dict[str, Any]:
    """``value`` wrapped as a secret property value, as the engine sends secret outputs."""
    return {SECRET_SIG: _SECRET_MARK, "value": value}


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) == _SECRET_MARK


def unwrap(value: Any) -> Any:
    """``value`` with every secret wrapper replaced by what it holds."""
    if is_secret(value):
        return unwrap(value["value"])
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def canonical_hash(value: Any) -> str:
    """sha256 of a property map in canonical JSON (sorted keys, secrets included as they are)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# --- Fake providers -----------------------------------------------------------------------
# (This module imports nothing of the project: the upgrade rehearsal runs earlier versions of the
# program with it, whose trees may not have this version's other modules.)

PROXMOX_OUI = "bc:24:11"
"""Proxmox's prefix for the MACs it generates (a VM without ``mac_address`` gets one)."""
PROBE_SUFFIX = "-host-key-probe"
"""``components.proxmox_vm.PROBE_SUFFIX``: the local command that finds which SSH host key a VM presents."""


def generated_mac(vm_name: str, index: int, generation: int = 0) -> str:
    """A stand-in for the MAC Proxmox picks when none is configured (random there, fixed here): a VM
    created anew (``generation`` 1, 2, ...) gets another one, as a real one would."""
    tail = hashlib.sha256(f"{vm_name}/net{index}".encode() + (f"#{generation}".encode() if generation else b"")
                          ).digest()[:3]
    return f"{PROXMOX_OUI}:" + ":".join(f"{b:02x}" for b in tail)


def script_parameters(script: str) -> dict[str, str]:
    """The ``NAME=value`` lines ``components.scripts.render_script`` puts at a script's top."""
    found: dict[str, str] = {}
    for line in script.splitlines()[1:]:
        name, sep, value = line.partition("=")
        if not sep or not name.isidentifier() or not name.isupper():
            if found:
                break
            continue
        found[name] = " ".join(shlex.split(value))
    return found


def probe_answer(name: str, stdin: str, presented: Mapping[str, str]) -> str:
    """What the host-key probe prints: the key the VM at its address presents (``presented``: address ->
    key; none there: a new VM, which presents its bootstrap key), if it is one of the two it may have."""
    params = script_parameters(stdin)
    bootstrap, own = (" ".join(params[k].split()[:2]) for k in ("BOOTSTRAP_KEY", "OWN_KEY"))
    seen = " ".join(presented.get(params["ADDRESS"], bootstrap).split()[:2])
    if seen not in (bootstrap, own):
        raise RuntimeError(f"{name}: {params['ADDRESS']} presents the SSH host key {seen!r}, neither its "
                           "bootstrap key nor its own")
    return seen + "\n"



def _seed(*parts: str) -> bytes:
    return hashlib.sha256("\0".join(parts).encode()).digest()


_CURVES: dict[str, ec.EllipticCurve] = {
    "P224": ec.SECP224R1(), "P256": ec.SECP256R1(), "P384": ec.SECP384R1(), "P521": ec.SECP521R1(),
}


def _openssh_private(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
                     seed: bytes) -> str:
    """OpenSSH private key format with a check word derived from ``seed`` (OpenSSH picks it at
    random, which would make every plan differ)."""
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()).decode()
    body = base64.b64decode("".join(pem.strip().splitlines()[1:-1]))
    pos = len(b"openssh-key-v1\0")
    for _ in range(3):  # cipher name, kdf name, kdf options
        pos += 4 + struct.unpack(">I", body[pos:pos + 4])[0]
    pos += 4  # number of keys
    pos += 4 + struct.unpack(">I", body[pos:pos + 4])[0]  # public key
    pos += 4  # length of the private section; it starts with the check word, twice
    body = body[:pos] + seed[:4] * 2 + body[pos + 8:]
    b64 = base64.b64encode(body).decode()
    lines = [b64[i:i + 70] for i in range(0, len(b64), 70)]
    return "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END OPENSSH PRIVATE KEY-----\n"


def fake_private_key(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Outputs of ``tls.PrivateKey`` for a real key derived from the resource name."""
    algorithm = inputs.get("algorithm", "RSA")
    seed = _seed("tls.PrivateKey", name, algorithm, str(inputs.get("ecdsaCurve")), str(inputs.get("rsaBits")))
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if algorithm == "ED25519":
        key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        traditional = ser.PrivateFormat.PKCS8
    elif algorithm == "ECDSA":
        curve = _CURVES[inputs.get("ecdsaCurve", "P224")]
        scalar = int.from_bytes(hashlib.sha512(seed).digest(), "big") % (2 ** (curve.key_size - 1)) + 1
        key = ec.derive_private_key(scalar, curve)
        traditional = ser.PrivateFormat.TraditionalOpenSSL
    elif algorithm == "RSA":  # random: RSA keys cannot be derived from a seed cheaply
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(inputs.get("rsaBits", 2048)))
        traditional = ser.PrivateFormat.TraditionalOpenSSL
    else:
        raise ValueError(f"tls.PrivateKey {name}: unknown algorithm {algorithm!r}")
    public = key.public_key()
    openssh_public = public.public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
    wire = base64.b64decode(openssh_public.split()[1])
    pem = key.private_bytes(ser.Encoding.PEM, traditional, ser.NoEncryption()).decode()
    pkcs8 = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()).decode()
    openssh = "" if algorithm == "ECDSA" and inputs.get("ecdsaCurve", "P224") == "P224" else _openssh_private(key, seed)
    return {
        **inputs,
        "privateKeyPem": secret(pem),
        "privateKeyPemPkcs8": secret(pkcs8),
        "privateKeyOpenssh": secret(openssh),
        "publicKeyPem": public.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo).decode(),
        "publicKeyOpenssh": openssh_public + "\n",
        "publicKeyFingerprintMd5": ":".join(f"{b:02x}" for b in hashlib.md5(wire).digest()),  # noqa: S324 (format, not security)
        "publicKeyFingerprintSha256": "SHA256:" + base64.b64encode(hashlib.sha256(wire).digest()).decode().rstrip("="),
    }


# The tls provider's allowed_uses, as Go's x509 package (which the provider uses) encodes them.
_KEY_USAGES = {
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
    "cert_signing", "crl_signing", "encipher_only", "decipher_only",
}
_EXTENDED_USAGES = {
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH, "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING, "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "timestamping": ExtendedKeyUsageOID.TIME_STAMPING, "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,
    "any_extended": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
}
_SUBJECT_FIELDS = {
    # In the order the TLS provider's subjects have: it builds a Go pkix.Name, whose
    # ToRDNSequence writes C, ST, L, street, postal code, O, OU, CN, serial number. Servers that
    # read a client's subject as one string (the Loki gateway) see exactly this order.
    "country": NameOID.COUNTRY_NAME, "province": NameOID.STATE_OR_PROVINCE_NAME, "locality": NameOID.LOCALITY_NAME,
    "postalCode": NameOID.POSTAL_CODE, "organization": NameOID.ORGANIZATION_NAME,
    "organizationalUnit": NameOID.ORGANIZATIONAL_UNIT_NAME, "commonName": NameOID.COMMON_NAME,
    "serialNumber": NameOID.SERIAL_NUMBER,
}


def _validity_start() -> datetime.datetime:
    """Start of the current UTC day: real certificates start now, and a whole day keeps plans
    made on the same day identical."""
    now = datetime.datetime.now(datetime.UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def _name(subject: dict[str, Any] | None) -> x509.Name:
    attributes = [x509.NameAttribute(oid, str(subject[key]))
                  for key, oid in _SUBJECT_FIELDS.items() if subject and subject.get(key)]
    return x509.Name(attributes)


def _sans(inputs: dict[str, Any]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in inputs.get("dnsNames") or []]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in inputs.get("ipAddresses") or []]
    names += [x509.UniformResourceIdentifier(u) for u in inputs.get("uris") or []]
    return names


def _load_key(pem: str) -> Any:
    return ser.load_pem_private_key(pem.encode(), password=None)


def _sign(builder: Any, key: Any) -> Any:
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    deterministic = True if isinstance(key, ec.EllipticCurvePrivateKey) else None  # RFC 6979: same plan, same bytes
    return builder.sign(key, algorithm, ecdsa_deterministic=deterministic)


def fake_certificate(name: str, inputs: dict[str, Any], *, subject: x509.Name, sans: list[x509.GeneralName],
                     public_key: Any, issuer: x509.Certificate | None, signing_key: Any,
                     renewed: bool = False) -> dict[str, Any]:
    """A certificate as terraform-provider-tls makes it with Go's x509.CreateCertificate: critical
    basic constraints and key usage, a subject key id for CAs (and when asked), the issuer's
    subject key id as authority key id, SANs as given (critical when the subject is empty)."""
    uses = list(inputs.get("allowedUses") or [])
    unknown = [u for u in uses if u not in _KEY_USAGES and u not in _EXTENDED_USAGES]
    if unknown:
        raise ValueError(f"tls certificate {name}: unknown allowed_uses {unknown}")
    is_ca = bool(inputs.get("isCaCertificate"))
    # A renewed certificate differs (its start, its serial) and is valid now, as a real one is:
    # it can be used at once (the rehearsal rolls the Loki nodes onto renewed certificates).
    start = _validity_start() + datetime.timedelta(seconds=1 if renewed else 0)
    end = start + datetime.timedelta(hours=int(inputs["validityPeriodHours"]))
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(public_key)
        .serial_number(int.from_bytes(_seed("serial", name + (" renewed" if renewed else ""))[:16], "big") >> 1 or 1)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    key_uses = {u for u in uses if u in _KEY_USAGES}
    if key_uses:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature="digital_signature" in key_uses, content_commitment="content_commitment" in key_uses,
            key_encipherment="key_encipherment" in key_uses, data_encipherment="data_encipherment" in key_uses,
            key_agreement="key_agreement" in key_uses, key_cert_sign="cert_signing" in key_uses,
            crl_sign="crl_signing" in key_uses, encipher_only="encipher_only" in key_uses,
            decipher_only="decipher_only" in key_uses), critical=True)
    extended = [_EXTENDED_USAGES[u] for u in uses if u in _EXTENDED_USAGES]
    if extended:
        builder = builder.add_extension(x509.ExtendedKeyUsage(extended), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=len(subject) == 0)
    if is_ca or inputs.get("setSubjectKeyId"):
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    if issuer is not None:
        try:
            ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        except x509.ExtensionNotFound:
            pass
    cert = _sign(builder, signing_key)
    return {
        **inputs,
        "certPem": cert.public_bytes(ser.Encoding.PEM).decode(),
        "validityStartTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "validityEndTime": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "readyForRenewal": False,
        "keyAlgorithm": "ECDSA" if isinstance(public_key, ec.EllipticCurvePublicKey) else "other",
    }


def fake_self_signed_cert(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    key = _load_key(inputs["privateKeyPem"])
    return fake_certificate(name, inputs, subject=_name(inputs.get("subject")), sans=_sans(inputs),
                            public_key=key.public_key(), issuer=None, signing_key=key)


def fake_cert_request(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    key = _load_key(inputs["privateKeyPem"])
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(inputs.get("subject")))
    sans = _sans(inputs)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = _sign(builder, key)
    return {**inputs, "certRequestPem": csr.public_bytes(ser.Encoding.PEM).decode(), "keyAlgorithm": "ECDSA"}


def fake_locally_signed_cert(name: str, inputs: dict[str, Any], *, renewed: bool = False) -> dict[str, Any]:
    csr = x509.load_pem_x509_csr(inputs["certRequestPem"].encode())
    if not csr.is_signature_valid:
        raise ValueError(f"tls.LocallySignedCert {name}: the certificate request's signature is invalid")
    issuer = x509.load_pem_x509_certificate(inputs["caCertPem"].encode())
    try:
        sans = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        sans = []
    state = fake_certificate(name, inputs, subject=csr.subject, sans=sans, public_key=csr.public_key(),
                             issuer=issuer, signing_key=_load_key(inputs["caPrivateKeyPem"]), renewed=renewed)
    state["caKeyAlgorithm"] = state.pop("keyAlgorithm")
    return state


def _unwrapped(inputs: dict[str, Any], key: str) -> Any:
    return unwrap(inputs.get(key))


FakeResource = Callable[["FakeCloud", str, dict[str, Any]], tuple[str, dict[str, Any]]]
"""What the provider answers for a new resource of one type: (its id, its state). ``inputs`` keep
their secret wrappers, as the engine echoes them; every fake returns the inputs in its state with
the outputs the provider computes over them."""

FAKE_RESOURCES: dict[str, FakeResource] = {}
"""Resource type -> its fake: the one place a provider is faked. Any other type answers
``<name>-id`` and its inputs."""


def fakes(*types: str) -> Callable[[FakeResource], FakeResource]:
    """Register the decorated function as the fake of ``types``."""
    def register(function: FakeResource) -> FakeResource:
        for typ in types:
            assert typ not in FAKE_RESOURCES, f"{typ} is faked twice"
            FAKE_RESOURCES[typ] = function
        return function
    return register


def _serial_id(name: str) -> str:
    return str(int.from_bytes(_seed("serial", name)[:16], "big") >> 1 or 1)


@fakes("tls:index/privateKey:PrivateKey")
def _private_key(cloud: FakeCloud, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    state = fake_private_key(name, unwrap(inputs))
    return hashlib.sha1(state["publicKeyPem"].encode()).hexdigest(), state  # noqa: S324 (the tls provider's id)


@fakes("tls:index/locallySignedCert:LocallySignedCert")
def _locally_signed_cert(cloud: FakeCloud, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    plain = fake_locally_signed_cert(name, unwrap(inputs), renewed=name in cloud.renewed)
    return _serial_id(name), {**plain, **inputs}


@fakes("tls:index/selfSignedCert:SelfSignedCert")
def _self_signed_cert(cloud: FakeCloud, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return _serial_id(name), {**fake_self_signed_cert(name, unwrap(inputs)), **inputs}


@fakes("tls:index/certRequest:CertRequest")
def _cert_request(cloud: FakeCloud, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return _serial_id(name), {**fake_cert_request(name, unwrap(inputs)), **inputs}


@fakes("proxmoxve:download/file:File")
def _downloaded_file(cloud: FakeCloud, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return f"{inputs['datastoreId']}:{inputs['contentType']}/{inputs.get('fileName', name)}", {**inputs, "size": 1}


@fakes("proxmoxve:index/fileLegacy:FileLegacy")
def _snippet(cloud: FakeCloud, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    raw = _unwrapped(inputs, "sourceRaw") or {}
    file_name = raw.get("fileName", name)
    return f"{inputs['datastoreId']}:{inputs['contentType']}/{file_name}", {**inputs, "fileName": file_name}


@fakes("proxmoxve:index/vmLegacy:VmLegacy")
def _vm(cloud: FakeCloud, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    vm_id = int(inputs.get("vmId") or 1000 + int(_seed("vm", name).hex(), 16) % 9000)
    generation = cloud.rebuilt.get(str(inputs.get("name", name)), 0)
    devices = [{**device, "macAddress": (device.get("macAddress") or generated_mac(
        str(inputs.get("name", name)), index, generation)).upper()}
        for index, device in enumerate(inputs.get("networkDevices") or [])]
    return str(vm_id), {**inputs, "vmId": vm_id, "networkDevices": devices}


def _command(cloud: FakeCloud, name: str, inputs: dict[str, Any], *, local: bool) -> tuple[str, dict[str, Any]]:
    """A command that did not change keeps what the state holds; a host-key probe (local) answers."""
    digest = canonical_hash(inputs)
    if cloud.kept.get(name, ("", ""))[0] == digest:
        stdout = cloud.kept[name][1]
    elif local and name.endswith(PROBE_SUFFIX):
        stdout = probe_answer(name, str(unwrap(inputs.get("stdin")) or ""), cloud.presented)
    else:
        stdout = ""
    cloud.commands[name] = (digest, stdout)
    return f"{name}-cmd", {**inputs, "stdout": stdout, "stderr": ""}


@fakes("command:remote:Command")
def _remote_command(cloud: FakeCloud, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return _command(cloud, name, inputs, local=False)


@fakes("command:local:Command")
def _local_command(cloud: FakeCloud, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return _command(cloud, name, inputs, local=True)


@fakes("random:index/randomPassword:RandomPassword")
def _password(cloud: FakeCloud, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    drawn = hashlib.shake_256(_seed("random", name)).digest(int(inputs.get("length", 16)))
    result = "".join(alphabet[b % len(alphabet)] for b in drawn)
    return "none", {**inputs, "result": secret(result), "bcryptHash": secret("$2a$10$fake")}


@fakes("minio:index/s3Bucket:S3Bucket")
def _bucket(cloud: FakeCloud, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return inputs["bucket"], {**inputs, "arn": f"arn:aws:s3:::{inputs['bucket']}"}


@fakes("minio:index/iamPolicy:IamPolicy", "minio:index/iamUser:IamUser")
def _named(cloud: FakeCloud, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return inputs["name"], inputs


@fakes("minio:index/iamServiceAccount:IamServiceAccount")
def _service_account(cloud: FakeCloud, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    digits = hashlib.shake_256(_seed("service-account", name)).hexdigest(30)
    return digits[:20].upper(), {**inputs, "accessKey": digits[:20].upper(), "secretKey": secret(digits[20:60])}


class FakeCloud(pulumi.runtime.Mocks):
    """Answers registrations like the real providers; records every secret value it hands out.

    In preview mode, as in a real preview of new resources, it returns only ids: every
    computed output is unknown.
    """

    def __init__(self, *, preview: bool = False, renewed: frozenset[str] = frozenset(),
                 rebuilt: Mapping[str, int] | None = None, presented: Mapping[str, str] | None = None,
                 kept: Mapping[str, tuple[str, str]] | None = None):
        self.preview = preview
        self.renewed = renewed
        """Names of ``tls.LocallySignedCert`` resources to issue as renewed (another serial and start): what a
        ``pulumi up`` within ``early_renewal_hours`` of their end does."""
        self.rebuilt = dict(rebuilt or {})
        """VM name (its host name) -> how many times it was created anew: each time Proxmox gives its NIC
        another MAC."""
        self.presented = dict(presented or {})
        """Address -> the SSH host key the VM there presents (what the host-key probe finds); a VM not
        named presents its bootstrap key, as a new one does."""
        self.kept = dict(kept or {})
        """Command name -> (hash of its inputs, its stdout) as an earlier run left them in the state: a
        command whose inputs did not change does not run again and keeps its stdout."""
        self.commands: dict[str, tuple[str, str]] = {}
        """Command name -> (hash of its inputs, its stdout) handed out in this run: what the state keeps
        (``kept`` of the next run); the stdout is the host-key probes' answers."""
        self.secret_values: dict[str, str] = {}
        """Every secret string handed out (or given as secret config) -> a label for it."""

    def note_secret(self, value: str, label: str) -> None:
        if value:
            self.secret_values.setdefault(value, label)

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        inputs = dict(args.inputs)
        typ, name = args.typ, args.name
        if typ.startswith("pulumi:providers:"):
            return f"{name}-provider-id", inputs
        if self.preview:  # a real preview knows no computed output of a new resource
            return f"{name}-id", {}
        answer = FAKE_RESOURCES.get(typ)
        rid, state = answer(self, name, inputs) if answer else (f"{name}-id", inputs)
        for key, value in state.items():
            if is_secret(value) and isinstance(value["value"], str):
                self.note_secret(value["value"], f"{name}.{key}")
        return rid, state

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


# --- Recording ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    """One resource as the engine saw it."""

    urn: str
    type: str
    name: str
    parent: str
    """Parent URN; the root stack's URN for top-level resources."""
    custom: bool
    provider: str
    """``<provider urn>::<provider id>`` or empty for a default provider."""
    id: str
    inputs: dict[str, Any]
    """As sent by the program: camelCase keys, secrets still wrapped."""
    dependencies: tuple[str, ...]
    ignore_changes: tuple[str, ...]
    delete_before_replace: bool
    protect: bool = False

    @property
    def plain_inputs(self) -> dict[str, Any]:
        return unwrap(self.inputs)

    @property
    def inputs_hash(self) -> str:
        return canonical_hash(self.inputs)

    @property
    def input_hashes(self) -> dict[str, str]:
        """A hash per top-level input, with the paths in ``ignore_changes`` left out (as the engine
        ignores them): what tells an update from a replacement in a plan diff."""
        inputs = json.loads(json.dumps(self.inputs, default=str))
        for path in self.ignore_changes:
            _drop_path(inputs, path)
        return {key: canonical_hash(value) for key, value in inputs.items()}


def _drop_path(value: Any, path: str) -> None:
    """Remove ``a.b[0].c`` from nested dicts/lists (secret wrappers are looked through)."""
    parts = [p for p in path.replace("[", ".").replace("]", "").split(".") if p]
    node = value
    for i, part in enumerate(parts):
        if is_secret(node):
            node = node["value"]
        last = i == len(parts) - 1
        if isinstance(node, dict) and part in node:
            if last:
                del node[part]
                return
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            if last:
                return
            node = node[int(part)]
        else:
            return


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The SDK's mock monitor, keeping every registration with its resource options."""

    def __init__(self, mocks: FakeCloud):
        super().__init__(mocks)
        self.registrations: list[Registration] = []

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC method name)
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.registrations.append(Registration(
                urn=response.urn, type=request.type, name=request.name, parent=request.parent,
                custom=bool(request.custom), provider=request.provider, id=response.id,
                inputs=rpc.deserialize_properties(request.object, keep_unknowns=True),
                dependencies=tuple(request.dependencies), ignore_changes=tuple(request.ignoreChanges),
                delete_before_replace=bool(request.deleteBeforeReplace), protect=bool(request.protect),
            ))
        return response

    def find(self, typ: str, name: str) -> Registration:
        """The registration of type ``typ`` named ``name``; a test failure names what was missing."""
        for reg in self.registrations:
            if reg.type == typ and reg.name == name:
                return reg
        known = sorted(f"{r.type} {r.name}" for r in self.registrations)
        raise LookupError(f"no {typ} named {name!r} was registered; registered: {known}")

    def of_type(self, typ: str) -> list[Registration]:
        return [r for r in self.registrations if r.type == typ]


@dataclass
class Engine:
    cloud: FakeCloud
    monitor: RecordingMonitor

    @property
    def registrations(self) -> list[Registration]:
        return self.monitor.registrations


def install(*, project: str, stack: str, preview: bool = False,
            config: dict[str, str] | None = None, secret_keys: list[str] | None = None,
            renewed: frozenset[str] = frozenset(), rebuilt: Mapping[str, int] | None = None,
            presented: Mapping[str, str] | None = None, kept: Mapping[str, tuple[str, str]] | None = None) -> Engine:
    """Point the Pulumi runtime at a fresh fake cloud and recording monitor, with this config."""
    cloud = FakeCloud(preview=preview, renewed=renewed, rebuilt=rebuilt, presented=presented, kept=kept)
    monitor = RecordingMonitor(cloud)
    pulumi.runtime.set_mocks(cloud, project=project, stack=stack, preview=preview, monitor=monitor)
    pulumi.runtime.set_all_config(dict(config or {}), secret_keys=list(secret_keys or []))
    for key in secret_keys or []:
        if config and key in config:
            cloud.note_secret(config[key], f"config {key}")
    return Engine(cloud, monitor)


_RUNTIME_SETTINGS = ("monitor", "monitor_features", "engine", "project", "stack", "organization", "dry_run",
                     "parallel", "root_directory", "legacy_apply_enabled", "package_refs", "base_providers_by_ref",
                     "callbacks", "rpc_manager", "outputs")
"""The Pulumi runtime's process-wide settings ``install`` replaces (``pulumi.runtime.settings.SETTINGS``)."""


@contextlib.contextmanager
def installed(**kwargs: Any) -> Iterator[Engine]:
    """``install(**kwargs)`` for the block; afterwards the Pulumi runtime's process-wide state (its
    settings, root resource, config and secret keys) is what it was before, also on failure."""
    saved = ({name: getattr(runtime_settings.SETTINGS, name) for name in _RUNTIME_SETTINGS},
             runtime_settings.get_root_resource(), dict(runtime_config.CONFIG.get()),
             set(runtime_config._SECRET_KEYS.get()))
    try:
        yield install(**kwargs)
    finally:
        values, root, config, secret_keys = saved
        for name, value in values.items():
            setattr(runtime_settings.SETTINGS, name, value)
        runtime_settings.set_root_resource(root)  # type: ignore[arg-type]
        runtime_config.set_all_config(config, secret_keys=list(secret_keys))


# --- Running a whole program ----------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """A value the program produced, after the run."""

    value: Any
    """None when unknown (preview)."""
    known: bool
    secret: bool


async def resolve(value: Any) -> Resolved:
    """Resolve an Input (plain value or Output) to its value, knownness and secretness."""
    out = pulumi.Output.from_input(value)
    known, is_secret_ = await out.is_known(), await out.is_secret()
    return Resolved(await out.future() if known else None, known, is_secret_)


@dataclass
class RunResult:
    engine: Engine
    returned: Any
    """What the program function returned."""
    resolved: dict[str, Resolved] = field(default_factory=dict)
    """What the ``collect`` callback asked to resolve, by name."""


def run(program: Callable[[], Any], collect: Callable[[Any], dict[str, Any]], *, project: str, stack: str,
        preview: bool = False, config: dict[str, str] | None = None,
        secret_keys: list[str] | None = None, renewed: frozenset[str] = frozenset(),
        rebuilt: Mapping[str, int] | None = None, presented: Mapping[str, str] | None = None,
        kept: Mapping[str, tuple[str, str]] | None = None) -> RunResult:
    """Run ``program`` against a fresh fake engine and wait for every registration.

    ``collect(returned)`` names the values to resolve once the program has been built (files,
    outputs); they come back in ``RunResult.resolved``. Exceptions from the program propagate.
    """
    engine = install(project=project, stack=stack, preview=preview, config=config, secret_keys=secret_keys,
                     renewed=renewed, rebuilt=rebuilt, presented=presented, kept=kept)
    result = RunResult(engine=engine, returned=None)

    async def main() -> None:
        result.returned = program()
        for key, value in collect(result.returned).items():
            result.resolved[key] = await resolve(value)

    def start() -> Awaitable[None]:
        return main()

    pulumi.runtime.test(start)()
    return result
