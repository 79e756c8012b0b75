"""ProxmoxVm: one Debian VM on Proxmox VE, configured by cloud-init and ready for SSH work.

It creates a bootstrap SSH host key for the VM (in its cloud-init user-data snippet, so that the
first SSH step verifies the host instead of trusting the first answer), the snippet, the VM
itself, a command that waits until cloud-init has finished, and one that replaces the bootstrap
key with the VM's own host key over that verified connection: the snippet is a file on the
Proxmox node that the provider cannot upload with a file mode (only ``root@pam`` may set one),
so its key is good only until then. Every later SSH step pins the VM's own key. Depend on the
component to start on a ready host.

A VM created anew (lost and rebuilt: ``pulumi up`` after the VM is gone from the state) gets every
step again: each step's connection names the VM instance (its id and its NIC's MAC, which Proxmox
draws anew for a new VM, while the id may be reused) in the pinned key's comment, and a step whose
connection changed runs again. Which key its first steps pin, a probe where Pulumi runs finds out
(``templates/host-key-probe.sh``): a new VM presents the bootstrap key, one that already ran its
host-key step its own (after an upgrade from a version without the probe, the first steps run
again on VMs that have their own key).

Provider docs: https://www.pulumi.com/registry/packages/proxmoxve/api-docs/vmlegacy/
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_command as command
import pulumi_proxmoxve as proxmoxve
import pulumi_tls as tls
import yaml

from components.delivery import key_body, ssh_connection
from components.hostfile import HostFile
from components.scripts import render_script

RESOURCE_TYPE = "lokistack:proxmox:ProxmoxVm"
USER_DATA_PATH = "/var/lib/cloud/instance/user-data.txt"
"""Where cloud-init keeps the user-data on the VM (and where the plan shows it)."""
HOST_KEY_FILE = "/etc/ssh/ssh_host_ed25519_key"
CLOUD_CFG_FILE = "/etc/cloud/cloud.cfg.d/99-lokistack.cfg"
"""Tells cloud-init to trust its cache (``manual_cache_clean``): a VM is set up by cloud-init once."""
SSH_UNIT = "ssh.service"
DATA_DISK_SERIAL = "lokistack-data"
DATA_DISK_PATH = f"/dev/disk/by-id/virtio-{DATA_DISK_SERIAL}"
"""Stable device path of the data disk inside the VM, whatever the kernel names it."""
DATA_ROLES = ("loki", "objectstore")
"""Roles whose VMs keep data that no other host has in full."""
NIC = "net0"
"""The VM's one network device (Proxmox numbers them net0, net1, ...)."""
GUEST_INTERFACE = "eth0"
"""The NIC's name inside the VM. The VM's address comes from Proxmox's ``ipconfig0`` (the
provider's ``initialization.ip_configs``), so Proxmox writes the NoCloud network config itself
(``nocloud_network`` in PVE/QemuServer/Cloudinit.pm): the interface is matched by the MAC of
``net0`` and named ``eth0``, and cloud-init renames it so; ``ens18``, the kernel's name for a
virtio NIC, is gone after the first boot. Everything that names the NIC inside the VM uses this."""
CPU_TYPE = "x86-64-v2-AES"
GUEST_PACKAGES = ("qemu-guest-agent",)
CLOUD_INIT_RESULT = "/run/cloud-init/result.json"
"""Written by cloud-init when its last stage has finished, with every error it recorded."""
CLOUD_INIT_TIMEOUT_S = 1800  # packages from the mirrors on a slow line
PROBE_TIMEOUT_S = 900
"""How long the host-key probe waits for a new VM's SSH server (boot, then cloud-init's first stage)."""
PROBE_SUFFIX = "-host-key-probe"
"""The host-key probe's resource name after the VM component's name."""
WAIT_SCRIPT = render_script("wait-for-cloud-init.sh", {"RESULT_FILE": CLOUD_INIT_RESULT,
                                                       "TIMEOUT_S": CLOUD_INIT_TIMEOUT_S})


@dataclass(frozen=True, kw_only=True)
class HostEntry:
    """One line of /etc/hosts."""

    address: str
    fqdn: str
    name: str


@dataclass(frozen=True, kw_only=True)
class UserData:
    """Everything the cloud-init user-data says, as plain values."""

    hostname: str
    fqdn: str
    admin_user: str
    authorized_keys: Sequence[str]
    """The operator's keys and the stack's own deploy key."""
    host_private_key: str
    """OpenSSH private host key (ED25519); the VM's only SSH host key."""
    host_public_key: str
    hosts: Sequence[HostEntry]
    """Every host of the stack and the VIP, for /etc/hosts."""


class _LiteralDumper(yaml.SafeDumper):
    """Dumps multi-line strings as literal blocks, so keys and files read as they are, and
    indents sequences inside mappings (yamllint's default style)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str_presenter)


def render_etc_hosts(hosts: Sequence[HostEntry]) -> str:
    lines = [
        "# Written by loki-stack (cloud-init); the stack's hosts and its virtual IP.",
        "127.0.0.1 localhost",
        "::1 localhost ip6-localhost ip6-loopback",
        "ff02::1 ip6-allnodes",
        "ff02::2 ip6-allrouters",
        *(f"{h.address} {h.fqdn} {h.name}" for h in hosts),
    ]
    return "\n".join(lines) + "\n"


def render_user_data(spec: UserData) -> str:
    """The #cloud-config document for one VM (cloud-init module reference:
    https://cloudinit.readthedocs.io/en/latest/reference/modules.html)."""
    doc: dict[str, Any] = {
        "hostname": spec.hostname,
        "fqdn": spec.fqdn,
        "prefer_fqdn_over_hostname": False,
        # The stack writes /etc/hosts itself: every host and the VIP, not only this one.
        "manage_etc_hosts": False,
        "users": [{
            "name": spec.admin_user,
            "gecos": "loki-stack admin",
            "shell": "/bin/bash",
            "groups": ["sudo"],
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "lock_passwd": True,
            "ssh_authorized_keys": [k.strip() for k in spec.authorized_keys],
        }],
        "disable_root": True,
        "ssh_pwauth": False,
        # A known host key, so the stack verifies the host on every SSH connection.
        "ssh_deletekeys": True,
        # Only ed25519, and that one exists (from ssh_keys), so cloud-init generates none.
        "ssh_genkeytypes": ["ed25519"],
        "ssh_keys": {
            "ed25519_private": spec.host_private_key,
            "ed25519_public": spec.host_public_key.strip(),
        },
        "package_update": True,
        "package_upgrade": True,
        "packages": list(GUEST_PACKAGES),
        "write_files": [{
            "path": "/etc/hosts",
            "content": render_etc_hosts(spec.hosts),
            "owner": "root:root",
            "permissions": "0644",
        }],
        "runcmd": [["systemctl", "enable", "--now", "qemu-guest-agent"]],
    }
    return "#cloud-config\n" + yaml.dump(doc, Dumper=_LiteralDumper, sort_keys=False, width=1000)


@dataclass(frozen=True, kw_only=True)
class ProxmoxVmArgs:
    hostname: str
    """Host name and Proxmox VM name (RFC 1123 label)."""
    domain: str
    """DNS domain; the FQDN is ``<hostname>.<domain>``."""
    role: str
    """What the VM is for (``loki``, ``objectstore``, ``grafana``); a Proxmox tag."""
    proxmox_node: str
    """Proxmox node that runs the VM."""
    cores: int
    """vCPUs."""
    memory_mib: int
    """Memory in MiB."""
    disk_gib: int
    """System disk in GiB, grown from the cloud image."""
    data_disk_gib: int
    """Data disk in GiB, at ``DATA_DISK_PATH`` inside the VM; 0 for none."""
    address: str
    """Static IPv4 address."""
    prefix_length: int
    """Prefix length of the network, e.g. 24."""
    gateway: str
    """Default gateway."""
    dns_servers: Sequence[str]
    """DNS resolvers."""
    bridge: str
    """Proxmox bridge."""
    vlan_id: int | None
    """VLAN tag, or None for untagged."""
    vm_datastore: str
    """Datastore for the disks and the cloud-init drive."""
    snippet_datastore: str
    """Datastore (content type snippets) for the user-data file."""
    image_id: pulumi.Input[str]
    """Id of the downloaded cloud image (``<datastore>:import/<file>``) on ``proxmox_node``."""
    admin_user: str
    """Admin user created by cloud-init."""
    admin_keys: Sequence[str]
    """The operator's OpenSSH public keys."""
    deploy_public_key: pulumi.Input[str]
    """The stack's own SSH public key, also authorized for ``admin_user``."""
    deploy_private_key: pulumi.Input[str]
    """The stack's own SSH private key (secret), used for the connection."""
    hosts: Sequence[HostEntry]
    """/etc/hosts entries: every stack host and the VIP."""
    retiring: bool = False
    """The VM is on its way out (``lokiRetiring``): not protected, so that the next run may delete it."""

    @property
    def fqdn(self) -> str:
        return f"{self.hostname}.{self.domain}"


def vm_instance(hostname: str, vm_id: str, network_devices: Sequence[Any] | None) -> str:
    """The VM as created: ``vm-<id>-<mac of net0>`` (lower case). Fails without a MAC (the provider
    reads it from the VM's config after creating it)."""
    devices = list(network_devices or [])
    first = devices[0] if devices else None
    if isinstance(first, dict):
        mac = first.get("mac_address") or first.get("macAddress") or ""
    else:
        mac = getattr(first, "mac_address", None) or ""
    if not mac:
        raise ValueError(f"{hostname}: the VM's {NIC} has no MAC address in the provider's answer "
                         f"({network_devices!r}): the steps cannot tell this VM from one created before it")
    return f"vm-{vm_id}-{mac.lower()}"


def presented_key(hostname: str, address: str, stdout: str, bootstrap: str, own: str) -> str:
    """The key the host-key probe found, if it is one of the VM's two (the probe refuses any other)."""
    seen = key_body(stdout)
    known = {key_body(bootstrap), key_body(own)}
    if seen not in known:
        raise ValueError(f"{hostname} ({address}): the host-key probe answered {stdout.strip()!r}, which is "
                         "neither the VM's bootstrap SSH host key nor its own")
    return seen


class ProxmoxVm(pulumi.ComponentResource):
    """A Debian VM with a static address, the admin user and a pinned SSH host key."""

    address: pulumi.Output[str]
    """The VM's IPv4 address."""
    hostname: pulumi.Output[str]
    """Short host name."""
    fqdn: pulumi.Output[str]
    """Fully qualified host name."""
    vm_id: pulumi.Output[int]
    """Proxmox VM id."""
    connection: pulumi.Output[command.remote.ConnectionArgsDict]
    """SSH connection for ``command.remote`` (secret: holds the private key; pins the VM's own host
    key). It resolves only once cloud-init has finished and that key is in place, so whatever uses
    it runs on a ready host."""
    host_public_key: pulumi.Output[str]
    """The VM's own SSH host key (OpenSSH public key): for your ``known_hosts``."""
    host_key_step: command.remote.Command
    """Replaces the bootstrap host key with the VM's own."""
    instance: pulumi.Output[str]
    """The VM as created (``vm_instance``): changes when the VM is created anew."""
    data_disk_path: pulumi.Output[str]
    """Device path of the data disk inside the VM; empty when the VM has none."""
    host_files: list[HostFile]
    """What the VM receives from this component (its cloud-init user-data), for the plan."""

    def __init__(self, name: str, args: ProxmoxVmArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(RESOURCE_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        host_key = tls.PrivateKey(f"{name}-host-key", algorithm="ED25519", opts=child)
        rendered: pulumi.Output[str] = pulumi.Output.all(
            args.deploy_public_key, host_key.private_key_openssh, host_key.public_key_openssh
        ).apply(lambda keys: render_user_data(UserData(
            hostname=args.hostname, fqdn=args.fqdn, admin_user=args.admin_user,
            authorized_keys=[*args.admin_keys, keys[0]], host_private_key=keys[1],
            host_public_key=keys[2], hosts=args.hosts,
        )))
        user_data: pulumi.Output[str] = pulumi.Output.secret(rendered)
        snippet = proxmoxve.FileLegacy(
            f"{name}-user-data",
            node_name=args.proxmox_node,
            datastore_id=args.snippet_datastore,
            content_type="snippets",
            source_raw={"data": user_data, "file_name": f"lokistack-{args.hostname}-user-data.yaml"},
            # The VM refers to the snippet by its (fixed) file name: remove the old one first, so a
            # replacement never deletes the file the new one was just written to.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )

        disks: list[proxmoxve.VmLegacyDiskArgsDict] = [{
            "interface": "virtio0", "datastore_id": args.vm_datastore, "import_from": args.image_id,
            "size": args.disk_gib, "discard": "on", "iothread": True,
        }]
        if args.data_disk_gib:
            disks.append({
                "interface": "virtio1", "datastore_id": args.vm_datastore, "size": args.data_disk_gib,
                "discard": "on", "iothread": True, "serial": DATA_DISK_SERIAL,
            })
        network_device: proxmoxve.VmLegacyNetworkDeviceArgsDict = {"bridge": args.bridge, "model": "virtio"}
        if args.vlan_id:
            network_device["vlan_id"] = args.vlan_id
        initialization: proxmoxve.VmLegacyInitializationArgsDict = {
            "datastore_id": args.vm_datastore,
            "ip_configs": [{"ipv4": {"address": f"{args.address}/{args.prefix_length}", "gateway": args.gateway}}],
            "dns": {"domain": args.domain, "servers": list(args.dns_servers)},
            "user_data_file_id": snippet.id,
        }
        cpu: proxmoxve.VmLegacyCpuArgsDict = {"cores": args.cores, "type": CPU_TYPE}
        vm = proxmoxve.VmLegacy(
            f"{name}-vm",
            node_name=args.proxmox_node,
            name=args.hostname,
            description=f"loki-stack {args.role} VM {args.fqdn}, managed by Pulumi",
            tags=["loki-stack", args.role],
            on_boot=True,
            started=True,
            stop_on_destroy=True,
            agent={"enabled": True, "trim": True},
            cpu=cpu,
            memory={"dedicated": args.memory_mib},
            operating_system={"type": "l26"},
            scsi_hardware="virtio-scsi-single",
            disks=disks,
            network_devices=[network_device],
            initialization=initialization,
            # A new cloud image is for new VMs: an existing VM keeps its disk and is updated with apt.
            # The user-data is for the first boot only (cloud-init runs once), so a changed snippet
            # must not replace a running VM (in a preview its new id is unknown, which reads as one).
            # A VM that keeps data (Loki's WAL, the object store's buckets) is protected: Pulumi
            # refuses to delete or replace it until someone unprotects it on purpose (for a Loki node:
            # by retiring it, which first takes it out of the ring).
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["disks[0].importFrom",
                                                                     "initialization.userDataFileId"],
                                        protect=args.role in DATA_ROLES and not args.retiring),
        )

        # The VM as created now: a new VM gets another MAC (the id Proxmox may give again).
        self.instance = pulumi.Output.all(vm.id, vm.network_devices).apply(
            lambda pair: vm_instance(args.hostname, pair[0], pair[1]))
        own_key = tls.PrivateKey(f"{name}-ssh-host-key", algorithm="ED25519", opts=child)
        probe = command.local.Command(
            f"{name}{PROBE_SUFFIX}",
            create="bash -s",
            stdin=pulumi.Output.all(host_key.public_key_openssh, own_key.public_key_openssh).apply(
                lambda keys: render_script("host-key-probe.sh", {
                    "ADDRESS": args.address, "BOOTSTRAP_KEY": keys[0].strip(), "OWN_KEY": keys[1].strip(),
                    "TIMEOUT_S": PROBE_TIMEOUT_S})),
            triggers=[self.instance],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[vm]),
        )
        presented = pulumi.Output.all(probe.stdout, host_key.public_key_openssh, own_key.public_key_openssh).apply(
            lambda keys: presented_key(args.hostname, args.address, keys[0], keys[1], keys[2]))

        bootstrap = ssh_connection(host=args.address, user=args.admin_user, private_key=args.deploy_private_key,
                                   host_key=presented, instance=self.instance)
        self.cloud_init = command.remote.Command(
            f"{name}-cloud-init",
            connection=bootstrap,
            create="bash -s",
            stdin=WAIT_SCRIPT,
            triggers=[self.instance],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[vm]),
        )

        # The VM's own host key replaces the bootstrap key (which sits in the snippet on the
        # Proxmox node) over the connection that pins the bootstrap key; every later step pins it.
        install: pulumi.Output[str] = pulumi.Output.secret(pulumi.Output.all(
            own_key.private_key_openssh, own_key.public_key_openssh).apply(
            lambda keys: render_script("install-host-key.sh", {
                "HOST_PRIVATE_KEY": keys[0].strip(), "HOST_PUBLIC_KEY": keys[1].strip(), "KEY_FILE": HOST_KEY_FILE,
                "CLOUD_CFG": CLOUD_CFG_FILE, "SSH_UNIT": SSH_UNIT})))
        self.host_key_step = command.remote.Command(
            f"{name}-host-key",
            connection=pulumi.Output.all(bootstrap, self.cloud_init.id).apply(lambda pair: pair[0]),
            create="sudo bash -s",
            stdin=install,
            triggers=[self.instance, own_key.public_key_openssh],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.cloud_init]),
        )
        self.host_public_key = own_key.public_key_openssh.apply(str.strip)

        # Users of the connection start after the new host key is in place, and pin it on this
        # instance of the VM: on a VM created anew, every one of them runs again.
        own = ssh_connection(host=args.address, user=args.admin_user, private_key=args.deploy_private_key,
                             host_key=own_key.public_key_openssh, instance=self.instance)
        self.connection = pulumi.Output.all(own, self.host_key_step.id).apply(lambda pair: pair[0])
        self.address = pulumi.Output.from_input(args.address)
        self.hostname = pulumi.Output.from_input(args.hostname)
        self.fqdn = pulumi.Output.from_input(args.fqdn)
        self.vm_id = vm.vm_id
        self.data_disk_path = pulumi.Output.from_input(DATA_DISK_PATH if args.data_disk_gib else "")
        self.host_files = [
            HostFile(host=args.hostname, path=USER_DATA_PATH, content=user_data, mode="0600"),
        ]
        self.register_outputs({
            "address": self.address,
            "hostname": self.hostname,
            "fqdn": self.fqdn,
            "vm_id": self.vm_id,
            "connection": self.connection,
            "data_disk_path": self.data_disk_path,
        })
