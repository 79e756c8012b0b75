"""The NoCloud network config Proxmox VE writes for a VM, from the VM's own settings.

A model of ``nocloud_network`` in Proxmox's ``PVE/QemuServer/Cloudinit.pm`` (qemu-server), the
format Proxmox puts in ``network-config`` on the cloud-init drive when a VM has ``ipconfig<N>``
(the provider's ``initialization.ip_configs``) and no custom network snippet, as the stack's VMs
do: cloud-init network config version 1, one ``physical`` entry per ``net<N>`` that has an
``ipconfig<N>``, matched by the NIC's MAC and named ``eth<N>``, then one ``nameserver`` entry.
Indentation and quoting follow the Perl code line by line.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from offline.engine import PROXMOX_OUI, generated_mac

__all__ = ["PROXMOX_OUI", "generated_mac", "nocloud_network"]

def nocloud_network(vm_name: str, inputs: dict[str, Any], generation: int = 0) -> str:
    """``network-config`` for a VM, from the ``VmLegacy`` inputs as the engine saw them (camelCase);
    ``generation``: how many times the VM was created anew (``generated_mac``)."""
    initialization = inputs.get("initialization") or {}
    ip_configs = initialization.get("ipConfigs") or []
    i = "    "
    content = "version: 1\nconfig:\n"
    for index, device in enumerate(inputs.get("networkDevices") or []):
        if index >= len(ip_configs) or not ip_configs[index]:
            continue  # `next if !$conf->{"ipconfig$id"}`
        ipv4 = ip_configs[index].get("ipv4") or {}
        mac = (device.get("macAddress") or generated_mac(vm_name, index, generation)).lower()
        content += (f"{i}- type: physical\n"
                    f"{i}  name: eth{index}\n"
                    f"{i}  mac_address: '{mac}'\n"
                    f"{i}  subnets:\n")
        j = i + "  "
        address = ipv4.get("address")
        if address == "dhcp":
            content += f"{j}- type: dhcp4\n"
        elif address:
            interface = ipaddress.IPv4Interface(address)
            content += (f"{j}- type: static\n"
                        f"{j}  address: '{interface.ip}'\n"
                        f"{j}  netmask: '{interface.netmask}'\n")
            if ipv4.get("gateway"):
                content += f"{j}  gateway: '{ipv4['gateway']}'\n"
    dns = initialization.get("dns") or {}
    # Without a search domain or servers Proxmox takes the node's own resolv.conf; the stack always sets them.
    servers, search = dns.get("servers") or [], [dns["domain"]] if dns.get("domain") else []
    content += f"{i}- type: nameserver\n"
    if servers:
        content += f"{i}  address:\n" + "".join(f"{i}  - '{s}'\n" for s in servers)
    if search:
        content += f"{i}  search:\n" + "".join(f"{i}  - '{s}'\n" for s in search)
    return content
