"""components/pki.py: a real CA and real certificates (from the fake engine), checked with
cryptography's X.509 verifier rather than by reading strings."""

from __future__ import annotations

import datetime

import pulumi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from components.pki import CertificateAuthority, CertificateAuthorityArgs, CertificateSpec
from offline import engine
from tests.labs.x509_checks import client_verification_error, extended_usages, load, server_verification_error

ARGS = CertificateAuthorityArgs(common_name="test CA", validity_hours=87600, early_renewal_hours=8760,
                                leaf_validity_hours=8760, leaf_early_renewal_hours=720)
SERVER = CertificateSpec(common_name="web.home.arpa", role="server", dns_names=["web.home.arpa", "web"],
                         ip_addresses=["192.168.50.9"], server=True)
CLIENT = CertificateSpec(common_name="operator", role="operator", dns_names=["operator.home.arpa"], client=True)


async def known(out: pulumi.Output[str]) -> str:
    assert await out.is_known(), "an output the test reads is unknown"
    value = await out.future()
    assert value is not None
    return value


@pulumi.runtime.test
async def test_the_ca_is_a_p256_ca_for_signing_certificates_and_crls(fake_engine):
    ca = CertificateAuthority("ca", ARGS)
    cert = load(await known(ca.cert_pem))
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca, "ca-cert: not a CA certificate"
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == datetime.timedelta(hours=87600)
    reg = fake_engine.monitor.find("tls:index/selfSignedCert:SelfSignedCert", "ca-cert")
    assert reg.plain_inputs["earlyRenewalHours"] == 8760
    assert engine.is_secret(reg.inputs["privateKeyPem"]), "ca-cert: the CA key must reach it as a secret"


@pulumi.runtime.test
async def test_a_server_certificate_verifies_for_its_names_and_no_other(fake_engine):
    ca = CertificateAuthority("ca", ARGS)
    server = ca.issue("web-server", SERVER)
    ca_pem, cert_pem = await known(ca.cert_pem), await known(server.cert_pem)
    for name in ("web.home.arpa", "web", "192.168.50.9"):
        assert server_verification_error(ca_pem, cert_pem, name) is None, f"web-server must verify for {name}"
    for name in ("other.home.arpa", "192.168.50.10", "home.arpa"):
        assert server_verification_error(ca_pem, cert_pem, name) is not None, f"web-server verified for {name}"
    assert extended_usages(cert_pem) == {"serverAuth"}
    assert client_verification_error(ca_pem, cert_pem) is not None, "a server-only certificate passed as client"


@pulumi.runtime.test
async def test_a_client_certificate_has_client_auth_and_no_server_auth(fake_engine):
    ca = CertificateAuthority("ca", ARGS)
    client = ca.issue("operator-client", CLIENT)
    ca_pem, cert_pem = await known(ca.cert_pem), await known(client.cert_pem)
    assert client_verification_error(ca_pem, cert_pem) is None
    assert extended_usages(cert_pem) == {"clientAuth"}
    assert server_verification_error(ca_pem, cert_pem, "operator.home.arpa") is not None, (
        "a client certificate must not serve TLS")


@pulumi.runtime.test
async def test_a_certificate_from_another_ca_does_not_verify(fake_engine):
    ca, other = CertificateAuthority("ca", ARGS), CertificateAuthority("other-ca", ARGS)
    foreign = other.issue("web-server", SERVER)
    assert server_verification_error(await known(ca.cert_pem), await known(foreign.cert_pem), "web") is not None


@pulumi.runtime.test
async def test_lifetimes_renewal_and_secret_keys(fake_engine):
    ca = CertificateAuthority("ca", ARGS)
    server = ca.issue("web-server", SERVER)
    cert = load(await known(server.cert_pem))
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == datetime.timedelta(hours=8760)
    assert await server.private_key_pem.is_secret(), "web-server: the key PEM output must be secret"
    assert "PRIVATE KEY" in await known(server.private_key_pem)
    assert await known(server.ca_cert_pem) == await known(ca.cert_pem)
    signed = fake_engine.monitor.find("tls:index/locallySignedCert:LocallySignedCert", "web-server-cert")
    i = signed.plain_inputs
    assert (i["validityPeriodHours"], i["earlyRenewalHours"]) == (8760, 720), "renewal window not passed on"
    assert engine.is_secret(signed.inputs["caPrivateKeyPem"]), "the CA key must reach the signer as a secret"
    key = fake_engine.monitor.find("tls:index/privateKey:PrivateKey", "web-server-key").plain_inputs
    assert (key["algorithm"], key["ecdsaCurve"]) == ("ECDSA", "P256")


def test_a_certificate_must_have_a_use_and_a_name():
    with pytest.raises(ValueError, match="must be for server or client use"):
        CertificateSpec(common_name="x", role="x", dns_names=["x"])
    with pytest.raises(ValueError, match="needs at least one DNS name or IP address"):
        CertificateSpec(common_name="x", role="x", server=True)
