"""components/firewall.py: the Loki nodes' nftables rules, checked by the real nft, and the unit.

The live cluster test (tests/test_loki_live.py) loads these rules in each node's namespace and
shows what they let through.
"""

from __future__ import annotations

import shlex
import subprocess

import pytest

from components.firewall import (
    APPLY,
    LOADED_CHECK,
    NFT,
    NFTABLES_DROPIN_FILE,
    NFTABLES_UNIT,
    RULES_FILE,
    TABLE,
    UNIT,
    UNIT_FILE,
    render_rules,
    render_unit,
)
from components.loki_config import SERVICE_USER
from offline.cluster_ports import CLUSTER_PORT_PROBE, refused
from tests.labs.example import files_of
from tests.labs.needs import require_root, require_tool

NODES = {"loki-01": "192.168.50.21", "loki-02": "192.168.50.22", "loki-03": "192.168.50.23"}


WITH_SERVICE_USER = """passwd=$(mktemp); trap 'rm -f "$passwd"' EXIT
cp /etc/passwd "$passwd"
id -u "$1" >/dev/null 2>&1 || echo "$1:x:64999:64999::/nonexistent:/usr/sbin/nologin" >>"$passwd"
mount --bind "$passwd" /etc/passwd
shift
"$@"
"""
"""Runs a command where the user ``$1`` exists, as on a Loki node (loki-setup.sh makes it): nft
resolves the rules' user names when it loads them. A copy of /etc/passwd with the user is mounted
over it in a mount namespace of the caller's (``unshare -m``); the machine's own is not touched."""


def nft_check(text: str, tmp_path) -> subprocess.CompletedProcess[str]:
    """`nft -c -f` (parse and check against the kernel, load nothing) in a throwaway network
    namespace, where Loki's user exists."""
    require_root()
    nft = require_tool("nft")
    rules = tmp_path / "rules.nft"
    rules.write_text(text)
    return subprocess.run(["unshare", "-n", "-m", "bash", "-c", WITH_SERVICE_USER, "with-user", SERVICE_USER,
                           nft, "-c", "-f", str(rules)], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_every_loki_node_gets_rules_that_admit_exactly_the_loki_nodes(example, tmp_path):
    for host in NODES:
        files = files_of(example, host)
        rules = files[RULES_FILE][1].value
        assert f"elements = {{ {', '.join(NODES.values())} }}" in rules, f"{host}: the rules name other peers"
        assert "tcp dport { 7946, 9095 } counter drop" in rules and "udp dport 7946 counter drop" in rules
        for line in ('tcp dport { 7946, 9095 } tcp flags & (syn | ack) == syn \\\n'
                     f'            meta skuid != "{SERVICE_USER}" counter reject with tcp reset',
                     f'udp dport 7946 meta skuid != "{SERVICE_USER}" counter drop'):
            assert line in rules, f"{host}: {RULES_FILE} lets local users other than Loki's reach the cluster ports"
        assert "3100" not in rules, f"{host}: Loki's HTTP API must stay reachable for agents and clients"
        proc = nft_check(rules, tmp_path)
        assert proc.returncode == 0, f"{host}: nft -c rejects the rules: {proc.stderr}"
        assert files[UNIT_FILE][1].value == render_unit()
    assert not [h for h in ("grafana", "s3") if RULES_FILE in files_of(example, h)], "only Loki nodes need it"


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_nft_refuses_rules_that_name_a_user_the_node_does_not_have(tmp_path):
    """nft resolves the user when it loads the file: the rules must load after loki-setup.sh made
    Loki's user (the firewall's step runs after the setup), and a typo fails the load."""
    proc = nft_check(render_rules(["192.168.50.21"], cluster_user="lokistack-no-such-user"), tmp_path)
    assert proc.returncode != 0 and "User does not exist" in proc.stderr, proc.stderr


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_only_the_cluster_user_opens_cluster_connections_and_other_local_users_are_refused_at_once(tmp_path):
    """The rules loaded in a network namespace with listeners on 9095 and 7946 (TCP and UDP), the
    cluster user standing in as ``daemon``: ``nobody`` is refused at once (a reset for TCP,
    ``EPERM`` for a datagram), ``daemon`` connects and sends. (Towards peers, and with Loki
    itself as ``loki`` on booted nodes: the live lab and the rehearsal's firewall event.)"""
    require_root()
    require_tool("nft")
    rules = tmp_path / "rules.nft"
    rules.write_text(render_rules(["127.0.0.1"], cluster_user="daemon"))
    python = "/usr/bin/python3"
    listen = ("import socket, time\nl = []\nfor p in (9095, 7946):\n    s = socket.socket(); "
              "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', p)); s.listen(); "
              "l.append(s)\nu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('127.0.0.1', 7946))\n"
              "print('listening', flush=True)\ntime.sleep(60)\n")
    script = f"""set -e
ip link set lo up
{NFT} -f {shlex.quote(str(rules))}
{python} -c {shlex.quote(listen)} & listener=$!
trap 'kill $listener' EXIT
for _ in $(seq 50); do ss -ltn | grep -q ':7946 ' && break; sleep 0.1; done
for user in nobody daemon; do
  echo "$user $(setpriv --reuid="$user" --regid=nogroup --clear-groups {python} -c {shlex.quote(CLUSTER_PORT_PROBE)} \\
    127.0.0.1)"
done
"""
    proc = subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, f"the namespace's probe failed: {proc.stdout} {proc.stderr}"
    seen = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("nobody", "daemon")))
    assert seen.get("nobody") == f"127.0.0.1 {refused()}", (
        f"a local user other than Loki's reaches the cluster ports: {seen}")
    assert seen.get("daemon") == "127.0.0.1 tcp/9095:open tcp/7946:open udp/7946:sent", (
        f"the cluster user (Loki's) is refused on its own cluster ports: {seen}")


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_nft_rejects_a_broken_ruleset(tmp_path):
    proc = nft_check(render_rules(["192.168.50.21"]).replace("ipv4_addr", "ipv4_adr"), tmp_path)
    assert proc.returncode != 0 and "ipv4_adr" in proc.stderr


@pytest.mark.real_tools
def test_the_unit_passes_systemd_analyze(tmp_path):
    require_tool("nft")
    tool = require_tool("systemd-analyze")
    unit = tmp_path / "lokistack-firewall.service"
    for text, ok in ((render_unit(), True), (render_unit().replace("Type=oneshot", "Type=oneshoot"), False)):
        unit.write_text(text)
        proc = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60,
                              check=False)
        assert (proc.returncode == 0 and not proc.stderr.strip()) == ok, f"ok={ok}: {proc.stderr}"


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_lokis_start_check_refuses_a_node_without_the_table_and_passes_once_it_is_loaded(tmp_path):
    """The check Loki's drop-in runs before each start (``LOADED_CHECK``), run as systemd would run
    it, in a network namespace of its own: without the stack's table it fails, naming the table and
    the unit; with the rules loaded it passes."""
    require_root()
    require_tool("nft")
    command = shlex.split(LOADED_CHECK.split("=", 1)[1].removeprefix("+"))
    rules = tmp_path / "rules.nft"
    rules.write_text(render_rules(list(NODES.values()), cluster_user="daemon"))  # a user this machine has
    script = ('"$@"; echo "without: $?"; ' f"{NFT} -f {shlex.quote(str(rules))} && " '"$@"; echo "with: $?"')
    proc = subprocess.run(["unshare", "-n", "bash", "-c", script, "check", *command], capture_output=True, text=True,
                          timeout=60, check=False)
    assert "without: 1" in proc.stdout, f"Loki's start check passed on a node without the table: {proc.stdout}"
    assert f"the firewall table {TABLE} is not loaded" in proc.stderr and UNIT in proc.stderr, proc.stderr
    assert "with: 0" in proc.stdout, f"Loki's start check failed with the rules loaded: {proc.stdout} {proc.stderr}"


def test_a_rules_change_is_a_reload_and_debians_nftables_unit_loads_the_table_again(example):
    """A restart of the unit deletes the table before it loads it again (a moment with open ports):
    changes go through ``nft -f`` as a reload. Debian's nftables.service flushes every ruleset: it
    gets a drop-in that loads the table again after its start, reload and stop (the behaviour is shown on
    booted systems: ``tests/test_rehearsal.py``, the firewall event)."""
    assert f"systemctl reload-or-restart {UNIT}" in APPLY and "systemctl restart" not in APPLY, APPLY
    assert f"After=local-fs.target {NFTABLES_UNIT}" in render_unit(), "at boot, after Debian's flush"
    for host in NODES:
        files = files_of(example, host)
        dropin = files[NFTABLES_DROPIN_FILE][1].value
        for line in (f"ExecStartPost={NFT} -f {RULES_FILE}", f"ExecReload={NFT} -f {RULES_FILE}",
                     f"ExecStopPost={NFT} -f {RULES_FILE}"):
            assert line in dropin, f"{host}: {NFTABLES_DROPIN_FILE} lacks {line} (after nftables.service's flush)"
