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
from tests.labs.example import EXAMPLE_STACK

CMD = "command:remote:Command"
LOCAL_CMD = "command:local:Command"
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


def changed_commands(renewed: frozenset[str] = frozenset(), rebuilt: dict[str, int] | None = None) -> set[str]:
    """The commands (remote and local) whose inputs differ from the example stack's when the fake
    cloud has ``renewed`` certificates or ``rebuilt`` VMs: what runs again."""
    config = read_stack_config(EXAMPLE_STACK)
    runs = (run_program(EXAMPLE_STACK, config), run_program(EXAMPLE_STACK, config, renewed=renewed, rebuilt=rebuilt))
    hashes = [{r.name: r.inputs_hash for r in run.engine.registrations if r.type in (CMD, LOCAL_CMD)} for run in runs]
    assert set(hashes[0]) == set(hashes[1]), f"the commands differ: {set(hashes[0]) ^ set(hashes[1])}"
    return {name for name in hashes[0] if hashes[0][name] != hashes[1][name]}


def test_a_vm_created_anew_runs_every_step_on_it_again_and_no_other():
    """A Loki VM lost and created again by ``pulumi up`` (its NIC gets another MAC; Proxmox may give it
    the same id): every step that runs on it runs again, its host-key probe first, and nothing on any
    other host does (the other nodes' configs name it by address and host name, which are the same)."""
    example = run_program(EXAMPLE_STACK, read_stack_config(EXAMPLE_STACK))
    address = example.resolved["output:hosts"].value["loki-02"]["address"]
    on_it = {r.name for r in example.engine.registrations
             if r.type == CMD and r.plain_inputs["connection"]["host"] == address}
    assert len(on_it) >= 10, f"loki-02 has too few steps to tell: {sorted(on_it)}"
    changed = changed_commands(rebuilt={"loki-02": 1})
    assert changed == on_it | {"loki-02-host-key-probe"}, (
        f"a rebuilt loki-02 would not get {sorted(on_it - changed)}; would re-run elsewhere {sorted(changed - on_it)}")


LISTS = {f"gateway-certificates-{n}-{step}" for n in ("loki-01", "loki-02", "loki-03")
         for step in ("staged-install", "admit", "settle")}
"""Every gateway's list of the client certificates it takes: the new serial admitted before any
client switches, the old one gone once every client has (components/gateway_certificates.py)."""


def test_renewing_a_loki_nodes_certificates_restarts_exactly_what_reads_them():
    changed = changed_commands(frozenset({"loki-02-server-cert", "loki-02-agent-cert", "loki-02-health-cert"}))
    assert changed == LISTS | {
        "loki-02-tls-install",        # the files themselves
        "loki-loki-02-apply",         # Loki: server certificate, as credentials -> restart
        "loki-gateway-loki-02-apply",  # nginx: server certificate, read when it loads -> reload
        "agent-loki-02-apply",        # Alloy: agent certificate, as credentials -> restart
        "vip-loki-02-staged-install",  # the health check's own certificate (read per check)
    }, f"renewal re-runs {sorted(changed)}"


def test_renewing_the_grafana_hosts_certificates_restarts_grafana_and_its_agent():
    changed = changed_commands(frozenset({"grafana-server-cert", "grafana-agent-cert"}))
    assert changed == LISTS | {"grafana-tls-install", "grafana-config-install", "grafana-ready",
                               "agent-grafana-apply"}, (
        f"renewal re-runs {sorted(changed)}")


def test_a_later_run_keeps_each_probes_answer_while_the_vm_is_the_same():
    """Once the VMs have their own keys, a later ``pulumi up`` leaves the probes alone (their inputs
    did not change, so they keep the answer in the state: the bootstrap key) and runs nothing again.
    The fake engine models that state: given what the first run left, nothing differs."""
    config = read_stack_config(EXAMPLE_STACK)
    first = run_program(EXAMPLE_STACK, config)
    own = {first.resolved["output:hosts"].value[vm]["address"]: key
           for vm, key in first.resolved["output:sshHostKeys"].value.items()}
    later = run_program(EXAMPLE_STACK, config, presented=own, kept=first.engine.cloud.commands)
    hashes = [{r.name: r.inputs_hash for r in run.engine.registrations if r.type in (CMD, LOCAL_CMD)}
              for run in (first, later)]
    changed = sorted(n for n in hashes[0] if hashes[0][n] != hashes[1][n])
    assert not changed, f"a later run with nothing changed would run {changed} again"
