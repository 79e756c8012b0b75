"""components/firewall.py: the Loki nodes' nftables rules, checked by the real nft, and the unit.

The live cluster test (tests/test_loki_live.py) loads these rules in each node's namespace and
shows what they let through.
"""

from __future__ import annotations

import subprocess

from components.firewall import RULES_FILE, UNIT_FILE, render_rules, render_unit
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
