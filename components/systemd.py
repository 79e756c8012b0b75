"""systemd settings every service of the stack shares."""

from __future__ import annotations


def hardening(writable: str) -> str:
    """[Service] lines that confine a service: no new privileges, a read-only system with only
    ``writable`` writable, no home directories, private /tmp and devices, no kernel tuning."""
    return f"""NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={writable}
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
"""


def unit_path(unit: str) -> str:
    """Where the stack puts a unit of its own on a host."""
    return f"/etc/systemd/system/{unit}"
