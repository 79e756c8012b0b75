"""components/firewall.py: the Loki nodes' nftables rules, checked by the real nft, and the unit.

The live cluster test (tests/test_loki_live.py) loads these rules in each node's namespace and
shows what they let through.
"""

from __future__ import annotations

import shlex
import subprocess

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
from tests.conftest import files_of, require_root, require_tool

NODES = {"loki-01": "192.168.50.21", "loki-02": "192.168.50.22", "loki-03": "192.168.50.23"}


def nft_check(text: str, tmp_path) -> subprocess.CompletedProcess[str]:
    """`nft -c -f` (parse and check against the kernel, load nothing) in a throwaway network namespace."""
    require_root()
    nft = require_tool("nft")
    rules = tmp_path / "rules.nft"
    rules.write_text(text)
    return subprocess.run(["unshare", "-n", nft, "-c", "-f", str(rules)], capture_output=True, text=True, timeout=60,
                          check=False)


def test_every_loki_node_gets_rules_that_admit_exactly_the_loki_nodes(example, tmp_path):
    for host in NODES:
        files = files_of(example, host)
        rules = files[RULES_FILE][1].value
        assert f"elements = {{ {', '.join(NODES.values())} }}" in rules, f"{host}: the rules name other peers"
        assert "tcp dport { 7946, 9095 } counter drop" in rules and "udp dport 7946 counter drop" in rules
        assert "3100" not in rules, f"{host}: Loki's HTTP API must stay reachable for agents and clients"
        proc = nft_check(rules, tmp_path)
        assert proc.returncode == 0, f"{host}: nft -c rejects the rules: {proc.stderr}"
        assert files[UNIT_FILE][1].value == render_unit()
    assert not [h for h in ("grafana", "s3") if RULES_FILE in files_of(example, h)], "only Loki nodes need it"


def test_nft_rejects_a_broken_ruleset(tmp_path):
    proc = nft_check(render_rules(["192.168.50.21"]).replace("ipv4_addr", "ipv4_adr"), tmp_path)
    assert proc.returncode != 0 and "ipv4_adr" in proc.stderr


def test_the_unit_passes_systemd_analyze(tmp_path):
    require_tool("nft")
    tool = require_tool("systemd-analyze")
    unit = tmp_path / "lokistack-firewall.service"
    for text, ok in ((render_unit(), True), (render_unit().replace("Type=oneshot", "Type=oneshoot"), False)):
        unit.write_text(text)
        proc = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60,
                              check=False)
        assert (proc.returncode == 0 and not proc.stderr.strip()) == ok, f"ok={ok}: {proc.stderr}"


def test_lokis_start_check_refuses_a_node_without_the_table_and_passes_once_it_is_loaded(tmp_path):
    """The check Loki's drop-in runs before each start (``LOADED_CHECK``), run as systemd would run
    it, in a network namespace of its own: without the stack's table it fails, naming the table and
    the unit; with the rules loaded it passes."""
    require_root()
    require_tool("nft")
    command = shlex.split(LOADED_CHECK.split("=", 1)[1].removeprefix("+"))
    rules = tmp_path / "rules.nft"
    rules.write_text(render_rules(list(NODES.values())))
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
