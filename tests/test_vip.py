"""components/vip.py: each node's keepalived.conf, derived values, files and steps, and every
rendered file checked by the real `keepalived -t` in a throwaway network namespace."""

from __future__ import annotations

import re
import subprocess

import pytest

from components.proxmox_vm import GUEST_INTERFACE
from components.vip import (
    CHECK_DIR,
    GATEWAY_CHECK,
    SCRIPT_USER,
    STAGE_DIR,
    KeepalivedSettings,
    render_keepalived_conf,
)
from components.vrrp_priorities import yield_levels
from offline import engine
from tests.labs.example import COMMAND, EXAMPLE_NODES, files_of, shellcheck_commands
from tests.labs.needs import require_root, require_tool

NODES, CMD = EXAMPLE_NODES, COMMAND




def conf_of(result: engine.RunResult, host: str) -> str:
    return files_of(result, host)[f"{STAGE_DIR}/keepalived.conf"][1].value


def value(conf: str, key: str) -> str:
    match = re.search(rf"^\s*{key}\s+(\S+)\s*$", conf, re.MULTILINE)
    assert match, f"keepalived.conf has no {key}"
    return match.group(1)


def vrrp_scripts(conf: str) -> dict[str, dict[str, str]]:
    """Each ``vrrp_script`` block of a keepalived.conf: its name and its settings."""
    blocks = re.findall(r"^vrrp_script (\S+) \{\n(.*?)\n\}", conf, re.MULTILINE | re.DOTALL)
    return {name: dict(re.findall(r'^\s*(\w+)\s+"?(.*?)"?\s*$', body, re.MULTILINE)) for name, body in blocks}


def peers(conf: str) -> list[str]:
    block = re.search(r"unicast_peer \{\n(.*?)\n\s*\}", conf, re.DOTALL)
    assert block, "keepalived.conf has no unicast_peer block"
    return block.group(1).split()


@pytest.mark.parametrize("host", list(NODES))
def test_each_node_speaks_unicast_to_its_peers_and_never_to_itself(example, host):
    conf = conf_of(example, host)
    assert value(conf, "unicast_src_ip") == NODES[host]
    assert sorted(peers(conf)) == sorted(a for n, a in NODES.items() if n != host), f"{host}: unicast peers"
    assert NODES[host] not in peers(conf), f"{host} lists itself as a peer: endless equal-priority warnings"
    assert re.search(r"^\s*check_unicast_src$", conf, re.MULTILINE), f"{host}: adverts from any sender would count"
    assert value(conf, "state") == "BACKUP" and not re.search(r"^\s*nopreempt$", conf, re.MULTILINE)
    assert value(conf, "virtual_router_id") == "51" and value(conf, "advert_int") == "1"
    assert re.search(r"^\s*192\.168\.50\.20/24 dev eth0$", conf, re.MULTILINE), f"{host}: VIP line"
    assert "enable_script_security" in conf and value(conf, "script_user") == SCRIPT_USER
    scripts = vrrp_scripts(conf)
    assert set(scripts) == {"chk_gateway_serves", "chk_loki_ready"}, f"{host}: checks {sorted(scripts)}"
    tracked = re.search(r"track_script \{\n(.*?)\n\s*\}", conf, re.DOTALL)
    assert tracked and sorted(tracked.group(1).split()) == sorted(scripts), f"{host}: not every check is tracked"
    serves, ready = scripts["chk_gateway_serves"], scripts["chk_loki_ready"]
    assert serves["script"] == GATEWAY_CHECK, f"{host}: the gateway check runs {serves['script']}"
    assert (serves["interval"], serves["timeout"], serves["fall"], serves["rise"]) == ("2", "2", "2", "2"), (
        f"{host}: the gateway check must fail after vipCheckFall (2) checks of vipCheckInterval (2 s): {serves}")
    # vipLokiGraceSeconds (60) of checks every 2 s: the VIP stays while systemd restarts a crashed Loki.
    assert (ready["interval"], ready["fall"], ready["rise"]) == ("2", "30", "2"), f"{host}: /ready check {ready}"
    assert "https://127.0.0.1:3100/ready" in ready["script"] and f"--cert {CHECK_DIR}/client.pem" in (
        ready["script"]), f"{host}: the check must ask Loki over HTTPS with a client certificate"
    assert serves["weight"] == ready["weight"], f"{host}: either failed check must drop the node below the others"


@pytest.mark.parametrize("host", list(NODES))
def test_the_gateway_check_asks_its_own_gateway_then_every_peer(example, host):
    check, resolved = files_of(example, host)[GATEWAY_CHECK]
    assert (check.owner, check.group, check.mode) == ("root", "root", "0755"), (
        f"{host}: keepalived runs {GATEWAY_CHECK} only if no one but root can change it")
    params = dict(re.findall(r"^([A-Z_]+)=(.*)$", resolved.value, re.MULTILINE))
    assert params["LOCAL_URL"] == "https://127.0.0.1:3100/ready", f"{host}: {params}"
    assert sorted(params["PEER_URLS"].strip("'").split()) == sorted(
        f"https://{a}:3100/ready" for n, a in NODES.items() if n != host), f"{host}: the peers asked: {params}"
    assert params["TIMEOUT_S"] == "1", f"{host}: two rounds of requests must fit in keepalived's 2 s timeout"


def test_the_first_node_is_the_vips_home(example):
    prios = {h: int(value(conf_of(example, h), "priority")) for h in NODES}
    assert sorted(prios, key=lambda h: -prios[h]) == list(NODES), f"priorities must follow the node order: {prios}"
    weight = int(value(conf_of(example, "loki-01"), "weight"))
    lowest = min(yield_levels(prios).values())
    assert max(prios.values()) + weight < lowest, (
        f"keepalived.conf: a failing node (weight {weight}) must drop below every healthy one, also one at its "
        f"yield level ({lowest}): {prios}")


def test_every_node_shares_one_generated_8_character_password(example):
    passwords = {value(conf_of(example, h), "auth_pass") for h in NODES}
    assert len(passwords) == 1, "different passwords on the nodes split the VIP (both hold it)"
    (password,) = passwords
    assert len(password) == 8
    assert example.engine.cloud.secret_values.get(password) == "vip-auth-pass.result", "the password is not generated"
    for host in NODES:
        hf, resolved = files_of(example, host)[f"{STAGE_DIR}/keepalived.conf"]
        assert (hf.owner, hf.mode) == ("root", "0600") and resolved.secret, f"{host}: keepalived.conf is root-only"
        key, _ = files_of(example, host)[f"{CHECK_DIR}/client.key"]
        assert (key.owner, key.mode) == (SCRIPT_USER, "0600"), f"{host}: the check's key belongs to {SCRIPT_USER}"


def test_nopreempt_and_a_single_node():
    settings = KeepalivedSettings(vip="198.18.0.9", vip_fqdn="loki.x", prefix_length=24, interface="eth0",
                                  router_id=7, advert_int=2, nopreempt=True, check_interval=3, check_fall=4,
                                  check_rise=5, loki_grace_s=0)
    conf = render_keepalived_conf(settings, [("a", "198.18.0.1")], "a", "12345678")
    assert re.search(r"^\s*nopreempt$", conf, re.MULTILINE)
    assert "unicast_peer" not in conf, "a single node has no peers to speak unicast to"
    assert (value(conf, "virtual_router_id"), value(conf, "advert_int")) == ("7", "2")
    # No grace: the /ready check gives the VIP away as soon as the gateway check would.
    assert {name: s["fall"] for name, s in vrrp_scripts(conf).items()} == {"chk_gateway_serves": "4",
                                                                            "chk_loki_ready": "4"}
    assert value(conf, "weight") == "0", "with nopreempt a failed check must put the node in FAULT"
    with pytest.raises(ValueError, match="8 characters"):
        render_keepalived_conf(settings, [("a", "198.18.0.1")], "a", "short")


def test_each_node_checks_its_config_before_reloading(example):
    monitor = example.engine.monitor
    for host in NODES:
        setup, apply = monitor.find(CMD, f"vip-{host}-setup"), monitor.find(CMD, f"vip-{host}-apply")
        install, tls = monitor.find(CMD, f"vip-{host}-staged-install"), monitor.find(CMD, f"{host}-tls-install")
        assert tls.urn in setup.dependencies and setup.urn in install.dependencies
        assert install.urn in apply.dependencies
        stdin = apply.plain_inputs["stdin"]
        assert stdin.index("keepalived -t") < stdin.index("install -m 0600") < stdin.index("systemctl reload")
    assert example.resolved["output:vipAddress"].value == "192.168.50.20"
    assert example.resolved["output:lokiUrl"].value == "https://loki.home.arpa:3100"


@pytest.mark.real_tools
def test_the_host_scripts_pass_shellcheck(example, tmp_path):
    shellcheck_commands(example, ["vip-loki-01-setup", "vip-loki-01-apply"], tmp_path)
    tool = require_tool("shellcheck")
    check = tmp_path / "gateway-serves"
    check.write_text(files_of(example, "loki-01")[GATEWAY_CHECK][1].value)
    proc = subprocess.run([tool, "-x", str(check)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"shellcheck {GATEWAY_CHECK}:\n{proc.stdout}"


def keepalived_test(conf_file: str, interface: str, check: str) -> subprocess.CompletedProcess[str]:
    """`keepalived -t` in a throwaway network and mount namespace that has ``interface`` and, at its
    path, the gateway check ``check`` (a file: keepalived disables a check it cannot find)."""
    script = (f'mount -t tmpfs -o mode=0755 tmpfs /etc/keepalived && install -d -m 0750 {CHECK_DIR} '
              f'&& install -m 0755 "$2" {GATEWAY_CHECK} '
              f'&& ip link add {interface} type veth peer name {interface}p && keepalived -t -f "$1"')
    return subprocess.run(["unshare", "-n", "-m", "sh", "-c", script, "sh", conf_file, check],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_every_rendered_config_passes_keepalived_t(example, tmp_path):
    require_root()
    for tool in ("keepalived", "unshare", "ip", "curl"):
        require_tool(tool)
    for host in NODES:
        conf = conf_of(example, host)
        # keepalived 2.2.7 `-t` kills itself when it checks a script as an existing non-root user,
        # so the check runs on a copy with script_user root, as the host's apply step does.
        checked = tmp_path / f"{host}.conf"
        checked.write_text(conf.replace(f"script_user {SCRIPT_USER}", "script_user root"))
        check = tmp_path / f"{host}-gateway-serves"
        check.write_text(files_of(example, host)[GATEWAY_CHECK][1].value)
        proc = keepalived_test(str(checked), GUEST_INTERFACE, str(check))
        assert proc.returncode == 0, f"{host}: keepalived -t: {proc.stdout}{proc.stderr}"
    broken = tmp_path / "broken.conf"
    broken.write_text(conf_of(example, "loki-01").replace("virtual_router_id 51", "virtual_router_id 300")
                      .replace(f"script_user {SCRIPT_USER}", "script_user root"))
    proc = keepalived_test(str(broken), GUEST_INTERFACE, str(check))
    assert proc.returncode != 0 and "300" in proc.stderr, "keepalived -t missed a bad router id"


FAKE_SYSTEMCTL = """#!/bin/sh
# systemctl as the test sees it: is-active answers from <dir>/active-<unit>; every call is logged
# with the maintenance mark as it is at that moment.
echo "$* mark=$(cat "{mark}" 2>/dev/null || echo none)" >>"{log}"
if [ "$1" = is-active ]; then
  [ "$2" = --quiet ] && shift
  [ -f "{dir}/active-$2" ]
  exit
fi
exit 0
"""


@pytest.mark.needs_root
@pytest.mark.real_tools
@pytest.mark.parametrize("loki_running", [False, True], ids=["new-node", "loki-running"])
def test_keepalived_that_starts_beside_a_loki_not_running_starts_in_fault(example, tmp_path, loki_running):
    """A new node (first deploy, a VM created again, a node added): its gateway check passes once
    another node is ready, so keepalived must start in FAULT until Loki's apply rejoins it below the
    holder; a node whose Loki runs starts keepalived as it is."""
    require_root()
    stdin = example.engine.monitor.find(CMD, "vip-loki-02-apply").plain_inputs["stdin"]
    params = engine.script_parameters(stdin)
    mark, log, target = tmp_path / "mark", tmp_path / "calls.log", tmp_path / "keepalived.conf"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL.format(mark=mark, log=log, dir=tmp_path))
    (bin_dir / "keepalived").write_text("#!/bin/sh\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    if loki_running:
        (tmp_path / f"active-{params['LOKI_UNIT']}").touch()
    (tmp_path / "staged.conf").write_text("global_defs {}\n")
    for name, value in {"STAGED": tmp_path / "staged.conf", "TARGET": target, "MAINTENANCE_FILE": mark}.items():
        stdin = re.sub(rf"^{name}=.*$", f"{name}={value}", stdin, flags=re.MULTILINE)
    proc = subprocess.run(["bash", "-s"], input=stdin, capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert proc.returncode == 0, f"keepalived-apply.sh on loki-02: {proc.stdout}{proc.stderr}"
    restart = next(line for line in log.read_text().splitlines() if line.startswith(f"restart {params['UNIT']}"))
    expected = "mark=none" if loki_running else "mark=1"
    assert restart.endswith(expected), (
        f"keepalived-apply.sh on loki-02 (Loki {'running' if loki_running else 'not running'}) started keepalived "
        f"with {restart.split()[-1]}, expected {expected}: {log.read_text()}")
