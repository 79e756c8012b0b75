"""Loki's limits in its runtime configuration: changed on running nodes, without a restart.

Loki reads ``runtime_config.file`` again every ``RELOAD_PERIOD`` and applies the ``overrides`` of
each tenant (every ``limits_config`` key; keys left out keep the main config's value). With
``auth_enabled: false`` every request belongs to the tenant ``fake``. So the limits an operator
changes (retention, ingestion rate and burst) live here, not in the node's config: a change
re-runs only the step that delivers this file, and no node restarts.

What Loki 3.7.6 does with the file (measured, ``../shared/LOKI-FACTS.md``): new values apply 1-8 s
after the write, the rate limiters take them within about 20 s; ``-verify-config`` never reads
the file; a bad file at a reload is only logged (the old values stay, the reload metric drops to
0), and a bad or missing file at start stops Loki. Hence ``templates/loki-limits-apply.sh``: the
staged file's limits are checked with ``loki -verify-config`` in a copy of the node's config
before it is put in place, and the step waits until every running Loki has reloaded it.

``ingestion_rate_strategy`` is the one limit Loki reads only at start, and it stays in the node's
config: ``local``. With Loki's default ``global`` each distributor enforces the tenant's rate
divided by the number of distributors in the ring, but the VIP sends every push to one node, so a
three-node cluster would accept a third of the configured rate (``429 ... limit: 1398101
bytes/sec`` for 4 MB, measured). With ``local`` the node that takes the pushes enforces the whole
rate: the rate set is the rate the cluster accepts through the VIP. (A client that pushes to every
node's own address at once could get up to that many times the rate.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

TENANT = "fake"
"""The tenant of every request when ``auth_enabled`` is false."""
RUNTIME_FILE = "/etc/loki/runtime.yml"
RELOAD_PERIOD = "10s"
RELOAD_PERIOD_S = 10
RATE_STRATEGY = "local"
RELOAD_TIMEOUT_S = 2 * RELOAD_PERIOD_S + 10
"""Longest wait for a running Loki to reload a new file: two periods and a margin."""


@dataclass(frozen=True, kw_only=True)
class LokiLimits:
    retention: str
    """``retention_period`` (a Loki duration; 0s keeps logs forever)."""
    ingestion_rate_mb: int
    """``ingestion_rate_mb``: MiB per second the cluster accepts (the VIP's node enforces all of it)."""
    ingestion_burst_mb: int
    """``ingestion_burst_size_mb``: MiB accepted at once above the rate; also the largest single push."""


def tenant_limits(limits: LokiLimits) -> dict[str, Any]:
    """https://grafana.com/docs/loki/latest/configure/#limits_config (per tenant)."""
    return {"retention_period": limits.retention, "ingestion_rate_mb": limits.ingestion_rate_mb,
            "ingestion_burst_size_mb": limits.ingestion_burst_mb}


def render_runtime_config(limits: LokiLimits) -> str:
    header = (f"# Loki's runtime configuration, written by loki-stack: the limits of the tenant {TENANT!r}\n"
              f"# (every request, as auth_enabled is false). Loki reads it again every {RELOAD_PERIOD}.\n")
    return header + yaml.safe_dump({"overrides": {TENANT: tenant_limits(limits)}}, sort_keys=False)


def runtime_config_section() -> dict[str, Any]:
    """The node config's ``runtime_config`` and the one limit read only at start."""
    return {"runtime_config": {"file": RUNTIME_FILE, "period": RELOAD_PERIOD},
            "limits_config": {"ingestion_rate_strategy": RATE_STRATEGY}}
