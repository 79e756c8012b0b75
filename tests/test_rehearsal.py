"""The rehearsal (offline/rehearsal/): the program's VMs as booted Debian 12 systems, its steps run
over SSH as pulumi-command runs them. Marked ``rehearsal``: it needs root, systemd-container and
debootstrap, and takes about two minutes (plus about 90 s the first time, for the template).

What it shows now: every VM's cloud-init finishes on a booted system from the VM's own user-data
and the network config Proxmox would write; each VM's own SSH host key replaces the snippet's
bootstrap key and every later step pins it; the TLS files arrive; the object store (its setup,
config and readiness wait, with the S3 stand-in as its server) and the bucket; on the Loki nodes,
Loki's setup with a package that behaves as Grafana's (its post-install script makes a user
without a group and restarts Loki), the firewall, Loki's rolling apply, the gateway (nginx) and
keepalived, under systemd with their hardening; a second run changes nothing; a line pushed
through the VIP is read back with logcli set up from ``logcliEnvironment``; powering off the VIP
holder moves the VIP and loses nothing; nothing is left behind. Steps that need what this machine
cannot reach (Alloy, Grafana) are reported as not rehearsed, with the reason, and their dependents
skipped.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest

from offline.rehearsal.checks import vip_journal, vip_masters, wait_for_one_holder
from offline.rehearsal.converge import gateway_port_taken_back, interrupted_applies, refused_roll
from offline.rehearsal.disk_full import data_disk_full
from offline.rehearsal.firewall_holds import firewall_holds
from offline.rehearsal.hitless import refused_limit
from offline.rehearsal.life_events import data_disk_late, holder_reboot
from offline.rehearsal.rebuild import node_rebuilt
from offline.rehearsal.run import Rehearsal
from offline.rehearsal.scaling import scale_out_and_in
from offline.rehearsal.settings import VIP
from offline.rehearsal.steps import StepStatus
from tests.labs.booted import deployed_lab
from tests.labs.figures import figure
from tests.labs.needs import require_tool

SECTION = "Rehearsal on booted Debian 12 systems (measured)"
pytestmark = pytest.mark.rehearsal
RATE_LIMITER_REFRESH_S = 12
"""Loki's rate limiters take a reloaded rate within 10 s of the reload (LOKI-FACTS)."""
VIP_SETTLE_S = 10
"""Longer than a node's check takes to rise once its Loki is ready ((vipCheckRise + 1) x
vipCheckInterval, 6 s) plus a preemption (an advert, 1 s): a move that follows a step comes by then."""
VIP_AFTER_REJOIN_S = 2
"""After a step that ended with its node's rejoin (which waits for the check to rise): two adverts,
for a preemption its final priority would start."""


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    with deployed_lab(tmp_path_factory, "t", SECTION) as lab:
        yield lab


def test_no_step_fails_and_every_vm_is_booted_keyed_and_has_its_tls_files(rehearsal):
    failed = {s.name: s.output[-2000:] for s in rehearsal.steps.values() if s.status == StepStatus.FAILED}
    assert not failed, f"steps failed: {failed}"
    by_name = {s.name: s for s in rehearsal.steps.values()}
    for vm in rehearsal.machines:
        for step in (f"{vm}-cloud-init", f"{vm}-host-key", f"{vm}-tls-install"):
            assert by_name[step].status == StepStatus.OK, (
                f"{step}: {by_name[step].status} {by_name[step].output[-500:]}")
        for step in (f"{vm}-cloud-init", f"{vm}-host-key", f"{vm}-tls-install"):
            figure(SECTION, f"{step}: {by_name[step].seconds:.1f} s")


def test_once_a_node_is_ready_the_first_deploy_moves_the_vip_no_more(rehearsal):
    """A first deploy starts keepalived before Loki. The node whose Loki starts first (the last
    node: the chain goes up to the VIP's home) takes the VIP; every later one starts outside VRRP
    and rejoins below it, so none takes the VIP by preemption (no drain) when its check passes,
    also not after the deploy has ended, when clients are there. Every move is a keepalived
    "Entering MASTER STATE" in a node's journal."""
    names = {f"loki-{n}-apply" for n in rehearsal.machines if n.startswith("loki-")}
    applies = sorted((s for s in rehearsal.steps.values() if s.name in names), key=lambda s: s.started)
    assert len(applies) == len(names), f"Loki applies: {[s.name for s in applies]}, expected {sorted(names)}"
    to_wall = time.time() - time.monotonic()
    first_done = to_wall + applies[0].started + applies[0].seconds
    last_done = to_wall + max(s.started + s.seconds for s in applies)
    time.sleep(max(0.0, last_done + VIP_SETTLE_S - time.time()))
    holder = wait_for_one_holder(rehearsal.machines, VIP)
    later = vip_masters(rehearsal.machines, first_done)
    figure(SECTION, f"first deploy: the VIP on {holder} from {applies[0].name}, moves after it: {len(later)}")
    assert not later, (f"the VIP moved after {applies[0].name} had ended, with no drain: {later} "
                       f"(the Loki applies ended at {[round(to_wall + s.started + s.seconds, 1) for s in applies]}); "
                       f"keepalived:\n{vip_journal(rehearsal.machines, first_done)}")
    assert applies[0].name == f"loki-{holder}-apply", (
        f"{holder} holds the VIP, not the node of the first Loki apply ({applies[0].name}): {applies[0].output[-800:]}")


def test_every_step_not_rehearsed_says_why_and_its_dependents_are_skipped(rehearsal):
    for step in rehearsal.steps.values():
        assert step.status != StepStatus.WAITING, f"{step.name} was never decided"
        if step.status == StepStatus.NOT_REHEARSED:
            assert step.not_rehearsed, f"{step.name} is not rehearsed without a reason"
        if step.status == StepStatus.SKIPPED:
            assert "waits for" in step.output, f"{step.name} is skipped without saying for what"
    for step in rehearsal.steps.values():
        if step.status == StepStatus.STOOD_IN:
            assert "not rehearsed" in step.output, f"{step.name} is stood in without saying what is not rehearsed"
    alloy = next(s for s in rehearsal.steps.values() if s.name == "agent-loki-01-setup")
    assert alloy.status == StepStatus.NOT_REHEARSED and "installs alloy" in alloy.not_rehearsed, alloy.not_rehearsed


LOKI_NODE_STEPS = ("loki-{n}-setup", "loki-{n}-firewall-install", "loki-{n}-staged-install", "loki-{n}-apply",
                   "loki-gateway-{n}-setup",
                   "loki-gateway-{n}-staged-install", "loki-gateway-{n}-apply", "vip-{n}-setup",
                   "vip-{n}-staged-install", "vip-{n}-apply", "gateway-certificates-{n}-staged-install",
                   "gateway-certificates-{n}-admit", "gateway-certificates-{n}-settle")


def test_each_loki_node_is_set_up_under_systemd_as_the_steps_say(rehearsal):
    by_name = {s.name: s for s in rehearsal.steps.values()}
    for node in (n for n in rehearsal.machines if n.startswith("loki-")):
        for pattern in LOKI_NODE_STEPS:
            step = by_name[pattern.format(n=node)]
            assert step.status == StepStatus.OK, f"{step.name}: {step.status} {step.output[-800:]}"
        machine = rehearsal.machines[node]
        group = machine.exec(["id", "-gn", "loki"]).stdout.strip()
        assert group == "loki", f"{node}: the loki user is in {group!r}: the package's postinst made it"
        for unit in ("nginx.service", "keepalived.service", "lokistack-firewall.service"):
            state = machine.exec(["systemctl", "is-active", unit]).stdout.strip()
            assert state == "active", f"{node}: {unit} is {state}"
        journal = machine.exec(["journalctl", "-b", "-u", "loki.service", "-o", "cat", "--no-pager"]).stdout
        assert "was skipped because of an unmet condition check" in journal, (
            f"{node}: the package's own restart must have been held off by the start guard: {journal[-1500:]}")
        held = machine.exec(["apt-mark", "showhold"]).stdout.split()
        assert "loki" in held, f"{node}: the loki package must be held: {held}"


def test_a_second_run_of_every_step_changes_nothing(rehearsal):
    changed = rehearsal.second_run()
    assert not changed, f"a second run changed: {changed}"


def test_every_unit_the_stack_installs_runs_with_its_hardening(rehearsal):
    problems = rehearsal.unit_problems()
    assert not problems, "\n".join(problems)


def test_a_line_pushed_through_the_vip_is_read_back_with_logcli_from_the_stack_output(rehearsal):
    problems = rehearsal.push_and_read()
    assert not problems, "\n".join(problems)


def test_a_retention_change_reloads_on_every_node_and_restarts_none(rehearsal):
    """Retention is in Loki's runtime config: exactly the runtime-config steps run (the plan's diff
    names them), every node has reloaded it within one reload period, and no Loki restarted."""
    for name, machine in rehearsal.machines.items():
        figure(SECTION, f"{name}: {machine.memory_mib():.0f} MiB (PSS of the machine's processes)")
    problems = rehearsal.change_limits(lokiRetention="720h")
    assert not problems, "\n".join(problems)
    for node in (n for n in rehearsal.machines if n.startswith("loki-")):
        runtime = rehearsal.machines[node].exec(["cat", "/etc/loki/runtime.yml"]).stdout
        assert "retention_period: 720h" in runtime, f"{node}: the new retention is not in place: {runtime}"


LOAD_RATE_MB, LOAD_BURST_MB = 4, 8
"""A rate this machine can push well above (three Loki nodes and the object store on two cores)."""


def test_pushes_through_the_vip_below_the_configured_rate_are_never_refused(rehearsal):
    """The rate set is the rate the cluster takes through the VIP (``ingestion_rate_strategy:
    local``; with Loki's default each node would take a third of it), set on running nodes: below
    it, well past the burst, no push is refused; above it, Loki refuses with exactly that rate."""
    problems = rehearsal.change_limits(lokiIngestionRateMb=LOAD_RATE_MB, lokiIngestionBurstMb=LOAD_BURST_MB)
    assert not problems, "\n".join(problems)
    time.sleep(RATE_LIMITER_REFRESH_S)
    below = rehearsal.load(mib_per_s=0.9 * LOAD_RATE_MB, total_mib=3 * LOAD_BURST_MB)
    assert below["statuses"] == {"204": below["batches"]}, (
        f"pushes at 90% of {LOAD_RATE_MB} MiB/s were refused: {below['statuses']} {below['first_refusal']}")
    above = rehearsal.load(mib_per_s=4 * LOAD_RATE_MB, total_mib=6 * LOAD_BURST_MB)
    limit = refused_limit(above["first_refusal"])
    # The burst's bucket is empty now: it refills before the next test's clients push.
    time.sleep(LOAD_BURST_MB / LOAD_RATE_MB + 2)
    assert limit == LOAD_RATE_MB * 2**20, (
        f"above the rate ({above['mib_per_s']:.1f} MiB/s) Loki must refuse at {LOAD_RATE_MB} MiB/s: "
        f"{above['statuses']} {above['first_refusal']}")


def test_a_roll_through_every_node_fails_no_push_through_the_vip_and_loses_no_line(rehearsal):
    """Every node's certificate renewed: the nodes restart one by one, the VIP's home last, each
    holder handing the VIP over first. Neither client sees a failure or a stall: the one pushing
    every 100 ms on a new connection each time, nor the one pushing 1 MiB batches on one kept-alive
    connection (as Alloy does); every accepted line reads back once. The VIP moves only by those
    handovers (each a keepalived "Entering MASTER STATE"): no node takes it by preemption, and it
    stays where the last one put it."""
    holder = wait_for_one_holder(rehearsal.machines, VIP)
    began = time.time()
    report, clients, problems = rehearsal.roll()
    time.sleep(VIP_AFTER_REJOIN_S)
    nodes = sorted(n for n in rehearsal.machines if n.startswith("loki-"))
    for line in clients.figures():
        figure(SECTION, f"roll, {line}")
    assert not problems, "\n".join(problems)
    assert report.order == [f"loki-{n}-apply" for n in reversed(nodes)], f"roll order {report.order}"
    assert sorted(report.stopped) == sorted(report.ready) == nodes, f"not every node restarted: {report}"
    moves = [(a, b) for a, b, _ in report.handovers]
    assert moves and moves[0][0] == holder and all(b == c for (_, b), (c, _) in itertools.pairwise(moves)), (
        f"the VIP must be handed over by each holder that restarts, from {holder} on: {report.handovers}")
    taken = [node for _, node in vip_masters(rehearsal.machines, began)]
    assert taken == [b for _, b in moves], (
        f"every move of the VIP must be a drained handover: nodes took it {taken}, handovers {moves}; "
        f"keepalived from the roll's start on:\n{vip_journal(rehearsal.machines, began)}")
    assert wait_for_one_holder(rehearsal.machines, VIP) == moves[-1][1], (
        f"the VIP must stay where the last handover put it: handovers {moves}; "
        f"keepalived from the roll's start on:\n{vip_journal(rehearsal.machines, began)}")
    for client in clients.reports:
        assert client.record.failures == 0 and client.record.requests >= 50, (
            f"{client.name}: {client.record.failures} of {client.record.requests} pushes failed")


def test_a_roll_waits_while_a_node_is_down_and_the_next_run_finishes_it_without_a_failed_push(rehearsal):
    """One node's Loki stopped, every node's certificate changed: the first apply's ring check names
    the stopped node and the step fails with nothing restarted (a roll would have left one replica).
    Once the node is back, running the steps that did not finish rolls the rest with no failed push."""
    problems = refused_roll(rehearsal)
    assert not problems, "\n".join(problems)


def test_an_apply_killed_at_any_phase_is_finished_by_the_next_run(rehearsal):
    """The VIP holder's apply, killed with its whole SSH session at each phase, is finished by the
    next run, which leaves nothing behind; a third run finds nothing to do. The gateway's apply on
    the same node runs beside it and must not be killed. No push fails, on a new connection or on
    the kept-alive one: every reload and drain on the holder lets the kept-alive connections end
    first (the gateway's twin takes the new ones meanwhile)."""
    problems = interrupted_applies(rehearsal)
    assert not problems, "\n".join(problems)


def test_after_an_upgrade_from_a_loki_that_held_the_gateways_port_nginx_takes_it(rehearsal):
    """A stack deployed before the gateway ran Loki on port 3100. nginx, reloaded while that Loki
    still held it, keeps running without it and the reload exits 0: the gateway step must say so and
    go on, and the node's Loki apply (which moves Loki behind the gateway) must have nginx take it."""
    problems = gateway_port_taken_back(rehearsal)
    assert not problems, "\n".join(problems)


def test_a_loki_crash_on_the_vip_holder_is_absorbed_by_its_gateway(rehearsal):
    """SIGKILL of Loki on the VIP holder under both clients: its gateway sends pushes to the other
    nodes' gateways (only those it could not even send to its own Loki: none is sent twice), and
    the VIP stays where it is (its gateway serves, and systemd has Loki ready again within
    vipLokiGraceSeconds), so no connection to it is reset. No push fails, on new connections or on
    the kept-alive one, but one that Loki had in hand when it was killed (answered 502 and never
    sent again: Loki may have taken it; nginx logs each), and every accepted line reads back
    exactly once."""
    problems = rehearsal.loki_crash()
    assert not problems, "\n".join(problems)


def test_the_cluster_ports_are_never_without_their_rules_and_loki_does_not_start_without_them(rehearsal):
    """On a node below the VIP holder, under both clients: rule loads as the firewall step does them
    never leave the table missing and restart no Loki; Debian's nftables.service started, reloaded,
    restarted and stopped leaves the stack's table in place; with rules that fail to load Loki does
    not start, and the journal says why; loaded again, it starts and rejoins its ring; no push fails
    (``firewall_holds.firewall_holds``)."""
    problems = firewall_holds(rehearsal)
    assert not problems, "\n".join(problems)


def test_a_node_booted_without_its_data_disk_keeps_loki_off_the_root_disk_and_starts_it_once_the_disk_is_there(
        rehearsal):
    """A node below the VIP holder powered off and booted with its data disk missing: Loki does
    not start (nothing is written under its data directory on the root filesystem) and does not
    give up; the disk appears: its mount and Loki start by themselves, after the firewall, the
    node rejoins the ring, the VIP stays where it was, and no push fails (``life_events``). Its
    second boot also mounts the disk as a VM's fstab does (``fstab_mounts``)."""
    problems = data_disk_late(rehearsal)
    assert not problems, "\n".join(problems)


def test_a_reboot_of_the_vip_holder_hands_the_vip_over_and_it_comes_back_without_taking_it(rehearsal):
    """The VIP holder shut down as Proxmox's reboot does, under both clients, and booted again with
    its disk: on its way down it hands the VIP over with a drain; it boots in FAULT, its disk
    mounted as fstab does on a VM; every unit returns by itself, the firewall before Loki; once its
    Loki is ready it takes part in VRRP again below the new holder (the VIP does not move again),
    with every node ACTIVE in its ring; no push fails and every accepted line reads back
    (``life_events.holder_reboot``)."""
    problems = holder_reboot(rehearsal)
    assert not problems, "\n".join(problems)


def test_a_full_data_disk_stops_the_nodes_writes_fires_the_alert_and_it_recovers_by_itself(rehearsal):
    """A node's data disk filled to its last block under both clients, a real Prometheus scraping the
    machines with the stack's scrape config and rules: its ingester refuses every push (the WAL is
    not written on a full disk) and stays ready, the other two take them (no push fails), and
    LokiWALDiskFull fires for it alone; freed, it takes writes again by itself and the alert clears;
    restarted, its WAL replays with no corruption; the VIP stays (``disk_full.data_disk_full``)."""
    require_tool("prometheus")
    problems = data_disk_full(rehearsal)
    assert not problems, "\n".join(problems)


def test_a_loki_vm_lost_with_its_disks_and_created_again_gets_every_step_and_rejoins_its_ring_entry(rehearsal):
    """A node below the VIP holder lost at once with its disks, then ``pulumi up`` creates the VM again
    (another MAC; the id may be the same): exactly its steps run again, its host-key probe first,
    on a fresh machine; its Loki takes over its old ring entry (none lingers), holds its share of
    new streams, the VIP stays where it was, and neither client sees a failed push nor a lost line
    (``rebuild.node_rebuilt``)."""
    problems = node_rebuilt(rehearsal)
    assert not problems, "\n".join(problems)


def test_scaling_out_to_four_nodes_and_back_in_runs_the_diffs_steps_restarts_no_loki_and_fails_no_push(rehearsal):
    """loki-04 added through the settings, then retired (``lokiRetiring``) and removed, under both
    clients: each run runs exactly the steps its diff names (the last none: it only deletes the
    VM); the retirement comes before any step on the other nodes; no Loki of the three restarts;
    afterwards every node's ring and memberlist hold exactly the nodes configured, ACTIVE; the VRRP
    priorities are the settings'; the VIP stays; no push fails and every accepted line reads back
    (``scaling.scale_out_and_in``)."""
    problems = scale_out_and_in(rehearsal)
    assert not problems, "\n".join(problems)
