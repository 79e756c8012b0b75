"""The NIC name inside the VMs: what Proxmox's network config says, and everything that names it.

Proxmox writes each VM's NoCloud network config itself (the VMs get their address from
``ipconfig0``); ``offline/proxmox_cloudinit.py`` renders it as Proxmox does, and cloud-init's own
parser (Debian's cloud-init, the version the VMs run) reads it back. Every file the stack gives a
VM that names the NIC must name that one.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from components.proxmox_vm import GUEST_INTERFACE
from components.vip import STAGE_DIR as VIP_STAGE_DIR
from offline.proxmox_cloudinit import nocloud_network
from tests.labs.example import files_of
from tests.labs.needs import require_tool

VM = "proxmoxve:index/vmLegacy:VmLegacy"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's cloud-init lives in the system interpreter
PARSE = """
import json, sys, yaml
from cloudinit.net.network_state import parse_net_config_data
state = parse_net_config_data(yaml.safe_load(sys.stdin.read()))
print(json.dumps([{"name": i["name"], "mac": i.get("mac_address"),
                   "addresses": [s.get("address") for s in i.get("subnets", [])]} for i in state.iter_interfaces()]))
"""
KERNEL_NIC_NAMES = re.compile(r"\b(ens[0-9]+|enp[0-9]+s[0-9]+|eno[0-9]+|enx[0-9a-f]{12})\b")


def interfaces(network_config: str) -> list[dict[str, object]]:
    """The interfaces cloud-init configures from ``network_config``."""
    require_tool("cloud-init")
    proc = subprocess.run([SYSTEM_PYTHON, "-c", PARSE], input=network_config, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, f"cloud-init could not parse the network config:\n{network_config}\n{proc.stderr}"
    return list(json.loads(proc.stdout))


@pytest.fixture(scope="module")
def network_configs(example) -> dict[str, str]:
    vms = example.engine.monitor.of_type(VM)
    assert len(vms) == 5, f"expected the example's 5 VMs, found {[r.name for r in vms]}"
    return {r.plain_inputs["name"]: nocloud_network(r.plain_inputs["name"], r.plain_inputs) for r in vms}


@pytest.mark.real_tools
def test_proxmox_names_every_vms_nic_eth0_matched_by_mac(example, network_configs):
    hosts = example.resolved["output:hosts"].value
    for host, config in network_configs.items():
        found = interfaces(config)
        assert [i["name"] for i in found] == [GUEST_INTERFACE], f"{host}: cloud-init configures {found}"
        assert found[0]["mac"], f"{host}: the NIC is not matched by its MAC"
        assert found[0]["addresses"] == [hosts[host]["address"]], f"{host}: address {found[0]['addresses']}"


@pytest.mark.real_tools
def test_keepalived_binds_the_vip_to_the_nic_proxmox_configures(example, network_configs):
    for host in ("loki-01", "loki-02", "loki-03"):
        nic = interfaces(network_configs[host])[0]["name"]
        conf = files_of(example, host)[f"{VIP_STAGE_DIR}/keepalived.conf"][1].value
        named = re.findall(r"^\s*interface (\S+)$|\sdev (\S+)$", conf, re.MULTILINE)
        named = [a or b for a, b in named]
        assert named and set(named) == {nic}, f"{host}: keepalived names {named}, the VM's NIC is {nic}"


def test_no_file_a_vm_receives_names_a_kernel_nic_name(example):
    for i, hf in enumerate(example.returned.host_files):
        text = example.resolved[f"file:{i}"].value
        found = set(KERNEL_NIC_NAMES.findall(text))
        assert not found, f"{hf.host}:{hf.path} names {found}; the NIC is {GUEST_INTERFACE} after cloud-init"


def test_the_model_renders_proxmox_s_exact_text():
    """Byte for byte what nocloud_network in Cloudinit.pm prints for such a VM."""
    inputs = {"networkDevices": [{"bridge": "vmbr0", "model": "virtio", "macAddress": "BC:24:11:AA:BB:CC"}],
              "initialization": {"ipConfigs": [{"ipv4": {"address": "198.18.0.11/24", "gateway": "198.18.0.1"}}],
                                 "dns": {"domain": "home.arpa", "servers": ["198.18.0.1"]}}}
    assert nocloud_network("loki-01", inputs) == (
        "version: 1\n"
        "config:\n"
        "    - type: physical\n"
        "      name: eth0\n"
        "      mac_address: 'bc:24:11:aa:bb:cc'\n"
        "      subnets:\n"
        "      - type: static\n"
        "        address: '198.18.0.11'\n"
        "        netmask: '255.255.255.0'\n"
        "        gateway: '198.18.0.1'\n"
        "    - type: nameserver\n"
        "      address:\n"
        "      - '198.18.0.1'\n"
        "      search:\n"
        "      - 'home.arpa'\n")
