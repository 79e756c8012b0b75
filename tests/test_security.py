"""Whole-stack checks: no generated secret leaks anywhere it could be read, every input that
carries one is marked secret, and the security properties hold over every rendered file."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from typing import Any

import pytest
import yaml

from offline import engine
from offline.plan import read_stack_config, run_program, secret_fragments, write_plan

SECRET_LABELS = ("privateKey", ".result", "secretKey", "config loki-stack:proxmoxApiToken")
KEY_OWNERS = {  # where a private key may live, and who must own it
    "/etc/lokistack/tls/": {"root"}, "/etc/objectstore/certs/": {"root"}, "/etc/grafana/": {"root"},
    "/etc/keepalived/check/": {"keepalived_script"}, "/etc/loki/lokistack-staged/": {"root"},
    "/etc/keepalived/lokistack-staged/": {"root"}, "/etc/lokistack/staged/": {"root"},
    "/var/lib/cloud/instance/": {"root"},
}


@pytest.fixture(scope="module")
def stack() -> engine.RunResult:
    return run_program("homelab", read_stack_config("homelab", overrides={"proxmoxApiToken":
                                                                         "root@pam!scan=11111111-2222-3333-4444-555555555555"}))


def strings(value: Any) -> list[str]:
    """Every string in a property value, plus what any long base64 token in it decodes to."""
    found: list[str] = []
    if isinstance(value, str):
        found.append(value)
        for token in re.findall(r"[A-Za-z0-9+/]{40,}={0,2}", value):
            with contextlib.suppress(binascii.Error, UnicodeDecodeError):
                found.append(base64.b64decode(token, validate=True).decode())
    elif isinstance(value, dict):
        for item in value.values():
            found += strings(item)
    elif isinstance(value, list):
        for item in value:
            found += strings(item)
    return found


def leaks(value: Any, fragments: dict[str, str]) -> set[str]:
    return {label for text in strings(value) for fragment, label in fragments.items()
            if label != "key format header" and fragment in text}  # the shared OpenSSH prefix is no secret


def test_every_kind_of_generated_secret_is_known_to_the_scan(stack):
    labels = set(stack.engine.cloud.secret_values.values())
    for expected in ("ca-key.privateKeyPem", "deploy-ssh-key.privateKeyOpenssh", "objectstore-root-password.result",
                     "loki-bucket-keys.secretKey", "grafana-admin-password.result", "vip-auth-pass.result",
                     "config loki-stack:proxmoxApiToken"):
        assert expected in labels, f"the scan would miss {expected}: {sorted(labels)}"


def test_no_secret_in_a_non_secret_input_or_on_a_command_line(stack):
    fragments = secret_fragments(stack.engine.cloud.secret_values)
    for reg in stack.engine.registrations:
        for prop, value in reg.inputs.items():
            found = leaks(value, fragments)
            if prop in ("create", "update", "delete"):
                assert not found, f"{reg.type} {reg.name}: {found} on the command line ({prop})"
            if found:
                assert engine.is_secret(value), f"{reg.type} {reg.name}.{prop} carries {found} but is not secret"


def test_no_secret_in_a_public_output(stack):
    fragments = secret_fragments(stack.engine.cloud.secret_values)
    for key, resolved in stack.resolved.items():
        if key.startswith("output:") and not resolved.secret:
            assert not leaks(resolved.value, fragments), f"{key} leaks a secret"


def test_no_secret_in_a_redacted_plan_file(stack, tmp_path):
    write_plan(stack, tmp_path, stack="homelab", show_secrets=False)
    fragments = secret_fragments(stack.engine.cloud.secret_values)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert not leaks(path.read_text(), fragments), f"{path.relative_to(tmp_path)} leaks a secret"


def host_files(stack: engine.RunResult) -> list[tuple[Any, str]]:
    return [(hf, stack.resolved[f"file:{i}"].value) for i, hf in enumerate(stack.returned.host_files)]


def test_every_url_in_every_rendered_file_and_script_is_https(stack):
    texts = [(f"{hf.host}:{hf.path}", text) for hf, text in host_files(stack)]
    texts += [(r.name, r.plain_inputs.get("stdin", "")) for r in stack.engine.registrations
              if r.type == "command:remote:Command"]
    for where, text in texts:
        for scheme in re.findall(r"\b([a-z][a-z0-9+.-]*)://", text):
            assert scheme == "https", f"{where}: a {scheme}:// URL"


def test_nothing_disables_tls_verification(stack):
    pattern = re.compile(r"(insecure|skip_verify|skipverify)\w*[\"']?\s*[:=]\s*[\"']?(true|yes|1)\b", re.IGNORECASE)
    for hf, text in host_files(stack):
        assert not pattern.search(text), f"{hf.host}:{hf.path} disables TLS verification"
    for reg in stack.engine.registrations:
        text = json.dumps(reg.plain_inputs)
        assert not pattern.search(text), f"{reg.type} {reg.name} disables TLS verification"
        assert "--insecure" not in text and " -k " not in text, f"{reg.name}: curl without verification"


def test_every_private_key_file_is_private_and_owned_by_its_service(stack):
    keys = [(hf, text) for hf, text in host_files(stack) if "PRIVATE KEY" in text]
    assert len(keys) >= 20, "the scan found fewer private-key files than the stack writes"
    for hf, _ in keys:
        assert hf.mode in ("0600", "0640"), f"{hf.host}:{hf.path} holds a private key with mode {hf.mode}"
        owners = next((o for prefix, o in KEY_OWNERS.items() if hf.path.startswith(prefix)), None)
        assert owners is not None, f"{hf.host}:{hf.path}: a private key in an unexpected place"
        assert hf.owner in owners, f"{hf.host}:{hf.path} belongs to {hf.owner}, not {owners}"


def test_loki_requires_client_certificates(stack):
    configs = [(hf, text) for hf, text in host_files(stack) if hf.path.endswith("lokistack-staged/config.yml")]
    assert len(configs) == 3
    for hf, text in configs:
        server = yaml.safe_load(text)["server"]
        for block in ("http_tls_config", "grpc_tls_config"):
            assert server[block]["client_auth_type"] == "RequireAndVerifyClientCert", f"{hf.host}: server.{block}"
