"""A Loki node's part in the VIP across a shutdown and a boot: it hands the VIP over before it goes,
and takes part in VRRP again only once its Loki is ready after the boot.

Without this a reboot moved the VIP twice without a drain (``components.vip_handover`` says why a
drain matters: a client's kept-alive connection cut while its next push is on the way is a lost
push):

- **Going.** keepalived, stopped at shutdown, sends a priority-0 advert and a backup takes the VIP
  at once, while nginx on the node is stopped beside it, whatever connection a client had open.
  So ``lokistack-vip-leave.service`` (active from boot, doing nothing) runs ``vip-reboot leave``
  when it stops: it is ordered after keepalived, nginx and Loki, so that at shutdown it stops
  first, and the holder hands the VIP over exactly as an apply step does before Loki restarts
  (``vip_leave``: kept-alive connections end by themselves, then the VIP moves), while its
  gateway and Loki still serve. A node that does not hold the VIP enters FAULT, so that it takes
  none on the way down. An orderly shutdown is what Proxmox's shutdown and reboot do (ACPI, or the
  guest agent).
- **Coming back.** The maintenance and yield files live in /run, so a node used to boot at its full
  priority: with preemption the VIP's home took the VIP back without a drain as soon as its checks
  passed, cutting the kept-alive connections the successor served. Now a tmpfiles.d line creates
  the maintenance file at boot with ``BOOT_MARK`` (non-zero: FAULT, before keepalived starts; its
  ``init_file`` leaves an existing file alone, keepalived 2.2.7 ``track_file.c``), and
  ``lokistack-vip-rejoin.service`` waits, without a deadline, for Loki to be ready (its data disk
  may come late: ``components.disk_arrival``), then rejoins as an apply step does
  (``vip_rejoin``: at its yield level, below the holder, with preemption, so that the VIP stays
  where it is; the node is at its full priority again once it next holds the VIP). If a step took
  the node's VIP state over meanwhile (the file no longer holds the boot mark), the rejoin leaves
  it to that step.

Neither unit is ever restarted by a step (a restart of the leave unit would hand the VIP over):
the delivery reloads systemd, enables both and starts the leave unit, which is a no-op when it runs.
``systemctl stop lokistack-vip-leave.service`` by hand hands the VIP over and leaves the node in
FAULT until its next apply or boot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from components.hostfile import HostFile
from components.scripts import render_script
from components.systemd import unit_path
from components.vip_handover import (
    DRAIN_TIMEOUT_S,
    HANDOVER_TIMEOUT_S,
    KEPT_ALIVE_SENDS_S,
    MAINTENANCE_FILE,
    VipHandover,
)

SCRIPT = "/usr/local/lib/lokistack/vip-reboot"
LEAVE_UNIT = "lokistack-vip-leave.service"
REJOIN_UNIT = "lokistack-vip-rejoin.service"
TMPFILES_FILE = "/etc/tmpfiles.d/lokistack-vip.conf"
BOOT_MARK = 2
"""The maintenance file's value from boot until the rejoin: FAULT, and told apart from a step's 1."""
STOP_MARGIN_S = 15


def stop_timeout_s(handover: VipHandover) -> int:
    """The leave unit's bound: the kept-alive connections' end, the drain and the handover, each bounded."""
    return handover.keepalive_time_s + KEPT_ALIVE_SENDS_S + DRAIN_TIMEOUT_S + HANDOVER_TIMEOUT_S + STOP_MARGIN_S


def render_script_file(handover: VipHandover, node: str, tls: Mapping[str, str], ready_url: str) -> str:
    """``templates/vip-reboot.sh`` for ``node``; ``tls`` has CA_FILE, CERT_FILE and KEY_FILE (the
    node's server certificate: it asks the other gateways and Loki for /ready)."""
    missing = {"CA_FILE", "CERT_FILE", "KEY_FILE"} - set(tls)
    if missing:
        raise ValueError(f"vip_reboot: the script of {node} needs {sorted(missing)} "
                         "(e.g. CA_FILE=/etc/lokistack/tls/ca.pem)")
    return render_script("vip-reboot.sh", {
        **tls, **handover.script_parameters(node), "LOKI_READY_URL": ready_url, "BOOT_MARK": BOOT_MARK,
    }, libraries=["lib-clock.sh", "lib-vip-handover.sh"])


def render_leave_unit(handover: VipHandover, services: tuple[str, ...]) -> str:
    after = " ".join([*services, "network-online.target"])
    return f"""# loki-stack: the node hands the VIP over before it shuts down (components/vip_reboot.py).
[Unit]
Description=loki-stack: hand the VIP over before this node shuts down
Wants=network-online.target
# Stopped before these at shutdown: the gateway and Loki still serve while the VIP moves.
After={after}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop={SCRIPT} leave
TimeoutStopSec={stop_timeout_s(handover)}

[Install]
WantedBy=multi-user.target
"""


def render_rejoin_unit(services: tuple[str, ...]) -> str:
    after = " ".join([*services, "network-online.target"])
    return f"""# loki-stack: after a boot the node takes part in VRRP once its Loki is ready (components/vip_reboot.py).
[Unit]
Description=loki-stack: take part in the VIP once Loki is ready after boot
Wants=network-online.target
After={after}

[Service]
# exec, not oneshot: it may wait long (a data disk that comes late), and the boot does not wait for it.
Type=exec
ExecStart={SCRIPT} rejoin

[Install]
WantedBy=multi-user.target
"""


def render_tmpfiles() -> str:
    return f"""# loki-stack: a node boots in keepalived's FAULT state ({BOOT_MARK}) and takes part in VRRP once
# its Loki is ready ({REJOIN_UNIT}; components/vip_reboot.py).
f {MAINTENANCE_FILE} 0644 root root - {BOOT_MARK}
"""


@dataclass(frozen=True, kw_only=True)
class VipReboot:
    """What a Loki node needs to keep its part in the VIP across a reboot."""

    handover: VipHandover
    tls: Mapping[str, str]
    """CA_FILE, CERT_FILE and KEY_FILE: the node's server certificate (it asks the gateways and Loki for /ready)."""
    loki_ready_url: str
    """Loki's own /ready on the node (loopback)."""
    services: tuple[str, ...]
    """The units that serve the VIP on the node (keepalived, the gateway, Loki): the leave unit
    stops before them."""

    def host_files(self, node: str) -> list[HostFile]:
        """The script, both units and the tmpfiles.d line for ``node``."""
        return [
            HostFile(host=node, path=SCRIPT, mode="0755",
                     content=render_script_file(self.handover, node, self.tls, self.loki_ready_url)),
            HostFile(host=node, path=unit_path(LEAVE_UNIT), content=render_leave_unit(self.handover, self.services)),
            HostFile(host=node, path=unit_path(REJOIN_UNIT), content=render_rejoin_unit(self.services)),
            HostFile(host=node, path=TMPFILES_FILE, content=render_tmpfiles()),
        ]


APPLY = (f"systemctl daemon-reload && systemctl enable --quiet {LEAVE_UNIT} {REJOIN_UNIT} "
         f"&& systemctl start {LEAVE_UNIT}")
"""After any of the files changed: never a restart (the leave unit's stop is a handover)."""
