"""components/gateway_certificates.py: the client certificates the Loki gateways take, and when
their lists change around a renewal.

What nginx does with a list (a removed host's certificate, a renewed one's predecessor, a revoked
serial: 403) is shown with the real nginx in tests/test_loki_gateway.py; the steps running on
booted nodes, in every rehearsal run (each deployment and renewal goes through them)."""

from __future__ import annotations

import pytest
from cryptography import x509

from components.gateway_certificates import ISSUED, REVOKED, STAGED_LIST, certificate_serial, render_list
from components.pki import nginx_serial, normalized_serial
from offline import engine
from offline.plan import read_stack_config, run_program
from offline.rehearsal.settings import AVAILABLE_PACKAGES
from offline.rehearsal.steps import StepRunner, StepStatus, step_graph, unreachable
from tests.labs.example import EXAMPLE_STACK, files_of

LOKI = ("loki-01", "loki-02", "loki-03")
CMD = "command:remote:Command"


def listed(text: str) -> dict[str, int]:
    return {line.split('"')[1]: int(line.split()[1].rstrip(";")) for line in text.splitlines() if line.startswith('"')}


@pytest.mark.parametrize(("serial", "shown"), [(0x0A, "0A"), (0xABC, "0ABC"), (0x8000, "8000"),
                                              (1 << 126, "4" + "0" * 31)])
def test_a_serial_is_written_as_nginx_shows_it(serial, shown):
    """OpenSSL's i2a_ASN1_INTEGER: the number's bytes, two upper-case hex digits each (the real
    nginx agrees: every role of tests/test_loki_gateway.py is found in the list by its serial)."""
    assert nginx_serial(serial) == shown


@pytest.mark.parametrize(("text", "serial"), [("0a:1b:2c", "0A1B2C"), ("0x5A3C", "5A3C"), ("abc", "0ABC"),
                                              (" 5A3C9E1F ", "5A3C9E1F"), ("00ff", "FF")])
def test_an_operators_serial_is_taken_as_openssl_or_a_browser_writes_it(text, serial):
    assert normalized_serial(text) == serial


@pytest.mark.parametrize("text", ["", "0", "xyz", "0x", "5A-3C", "12 34"])
def test_what_is_no_serial_is_refused(text):
    assert normalized_serial(text) is None


def test_the_list_takes_each_certificate_once_and_refuses_the_revoked(example):
    certificates = {name: files_of(example, host)[path][1].value for name, host, path in (
        ("loki-01-agent", "loki-01", "/etc/lokistack/tls/agent.pem"),
        ("grafana-agent", "grafana", "/etc/lokistack/tls/agent.pem"))}
    serials = {name: certificate_serial(pem) for name, pem in certificates.items()}
    text = render_list(certificates, revoked=[serials["grafana-agent"], "0ABC"])
    assert listed(text) == {serials["loki-01-agent"]: ISSUED, serials["grafana-agent"]: REVOKED, "0ABC": REVOKED}


def test_every_gateway_takes_exactly_the_client_certificates_of_the_stacks_ca(example):
    """Every agent's (VMs and extra hosts), every VIP check's, every Loki node's server certificate
    (it forwards with it), Grafana's data source's, the operator's and Prometheus' earlier one; not
    Prometheus' own (its CA is taken whole) nor a server certificate that is never a client's."""
    serials = example.resolved["output:clientCertificateSerials"].value
    assert not example.resolved["output:clientCertificateSerials"].secret, "serials are what to revoke, not secret"
    expected = {f"{h}-agent" for h in (*LOKI, "s3", "grafana")}
    expected |= {f"{h}-{c}" for h in LOKI for c in ("health", "server")}
    expected |= {"grafana-datasource", "operator", "prometheus-earlier"}
    assert set(serials) == expected | {"prometheus"}
    for node in LOKI:
        taken = listed(files_of(example, node)[STAGED_LIST][1].value)
        assert taken == {serials[name]: ISSUED for name in expected}, f"{node}: the list differs from the state"
    prometheus = x509.load_pem_x509_certificate(example.resolved["output:prometheusCertificate"].value.encode())
    assert nginx_serial(prometheus.serial_number) == serials["prometheus"]


def transitive(result: engine.RunResult) -> dict[str, set[str]]:
    """Resource name -> every resource name it waits for, directly or not."""
    by_urn = {r.urn: r for r in result.engine.registrations}
    # A provider's resources wait for it (Grafana's data source for Grafana's provider, which waits for Grafana).
    direct = {r.name: {by_urn[u].name for u in (*r.dependencies, (r.provider or "").rsplit("::", 1)[0])
                       if u in by_urn} for r in result.engine.registrations}
    closed: dict[str, set[str]] = {}

    def walk(name: str) -> set[str]:
        if name not in closed:
            closed[name] = set()
            for dep in direct.get(name, ()):
                closed[name] |= {dep, *walk(dep)}
        return closed[name]

    for name in direct:
        walk(name)
    return closed


def test_admit_comes_before_any_client_switches_and_settle_after_every_one(example):
    """``admit`` on every Loki node before any host's TLS files and before Grafana's data source
    changes; ``settle`` after every TLS delivery, every Alloy, every VIP check's files, every
    gateway reload and the data source: no client is refused between its switch and the gateways'."""
    waits = transitive(example)
    commands = {r.name for r in example.engine.monitor.of_type(CMD)}
    switches = {n for n in commands if n.endswith("-tls-install") or (n.startswith("agent-") and n.endswith("-apply"))
                or (n.startswith("vip-") and n.endswith("-staged-install"))
                or (n.startswith("loki-gateway-") and n.endswith("-apply"))} | {"grafana-content-loki"}
    assert len(switches) == 5 + 5 + 3 + 3 + 1, sorted(switches)
    for node in LOKI:
        admit, settle = f"gateway-certificates-{node}-admit", f"gateway-certificates-{node}-settle"
        early = sorted(s for s in switches if s in waits[admit])
        assert not early, f"{admit} waits for clients that switch before it: {early}"
        before = sorted(s for s in switches if admit not in waits[s])
        assert not before, f"these switch without waiting for {admit}: {before}"
        late = sorted(s for s in switches if s not in waits[settle])
        assert not late, f"{settle} does not wait for {late}"


def test_a_revoked_serial_is_refused_by_every_gateway_and_renewals_change_only_the_lists(example):
    revoked = example.resolved["output:clientCertificateSerials"].value["operator"]
    result = run_program(EXAMPLE_STACK, read_stack_config(EXAMPLE_STACK, overrides={"certRevokedSerials": [
        revoked.lower(), ":".join(revoked[i:i + 2] for i in range(0, len(revoked), 2))]}))
    for node in LOKI:
        assert listed(files_of(result, node)[STAGED_LIST][1].value)[revoked] == REVOKED, node


def test_the_rehearsal_runs_settle_past_the_clients_it_cannot_run(example):
    """On the rehearsal's machines Alloy cannot be installed and Grafana's API is not there: the
    steps that wait for them are skipped, but ``settle`` runs once everything else it waits for has
    (those clients switch nothing there), so that the step is rehearsed; a failed step still stops
    it (offline/rehearsal/steps.py, ``RUNS_PAST``)."""
    steps = step_graph(example.engine.monitor.registrations, unreachable(AVAILABLE_PACKAGES))
    by_name = {s.name: s for s in steps.values()}
    settle = by_name["gateway-certificates-loki-01-settle"]
    assert settle.runs_past and not by_name["gateway-certificates-loki-01-admit"].runs_past
    needs = {steps[n].name for n in settle.needs}
    assert {"agent-loki-02-apply", "grafana-content-loki", "loki-gateway-loki-03-apply"} <= needs, sorted(needs)
    for step in steps.values():  # as a first run finds them: every step that can run has run
        step.status = StepStatus.NOT_REHEARSED if step.not_rehearsed else StepStatus.OK
        if step.name.endswith("-settle"):
            step.status = StepStatus.WAITING
    for name in ("agent-loki-02-apply", "loki-gateway-loki-03-apply"):
        by_name[name].status = StepStatus.SKIPPED if name.startswith("agent-") else StepStatus.OK
    StepRunner._settle(steps)
    assert settle.status == StepStatus.WAITING, f"settle would not run past the clients not rehearsed: {settle.output}"
    by_name["loki-gateway-loki-03-apply"].status = StepStatus.FAILED
    StepRunner._settle(steps)
    assert settle.status == StepStatus.SKIPPED and "loki-gateway-loki-03-apply" in settle.output, settle.output
