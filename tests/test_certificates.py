"""stack/certificates.py on the whole example stack: every certificate verifies for every name
its clients use, and nothing else; the CA key stays inside the stack."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from offline import engine
from offline.plan import read_stack_config, run_program
from stack.certificates import (
    AGENT_CERT_FILE,
    AGENT_KEY_FILE,
    CA_FILE,
    GATEWAY_CLIENT_CA_FILE,
    METRICS_CLIENT_CA_FILE,
    PROMETHEUS_CLIENT,
    RETIRED_FILES,
    SERVER_CERT_FILE,
    SERVER_KEY_FILE,
)
from tests.labs.x509_checks import client_verification_error, extended_usages, load, server_verification_error

LOKI = ["loki-01", "loki-02", "loki-03"]
HOSTS = [*LOKI, "s3", "grafana"]
ADDRESSES = {"loki-01": "192.168.50.21", "loki-02": "192.168.50.22", "loki-03": "192.168.50.23",
             "s3": "192.168.50.30", "grafana": "192.168.50.40"}
CLIENT_NAMES = {  # every name and address each server is reached by
    "loki-01": ["loki-01.home.arpa", "loki-01", "192.168.50.21"],
    "loki-02": ["loki-02.home.arpa", "loki-02", "192.168.50.22"],
    "loki-03": ["loki-03.home.arpa", "loki-03", "192.168.50.23"],
    "s3": ["s3.home.arpa", "s3", "192.168.50.30", "loki.s3.home.arpa"],
    "grafana": ["grafana.home.arpa", "grafana", "192.168.50.40"],
}
VIP_NAMES = ["loki.home.arpa", "loki", "192.168.50.20"]
LOCAL = ["localhost", "127.0.0.1"]


def run(**overrides: Any) -> engine.RunResult:
    return run_program("homelab", read_stack_config("homelab", overrides=overrides))


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    """The example stack's files by (host, path), its outputs, and the run."""
    result = run()
    files = {}
    for i, hf in enumerate(result.returned.host_files):
        resolved = result.resolved[f"file:{i}"]
        assert resolved.known, f"{hf.host}:{hf.path} is unknown after an update"
        files[(hf.host, hf.path)] = (hf, resolved)
    outputs = {k.split(":", 1)[1]: v for k, v in result.resolved.items() if k.startswith("output:")}
    return {"files": files, "outputs": outputs, "result": result}


def pem_blocks(bundle: str) -> list[str]:
    """The certificates of a PEM bundle, each as its own PEM text."""
    return [f"-----BEGIN CERTIFICATE-----{b}-----END CERTIFICATE-----\n"
            for b in re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", bundle, re.DOTALL)]


def text(stack: dict[str, Any], host: str, path: str) -> str:
    return stack["files"][(host, path)][1].value


def test_every_host_receives_the_ca_its_server_and_agent_certificates(stack):
    ca = stack["outputs"]["caCertificate"].value
    for host in HOSTS:
        assert text(stack, host, CA_FILE) == ca, f"{host}: {CA_FILE} is not the stack's CA"
        assert not any(h == host and p in RETIRED_FILES for h, p in stack["files"]), (
            f"{host}: the CA must not go into the system trust store")
        for path in (SERVER_KEY_FILE, AGENT_KEY_FILE):
            hf, resolved = stack["files"][(host, path)]
            assert (hf.mode, hf.owner) == ("0600", "root"), f"{host}:{path} must be 0600 root"
            assert resolved.secret, f"{host}:{path} must be secret"
        for path in (CA_FILE, SERVER_CERT_FILE, AGENT_CERT_FILE):
            assert stack["files"][(host, path)][0].mode == "0644"


@pytest.mark.parametrize("host", HOSTS)
def test_each_server_certificate_verifies_for_every_name_its_clients_use(stack, host):
    ca, cert = stack["outputs"]["caCertificate"].value, text(stack, host, SERVER_CERT_FILE)
    names = CLIENT_NAMES[host] + LOCAL + (VIP_NAMES if host in LOKI else [])
    for name in names:
        error = server_verification_error(ca, cert, name)
        assert error is None, f"{host}-server does not verify for {name}: {error}"
    others = [n for h, ns in CLIENT_NAMES.items() if h != host for n in ns if n != "loki.s3.home.arpa" or host != "s3"]
    others += ["example.org", "a.b.s3.home.arpa"] + ([] if host in LOKI else VIP_NAMES)
    for name in others:
        assert server_verification_error(ca, cert, name) is not None, f"{host}-server verifies for {name}"


@pytest.mark.parametrize("host", HOSTS)
def test_loki_certificates_are_also_client_certificates_and_the_others_are_not(stack, host):
    ca, cert = stack["outputs"]["caCertificate"].value, text(stack, host, SERVER_CERT_FILE)
    expected = {"serverAuth", "clientAuth"} if host in LOKI else {"serverAuth"}
    assert extended_usages(cert) == expected, f"{host}-server usages"
    assert (client_verification_error(ca, cert) is None) == (host in LOKI), f"{host}-server as a client"


@pytest.mark.parametrize("host", HOSTS)
def test_agent_certificates_push_and_serve_the_agents_metrics_on_the_hosts_address(stack, host):
    """A client (it pushes); a server only for the host's own name and address (Alloy's metrics)."""
    ca, cert = stack["outputs"]["caCertificate"].value, text(stack, host, AGENT_CERT_FILE)
    address = stack["outputs"]["hosts"].value[host]["address"]
    assert client_verification_error(ca, cert) is None, f"{host}-agent does not verify as a client"
    assert extended_usages(cert) == {"clientAuth", "serverAuth"}, f"{host}-agent: {extended_usages(cert)}"
    assert server_verification_error(ca, cert, address) is None, f"{host}-agent is no server for {address}"
    assert server_verification_error(ca, cert, "loki.home.arpa") is not None, f"{host}-agent serves the VIP's name"
    assert server_verification_error(ca, cert, "192.168.50.99") is not None, f"{host}-agent serves another address"


def test_operator_and_prometheus_certificates_are_secret_client_certificates(stack):
    """The operator's certificate is of the stack's CA; Prometheus' of a CA of its own (the agents
    trust it alone), which the Loki nodes' gateways take beside the stack's."""
    outputs = stack["outputs"]
    ca = outputs["caCertificate"].value
    metrics_ca, earlier = pem_blocks(text(stack, "loki-01", METRICS_CLIENT_CA_FILE))
    assert outputs["caCertificate"].known and not outputs["caCertificate"].secret, "the CA certificate is public"
    for who, issuer, other in (("operator", ca, metrics_ca), ("prometheus", metrics_ca, ca)):
        cert, key = outputs[f"{who}Certificate"], outputs[f"{who}PrivateKey"]
        assert cert.secret and key.secret, f"{who} certificate and key must be secret outputs"
        assert client_verification_error(issuer, cert.value) is None, f"{who} certificate does not verify"
        assert client_verification_error(other, cert.value) is not None, f"{who} certificate verifies with the other CA"
        assert extended_usages(cert.value) == {"clientAuth"}
        assert "PRIVATE KEY" in key.value
    for host in ("loki-01", "loki-02", "loki-03"):
        assert text(stack, host, GATEWAY_CLIENT_CA_FILE) == ca + metrics_ca, (
            f"{host}: {GATEWAY_CLIENT_CA_FILE} is not the stack's CA and Prometheus' CA")
    # The agents' pool also holds the certificate earlier versions issued Prometheus (by the stack's CA).
    assert client_verification_error(ca, earlier) is None and "OU=metrics" in load(earlier).subject.rfc4514_string()
    assert not [h for h in ("grafana", "s3") if (h, GATEWAY_CLIENT_CA_FILE) in stack["files"]], "only Loki nodes"


@pytest.mark.parametrize("ca_name", ["ca", "metrics-ca"])
def test_the_ca_key_never_leaves_the_stack(stack, ca_name):
    """Each CA's key reaches only its own certificate and the certificates it signs: the stack's CA
    every one but Prometheus', Prometheus' CA that one alone."""
    result: engine.RunResult = stack["result"]
    ca_key = result.engine.monitor.find("tls:index/privateKey:PrivateKey", f"{ca_name}-key")
    secret = next(v for v, label in result.engine.cloud.secret_values.items()
                  if label == f"{ca_name}-key.privateKeyPem")
    body = secret.strip().splitlines()[1]
    assert ca_key.custom
    for name, resolved in stack["outputs"].items():
        assert body not in json.dumps(resolved.value), f"stack output {name} holds the {ca_name} key"
    for (host, path), (_, resolved) in stack["files"].items():
        assert body not in resolved.value, f"{host}:{path} holds the {ca_name} key"
    holders = [(r.type, r.name) for r in result.engine.registrations if body in json.dumps(r.plain_inputs)]
    every = {r.name for r in result.engine.monitor.of_type("tls:index/locallySignedCert:LocallySignedCert")}
    signers = {f"{PROMETHEUS_CLIENT}-cert"} if ca_name == "metrics-ca" else every - {f"{PROMETHEUS_CLIENT}-cert"}
    assert {n for t, n in holders if t.endswith("LocallySignedCert")} == signers, f"{ca_name} signs {holders}"
    assert {(t, n) for t, n in holders if not t.endswith("LocallySignedCert")} == {
        ("tls:index/selfSignedCert:SelfSignedCert", f"{ca_name}-cert")}, f"the {ca_name} key reaches {holders}"
    for reg in result.engine.registrations:
        if body in json.dumps(reg.plain_inputs):
            prop = "caPrivateKeyPem" if reg.type.endswith("LocallySignedCert") else "privateKeyPem"
            assert engine.is_secret(reg.inputs[prop]), f"{reg.name}.{prop} holds the CA key unmarked"


def test_a_renewed_prometheus_certificate_changes_no_host_file_and_the_agents_take_it_and_its_predecessor(stack):
    """Prometheus' certificate renewed (the fake engine issues it again: another serial and
    start): no host receives anything new (the agents' pool, the gateways' CAs: no Alloy restart,
    no gateway reload), and both the renewed certificate and the one Prometheus still presents
    chain to every agent's pool and to every gateway's CAs: no scrape is refused before the
    operator exports the new one. (The live Prometheus shows it: tests/test_monitoring_live.py.)"""
    renewed = run_program("homelab", read_stack_config("homelab"), renewed=frozenset({f"{PROMETHEUS_CLIENT}-cert"}))
    old = stack["outputs"]["prometheusCertificate"].value
    new = renewed.resolved["output:prometheusCertificate"].value
    assert new != old, "the fake engine did not renew Prometheus' certificate"
    files = {(hf.host, hf.path): renewed.resolved[f"file:{i}"].value
             for i, hf in enumerate(renewed.returned.host_files)}
    changed = sorted(key for key, (_, resolved) in stack["files"].items() if files.get(key) != resolved.value)
    assert not changed, f"renewing Prometheus' certificate changes host files: {changed}"
    for host in HOSTS:
        pool = text(stack, host, METRICS_CLIENT_CA_FILE)
        for which, cert in (("the old", old), ("the renewed", new)):
            assert client_verification_error(pool, cert) is None, (
                f"{host}'s agent refuses {which} Prometheus certificate")
            if host in LOKI:
                gateway = text(stack, host, GATEWAY_CLIENT_CA_FILE)
                assert client_verification_error(gateway, cert) is None, f"{host}'s gateway refuses {which} one"


def test_changing_a_node_address_changes_only_that_nodes_certificate(stack):
    registrations = stack["result"].engine.registrations
    before = {(r.type, r.name): r.inputs_hash for r in registrations if r.type.startswith("tls:")}
    changed = run(lokiAddresses=["192.168.50.21", "192.168.50.122", "192.168.50.23"])
    after = {(r.type, r.name): r.inputs_hash for r in changed.engine.registrations if r.type.startswith("tls:")}
    assert before.keys() == after.keys()
    differ = sorted(name for key, name in ((k, k[1]) for k in before) if before[key] != after[key])
    assert differ == ["loki-02-agent-cert", "loki-02-agent-csr", "loki-02-server-cert", "loki-02-server-csr"], (
        f"certificate resources changed: {differ}")


def test_the_tls_delivery_removes_the_ca_from_the_system_trust_store(example):
    """Earlier versions put it there; the delivery removes it (and rebuilds the bundle) on every host."""
    for host in HOSTS:
        stdin = example.engine.monitor.find("command:remote:Command", f"{host}-tls-install").plain_inputs["stdin"]
        assert "remove_file /usr/local/share/ca-certificates/loki-stack-ca.crt" in stdin, host
        assert "remove_file /etc/lokistack/tls/metrics-client.pem" in stdin, (
            f"{host}: the pinned Prometheus certificate of earlier versions stays")
        follow_up = stdin.rstrip().splitlines()[-6:-1]
        assert follow_up[0].startswith('if [ "$changed" -gt 0 ]') and "  update-ca-certificates" in follow_up \
            and follow_up[-1] == "fi", f"{host}: the bundle is not rebuilt after the removal: {follow_up}"
