"""components/proxmox_vm.py: what one VM registers, read back from the fake engine."""

from __future__ import annotations

import re
import shlex
from dataclasses import replace
from typing import Any

import pulumi
import pulumi_command as command
import pulumi_tls as tls
import pytest
import yaml
from cryptography.hazmat.primitives import serialization as ser

from components.proxmox_vm import (
    DATA_DISK_PATH,
    PROBE_SUFFIX,
    USER_DATA_PATH,
    WAIT_SCRIPT,
    HostEntry,
    ProxmoxVm,
    ProxmoxVmArgs,
)
from offline import engine
from offline.plan import read_stack_config, run_program
from tests.labs.example import EXAMPLE_STACK

HOSTS = [
    HostEntry(address="192.168.50.21", fqdn="loki-01.home.arpa", name="loki-01"),
    HostEntry(address="192.168.50.30", fqdn="s3.home.arpa", name="s3"),
    HostEntry(address="192.168.50.20", fqdn="loki.home.arpa", name="loki"),
]
ADMIN_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJpr/dRGxU8CQFAAYlnNpNTENGvp7bPiqQowbP0PnG7 alice@laptop"
VM_TYPE = "proxmoxve:index/vmLegacy:VmLegacy"
SNIPPET_TYPE = "proxmoxve:index/fileLegacy:FileLegacy"
COMMAND_TYPE = "command:remote:Command"


def make_args(deploy_key: tls.PrivateKey, **changes: Any) -> ProxmoxVmArgs:
    args = ProxmoxVmArgs(
        hostname="loki-01", domain="home.arpa", role="loki", proxmox_node="pve1", cores=2, memory_mib=4096,
        disk_gib=16, data_disk_gib=50, address="192.168.50.21", prefix_length=24, gateway="192.168.50.1",
        dns_servers=["192.168.50.1"], bridge="vmbr0", vlan_id=None, vm_datastore="local-lvm",
        snippet_datastore="local", image_id="local:import/debian-12.qcow2", admin_user="ops",
        admin_keys=[ADMIN_KEY], deploy_public_key=deploy_key.public_key_openssh,
        deploy_private_key=deploy_key.private_key_openssh, hosts=HOSTS,
    )
    return replace(args, **changes)


def build(**changes: Any) -> tuple[ProxmoxVm, tls.PrivateKey]:
    deploy_key = tls.PrivateKey("deploy", algorithm="ED25519")
    return ProxmoxVm("loki-01", make_args(deploy_key, **changes)), deploy_key


async def registered(vm: ProxmoxVm) -> None:
    """Wait until every child is registered: the wait command comes last (after VM and snippet)."""
    await vm.cloud_init.id.future()


async def settle(*outputs: pulumi.Output[Any]) -> list[Any]:
    """Values of the outputs; fails when one is unknown, so nothing passes on an unknown."""
    values = []
    for out in outputs:
        assert await out.is_known(), "an output the test reads is unknown"
        values.append(await out.future())
    return values


def user_data_of(fake_engine: engine.Engine) -> tuple[engine.Registration, dict[str, Any]]:
    snippet = fake_engine.monitor.find(SNIPPET_TYPE, "loki-01-user-data")
    raw = snippet.inputs["sourceRaw"]
    assert engine.is_secret(raw), "loki-01-user-data: the snippet holds the host private key and must be secret"
    text = engine.unwrap(raw)["data"]
    assert text.startswith("#cloud-config\n"), "loki-01-user-data must be a #cloud-config document"
    return snippet, yaml.safe_load(text)


@pulumi.runtime.test
async def test_user_data_creates_the_admin_user_with_operator_and_deploy_keys(fake_engine):
    vm, deploy_key = build()
    deploy_public, = await settle(deploy_key.public_key_openssh)
    await registered(vm)
    await registered(vm)
    _, doc = user_data_of(fake_engine)
    user = doc["users"][0]
    assert user["name"] == "ops" and user["lock_passwd"] is True and user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert user["ssh_authorized_keys"] == [ADMIN_KEY, deploy_public.strip()], "loki-01: authorized keys"
    assert doc["ssh_pwauth"] is False and doc["disable_root"] is True
    assert doc["hostname"] == "loki-01" and doc["fqdn"] == "loki-01.home.arpa"
    assert "qemu-guest-agent" in doc["packages"]
    assert ["systemctl", "enable", "--now", "qemu-guest-agent"] in doc["runcmd"]


@pulumi.runtime.test
async def test_user_data_writes_etc_hosts_for_every_host_and_the_vip(fake_engine):
    vm, _ = build()
    await registered(vm)
    _, doc = user_data_of(fake_engine)
    assert doc["manage_etc_hosts"] is False, "cloud-init would overwrite the stack's /etc/hosts"
    hosts_file = next(f for f in doc["write_files"] if f["path"] == "/etc/hosts")
    lines = hosts_file["content"].splitlines()
    for entry in HOSTS:
        assert f"{entry.address} {entry.fqdn} {entry.name}" in lines, f"/etc/hosts lacks {entry.fqdn}"
    assert "127.0.0.1 localhost" in lines
    assert hosts_file["permissions"] == "0644"


@pulumi.runtime.test
async def test_the_snippets_bootstrap_key_is_pinned_only_until_the_vms_own_key_replaces_it(fake_engine):
    vm, deploy_key = build()
    connection, own_public, deploy_private = await settle(vm.connection, vm.host_public_key,
                                                          deploy_key.private_key_openssh)
    await vm.host_key_step.id.future()
    _, doc = user_data_of(fake_engine)
    private = ser.load_ssh_private_key(doc["ssh_keys"]["ed25519_private"].encode(), password=None)
    bootstrap = private.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
    assert bootstrap == doc["ssh_keys"]["ed25519_public"], "loki-01: bootstrap private and public key differ"
    assert doc["ssh_genkeytypes"] == ["ed25519"] and doc["ssh_deletekeys"] is True
    wait = fake_engine.monitor.find(COMMAND_TYPE, "loki-01-cloud-init")
    step = fake_engine.monitor.find(COMMAND_TYPE, "loki-01-host-key")
    vm_reg = fake_engine.monitor.find(VM_TYPE, "loki-01-vm")
    instance = f"lokistack:vm-{vm_reg.id}-{engine.generated_mac('loki-01', 0)}"
    assert wait.plain_inputs["connection"]["hostKey"] == f"{bootstrap} {instance}", (
        "loki-01-cloud-init must pin the bootstrap key (a new VM presents it) on this instance of the VM")
    assert step.plain_inputs["connection"]["hostKey"] == f"{bootstrap} {instance}", (
        "loki-01-host-key must pin the bootstrap key on this instance of the VM")
    assert wait.urn in step.dependencies, "loki-01-host-key must wait for cloud-init"
    assert connection["host_key"] == f"{own_public} {instance}" and own_public != bootstrap, (
        "loki-01: every later step must pin the VM's own key, not the snippet's, on this instance of the VM")
    stdin = step.plain_inputs["stdin"]
    assert engine.is_secret(step.inputs["stdin"]), "loki-01-host-key carries a private key: its stdin must be secret"
    quoted = re.search(r"^HOST_PRIVATE_KEY=('[^']*')$", stdin, re.MULTILINE)
    assert quoted, "loki-01-host-key: no HOST_PRIVATE_KEY parameter"
    given = ser.load_ssh_private_key(shlex.split(quoted.group(1))[0].encode(), password=None)
    assert given.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode() == own_public, (
        "loki-01-host-key must install the private half of the key later steps pin")
    snippet = fake_engine.monitor.find(SNIPPET_TYPE, "loki-01-user-data")
    snippet_text = engine.unwrap(snippet.inputs["sourceRaw"])["data"]
    assert "HOST_PRIVATE_KEY" not in snippet_text and own_public.split()[1] not in snippet_text, (
        "the VM's own key must not be in the snippet")
    assert deploy_private not in stdin + step.plain_inputs["create"]
    assert step.plain_inputs["triggers"][0] == instance.removeprefix("lokistack:"), (
        "loki-01-host-key: a VM created anew (bootstrap key again) must re-run the key step")


@pulumi.runtime.test
async def test_the_vm_has_a_static_address_image_disk_data_disk_and_agent(fake_engine):
    vm, _ = build()
    await registered(vm)
    snippet = fake_engine.monitor.find(SNIPPET_TYPE, "loki-01-user-data")
    reg = fake_engine.monitor.find(VM_TYPE, "loki-01-vm")
    i = reg.plain_inputs
    init = i["initialization"]
    assert init["ipConfigs"] == [{"ipv4": {"address": "192.168.50.21/24", "gateway": "192.168.50.1"}}]
    assert init["dns"] == {"domain": "home.arpa", "servers": ["192.168.50.1"]}
    assert init["userDataFileId"] == snippet.id == "local:snippets/lokistack-loki-01-user-data.yaml"
    assert i["nodeName"] == "pve1" and i["name"] == "loki-01"
    assert i["agent"]["enabled"] is True, "loki-01-vm: the guest agent must be enabled"
    assert i["cpu"]["cores"] == 2 and i["memory"]["dedicated"] == 4096
    system, data = i["disks"]
    assert system["interface"] == "virtio0" and system["importFrom"] == "local:import/debian-12.qcow2"
    assert system["size"] == 16
    assert data["interface"] == "virtio1" and data["size"] == 50 and data["serial"] == "lokistack-data"
    assert "importFrom" not in data, "the data disk must start empty"
    assert i["networkDevices"] == [{"bridge": "vmbr0", "model": "virtio"}]
    assert "disks[0].importFrom" in reg.ignore_changes, "a new cloud image must not replace an existing VM"
    path, = await settle(vm.data_disk_path)
    assert path == DATA_DISK_PATH


@pulumi.runtime.test
async def test_no_data_disk_and_a_vlan_tag_when_asked(fake_engine):
    vm, _ = build(data_disk_gib=0, vlan_id=20)
    path, = await settle(vm.data_disk_path)
    await registered(vm)
    i = fake_engine.monitor.find(VM_TYPE, "loki-01-vm").plain_inputs
    assert [d["interface"] for d in i["disks"]] == ["virtio0"], "loki-01-vm: data disk created for size 0"
    assert i["networkDevices"][0]["vlanId"] == 20
    assert path == ""


@pulumi.runtime.test
async def test_the_snippet_is_replaced_delete_first(fake_engine):
    vm, _ = build()
    await registered(vm)
    snippet = fake_engine.monitor.find(SNIPPET_TYPE, "loki-01-user-data")
    assert snippet.delete_before_replace, "loki-01-user-data keeps its file name: delete before replace"
    assert snippet.plain_inputs["contentType"] == "snippets" and snippet.plain_inputs["nodeName"] == "pve1"


@pulumi.runtime.test
async def test_the_cloud_init_wait_runs_after_the_vm_over_a_pinned_secret_connection(fake_engine):
    vm, deploy_key = build()
    connection, deploy_private = await settle(vm.connection, deploy_key.private_key_openssh)
    await registered(vm)
    assert await vm.connection.is_secret(), "loki-01: the connection holds a private key and must be secret"
    vm_reg = fake_engine.monitor.find(VM_TYPE, "loki-01-vm")
    wait = fake_engine.monitor.find(COMMAND_TYPE, "loki-01-cloud-init")
    assert vm_reg.urn in wait.dependencies, "loki-01-cloud-init must wait for loki-01-vm"
    assert wait.plain_inputs["create"] == "bash -s" and wait.plain_inputs["stdin"] == WAIT_SCRIPT
    assert wait.plain_inputs["triggers"] == [f"vm-{vm_reg.id}-{engine.generated_mac('loki-01', 0)}"], (
        "loki-01-cloud-init: a VM created anew (its NIC's MAC, the id may be the same) must re-run the wait")
    assert engine.is_secret(wait.inputs["connection"]), "loki-01-cloud-init: connection input not secret"
    conn = wait.plain_inputs["connection"]
    assert conn["host"] == "192.168.50.21" and conn["user"] == "ops"
    assert conn["privateKey"] == deploy_private and conn["hostKey"] != connection["host_key"], (
        "the wait pins the bootstrap key; later steps pin the VM's own")
    assert deploy_private not in wait.plain_inputs["create"] + wait.plain_inputs["stdin"]


@pulumi.runtime.test
async def test_whatever_uses_the_connection_waits_for_cloud_init_and_the_vms_own_key(fake_engine):
    vm, _ = build()
    probe = command.remote.Command("probe", connection=vm.connection, create="true")
    await probe.id.future()
    probe_deps = fake_engine.monitor.find(COMMAND_TYPE, "probe").dependencies
    key_step = fake_engine.monitor.find(COMMAND_TYPE, "loki-01-host-key")
    assert key_step.urn in probe_deps, "a command on loki-01 could start before its own host key is in place"
    assert fake_engine.monitor.find(COMMAND_TYPE, "loki-01-cloud-init").urn in key_step.dependencies, (
        "a command on loki-01 could start before cloud-init finished")


@pulumi.runtime.test
async def test_outputs_and_host_files(fake_engine):
    vm, _ = build()
    address, fqdn, hostname, vm_id = await settle(vm.address, vm.fqdn, vm.hostname, vm.vm_id)
    assert (address, fqdn, hostname) == ("192.168.50.21", "loki-01.home.arpa", "loki-01")
    assert vm_id == int(fake_engine.monitor.find(VM_TYPE, "loki-01-vm").id)
    files = vm.host_files
    assert [(f.host, f.path, f.mode) for f in files] == [("loki-01", USER_DATA_PATH, "0600")]
    content = files[0].content
    assert isinstance(content, pulumi.Output) and await content.is_secret(), "the user-data file must be secret"


@pytest.mark.preview
@pulumi.runtime.test
async def test_in_preview_the_user_data_is_unknown_but_the_address_is_known(fake_engine):
    vm, _ = build()
    assert await vm.address.is_known(), "the address comes from settings and is known in preview"
    content = vm.host_files[0].content
    assert isinstance(content, pulumi.Output)
    assert not await content.is_known(), "user-data depends on keys the provider makes; unknown in preview"


def own_public_key() -> str:
    """The VM's own key as the fake engine makes it (from the resource's name)."""
    return str(engine.fake_private_key("loki-01-ssh-host-key", {"algorithm": "ED25519"})["publicKeyOpenssh"]).strip()


@pulumi.runtime.test
async def test_the_host_key_probe_runs_after_the_vm_where_pulumi_runs_on_each_new_instance(fake_engine):
    vm, _ = build()
    await registered(vm)
    probe = fake_engine.monitor.find("command:local:Command", f"loki-01{PROBE_SUFFIX}")
    vm_reg = fake_engine.monitor.find(VM_TYPE, "loki-01-vm")
    assert vm_reg.urn in probe.dependencies, "loki-01-host-key-probe must wait for loki-01-vm"
    assert probe.plain_inputs["triggers"] == [f"vm-{vm_reg.id}-{engine.generated_mac('loki-01', 0)}"], (
        "loki-01-host-key-probe must run again for a VM created anew")
    assert engine.PROBE_SUFFIX == PROBE_SUFFIX, "the fake engine must answer for the probe by its name"
    params = engine.script_parameters(probe.plain_inputs["stdin"])
    assert params["ADDRESS"] == "192.168.50.21" and params["OWN_KEY"] == own_public_key(), (
        f"loki-01-host-key-probe asks {params.get('ADDRESS')} for the wrong keys: {params}")
    assert not engine.is_secret(probe.inputs["stdin"]), "loki-01-host-key-probe holds public keys only"


@pulumi.runtime.test
async def test_a_vm_that_presents_its_own_key_is_pinned_by_it_from_its_first_step(fake_engine):
    """An upgrade from a version without the probe: the first steps run again (their triggers
    changed) on a VM that has its own key already; pinning the bootstrap key would fail them."""
    own = own_public_key()
    fake_engine.cloud.presented["192.168.50.21"] = own
    vm, _ = build()
    await registered(vm)
    await vm.host_key_step.id.future()
    for name in ("loki-01-cloud-init", "loki-01-host-key"):
        pinned = fake_engine.monitor.find(COMMAND_TYPE, name).plain_inputs["connection"]["hostKey"]
        assert pinned.startswith(own + " lokistack:vm-"), f"{name} pins {pinned!r}, not the key the VM presents"


def test_a_vm_that_presents_another_key_stops_the_deployment_before_any_step_connects():
    config = read_stack_config(EXAMPLE_STACK)
    stranger = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJpr/dRGxU8CQFAAYlnNpNTENGvp7bPiqQowbP0PnG7"
    hosts = run_program(EXAMPLE_STACK, config).resolved["output:hosts"].value
    address = hosts["loki-02"]["address"]
    with pytest.raises(Exception, match=rf"loki-02{PROBE_SUFFIX}: {re.escape(address)} presents the SSH host key"):
        run_program(EXAMPLE_STACK, config, presented={address: stranger})
