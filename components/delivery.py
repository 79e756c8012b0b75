"""The one way files travel to a host: over SSH, in a script on stdin, only when they changed.

``FileDelivery`` takes a host's connection and ``HostFile``s and creates one
``command.remote.Command`` that installs them (``templates/install-files.sh``) and then runs a
follow-up command when any file changed. Its trigger is a hash of everything it delivers, so an
unchanged set of files re-runs nothing. The offline plan reads ``host_files`` to show them.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_command as command

from components.hostfile import HostFile

RESOURCE_TYPE = "lokistack:delivery:FileDelivery"
_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
INSTALL_SCRIPT = (_TEMPLATES / "install-files.sh").read_text() + "\n" + (_TEMPLATES / "lib-safe-write.sh").read_text()


FOLLOW_UP_DIR = "/var/lib/lokistack/follow-up"
"""Where a delivery marks a follow-up it owes (``install-files.sh``, which has the same default): on
disk, so that a reboot in between does not forget it."""


def follow_up_marker(files: Sequence[tuple[HostFile, str]], then: str) -> str:
    """The name of the marker of the follow-up ``then`` of a delivery of these paths (in
    ``FOLLOW_UP_DIR``): the same for every run of that delivery, whatever the contents."""
    return hashlib.sha256("\0".join([then, *sorted(hf.path for hf, _ in files)]).encode()).hexdigest()[:16]


def render_install_script(files: Sequence[tuple[HostFile, str]], then: str = "", remove: Sequence[str] = ()) -> str:
    """The script that installs ``files`` (each with its resolved content) and removes the paths
    in ``remove``, then runs ``then`` (as root) if anything changed, or if an earlier run changed
    something and did not finish ``then`` (killed, or ``then`` failed)."""
    lines = [INSTALL_SCRIPT.rstrip("\n"), ""]
    if then:
        lines.append(f'FOLLOW_UP_PENDING="${{FOLLOW_UP_DIR}}/{follow_up_marker(files, then)}"')
    for hf, content in files:
        encoded = base64.b64encode(content.encode()).decode()
        args = (hf.path, hf.owner, hf.group, hf.mode, encoded)
        lines.append("install_file " + " ".join(shlex.quote(a) for a in args))
    lines += [f"remove_file {shlex.quote(path)}" for path in remove]
    if then:
        lines += ["", 'if [ "$changed" -gt 0 ] || [ -e "$FOLLOW_UP_PENDING" ]; then',
                  '  [ "$changed" -gt 0 ] || echo "finishing the follow-up an earlier run owes"',
                  f"  {then}", '  rm -f "$FOLLOW_UP_PENDING"', "fi"]
    lines += ['echo "${changed} file(s) changed"', ""]
    return "\n".join(lines)


def delivery_digest(files: Sequence[tuple[HostFile, str]], then: str = "", remove: Sequence[str] = ()) -> str:
    """sha256 over paths, owners, modes, contents, removals and the follow-up: the delivery's trigger."""
    digest = hashlib.sha256(then.encode())
    for hf, content in files:
        for part in (hf.path, hf.owner, hf.group, hf.mode, content):
            digest.update(part.encode() + b"\0")
    for path in remove:
        digest.update(b"remove\0" + path.encode() + b"\0")
    return digest.hexdigest()


SSH_DIAL_ATTEMPTS = 90
"""With 10 s per attempt: up to 15 minutes for a new VM to boot and run cloud-init."""


def key_body(key: str) -> str:
    """An OpenSSH public key's type and base64, without its comment: what identifies the key."""
    return " ".join(key.split()[:2])


def ssh_connection(*, host: str, user: str, private_key: pulumi.Input[str], host_key: pulumi.Input[str],
                   instance: pulumi.Input[str] = "") -> pulumi.Output[command.remote.ConnectionArgsDict]:
    """A secret SSH connection that verifies the host against ``host_key`` (OpenSSH public key).

    ``instance`` names the machine as created (``proxmox_vm.vm_instance``) in the pinned key's
    comment (the provider parses the key as an ``authorized_keys`` line and ignores the comment):
    the connection, an input of every step that uses it, changes when the machine is created
    anew, and pulumi-command runs a step whose inputs changed again."""
    def build(values: list[str]) -> command.remote.ConnectionArgsDict:
        pinned = f"{key_body(values[1])} lokistack:{values[2]}" if values[2] else values[1].strip()
        return {"host": host, "user": user, "private_key": values[0], "host_key": pinned,
                "dial_error_limit": SSH_DIAL_ATTEMPTS, "per_dial_timeout": 10}

    connection: pulumi.Output[command.remote.ConnectionArgsDict] = pulumi.Output.secret(
        pulumi.Output.all(private_key, host_key, instance).apply(build))
    return connection


@dataclass
class ServiceSteps:
    setup: command.remote.Command
    delivery: FileDelivery
    ready: command.remote.Command
    """Exists once the service answered its readiness check."""


def setup_deliver_wait(name: str, *, host: str, connection: pulumi.Input[Any], setup_script: str,
                       files: Sequence[HostFile], restart: str, wait_script: str,
                       parent: pulumi.Resource) -> ServiceSteps:
    """The steps of a service host: ``setup`` (packages, users; as root), then the files
    (``restart`` runs when one changed), then ``wait_script`` until the service is ready. Each step
    re-runs only when what it carries changed."""
    child = pulumi.ResourceOptions(parent=parent)
    setup = command.remote.Command(f"{name}-setup", connection=connection, create="sudo bash -s",
                                   stdin=setup_script, triggers=[setup_script], opts=child)
    delivery = FileDelivery(f"{name}-config", FileDeliveryArgs(
        host=host, connection=after(connection, setup), files=files, then=restart), opts=child)
    ready = command.remote.Command(f"{name}-ready", connection=after(connection, delivery.command),
                                   create="bash -s", stdin=wait_script, triggers=[setup_script, delivery.digest],
                                   opts=child)
    return ServiceSteps(setup=setup, delivery=delivery, ready=ready)


def after(connection: pulumi.Input[Any], resource: pulumi.CustomResource) -> pulumi.Output[Any]:
    """``connection``, resolving only once ``resource`` exists, so whatever uses it runs after it.
    (``depends_on`` on a component does not reach the commands inside it; this does.)"""
    return after_value(connection, resource.id)


def after_all(connection: pulumi.Input[Any], resources: Sequence[pulumi.CustomResource]) -> pulumi.Output[Any]:
    """``connection``, resolving only once every one of ``resources`` exists."""
    return after_value(connection, pulumi.Output.all(*[r.id for r in resources])) if resources else \
        pulumi.Output.from_input(connection)


def after_value(connection: pulumi.Input[Any], value: pulumi.Input[Any]) -> pulumi.Output[Any]:
    """``connection``, resolving only once ``value`` has: whatever uses it depends on the resources
    behind ``value`` (also a ``pulumi.deferred_output``, for steps made later in the program)."""
    return pulumi.Output.all(connection, value).apply(lambda pair: pair[0])


@dataclass(frozen=True, kw_only=True)
class FileDeliveryArgs:
    host: str
    """Host name the files are for (the plan's folder)."""
    connection: pulumi.Input[command.remote.ConnectionArgsDict]
    """SSH connection to the host (secret; pins the host key)."""
    files: Sequence[HostFile]
    """The files; each one's ``host`` must be ``host``."""
    then: str = ""
    """Shell command run as root after any file changed (e.g. a reload); empty for none."""
    remove: Sequence[str] = ()
    """Absolute paths the host must no longer have (files an earlier version delivered)."""

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError(f"FileDelivery for {self.host}: no files")
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError(f"FileDelivery for {self.host}: a path is delivered twice: {sorted(paths)}")
        for f in self.files:
            if f.host != self.host:
                raise ValueError(f"FileDelivery for {self.host}: {f.path} is for host {f.host}")


class FileDelivery(pulumi.ComponentResource):
    """Files installed on one host over SSH."""

    digest: pulumi.Output[str]
    """Hash of what is delivered (the command's trigger)."""
    host_files: list[HostFile]
    """The delivered files, for the offline plan."""

    def __init__(self, name: str, args: FileDeliveryArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(RESOURCE_TYPE, name, None, opts)
        resolved = pulumi.Output.all(*[f.content for f in args.files]).apply(
            lambda contents: list(zip(args.files, contents, strict=True)))
        self.digest = resolved.apply(lambda fs: delivery_digest(fs, args.then, args.remove))
        self.command = command.remote.Command(
            f"{name}-install",
            connection=args.connection,
            create="sudo bash -s",
            stdin=resolved.apply(lambda fs: render_install_script(fs, args.then, args.remove)),
            triggers=[self.digest],
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.host_files = list(args.files)
        self.register_outputs({"digest": self.digest})
