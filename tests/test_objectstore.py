"""components/objectstore.py on the example stack: host files, the server's order of steps, the
MinIO API through a provider that trusts only our CA, and least-privilege keys for Loki."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from components.disk_arrival import unit_names
from components.objectstore import (
    CERTS_DIR,
    ENV_FILE,
    UNIT,
    UNIT_FILE,
    loki_policy,
    render_unit,
)
from offline import engine
from offline.plan import read_stack_config, run_program
from tests.labs.example import files_of, shellcheck_commands
from tests.labs.needs import require_root, require_tool
from tests.labs.x509_checks import server_verification_error

HOST = "s3"
CMD = "command:remote:Command"




def parse_env(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        assert value.startswith('"') and value.endswith('"'), f"{ENV_FILE}: unquoted value in {line!r}"
        env[key] = value[1:-1]
    return env


def test_the_env_file_configures_volumes_tls_console_and_root(example):
    files = files_of(example, HOST)
    hf, resolved = files[ENV_FILE]
    assert (hf.owner, hf.group, hf.mode) == ("root", "root", "0600"), "the env file holds the root password"
    assert resolved.secret, f"{ENV_FILE} must be secret"
    env = parse_env(resolved.value)
    assert env["MINIO_VOLUMES"] == "/srv/objectstore/data"
    assert env["MINIO_OPTS"] == f"--address :9000 --console-address :9001 --certs-dir {CERTS_DIR}"
    assert env["MINIO_ROOT_USER"] == "lokistack-admin"
    root_password = next(v for v, label in example.engine.cloud.secret_values.items()
                         if label == "objectstore-root-password.result")
    assert env["MINIO_ROOT_PASSWORD"] == root_password and len(root_password) == 40
    assert env["MINIO_SERVER_URL"] == "https://s3.home.arpa:9000"


def test_the_certificates_are_installed_for_the_service_user_and_verify(example):
    files = files_of(example, HOST)
    ca = example.resolved["output:caCertificate"].value
    for name in ("public.crt", "private.key", "CAs/lokistack-ca.crt"):
        hf, _ = files[f"{CERTS_DIR}/{name}"]
        assert (hf.owner, hf.group, hf.mode) == ("root", "objectstore", "0640"), f"{name}: owner/mode"
    cert = files[f"{CERTS_DIR}/public.crt"][1].value
    assert files[f"{CERTS_DIR}/CAs/lokistack-ca.crt"][1].value == ca
    assert files[f"{CERTS_DIR}/private.key"][1].secret
    for name in ("s3.home.arpa", "loki.s3.home.arpa", "192.168.50.30"):
        assert server_verification_error(ca, cert, name) is None, f"public.crt does not verify for {name}"


def test_the_steps_run_in_order_on_a_ready_host(example):
    monitor = example.engine.monitor
    tls = monitor.find(CMD, "s3-tls-install")
    setup = monitor.find(CMD, "objectstore-setup")
    install = monitor.find(CMD, "objectstore-config-install")
    ready = monitor.find(CMD, "objectstore-ready")
    assert tls.urn in setup.dependencies, "setup must run after the host's TLS files (and so after cloud-init)"
    assert setup.urn in install.dependencies, "the config needs the service user that setup creates"
    assert install.urn in ready.dependencies, "readiness is checked after the config is in place"
    assert setup.plain_inputs["create"] == "sudo bash -s" and ready.plain_inputs["create"] == "bash -s"
    assert "https://s3.home.arpa:9000/minio/health/ready" in ready.plain_inputs["stdin"]
    assert "CA_FILE=/etc/lokistack/tls/ca.pem" in ready.plain_inputs["stdin"]
    assert "systemctl restart objectstore.service" in install.plain_inputs["stdin"], "a change must restart"
    stdin = setup.plain_inputs["stdin"]
    assert "PACKAGE_SHA256=d63d57cc7f0535e1aa116f9e5f42117dbfc4f63492da692b64d3ba6ded30e574" in stdin
    assert "sha256sum --check" in stdin and "DATA_DEVICE=/dev/disk/by-id/virtio-lokistack-data" in stdin


def test_the_server_starts_by_itself_once_a_late_data_disk_is_there(example):
    """As Loki's (components/disk_arrival.py): its unit has RequiresMountsFor= the data directory,
    so a disk missing at boot fails its start for good unless the path unit asks again."""
    path_unit, starter = unit_names(UNIT)
    files = files_of(example, HOST)
    path_file, starter_file = f"/etc/systemd/system/{path_unit}", f"/etc/systemd/system/{starter}"
    assert path_file in files and starter_file in files, f"{HOST} does not get {path_unit} and {starter}"
    assert "PathExists=/dev/disk/by-id/virtio-lokistack-data" in files[path_file][1].value
    assert f"start --no-block {UNIT}" in files[starter_file][1].value
    monitor = example.engine.monitor
    arrival = monitor.find(CMD, "objectstore-disk-arrival-install")
    assert monitor.find(CMD, "objectstore-ready").urn in arrival.dependencies, (
        "the units come once the server runs (enabled for the next boot, never started by the step)")
    stdin = arrival.plain_inputs["stdin"]
    assert f"systemctl enable --quiet {path_unit}" in stdin and "restart" not in stdin.split("FOLLOW_UP")[-1], (
        f"{arrival.name} must enable {path_unit} and restart nothing")


def test_the_provider_trusts_our_ca_and_waits_for_the_server(example):
    monitor = example.engine.monitor
    provider = monitor.find("pulumi:providers:minio", "objectstore")
    i = provider.inputs
    assert i["minioSsl"] == "true" and i.get("minioInsecure") in (None, "false"), "TLS must be verified"
    assert i["minioCacertFile"] == ".lokistack/ca.pem" and i["minioServer"] == "192.168.50.30:9000"
    assert engine.is_secret(i["minioPassword"]), "the provider's root password must be secret"
    ca_file = monitor.find("command:local:Command", "objectstore-ca-file")
    assert ca_file.plain_inputs["stdin"] == example.resolved["output:caCertificate"].value
    assert ".lokistack/ca.pem" in ca_file.plain_inputs["create"]
    ready = monitor.find(CMD, "objectstore-ready")
    assert {ready.urn, ca_file.urn} <= set(provider.dependencies), "the provider must wait for server and CA file"
    ref = f"{provider.urn}::{provider.id}"
    for reg in example.engine.registrations:
        if reg.type.startswith("minio:"):
            assert reg.provider == ref, f"{reg.type} {reg.name} does not use the object store's provider"


def test_loki_gets_a_least_privilege_user_and_keys(example):
    monitor = example.engine.monitor
    policy = monitor.find("minio:index/iamPolicy:IamPolicy", "loki-bucket-policy")
    document = json.loads(policy.plain_inputs["policy"])
    assert document == loki_policy("loki")
    actions = {a for s in document["Statement"] for a in s["Action"]}
    assert actions == {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
    assert all(s["Effect"] == "Allow" and "*" not in "".join(s["Action"]) for s in document["Statement"])
    assert document["Statement"][0]["Resource"] == ["arn:aws:s3:::loki"]
    assert document["Statement"][1]["Resource"] == ["arn:aws:s3:::loki/*"]
    bucket = monitor.find("minio:index/s3Bucket:S3Bucket", "loki-bucket-bucket")
    assert bucket.plain_inputs["bucket"] == "loki" and bucket.plain_inputs["acl"] == "private"
    user = monitor.find("minio:index/iamUser:IamUser", "loki-bucket-user")
    assert engine.is_secret(user.inputs["secret"])
    attachment = monitor.find("minio:index/iamUserPolicyAttachment:IamUserPolicyAttachment",
                              "loki-bucket-policy-attachment")
    assert attachment.plain_inputs == {"userName": "loki", "policyName": "loki-loki"}
    keys = monitor.find("minio:index/iamServiceAccount:IamServiceAccount", "loki-bucket-keys")
    assert attachment.urn in keys.dependencies, "keys before the policy is attached would have no rights"
    assert keys.plain_inputs["targetUser"] == "loki" and "policy" not in keys.plain_inputs
    secret_key, access_key = example.resolved["output:lokiS3SecretKey"], example.resolved["output:lokiS3AccessKey"]
    assert secret_key.known and secret_key.secret and access_key.known and not access_key.secret
    assert example.resolved["output:objectStoreEndpoint"].value == "https://s3.home.arpa:9000"


def test_no_object_store_secret_is_on_a_command_line_or_in_a_public_output(example):
    secrets = [v for v, label in example.engine.cloud.secret_values.items()
               if label.startswith(("objectstore-root-password", "loki-bucket"))]
    assert len(secrets) >= 3, f"expected the root password, user secret and secret key, got {len(secrets)}"
    for reg in example.engine.registrations:
        for field in ("create", "update", "delete"):
            text = str(reg.plain_inputs.get(field, ""))
            assert not any(s in text for s in secrets), f"{reg.name}.{field} carries a secret on the command line"
    for key, resolved in example.resolved.items():
        if key.startswith("output:") and not resolved.secret:
            assert not any(s in json.dumps(resolved.value) for s in secrets), f"{key} leaks a secret"


def test_a_rerun_with_nothing_changed_reruns_nothing(example):
    again = run_program("homelab", read_stack_config("homelab"))
    before = {(r.type, r.name): r.inputs_hash for r in example.engine.registrations}
    after = {(r.type, r.name): r.inputs_hash for r in again.engine.registrations}
    changed = sorted(name for key, name in ((k, k[1]) for k in before) if before[key] != after.get(key))
    assert not changed, f"an unchanged stack would update: {changed}"


@pytest.mark.real_tools
def test_the_host_scripts_pass_shellcheck(example, tmp_path):
    shellcheck_commands(example, ["objectstore-setup", "objectstore-ready"], tmp_path)


def verify_unit(tmp_path, text: str) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify, with the server binary stubbed in a private mount namespace."""
    unit = tmp_path / "objectstore.service"
    unit.write_text(text)
    stub = "mount -t tmpfs tmpfs /usr/local/bin && install -m 0755 /dev/null /usr/local/bin/objectstore-server"
    return subprocess.run(["unshare", "-m", "sh", "-c", f'{stub} && systemd-analyze verify --man=no "$1"', "sh",
                           str(unit)], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    require_tool("systemd-analyze")
    require_tool("unshare")
    require_root()  # the stub is mounted in a private mount namespace
    if shutil.which("mount") is None:
        pytest.skip("mount is missing")
    proc = verify_unit(tmp_path, render_unit())
    assert proc.returncode == 0 and proc.stderr.strip() == "", f"{UNIT_FILE}: {proc.stderr}"
    broken = verify_unit(tmp_path, render_unit().replace("Restart=always", "Restrat=always"))
    assert "Unknown key 'Restrat'" in broken.stderr, "systemd-analyze missed a typo: the check proves nothing"
