"""The floor under the offline plan: the same resource graph registered with the bare Pulumi SDK.

    .venv/bin/python bench/sdk_floor.py build/plan/manifest.json
    .venv/bin/python bench/sdk_floor.py --imports-only


Reads a plan's manifest and registers every resource in it (its type, name, parent, dependencies;
providers as providers, components as components) with ``pulumi.CustomResource``,
``ComponentResource`` and ``ProviderResource`` under Pulumi's mocks, after importing the packages
the program imports. No settings, no templates, no certificates: what is left of the plan's time
above this is the program's own logic. Run in a fresh interpreter, so the time includes start-up
and imports, as the plan's does; ``--imports-only`` stops after the imports (interpreter start and
imports alone).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import cryptography.x509  # noqa: F401 (the program's imports: the floor pays for them too)
import jinja2  # noqa: F401
import pulumi
import pulumi_command  # noqa: F401
import pulumi_minio  # noqa: F401
import pulumi_proxmoxve  # noqa: F401
import pulumi_random  # noqa: F401
import pulumi_tls  # noqa: F401
import pulumiverse_grafana.oss  # noqa: F401
import yaml  # noqa: F401

PROVIDER = "pulumi:providers:"


class Echo(pulumi.runtime.Mocks):
    """Every resource's outputs are its inputs; no call is made."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        return f"{args.name}-id", args.inputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


def in_order(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Parents and dependencies before the resources that name them."""
    by_urn = {r["urn"]: r for r in resources}
    done: set[str] = set()
    order: list[dict[str, Any]] = []

    def visit(urn: str) -> None:
        if urn in done or urn not in by_urn:
            return
        done.add(urn)
        resource = by_urn[urn]
        for before in [resource.get("parent") or "", *resource["dependencies"]]:
            visit(before)
        order.append(resource)

    for resource in resources:
        visit(resource["urn"])
    return order


def register(resources: list[dict[str, Any]]) -> pulumi.Output[list[str]]:
    made: dict[str, pulumi.Resource] = {}
    for r in in_order(resources):
        opts = pulumi.ResourceOptions(parent=made.get(r.get("parent") or ""),
                                      depends_on=[made[d] for d in r["dependencies"] if d in made])
        if r["type"].startswith(PROVIDER):
            made[r["urn"]] = pulumi.ProviderResource(r["type"][len(PROVIDER):], r["name"], {}, opts)
        elif r["custom"]:
            made[r["urn"]] = pulumi.CustomResource(r["type"], r["name"], {}, opts)
        else:
            made[r["urn"]] = pulumi.ComponentResource(r["type"], r["name"], None, opts)
    return pulumi.Output.all(*[m.urn for m in made.values()])


def main(manifest: Path) -> int:
    resources = json.loads(manifest.read_text())["resources"]
    stack = resources[0]["urn"].split("::")[0].split(":")[-1] if resources else "bench"
    pulumi.runtime.set_mocks(Echo(), project="loki-stack", stack=stack, preview=False)
    urns: list[list[str]] = []
    pulumi.runtime.test(lambda: register(resources).apply(urns.append))()
    if len(urns[0]) != len(resources):
        print(f"registered {len(urns[0])} of {len(resources)} resources", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(0 if sys.argv[1:] == ["--imports-only"] else main(Path(sys.argv[1])))
