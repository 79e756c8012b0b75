"""The whole program (settings -> providers -> VMs -> outputs) in update and in preview mode."""

from __future__ import annotations

import asyncio
import json
import runpy
import threading
import traceback
from typing import Any

import pulumi
import pytest
from pulumi.runtime.settings import SETTINGS, get_root_resource

from offline import engine
from offline.plan import read_stack_config, run_program
from stack import program
from stack.schema import PROJECT_DIR

VM_TYPE = "proxmoxve:index/vmLegacy:VmLegacy"
EXAMPLE_VMS = ["grafana", "loki-01", "loki-02", "loki-03", "s3"]


def run(preview: bool = False, **overrides: Any) -> engine.RunResult:
    return run_program("homelab", read_stack_config("homelab", overrides=overrides), preview=preview)


def test_update_builds_every_vm_of_the_example_stack():
    result = run()
    monitor = result.engine.monitor
    assert sorted(r.name for r in monitor.of_type("lokistack:proxmox:ProxmoxVm")) == EXAMPLE_VMS
    vms = {r.plain_inputs["name"]: r for r in monitor.of_type(VM_TYPE)}
    assert sorted(vms) == EXAMPLE_VMS
    assert vms["loki-02"].plain_inputs["initialization"]["ipConfigs"][0]["ipv4"]["address"] == "192.168.50.22/24"
    assert len(vms["grafana"].plain_inputs["disks"]) == 1, "grafana has no data disk in the example"
    assert len(vms["s3"].plain_inputs["disks"]) == 2, "the object store needs its data disk"
    commands = {r.name for r in monitor.of_type("command:remote:Command")}
    per_vm = {f"{n}-{step}" for n in EXAMPLE_VMS for step in ("cloud-init", "host-key", "tls-install")}
    loki = {f"loki-{n}-{step}" for n in EXAMPLE_VMS if n.startswith("loki")
            for step in ("setup", "firewall-install", "staged-install", "runtime-install", "runtime-apply", "apply")}
    vip = {f"vip-{n}-{step}" for n in EXAMPLE_VMS if n.startswith("loki") for step in ("setup", "staged-install",
                                                                                       "apply", "reboot-install")}
    gateway = {f"loki-gateway-{n}-{step}" for n in EXAMPLE_VMS if n.startswith("loki")
               for step in ("setup", "staged-install", "apply")}
    agents = {f"agent-{n}-{step}" for n in EXAMPLE_VMS for step in ("setup", "staged-install", "apply")}
    grafana = {"grafana-setup", "grafana-config-install", "grafana-ready"}
    lists = {f"gateway-certificates-{n}-{step}" for n in EXAMPLE_VMS if n.startswith("loki")
             for step in ("staged-install", "admit", "settle")}
    assert commands == per_vm | loki | gateway | vip | agents | grafana | lists | {
        "objectstore-setup", "objectstore-config-install", "objectstore-ready",
        "objectstore-disk-arrival-install"}


def test_files_are_delivered_only_after_cloud_init_finished_and_the_vms_own_host_key_is_in_place():
    result = run()
    monitor = result.engine.monitor
    for name in EXAMPLE_VMS:
        wait = monitor.find("command:remote:Command", f"{name}-cloud-init")
        key = monitor.find("command:remote:Command", f"{name}-host-key")
        install = monitor.find("command:remote:Command", f"{name}-tls-install")
        delivery = monitor.find("lokistack:delivery:FileDelivery", f"{name}-tls")
        vm = monitor.find("lokistack:proxmox:ProxmoxVm", name)
        assert wait.urn in key.dependencies and key.urn in install.dependencies, (
            f"{name}-tls-install must wait for {name}-cloud-init and {name}-host-key")
        assert install.parent == delivery.urn and wait.parent == vm.urn
        own_key = result.resolved["output:sshHostKeys"].value[name]
        pinned = {s.name: " ".join(s.plain_inputs["connection"]["hostKey"].split()[:2]) for s in (install, wait)}
        assert pinned[install.name] == own_key != pinned[wait.name], (
            f"{name}-tls-install must pin the VM's own host key, not the snippet's bootstrap key: {pinned}")


@pytest.mark.parametrize("preview", [False, True], ids=["update", "preview"])
def test_no_keepalived_reloads_while_a_step_may_hand_the_vip_over(preview):
    """A CI run of the upgrade from 2395182 cut a push: loki-02's keepalived reloaded while loki-01's
    gateway apply handed the VIP over, so loki-03 (lower priority) took it and loki-02 took it back
    3 s later by preemption, with no drain. Steps that hand the VIP over (the gateway's applies,
    Loki's roll) and keepalived's applies on other nodes must never overlap."""
    commands = {r.name: r for r in run(preview=preview).engine.monitor.of_type("command:remote:Command")}
    by_urn = {r.urn: name for name, r in commands.items()}
    waits_for: dict[str, set[str]] = {}

    def before(name: str) -> set[str]:
        if name not in waits_for:
            direct = {by_urn[u] for u in commands[name].dependencies if u in by_urn}
            waits_for[name] = direct.union(*(before(d) for d in direct))
        return waits_for[name]

    nodes = [n for n in EXAMPLE_VMS if n.startswith("loki")]
    for node in nodes:
        for other in nodes:
            assert f"loki-gateway-{other}-apply" in before(f"vip-{node}-apply"), (
                f"vip-{node}-apply (a keepalived reload) may run while loki-gateway-{other}-apply hands the VIP over")
            assert f"vip-{other}-reboot-install" in before(f"loki-{node}-apply"), (
                f"loki-{node}-apply (a handover) may run while keepalived's steps on {other} are not done")
            # Directly, not only through the roll's previous apply: where only one node's steps run (a
            # VM created again), its Loki would otherwise start before its keepalived (which then took
            # the VIP by preemption in a rehearsal).
            direct = {by_urn[u] for u in commands[f"loki-{node}-apply"].dependencies if u in by_urn}
            assert f"vip-{other}-reboot-install" in direct, (
                f"loki-{node}-apply waits for keepalived's steps on {other} only through another node's apply")


def direct_dependencies(result: engine.RunResult) -> dict[str, set[str]]:
    """Step name -> the steps it names as dependencies."""
    commands = {r.name: r for r in result.engine.monitor.registrations if r.type.startswith("command:")}
    by_urn = {r.urn: name for name, r in commands.items()}
    return {name: {by_urn[u] for u in r.dependencies if u in by_urn} for name, r in commands.items()}


def test_a_node_added_starts_loki_only_once_every_nodes_firewall_lets_it_in():
    """Scale-out: the new node joins memberlist through the others, whose firewalls must let it in
    first; each Loki apply waits for every node's firewall step directly (not only through the
    roll, which does not run on the other nodes when only the new node's steps run)."""
    four: dict[str, Any] = {"lokiNodes": ["loki-01", "loki-02", "loki-03", "loki-04"],
                            "lokiAddresses": ["192.168.50.21", "192.168.50.22", "192.168.50.23", "192.168.50.24"]}
    direct = direct_dependencies(run(**four))
    for node in four["lokiNodes"]:
        missing = [f"loki-{o}-firewall-install" for o in four["lokiNodes"]
                   if f"loki-{o}-firewall-install" not in direct[f"loki-{node}-apply"]]
        assert not missing, f"loki-{node}-apply may start Loki before {missing}"


def test_a_retiring_node_leaves_before_any_step_of_the_other_nodes_runs():
    """Scale-in: the retirement of loki-04 (it leaves the VIP and the ring) comes before every step
    on the other Loki nodes; else their firewalls drop its gossip and its ring entry lingers."""
    four: dict[str, Any] = {"lokiNodes": ["loki-01", "loki-02", "loki-03", "loki-04"],
                            "lokiAddresses": ["192.168.50.21", "192.168.50.22", "192.168.50.23", "192.168.50.24"]}
    result = run(**four, lokiRetiring=["loki-04"])
    direct = direct_dependencies(result)
    hosts = {r.name: r.plain_inputs["connection"]["host"]
             for r in result.engine.monitor.of_type("command:remote:Command")}
    on_others = [n for n, h in hosts.items() if h in four["lokiAddresses"][:3]
                 and n.startswith(("loki-loki-", "loki-gateway-", "vip-"))]
    assert len(on_others) > 20, f"too few steps on the other nodes: {on_others}"
    early = [n for n in on_others if "loki-retiring-loki-04-retire" not in direct[n]]
    assert not early, f"these steps may run before loki-04 retired: {early}"
    assert not [n for n in hosts if n.startswith(("loki-loki-04-", "loki-gateway-loki-04-", "vip-loki-04-"))], (
        "loki-04 keeps Loki, gateway or keepalived steps while it retires")


def test_one_cloud_image_per_proxmox_node_shared_by_its_vms():
    result = run(lokiProxmoxNodes=["pve1", "pve2", "pve3"], grafanaProxmoxNode="pve2")
    monitor = result.engine.monitor
    images = {r.plain_inputs["nodeName"]: r for r in monitor.of_type("proxmoxve:download/file:File")}
    assert sorted(images) == ["pve", "pve1", "pve2", "pve3"], "one download per Proxmox node in use"
    for image in images.values():
        i = image.plain_inputs
        assert i["contentType"] == "import" and i["checksumAlgorithm"] == "sha512" and len(i["checksum"]) == 128
        assert i["url"].startswith("https://") and i["fileName"].endswith(".qcow2")
    for vm in monitor.of_type(VM_TYPE):
        node = vm.plain_inputs["nodeName"]
        assert vm.plain_inputs["disks"][0]["importFrom"] == images[node].id, (
            f"{vm.name} on {node} must boot from that node's image")


def test_every_proxmox_resource_uses_the_stacks_provider():
    result = run()
    monitor = result.engine.monitor
    provider = monitor.find("pulumi:providers:proxmoxve", "proxmox")
    ref = f"{provider.urn}::{provider.id}"
    for reg in result.engine.registrations:
        if reg.type.startswith("proxmoxve:"):
            assert reg.provider == ref, f"{reg.type} {reg.name} does not use the explicit Proxmox provider"
    i = provider.inputs
    assert i["endpoint"] == "https://pve.home.arpa:8006/"
    assert i["insecure"] == "false", "the Proxmox API must be verified by default"
    assert json.loads(i["ssh"]) == {"agent": True, "username": "root"}
    assert engine.is_secret(i["apiToken"]), "the Proxmox API token must reach the provider as a secret"


def test_stack_outputs_and_files():
    result = run()
    hosts = result.resolved["output:hosts"]
    assert hosts.known and not hosts.secret
    assert hosts.value["loki-01"] == {"address": "192.168.50.21", "fqdn": "loki-01.home.arpa", "role": "loki",
                                      "proxmoxNode": "pve"}
    vm_ids = result.resolved["output:vmIds"]
    assert vm_ids.known and set(vm_ids.value) == set(EXAMPLE_VMS)
    key = result.resolved["output:deploySshPublicKey"]
    assert key.known and not key.secret and key.value.startswith("ssh-ed25519 ")
    host_files = result.returned.host_files
    user_data = [i for i, f in enumerate(host_files) if f.path == "/var/lib/cloud/instance/user-data.txt"]
    assert len(user_data) == len(EXAMPLE_VMS), "one cloud-init user-data file per VM"
    for i in user_data:
        resolved = result.resolved[f"file:{i}"]
        assert resolved.known and resolved.secret, f"{host_files[i].host}: user-data must be known and secret"


def test_no_private_key_reaches_a_non_secret_input():
    result = run()
    secrets = result.engine.cloud.secret_values
    assert secrets, "the fake cloud handed out no secrets; the check below would prove nothing"
    for reg in result.engine.registrations:
        for prop, value in reg.inputs.items():
            if engine.is_secret(value):
                continue
            text = json.dumps(value)
            for secret, label in secrets.items():
                if label.endswith(".stdin"):
                    continue  # a script that carries secrets (the engine echoes secret inputs), not a secret itself
                line = secret.strip().splitlines()[len(secret.strip().splitlines()) // 2]
                assert line not in text, f"{reg.type} {reg.name}.{prop} holds {label} without being secret"


@pytest.mark.preview
def test_preview_registers_the_same_resources_with_computed_values_unknown():
    update = {r.urn for r in run().engine.registrations}
    result = run(preview=True)
    assert {r.urn for r in result.engine.registrations} == update, "preview and update must plan the same resources"
    assert result.resolved["output:hosts"].known, "hosts come from settings and are known in preview"
    assert not result.resolved["output:vmIds"].known, "VM ids come from Proxmox and are unknown in preview"
    assert not result.resolved["file:0"].known, "user-data depends on generated keys: unknown in preview"


def test_a_failure_before_keepalived_is_declared_fails_the_program_and_does_not_hang(monkeypatch):
    """Loki's roll waits for a value given once keepalived's steps exist (``pulumi.deferred_output``):
    a program that fails before must fail, naming the cause, not wait for it forever."""
    def broken(*_: Any, **__: Any) -> None:
        raise ValueError("keepalived broke")

    monkeypatch.setattr(program, "build_vip", broken)
    outcome: dict[str, BaseException] = {}

    def target() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            run()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the program hangs when it fails before keepalived's steps are declared"
    assert "keepalived broke" in repr(outcome.get("error")), f"the program must fail naming the cause: {outcome}"


def test_invalid_settings_stop_the_program_before_any_resource():
    with pytest.raises(pulumi.RunError, match="loki-stack:vipRouterId: must be a VRRP virtual router id") as raised:
        run(vipRouterId=0)
    assert raised.type.__name__ == "SettingsError"
    # The failed run's engine is the one installed last: nothing may have been registered.
    monitor = SETTINGS.monitor
    assert isinstance(monitor, engine.RecordingMonitor)
    assert monitor.registrations == [], f"resources created before validation: {monitor.registrations}"


def run_as_the_language_host(program: str) -> tuple[bool, list[str]]:
    """What ``pulumi up`` does with the program, as Pulumi's Python language host runs it (its
    ``pulumi-language-python-exec``, read in pulumi/pulumi ``sdk/python/cmd``): the program in a
    stack; a ``pulumi.RunError`` is logged as ``str(e)``, any other exception as
    ``traceback.format_exc()``. Returns whether it succeeded and what it logged as errors."""
    logged: list[str] = []
    SETTINGS.rpc_manager.clear()  # the language host starts in a process of its own; earlier tests'
    SETTINGS.outputs.clear()  # outputs belong to other event loops, and its stack is the only one
    pulumi.runtime.settings.set_root_resource(None)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(pulumi.runtime.run_in_stack(
            lambda: runpy.run_path(program, run_name="__main__")))  # type: ignore[arg-type,return-value]
        return True, logged
    except pulumi.RunError as error:
        logged.append(str(error))
    except Exception:  # the language host's own rule, imitated
        logged.append(traceback.format_exc())
    finally:
        loop.close()
    return False, logged


def test_pulumi_up_shows_bad_settings_as_a_list_without_a_traceback(fake_engine):
    cfg = read_stack_config("homelab", overrides={"vipRouterId": 0, "lokiRetention": "1 week"})
    pulumi.runtime.set_all_config(cfg.config, secret_keys=cfg.secret_keys)
    ok, logged = run_as_the_language_host(str(PROJECT_DIR / "__main__.py"))
    assert not ok and len(logged) == 1, f"__main__.py must fail with one logged error: {logged}"
    message = logged[0]
    assert "Traceback" not in message and "File \"" not in message, (
        f"the CLI would print a traceback under the settings problems (not a pulumi.RunError):\n{message}")
    assert message.splitlines()[0] == "invalid stack settings (2 problem(s)):", message
    assert "loki-stack:vipRouterId: must be a VRRP virtual router id between 1 and 255; got 0. Example: 51" in message
    assert "loki-stack:lokiRetention: must be a Loki duration" in message, message
    assert fake_engine.monitor.registrations == [], (
        f"resources registered before the settings were checked: {fake_engine.monitor.registrations}")


def test_main_program_exports_the_outputs(fake_engine):
    cfg = read_stack_config("homelab")
    pulumi.runtime.set_all_config(cfg.config, secret_keys=cfg.secret_keys)
    exported: dict[str, Any] = {}

    def program() -> None:
        runpy.run_path(str(PROJECT_DIR / "__main__.py"), run_name="__main__")
        exported.update(get_root_resource().outputs)  # type: ignore[union-attr]

    pulumi.runtime.test(program)()
    assert set(exported) == {"hosts", "vmIds", "vipAddress", "sshAdminUser", "deploySshPublicKey", "sshHostKeys",
                             "caCertificate",
                             "operatorCertificate", "operatorPrivateKey", "prometheusCertificate",
                             "prometheusPrivateKey", "clientCertificateSerials", "objectStoreEndpoint", "lokiBucket",
                             "lokiS3AccessKey",
                             "lokiS3SecretKey", "lokiNodeUrls", "lokiUrl", "prometheusScrapeConfig",
                             "prometheusRules", "prometheusObjectStoreToken", "prometheusGrafanaPassword",
                             "logcliEnvironment", "grafanaUrl", "grafanaAdminUser", "grafanaAdminPassword"}
    assert sorted(r.name for r in fake_engine.monitor.of_type(VM_TYPE)) == [f"{n}-vm" for n in EXAMPLE_VMS]


def test_the_fake_engine_leaves_the_runtime_as_it_found_it():
    before = (SETTINGS.monitor, get_root_resource(), pulumi.runtime.get_config("loki-stack:vipRouterId"))
    with engine.installed(project="loki-stack", stack="other", config={"loki-stack:vipRouterId": "7"}) as inside:
        assert SETTINGS.monitor is inside.monitor and SETTINGS.stack == "other"
        assert pulumi.runtime.get_config("loki-stack:vipRouterId") == "7"
    after = (SETTINGS.monitor, get_root_resource(), pulumi.runtime.get_config("loki-stack:vipRouterId"))
    assert after == before, f"the runtime's monitor, root resource or config changed: {before} -> {after}"
    assert SETTINGS.stack == "test", f"the stack's name is {SETTINGS.stack!r} after the block, not the test's"
