"""How the program orders its steps on each host, read from the registrations of the example.

- Package work: apt and dpkg refuse to run beside each other (the lock is taken, apt-get fails at
  once), so no two steps that install packages may run at the same time on one host: each pair
  must be ordered by the dependencies the program declares.
- Renewed certificates: the services that read the host's TLS files as systemd credentials (Loki,
  Alloy) copy them at start only, so a renewal must re-run exactly the steps that restart them,
  and nothing that does not read them.
"""

from __future__ import annotations

import itertools
from functools import cache

from offline import engine
from offline.plan import read_stack_config, run_program
from tests.conftest import EXAMPLE_STACK

CMD = "command:remote:Command"
PACKAGE_WORK = ("install_pinned ", "ensure_packages ", "apt_get ", "apt-get ", "dpkg -i")


def touches_packages(reg: engine.Registration) -> bool:
    script = reg.plain_inputs.get("stdin") or ""
    body = script.split("set -euo pipefail", 1)[-1]
    return any(f"\n{word}" in body or f" {word}" in body for word in PACKAGE_WORK)


def test_no_two_package_steps_can_run_at_once_on_one_host(example):
    registrations = example.engine.registrations
    by_urn = {r.urn: r for r in registrations}

    @cache
    def before(urn: str) -> frozenset[str]:
        """Every resource ``urn`` waits for, directly or not."""
        direct = set(by_urn[urn].dependencies) & set(by_urn)
        return frozenset(direct.union(*(before(d) for d in direct)))

    hosts = {h["address"]: name for name, h in example.resolved["output:hosts"].value.items()}
    steps: dict[str, list[engine.Registration]] = {}
    for reg in registrations:
        if reg.type == CMD and touches_packages(reg):
            steps.setdefault(hosts[reg.plain_inputs["connection"]["host"]], []).append(reg)
    assert set(steps) == set(hosts.values()), f"hosts without package steps: {set(hosts.values()) - set(steps)}"
    assert all(len(s) >= 2 for s in steps.values()), "every host has at least its role's and its agent's setup"
    for host, host_steps in steps.items():
        for a, b in itertools.combinations(host_steps, 2):
            assert a.urn in before(b.urn) or b.urn in before(a.urn), (
                f"{host}: {a.name} and {b.name} both install packages and may run at the same time")


def changed_commands(renewed: frozenset[str]) -> set[str]:
    config = read_stack_config(EXAMPLE_STACK)
    hashes = [{r.name: r.inputs_hash for r in run_program(EXAMPLE_STACK, config, renewed=r).engine.registrations
               if r.type == CMD} for r in (frozenset(), renewed)]
    return {name for name in hashes[0] if hashes[0][name] != hashes[1][name]}


def test_renewing_a_loki_nodes_certificates_restarts_exactly_what_reads_them():
    changed = changed_commands(frozenset({"loki-02-server-cert", "loki-02-agent-cert", "loki-02-health-cert"}))
    assert changed == {
        "loki-02-tls-install",        # the files themselves
        "loki-loki-02-apply",         # Loki: server certificate, as credentials -> restart
        "loki-gateway-loki-02-apply",  # nginx: server certificate, read when it loads -> reload
        "agent-loki-02-apply",        # Alloy: agent certificate, as credentials -> restart
        "vip-loki-02-staged-install",  # the health check's own certificate (read per check)
    }, f"renewal re-runs {sorted(changed)}"


def test_renewing_the_grafana_hosts_certificates_restarts_grafana_and_its_agent():
    changed = changed_commands(frozenset({"grafana-server-cert", "grafana-agent-cert"}))
    assert changed == {"grafana-tls-install", "grafana-config-install", "grafana-ready", "agent-grafana-apply"}, (
        f"renewal re-runs {sorted(changed)}")
