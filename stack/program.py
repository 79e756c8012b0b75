"""The order in which the stack is built, and what it exports.

``build(settings)`` creates the providers once, then the components in dependency order, each
given only what it needs. It returns a ``Deployment`` so that ``__main__.py`` can export the
outputs and the offline plan can read the components' host files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_proxmoxve as proxmoxve
import pulumi_tls as tls

from components.delivery import FileDelivery, FileDeliveryArgs
from components.hostfile import HostFile
from components.proxmox_vm import HostEntry, ProxmoxVm, ProxmoxVmArgs
from stack.certificates import TRUST_UPDATE, StackCertificates, issue_certificates
from stack.config import ProxmoxSettings, Settings, VmSettings

IMAGE_UPLOAD_TIMEOUT_S = 1800


@dataclass
class Deployment:
    vms: dict[str, ProxmoxVm]
    """Every VM by host name."""
    certificates: StackCertificates
    """The CA and every certificate."""
    deliveries: dict[str, FileDelivery]
    """Files delivered over SSH, by resource name."""
    outputs: dict[str, Any]
    """Stack outputs by name."""
    host_files: list[HostFile] = field(default_factory=list)
    """Every file any host receives, for the offline plan."""


def proxmox_provider(settings: ProxmoxSettings) -> proxmoxve.Provider:
    """The one Proxmox provider; snippets travel over SSH to the node (through your ssh-agent)."""
    return proxmoxve.Provider(
        "proxmox",
        endpoint=settings.endpoint,
        api_token=settings.api_token,
        insecure=settings.insecure,
        ssh={"username": settings.ssh_user, "agent": True},
    )


def host_entries(settings: Settings) -> list[HostEntry]:
    """/etc/hosts lines for every VM and the VIP name."""
    entries = [HostEntry(address=str(vm.address), fqdn=vm.fqdn, name=vm.name) for vm in settings.vms]
    vip = settings.vip
    entries.append(HostEntry(address=str(vip.address), fqdn=vip.fqdn, name=vip.hostname))
    return entries


def vm_args(settings: Settings, vm: VmSettings, image_id: pulumi.Input[str], deploy_key: tls.PrivateKey,
            hosts: list[HostEntry]) -> ProxmoxVmArgs:
    net, pve = settings.network, settings.proxmox
    return ProxmoxVmArgs(
        hostname=vm.name, domain=net.domain, role=vm.role, proxmox_node=vm.proxmox_node,
        cores=vm.cores, memory_mib=vm.memory_mib, disk_gib=vm.disk_gib, data_disk_gib=vm.data_disk_gib,
        address=str(vm.address), prefix_length=net.cidr.prefixlen, gateway=str(net.gateway),
        dns_servers=[str(s) for s in net.dns_servers], bridge=net.bridge, vlan_id=net.vlan_id,
        vm_datastore=pve.vm_datastore, snippet_datastore=pve.snippet_datastore, image_id=image_id,
        admin_user=settings.ssh.admin_user, admin_keys=settings.ssh.admin_keys,
        deploy_public_key=deploy_key.public_key_openssh, deploy_private_key=deploy_key.private_key_openssh,
        hosts=hosts,
    )


def build(settings: Settings) -> Deployment:
    proxmox = proxmox_provider(settings.proxmox)
    on_proxmox = pulumi.ResourceOptions(provider=proxmox)
    image = settings.proxmox.cloud_image

    # The stack's own SSH key, for the work it does on the VMs after cloud-init.
    deploy_key = tls.PrivateKey("deploy-ssh-key", algorithm="ED25519")

    # One download of the cloud image per Proxmox node, shared by the VMs on that node.
    images = {
        node: proxmoxve.download.File(
            f"cloud-image-{node}",
            node_name=node,
            datastore_id=settings.proxmox.image_datastore,
            content_type="import",
            url=image.url,
            file_name=image.file_name,
            checksum=image.checksum,
            checksum_algorithm=image.checksum_algorithm,
            upload_timeout=IMAGE_UPLOAD_TIMEOUT_S,
            opts=on_proxmox,
        )
        for node in sorted({vm.proxmox_node for vm in settings.vms})
    }

    hosts = host_entries(settings)
    vms = {
        vm.name: ProxmoxVm(
            vm.name,
            vm_args(settings, vm, images[vm.proxmox_node].id, deploy_key, hosts),
            opts=pulumi.ResourceOptions(providers=[proxmox]),
        )
        for vm in settings.vms
    }

    certificates = issue_certificates(settings)
    deliveries = {
        f"{name}-tls": FileDelivery(
            f"{name}-tls",
            # vm.connection resolves after cloud-init: the files go to a ready host.
            FileDeliveryArgs(host=name, connection=vm.connection, files=certificates.host_files(name),
                             then=TRUST_UPDATE),
        )
        for name, vm in vms.items()
    }

    operator, prometheus = certificates.clients["operator"], certificates.clients["prometheus"]
    outputs: dict[str, Any] = {
        "hosts": {
            vm.name: {"address": str(vm.address), "fqdn": vm.fqdn, "role": vm.role, "proxmoxNode": vm.proxmox_node}
            for vm in settings.vms
        },
        "vmIds": {name: vm.vm_id for name, vm in vms.items()},
        "vipAddress": str(settings.vip.address),
        "sshAdminUser": settings.ssh.admin_user,
        "deploySshPublicKey": deploy_key.public_key_openssh.apply(str.strip),
        "caCertificate": certificates.ca.cert_pem,
        "operatorCertificate": pulumi.Output.secret(operator.cert_pem),
        "operatorPrivateKey": operator.private_key_pem,
        "prometheusCertificate": pulumi.Output.secret(prometheus.cert_pem),
        "prometheusPrivateKey": prometheus.private_key_pem,
    }
    host_files = [f for vm in vms.values() for f in vm.host_files]
    host_files += [f for delivery in deliveries.values() for f in delivery.host_files]
    return Deployment(vms=vms, certificates=certificates, deliveries=deliveries, outputs=outputs,
                      host_files=host_files)
