"""LokiRetirement: a Loki node taken out of the stack (scale-in), before any other node stops
counting on it.

Scale-in takes two runs of ``pulumi up`` (docs/runbook/scaling.md):

1. The node is named in ``lokiRetiring`` (it stays in ``lokiNodes``). This run's first step on the
   stack's Loki nodes is the node's retirement (``templates/loki-retire.sh``): it hands the VIP
   over if it holds it (as at shutdown: with a drain), stops keepalived, then stops Loki, which
   flushes its chunks to the object store and leaves the ring (``flush_on_shutdown``,
   ``unregister_on_shutdown``), then the gateway; each is masked, or disabled where its unit file
   is in /etc (Loki's), so that nothing starts it again.
   Only then do the other nodes' steps run: their firewalls, gateways, keepalived and ring checks
   without the node. In the other order the firewalls would drop the leaving node's gossip and its
   departure would not reach the ring: its entry would linger, unhealthy. The node's VM loses its
   protection; its Loki, gateway and keepalived steps leave the program (a step has nothing to do
   when it is deleted).
2. The node is removed from both lists: the run deletes its VM and what is left of its steps.

Memberlist joins through the first three nodes (``loki_config.JOIN_SEEDS``): retiring a node after
them changes no other node's Loki config, so nothing restarts.

Pulumi runs the deletes of a run after its creates and updates, so a ``delete`` command on the
node's steps would run after the other nodes had already shut it out: that is why the retirement
is a step of its own in the first run and not a delete hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_command as command

from components.disk_arrival import unit_names
from components.scripts import render_script
from components.step_names import host_step
from components.vip_reboot import LEAVE_UNIT, REJOIN_UNIT

RESOURCE_TYPE = "lokistack:loki:LokiRetirement"


@dataclass(frozen=True, kw_only=True)
class RetiringNode:
    name: str
    connection: pulumi.Input[Any]
    """SSH connection to the node (secret; pins its host key), after its TLS files are in place."""


@dataclass(frozen=True, kw_only=True)
class LokiRetirementArgs:
    nodes: list[RetiringNode]
    loki_unit: str
    gateway_unit: str
    keepalived_unit: str


def render_retire_script(node: str, *, loki_unit: str, gateway_unit: str, keepalived_unit: str) -> str:
    disk_path_unit, disk_starter_unit = unit_names(loki_unit)
    return render_script("loki-retire.sh", {
        "NODE": node, "LOKI_UNIT": loki_unit, "GATEWAY_UNIT": gateway_unit, "KEEPALIVED_UNIT": keepalived_unit,
        "LEAVE_UNIT": LEAVE_UNIT, "REJOIN_UNIT": REJOIN_UNIT, "DISK_PATH_UNIT": disk_path_unit,
        "DISK_STARTER_UNIT": disk_starter_unit,
    })


class LokiRetirement(pulumi.ComponentResource):
    """One retirement step per retiring node; every step of the other Loki nodes waits for ``steps``."""

    steps: list[command.remote.Command]

    def __init__(self, name: str, args: LokiRetirementArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(RESOURCE_TYPE, name, None, opts)
        self.steps = [
            command.remote.Command(
                host_step(name, node.name, "retire"), connection=node.connection, create="sudo bash -s",
                stdin=render_retire_script(node.name, loki_unit=args.loki_unit, gateway_unit=args.gateway_unit,
                                           keepalived_unit=args.keepalived_unit),
                opts=pulumi.ResourceOptions(parent=self))
            for node in args.nodes
        ]
        self.register_outputs({})
