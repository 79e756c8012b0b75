"""The blast radius of changes to the example stack, as `plan --diff` reports it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from offline.diff import Diff, diff_manifests
from offline.plan import build_manifest, read_stack_config, run_program
from stack.schema import PROJECT_DIR

LOKI = ["loki-01", "loki-02", "loki-03"]


def manifest(**overrides: Any) -> dict[str, Any]:
    return build_manifest(run_program("homelab", read_stack_config("homelab", overrides=overrides)), stack="homelab")


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    return manifest()


def diff(example: dict[str, Any], **overrides: Any) -> Diff:
    return diff_manifests(example, manifest(**overrides))


def test_changing_nothing_changes_nothing(example):
    result = diff(example)
    assert result.changes == [] and result.files == {}, f"an unchanged stack would change: {result.changes}"


@pytest.mark.parametrize("setting", [{"lokiRetention": "1440h"}, {"lokiIngestionRateMb": 32},
                                     {"lokiIngestionBurstMb": 128}])
def test_a_limits_change_touches_only_the_runtime_config_and_restarts_nothing(example, setting):
    """Retention and ingestion limits are in Loki's runtime config: a change re-runs each node's
    runtime delivery and its reload step, never the apply step that restarts Loki."""
    result = diff(example, **setting)
    expected = {f"loki-{n}-{step}" for n in LOKI for step in ("runtime-install", "runtime-apply")}
    assert result.names() == expected, (
        f"{setting} touched {sorted(result.names() - expected)}, missed {sorted(expected - result.names())}")
    assert set(result.files) == {(n, "/etc/loki/lokistack-staged/runtime.yml") for n in LOKI}
    key = next(iter(setting))
    line = {"lokiRetention": "retention_period: 1440h", "lokiIngestionRateMb": "ingestion_rate_mb: 32",
            "lokiIngestionBurstMb": "ingestion_burst_size_mb: 128"}[key]
    for text in result.files.values():
        assert f"\n+    {line}\n" in text, f"{key}: the runtime config diff lacks {line}:\n{text}"


def test_a_grafana_version_change_touches_nothing_of_loki_the_vip_or_the_object_store(example):
    result = diff(example, grafanaVersion="13.2.4")
    assert result.names(), "the version change changed nothing"
    untouchable = ("loki-", "vip-", "objectstore", "loki-bucket", "ca", "s3")
    assert not {n for n in result.names() if n.startswith(untouchable)}, sorted(result.names())
    assert result.names() <= {"grafana-setup", "grafana-ready"}


def test_adding_a_loki_node_replaces_no_vm_updates_the_peers_and_restarts_no_loki(example):
    """Scale-out: the new VM and its steps; the others learn of the new peer (firewall, keepalived,
    gateway) but their Loki configs stay as they are (memberlist joins through the first three
    nodes), so that their applies restart no Loki."""
    result = diff(example, lokiNodes=[*LOKI, "loki-04"],
                  lokiAddresses=["192.168.50.21", "192.168.50.22", "192.168.50.23", "192.168.50.24"])
    vms = {c.name for c in result.changes if c.type == "proxmoxve:index/vmLegacy:VmLegacy"}
    created = result.of("loki-04-vm")
    assert vms == {"loki-04-vm"} and created is not None and created.action == "create", f"VM changes: {vms}"
    assert not {c.name for c in result.changes if c.action in ("replace", "delete") and
                c.type.startswith(("proxmoxve:index/vmLegacy", "tls:"))}, "an existing VM or certificate is replaced"
    for node in LOKI:
        assert (node, "/etc/loki/lokistack-staged/config.yml") not in result.files, (
            f"{node}'s Loki config changed, so its apply would restart Loki: "
            f"{result.files[(node, '/etc/loki/lokistack-staged/config.yml')]}")
        assert "192.168.50.24" in result.files[(node, "/etc/lokistack/firewall.nft")], (
            f"{node}'s firewall does not let the new node in")
        keepalived = result.files[(node, "/etc/keepalived/lokistack-staged/keepalived.conf")]
        assert "+        192.168.50.24" in keepalived, f"{node}: the new peer is not a unicast peer"
    assert result.of("loki-loki-01-apply") and result.of("vip-loki-01-apply")


def test_diff_against_a_written_manifest_and_from_the_command_line(tmp_path):
    before = tmp_path / "before"
    proc = subprocess.run([sys.executable, "-m", "stack", "plan", "--out", str(before)], cwd=PROJECT_DIR,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    changed = tmp_path / "Pulumi.changed.yaml"
    changed.write_text((PROJECT_DIR / "Pulumi.homelab.yaml").read_text()
                       .replace("loki-stack:lokiRetention: 744h", "loki-stack:lokiRetention: 1440h"))
    proc = subprocess.run([sys.executable, "-m", "stack", "plan", "--stack-file", str(changed), "--out",
                           str(tmp_path / "after"), "--diff", str(before / "manifest.json")], cwd=PROJECT_DIR,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "0 to create, 0 to update, 6 to replace, 0 to delete" in proc.stdout
    assert "+    retention_period: 1440h" in proc.stdout
    saved = json.loads((before / "manifest.json").read_text())
    assert all("<redacted" in f["content"] or "PRIVATE KEY" not in f["content"] for f in saved["files"]), (
        "the manifest keeps file contents for diffs; they must be redacted")


def test_losing_the_first_node_changes_the_others_only_in_their_peer_lists():
    """No node is special (the compactor is elected by Loki's ring): removing the first of four
    nodes changes the others' Loki configs only where they list the nodes memberlist joins through
    (the first three)."""
    four = {"lokiNodes": [*LOKI, "loki-04"],
            "lokiAddresses": ["192.168.50.21", "192.168.50.22", "192.168.50.23", "192.168.50.24"]}
    without_first = {"lokiNodes": four["lokiNodes"][1:], "lokiAddresses": four["lokiAddresses"][1:]}
    result = diff_manifests(manifest(**four), manifest(**without_first))
    for node in without_first["lokiNodes"]:
        text = result.files[(node, "/etc/loki/lokistack-staged/config.yml")]
        changed = [line for line in text.splitlines()
                   if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
        assert changed == ["-  - 192.168.50.21:7946", "+  - 192.168.50.24:7946"], (
            f"{node}'s config changed beyond the nodes it joins through: {changed}")


def test_the_diff_is_the_same_whatever_the_old_stack_file_is_called(tmp_path):
    original = (PROJECT_DIR / "Pulumi.homelab.yaml").read_text()
    changed = tmp_path / "Pulumi.homelab.yaml"
    changed.write_text(original.replace("loki-stack:lokiRetention: 744h", "loki-stack:lokiRetention: 1440h"))
    reports = {}
    for name in ("Pulumi.homelab.yaml", "old-homelab.yaml", "Pulumi.staging.yaml"):
        old = tmp_path / "old" / name
        old.parent.mkdir(exist_ok=True)
        old.write_text(original)
        proc = subprocess.run([sys.executable, "-m", "stack", "plan", "--stack-file", str(changed), "--out",
                               str(tmp_path / "out"), "--diff", str(old)], cwd=PROJECT_DIR,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        reports[name] = proc.stdout.split(f"changes from {old} to this plan:", 1)[1]
    assert "0 to create, 0 to update, 6 to replace, 0 to delete" in reports["Pulumi.homelab.yaml"]
    assert reports["old-homelab.yaml"] == reports["Pulumi.homelab.yaml"] == reports["Pulumi.staging.yaml"], (
        "the diff depends on the old file's name")


def test_a_user_data_change_replaces_no_vm_and_data_vms_are_protected(example):
    """The user-data is for the first boot; a new admin key (user-data) must not rebuild a VM."""
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJpr/dRGxU8CQFAAYlnNpNTENGvp7bPiqQowbP0PnG7 bob@laptop"
    result = diff(example, sshAdminKeys=[key])
    snippets = {c.name for c in result.changes if c.type == "proxmoxve:index/fileLegacy:FileLegacy"}
    assert snippets, "the change did not reach the user-data at all"
    vms = [c for c in result.changes if c.type == "proxmoxve:index/vmLegacy:VmLegacy"]
    assert not vms, f"a user-data change touches VMs: {[(c.name, c.action, c.keys) for c in vms]}"


def test_vms_that_keep_data_are_protected():
    program = run_program("homelab", read_stack_config("homelab"))
    protected = {r.name for r in program.engine.registrations
                 if r.type == "proxmoxve:index/vmLegacy:VmLegacy" and r.protect}
    assert protected == {"loki-01-vm", "loki-02-vm", "loki-03-vm", "s3-vm"}, protected
    for reg in program.engine.monitor.of_type("proxmoxve:index/vmLegacy:VmLegacy"):
        assert "initialization.userDataFileId" in reg.ignore_changes, (
            f"{reg.name}: a new snippet (its id unknown in a preview) would read as a replacement")


FOUR = {"lokiNodes": [*LOKI, "loki-04"],
        "lokiAddresses": ["192.168.50.21", "192.168.50.22", "192.168.50.23", "192.168.50.24"]}
RETIRED_STEPS = ("loki-loki-04-", "loki-gateway-loki-04-", "vip-loki-04-", "gateway-certificates-loki-04-")


def test_retiring_a_node_runs_its_retirement_restarts_no_loki_and_unprotects_only_its_vm():
    """Scale-in, first run: loki-04's retirement step is new; its Loki, gateway and keepalived steps
    leave the program (they have nothing to do when deleted); the other nodes drop it from their
    firewalls, gateways and keepalived, but their Loki configs stay (no restart); its VM is the only
    one Pulumi may delete next."""
    result = run_program("homelab", read_stack_config("homelab", overrides={**FOUR, "lokiRetiring": ["loki-04"]}))
    after = build_manifest(result, stack="homelab")
    change = diff_manifests(manifest(**FOUR), after)
    files = {(f["host"], f["path"]): f["content"] for f in after["files"]}
    assert change.names("create") == {"loki-retiring", "loki-retiring-loki-04-retire"}, change.names("create")
    deleted = change.names("delete")
    assert deleted and all(n.startswith(RETIRED_STEPS) for n in deleted), (
        f"deleted beyond loki-04's Loki, gateway and keepalived steps: {sorted(deleted)}")
    assert {"loki-loki-04-apply", "loki-gateway-loki-04-apply", "vip-loki-04-apply"} <= deleted
    assert not [f for f in change.files if f[1] == "/etc/loki/lokistack-staged/config.yml" and f[0] in LOKI], (
        "a remaining node's Loki config changed: its apply would restart Loki")
    for node in LOKI:
        assert "192.168.50.24" not in files[(node, "/etc/lokistack/firewall.nft")], (
            f"{node}'s firewall still lets the retired loki-04 in")
    protected = {r.name for r in result.engine.monitor.of_type("proxmoxve:index/vmLegacy:VmLegacy") if r.protect}
    assert protected == {"loki-01-vm", "loki-02-vm", "loki-03-vm", "s3-vm"}, f"protected VMs: {sorted(protected)}"


def test_the_run_after_a_retirement_deletes_the_node_and_runs_no_step_but_the_gateways_lists():
    """Scale-in, second run: loki-04 out of both lists. Only deletes (its VM and what is left of its
    steps) and the snippets' /etc/hosts; no step runs on any host but the other gateways' lists of
    the certificates they take, which drop loki-04's agent certificate (it pushed until its VM went)."""
    retiring = manifest(**FOUR, lokiRetiring=["loki-04"])
    change = diff_manifests(retiring, manifest())
    running = {c.name for c in change.changes if c.type.startswith("command:") and c.action != "delete"}
    lists = {f"gateway-certificates-{n}-{step}" for n in LOKI for step in ("staged-install", "admit", "settle")}
    assert running == lists, f"the run after the retirement would run {sorted(running - lists)}"
    assert "loki-04-vm" in change.names("delete")
    assert change.names() - change.names("delete") == {f"{vm}-user-data" for vm in [*LOKI, "s3", "grafana"]} | lists
