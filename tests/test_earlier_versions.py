"""offline/rehearsal/earlier.py: which earlier versions the upgrade rehearsal starts from."""

from __future__ import annotations

import pytest

from offline.plan import read_stack_config, run_program
from offline.rehearsal.earlier import BEFORE_CONVERGE, UPGRADE_FROM, VERSIONS, export, upgrade_sources
from stack.certificates import METRICS_CLIENT_CA_FILE
from tests.labs.example import EXAMPLE_STACK


def test_which_earlier_versions_to_upgrade_from_is_checked():
    """A wrong ``LOKISTACK_UPGRADE_FROM`` says which values are known; unset, CI upgrades from every one."""
    assert upgrade_sources({}) == list(VERSIONS) == ["caae4ed", "2395182"]
    assert upgrade_sources({UPGRADE_FROM: "all"}) == list(VERSIONS)
    assert upgrade_sources({UPGRADE_FROM: "2395182"}) == ["2395182"]
    assert upgrade_sources({UPGRADE_FROM: "caae4ed, 2395182"}) == ["caae4ed", "2395182"]
    with pytest.raises(ValueError, match=r"LOKISTACK_UPGRADE_FROM='abc1234': \['abc1234'\] is not an earlier"):
        upgrade_sources({UPGRADE_FROM: "abc1234"})


def test_the_agents_keep_taking_the_prometheus_certificate_an_earlier_version_issued(tmp_path):
    """Prometheus' certificate moved to a CA of its own; the Prometheus of a stack deployed by an
    earlier version still presents the certificate that version issued (the stack's CA). The
    agents' pool holds it beside the new CA, byte for byte as that version's program issued it
    (Pulumi keeps the unchanged resource), so scrapes go on after the upgrade until the operator
    exports the new certificate. (Go takes a client certificate that is itself in the pool: the
    live agent stand-in shows it, tests/test_monitoring_live.py.)"""
    earlier = export(BEFORE_CONVERGE, {}, tmp_path).result.resolved["output:prometheusCertificate"].value
    now = run_program(EXAMPLE_STACK, read_stack_config(EXAMPLE_STACK))
    pools = {hf.host: now.resolved[f"file:{i}"].value for i, hf in enumerate(now.returned.host_files)
             if hf.path == METRICS_CLIENT_CA_FILE}
    assert pools and all(earlier in pool for pool in pools.values()), (
        f"{METRICS_CLIENT_CA_FILE} lacks the certificate {BEFORE_CONVERGE} issued Prometheus on "
        f"{sorted(h for h, p in pools.items() if earlier not in p)}")
    assert now.resolved["output:prometheusCertificate"].value != earlier, "Prometheus gets a new certificate"
