"""Real X.509 checks (chain, hostname or IP, key usage) with cryptography's verifier."""

from __future__ import annotations

import ipaddress

from cryptography import x509
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store, VerificationError


def load(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def server_verification_error(ca_pem: str, cert_pem: str, name: str) -> str | None:
    """None when ``cert_pem`` verifies as a TLS server for ``name`` (DNS name or IP) under the CA;
    otherwise the verifier's reason."""
    try:
        subject: DNSName | IPAddress = IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = DNSName(name)
    verifier = PolicyBuilder().store(Store([load(ca_pem)])).build_server_verifier(subject)
    try:
        verifier.verify(load(cert_pem), [])
    except VerificationError as error:
        return str(error)
    return None


def client_verification_error(ca_pem: str, cert_pem: str) -> str | None:
    """None when ``cert_pem`` verifies as a TLS client certificate under the CA (or one of the CAs
    of a bundle, as a server's client CA file holds them)."""
    verifier = PolicyBuilder().store(Store(x509.load_pem_x509_certificates(ca_pem.encode()))).build_client_verifier()
    try:
        verifier.verify(load(cert_pem), [])
    except VerificationError as error:
        return str(error)
    return None


def extended_usages(cert_pem: str) -> set[str]:
    eku = load(cert_pem).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    return {oid._name for oid in eku}
