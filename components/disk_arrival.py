"""A service that needs its data disk starts by itself once the disk is there.

The data disk mounts with ``nofail`` (a missing disk must not stop the boot), and the service's
drop-in has ``RequiresMountsFor=`` the data directory, so without the disk it does not start on the
root filesystem: its start job fails with ``dependency`` (on a VM after the mount's device
timeout, 90 s). Nothing starts it again when the disk shows up later (Proxmox attaches it, the
storage comes back): systemd does not retry a failed dependency, and ``Restart=`` applies only to
the service's own exits. So a path unit watches the disk's device path (its ``/dev/disk/by-id``
link, which udev makes when the disk appears) and starts a oneshot that asks for the service.

Why a oneshot between them, and not ``Unit=`` the service itself: a path unit with
``PathExists=`` starts its unit again whenever that unit stops while the path exists, so an
operator's ``systemctl stop`` (or a rolling restart's stop) would be undone at once. The oneshot
stays active (``RemainAfterExit=yes``) for the rest of the boot: it asks once per boot, when the
disk first is there. Measured on a booted Debian 12 system (systemd 252, systemd-nspawn): disk
missing at boot, the service stayed down (``dependency``), the mount failed; the disk's link
created, the mount and the service were active within 3 s; ``systemctl stop`` afterwards stayed
stopped. With ``Unit=`` the service, the stop was undone at once.
"""

from __future__ import annotations

import re

from components.hostfile import HostFile
from components.systemd import unit_path

UNIT_PREFIX = "lokistack-data-disk"
"""Each watched service gets ``lokistack-data-disk-<service>.path`` and ``.service``."""


def unit_names(service: str) -> tuple[str, str]:
    """The path unit and the oneshot for ``service`` (``loki.service`` -> ``lokistack-data-disk-loki``)."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*\.service", service):
        raise ValueError(f"disk_arrival: {service!r} is not a service unit name (e.g. loki.service)")
    stem = f"{UNIT_PREFIX}-{service.removesuffix('.service')}"
    return f"{stem}.path", f"{stem}.service"


def render_path_unit(service: str, device: str) -> str:
    """Watches ``device`` (an absolute /dev path); enabled, so that it watches from every boot."""
    if not device.startswith("/dev/"):
        raise ValueError(f"disk_arrival: the device of {service} must be a /dev path, got {device!r}")
    _, starter = unit_names(service)
    return f"""# loki-stack: starts {service} once its data disk ({device}) is there (components/disk_arrival.py).
[Unit]
Description=Start {service} once its data disk is there

[Path]
PathExists={device}
Unit={starter}

[Install]
WantedBy=multi-user.target
"""


def render_starter_unit(service: str) -> str:
    """Asks for ``service`` without waiting for it, once per boot (``RemainAfterExit``: a later
    stop of the service is not undone)."""
    return f"""# loki-stack: asked for by the data disk's path unit (components/disk_arrival.py).
[Unit]
Description=Ask for {service}, its data disk is there

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/systemctl start --no-block {service}
"""


def host_files(host: str, service: str, device: str) -> list[HostFile]:
    """Both units for ``service`` on ``host``, as files a delivery installs (enable the path unit after)."""
    path_unit, starter = unit_names(service)
    return [HostFile(host=host, path=unit_path(path_unit), content=render_path_unit(service, device)),
            HostFile(host=host, path=unit_path(starter), content=render_starter_unit(service))]
