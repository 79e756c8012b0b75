"""The stack's private CA and the certificates it issues.

``CertificateAuthority`` makes an ECDSA P-256 key and a self-signed CA certificate; its ``issue``
method makes a ``Certificate`` (key, certificate request, certificate signed by the CA). Every
certificate has a lifetime and an early-renewal window: once inside the window, the next
``pulumi up`` replaces it (and whatever delivers it re-runs).

Provider docs: https://www.pulumi.com/registry/packages/tls/api-docs/locallysignedcert/
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

_SERIAL = re.compile(r"^[0-9A-F]+$")
CA_TYPE = "lokistack:pki:CertificateAuthority"
CERTIFICATE_TYPE = "lokistack:pki:Certificate"
KEY_ALGORITHM = "ECDSA"
KEY_CURVE = "P256"
CA_USES = ("cert_signing", "crl_signing")
ORGANIZATION = "loki-stack"


def nginx_serial(serial: int) -> str:
    """A serial as nginx's ``$ssl_client_serial`` shows it (OpenSSL's ``i2a_ASN1_INTEGER``): the
    number's bytes in upper-case hex, two digits each."""
    digits = f"{serial:X}"
    return digits if len(digits) % 2 == 0 else f"0{digits}"


def normalized_serial(text: str) -> str | None:
    """An operator's serial (hex, with or without colons, ``0x``, any case: as ``openssl x509
    -serial`` or a browser shows it) as nginx shows it; None unless it is one."""
    digits = text.strip().removeprefix("0x").removeprefix("0X").replace(":", "").upper()
    if not digits or not _SERIAL.match(digits) or int(digits, 16) == 0:
        return None
    return nginx_serial(int(digits, 16))



@dataclass(frozen=True, kw_only=True)
class CertificateSpec:
    """What a certificate says and may be used for."""

    common_name: str
    role: str
    """What the holder is (the subject's OU): the Loki gateway grants each role its own paths."""
    dns_names: Sequence[str] = ()
    """DNS names (a ``*.`` wildcard covers one label)."""
    ip_addresses: Sequence[str] = ()
    server: bool = False
    """TLS server authentication."""
    client: bool = False
    """TLS client authentication."""

    def __post_init__(self) -> None:
        if not (self.server or self.client):
            raise ValueError(f"certificate {self.common_name}: must be for server or client use, or both")
        if not (self.dns_names or self.ip_addresses):
            raise ValueError(f"certificate {self.common_name}: needs at least one DNS name or IP address")
        if not re.fullmatch(r"[a-z]+", self.role):
            raise ValueError(f"certificate {self.common_name}: role must be lower-case letters, got {self.role!r}")

    @property
    def allowed_uses(self) -> list[str]:
        # ECDSA keys sign; they never encipher, so key_encipherment has no place here.
        uses = ["digital_signature"]
        uses += ["server_auth"] if self.server else []
        uses += ["client_auth"] if self.client else []
        return uses


@dataclass(frozen=True, kw_only=True)
class CertificateAuthorityArgs:
    common_name: str
    """Subject CN of the CA certificate."""
    validity_hours: int
    """Lifetime of the CA certificate."""
    early_renewal_hours: int
    """The CA is renewed this long before its end (then every certificate is re-issued)."""
    leaf_validity_hours: int
    """Lifetime of every issued certificate."""
    leaf_early_renewal_hours: int
    """Renewal window of every issued certificate."""


@dataclass(frozen=True, kw_only=True)
class CertificateArgs:
    spec: CertificateSpec
    ca_cert_pem: pulumi.Input[str]
    """The issuing CA's certificate."""
    ca_private_key_pem: pulumi.Input[str]
    """The issuing CA's key (secret)."""
    validity_hours: int
    early_renewal_hours: int


class Certificate(pulumi.ComponentResource):
    """A key and a certificate signed by the stack's CA."""

    cert_pem: pulumi.Output[str]
    """The certificate (PEM)."""
    private_key_pem: pulumi.Output[str]
    """Its private key (PEM, secret)."""
    ca_cert_pem: pulumi.Output[str]
    """The certificate of the CA that signed it (PEM)."""
    not_after: pulumi.Output[str]
    """When it ends (RFC 3339): the stack's certificate-expiry alert reads it."""
    early_renewal_hours: int
    """How long before ``not_after`` the next ``pulumi up`` renews it."""

    def __init__(self, name: str, args: CertificateArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(CERTIFICATE_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        spec = args.spec
        key = tls.PrivateKey(f"{name}-key", algorithm=KEY_ALGORITHM, ecdsa_curve=KEY_CURVE, opts=child)
        request = tls.CertRequest(
            f"{name}-csr",
            private_key_pem=key.private_key_pem,
            subject={"common_name": spec.common_name, "organization": ORGANIZATION,
                     "organizational_unit": spec.role},
            dns_names=list(spec.dns_names),
            ip_addresses=list(spec.ip_addresses),
            opts=child,
        )
        cert = tls.LocallySignedCert(
            f"{name}-cert",
            cert_request_pem=request.cert_request_pem,
            ca_cert_pem=args.ca_cert_pem,
            ca_private_key_pem=args.ca_private_key_pem,
            validity_period_hours=args.validity_hours,
            early_renewal_hours=args.early_renewal_hours,
            allowed_uses=spec.allowed_uses,
            set_subject_key_id=True,
            opts=child,
        )
        self.cert_pem = cert.cert_pem
        self.private_key_pem = pulumi.Output.secret(key.private_key_pem)
        self.ca_cert_pem = pulumi.Output.from_input(args.ca_cert_pem)
        self.not_after = cert.validity_end_time
        self.early_renewal_hours = args.early_renewal_hours
        self.register_outputs({
            "cert_pem": self.cert_pem, "private_key_pem": self.private_key_pem, "ca_cert_pem": self.ca_cert_pem,
        })


class CertificateAuthority(pulumi.ComponentResource):
    """The stack's own CA. Its key never leaves the component except into the certificates it signs."""

    cert_pem: pulumi.Output[str]
    """The CA certificate (PEM): what every client and server trusts."""
    not_after: pulumi.Output[str]
    """When it ends (RFC 3339)."""
    early_renewal_hours: int

    def __init__(self, name: str, args: CertificateAuthorityArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(CA_TYPE, name, None, opts)
        self._args = args
        self.common_name = args.common_name
        child = pulumi.ResourceOptions(parent=self)
        key = tls.PrivateKey(f"{name}-key", algorithm=KEY_ALGORITHM, ecdsa_curve=KEY_CURVE, opts=child)
        cert = tls.SelfSignedCert(
            f"{name}-cert",
            private_key_pem=key.private_key_pem,
            is_ca_certificate=True,
            set_subject_key_id=True,
            subject={"common_name": args.common_name, "organization": ORGANIZATION},
            validity_period_hours=args.validity_hours,
            early_renewal_hours=args.early_renewal_hours,
            allowed_uses=list(CA_USES),
            opts=child,
        )
        self._private_key_pem: pulumi.Output[str] = pulumi.Output.secret(key.private_key_pem)
        self.cert_pem = cert.cert_pem
        self.not_after = cert.validity_end_time
        self.early_renewal_hours = args.early_renewal_hours
        self.register_outputs({"cert_pem": self.cert_pem})

    def issue(self, name: str, spec: CertificateSpec) -> Certificate:
        """A certificate for ``spec``, signed by this CA, as a child of it."""
        return Certificate(
            name,
            CertificateArgs(spec=spec, ca_cert_pem=self.cert_pem, ca_private_key_pem=self._private_key_pem,
                            validity_hours=self._args.leaf_validity_hours,
                            early_renewal_hours=self._args.leaf_early_renewal_hours),
            opts=pulumi.ResourceOptions(parent=self),
        )
