"""`python -m offline plan`, run end to end as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from components.proxmox_vm import USER_DATA_PATH
from offline.plan import read_stack_config, redact, run_program, secret_fragments, write_plan
from stack.certificates import CA_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE
from stack.schema import PROJECT_DIR
from tests.labs.x509_checks import server_verification_error

HOSTS = ["grafana", "loki-01", "loki-02", "loki-03", "s3"]


def plan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "offline", "plan", *args], cwd=PROJECT_DIR, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def example_plan(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("plan")
    return plan("--stack", "homelab", "--out", str(out)), out


def test_plan_prints_the_tree_and_exits_zero(example_plan):
    proc, _ = example_plan
    assert proc.returncode == 0, proc.stderr
    vm_lines = [line for line in proc.stdout.splitlines() if line.startswith("lokistack:proxmox:ProxmoxVm")]
    assert sorted(line.split()[-1] for line in vm_lines) == HOSTS, proc.stdout
    assert "    proxmoxve:index/vmLegacy:VmLegacy  loki-01-vm" in proc.stdout, "children are indented under parents"
    manifest = json.loads((example_plan[1] / "manifest.json").read_text())
    custom = sum(r["custom"] for r in manifest["resources"])
    total = len(manifest["resources"])
    assert f"{total} resources: {custom} custom, {total - custom} components" in proc.stdout
    assert "proxmoxApiToken has no value the plan can read" in proc.stderr


def test_plan_writes_one_user_data_file_per_vm_and_a_manifest(example_plan):
    proc, out = example_plan
    assert proc.returncode == 0, proc.stderr
    for host in HOSTS:
        path = out / host / USER_DATA_PATH.lstrip("/")
        assert path.is_file(), f"no user-data planned for {host}"
        assert path.read_text().startswith("#cloud-config\n"), f"{path} is not a cloud-config"
    manifest = json.loads((out / "manifest.json").read_text())
    for res in manifest["resources"]:
        assert res["urn"].startswith("urn:pulumi:homelab::loki-stack::") and len(res["inputsHash"]) == 64
    user_data = [f["host"] for f in manifest["files"] if f["path"] == USER_DATA_PATH]
    assert sorted(user_data) == HOSTS
    assert manifest["outputs"]["hosts"]["loki-01"]["address"] == "192.168.50.21"


def test_plan_redacts_secrets_unless_asked(example_plan, tmp_path):
    _, redacted_dir = example_plan
    proc = plan("--out", str(tmp_path / "clear"), "--show-secrets")
    assert proc.returncode == 0, proc.stderr
    for host in HOSTS:
        rel = Path(host) / USER_DATA_PATH.lstrip("/")
        clear = (tmp_path / "clear" / rel).read_text()
        redacted = (redacted_dir / rel).read_text()
        assert "BEGIN OPENSSH PRIVATE KEY" in clear and "<redacted" not in clear
        key_lines = clear.split("-----BEGIN OPENSSH PRIVATE KEY-----")[1].split("-----END")[0].split()
        assert key_lines, f"{host}: no key body found in the clear plan"
        for line in key_lines:
            assert line not in redacted, f"{host}: a private key line is in the redacted plan"
        assert f"<redacted: {host}-host-key.privateKeyOpenssh>" in redacted
        assert oct((tmp_path / "clear" / rel).stat().st_mode & 0o777) == "0o600", "clear secrets must be 0600"


def test_the_plan_blacks_out_no_line_of_the_stacks_own_scripts(example_plan):
    """A step's script that holds a secret is a secret value as a whole; its other lines (the
    shebang, a library's code) are the repository's own text and must stay readable in every other
    script of the plan (they were blacked out as a "key format header")."""
    _, out = example_plan
    scripts = [path for host in HOSTS for path in (out / host).rglob("*")
               if path.is_file() and path.read_text().startswith("#!/usr/bin/env bash")]
    assert len(scripts) >= 6, f"fewer scripts than the VIP check and reboot script per Loki node: {scripts}"
    for path in scripts:
        assert "<redacted" not in path.read_text(), f"{path.relative_to(out)} has a line blacked out"
    assert secret_fragments({"#!/usr/bin/env bash\nTOKEN=s3cr3t-value-1234\n": "a step's stdin"}) == {
        "TOKEN=s3cr3t-value-1234": "a step's stdin"}, "a secret's own line must still be a fragment"


def test_plan_holds_certificates_that_verify_and_redacted_keys(example_plan):
    _, out = example_plan
    for host, name in (("loki-01", "loki.home.arpa"), ("s3", "loki.s3.home.arpa"), ("grafana", "grafana")):
        tls = out / host
        ca, cert = (tls / CA_FILE.lstrip("/")).read_text(), (tls / SERVER_CERT_FILE.lstrip("/")).read_text()
        error = server_verification_error(ca, cert, name)
        assert error is None, f"the planned certificate of {host} does not verify for {name}: {error}"
        key = (tls / SERVER_KEY_FILE.lstrip("/")).read_text()
        assert key.startswith("-----BEGIN EC PRIVATE KEY-----\n<redacted: ") and key.count("<redacted") == 3, key


def test_plan_is_deterministic(example_plan, tmp_path):
    _, first = example_plan
    proc = plan("--out", str(tmp_path / "again"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "again" / "manifest.json").read_text() == (first / "manifest.json").read_text(), (
        "two plans of the same stack differ: the manifest cannot show what a change does")


def test_plan_of_a_broken_stack_fails_with_the_clear_error(tmp_path):
    broken = tmp_path / "Pulumi.broken.yaml"
    text = (PROJECT_DIR / "Pulumi.homelab.yaml").read_text()
    broken.write_text(text.replace("loki-stack:vipRouterId: 51", "loki-stack:vipRouterId: 300")
                      .replace("[loki-01, loki-02, loki-03]", "[loki-01, loki-02, loki-02]"))
    proc = plan("--stack", "broken", "--stack-file", str(broken), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "loki-stack:vipRouterId: must be a VRRP virtual router id between 1 and 255; got 300" in proc.stderr
    assert "loki-stack:lokiNodes[2]: must be unique: lokiNodes[1] already uses this host name" in proc.stderr
    assert "Traceback" not in proc.stderr, "a settings error must be a message, not a traceback"
    assert not (tmp_path / "out").exists(), "nothing may be written for an invalid stack"


def test_plan_refuses_to_clear_a_directory_that_is_not_a_plan(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    proc = plan("--out", str(tmp_path))
    assert proc.returncode == 2 and "holds no manifest.json" in proc.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_redaction_finds_indented_key_lines():
    key = "-----BEGIN KEY-----\nAAAABBBBCCCCDDDD\nEEEEFFFFGGGGHHHH\n-----END KEY-----\n"
    text = "ssh_keys:\n  k: |\n    " + key.replace("\n", "\n    ")
    out = redact(text, secret_fragments({key: "vm-host-key.private"}))
    assert "AAAABBBB" not in out and "EEEEFFFF" not in out and "<redacted: vm-host-key.private>" in out
    assert "-----BEGIN KEY-----" in out, "armour lines say what was redacted"


def test_no_secret_reaches_any_file_of_a_redacted_plan(tmp_path):
    result = run_program("homelab", read_stack_config("homelab"))
    write_plan(result, tmp_path, stack="homelab", show_secrets=False)
    fragments = secret_fragments(result.engine.cloud.secret_values)
    labels = set(fragments.values())
    assert {"objectstore-root-password.result", "ca-key.privateKeyPem", "loki-01-server-key.privateKeyPem",
            "loki-bucket-keys.secretKey"} <= labels, f"the engine did not hand out the expected secrets: {labels}"
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 30
    for path in written:
        text = path.read_text()
        leaked = sorted({label for fragment, label in fragments.items() if fragment in text})
        assert not leaked, f"{path.relative_to(tmp_path)} holds {leaked}"


def test_plan_writes_every_hosts_service_files(example_plan):
    proc, out = example_plan
    assert proc.returncode == 0, proc.stderr
    expected = {host: ["etc/lokistack/staged/alloy/config.alloy", "etc/lokistack/tls/agent.pem"] for host in HOSTS}
    for node in ("loki-01", "loki-02", "loki-03"):
        expected[node] += ["etc/loki/lokistack-staged/config.yml", "etc/keepalived/lokistack-staged/keepalived.conf"]
    expected["s3"] += ["etc/objectstore/objectstore.env", "etc/systemd/system/objectstore.service"]
    expected["grafana"] += ["etc/grafana/grafana.ini", "etc/grafana/tls/grafana.pem"]
    for host, paths in expected.items():
        for path in paths:
            assert (out / host / path).is_file(), f"the plan lacks {host}:/{path}"


def test_a_plan_with_secrets_is_private_all_the_way_down(tmp_path):
    """--show-secrets: the directory 0700 (an earlier plan's 0755 directory is tightened), and every
    file holding any line of a generated secret, the manifest included, 0600."""
    out = tmp_path / "plan"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    out.chmod(0o755)
    proc = plan("--out", str(out), "--show-secrets")
    assert proc.returncode == 0, proc.stderr
    fragments = secret_fragments(run_program("homelab", read_stack_config("homelab")).engine.cloud.secret_values)
    assert len(set(fragments.values())) > 20, "the engine handed out fewer secrets than the stack has"
    assert oct(out.stat().st_mode & 0o777) == "0o700", "a plan with secrets must be private to its owner"
    holding = []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        labels = sorted({label for fragment, label in fragments.items() if fragment in path.read_text()})
        if labels:
            holding.append(path.name)
            assert oct(path.stat().st_mode & 0o777) == "0o600", f"{path.relative_to(out)} holds {labels[:3]}"
    assert "manifest.json" in holding and len(holding) > 20, f"only these hold secrets: {holding}"


def test_a_plan_without_secrets_stays_readable(example_plan):
    _, out = example_plan
    assert oct((out / "manifest.json").stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize(("line", "expected"), [
    ("loki-stack:lokiSchemaFrom: 2025-01-01",
     'loki-stack:lokiSchemaFrom: holds an unquoted date, which YAML reads as a date, not as text: quote it; '
     'got 2025-01-01 (unquoted). Example: loki-stack:lokiSchemaFrom: "2025-01-01"'),
    ("loki-stack:vipHostname:",
     "loki-stack:vipHostname: has no value (an empty YAML value is null)"),
    ("loki-stack:grafanaName: [grafana]",
     "loki-stack:grafanaName: must be text, not a YAML list"),
    ("loki-stack:domain: {home: arpa}",
     "loki-stack:domain: must be text, not a YAML mapping"),
])
def test_yaml_values_of_no_declared_type_get_the_settings_report(tmp_path, line, expected):
    """As a user writes them in the stack file: an unquoted date, an empty value, brackets, a colon."""
    key = line.split(":", 2)[1]
    stack = tmp_path / "Pulumi.homelab.yaml"
    lines = [x for x in (PROJECT_DIR / "Pulumi.homelab.yaml").read_text().splitlines() if f"loki-stack:{key}:" not in x]
    stack.write_text("\n".join([*lines, f"  {line}", ""]))
    proc = plan("--stack-file", str(stack), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_a_stack_file_that_is_not_yaml_is_a_message(tmp_path):
    stack = tmp_path / "Pulumi.homelab.yaml"
    stack.write_text("config:\n  loki-stack:domain: [unclosed\n")
    proc = plan("--stack-file", str(stack), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "is not valid YAML" in proc.stderr and "Traceback" not in proc.stderr
