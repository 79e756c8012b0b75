"""The monitoring outputs: the scrape config passes ``promtool check config`` with every file it
names; the rules file passes ``promtool check rules``; every alert has a case that fires it and one
that does not (``promtool test rules``); thresholds follow the settings; the object store's metrics
token is a JWT an independent HMAC (openssl) agrees with, for a user that may only read metrics."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import monitoring
from components.monitoring import CertificateExpiry, MonitoringSpec, render_rules
from components.objectstore import METRICS_POLICY, METRICS_TOKEN_ISSUER
from offline import engine
from offline.plan import read_stack_config, run_program
from tests.labs.needs import require_tool
from tests.labs.prometheus_lab import readme_files, write_files

CLUSTER = "loki-stack.home.arpa"
LOKI = f'job="loki", cluster="{CLUSTER}"'
STORE = f'job="loki-objectstore", cluster="{CLUSTER}", node="s3"'
AGENT = f'job="loki-agents", cluster="{CLUSTER}", node="backup-01"'
HOUR = 3600


def outputs(result: engine.RunResult) -> dict[str, Any]:
    return {k.split(":", 1)[1]: v.value for k, v in result.resolved.items() if k.startswith("output:")}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True, timeout=120,
                          check=False, cwd=cwd)


# --- the scrape config ------------------------------------------------------------------------------


def write_prometheus_dir(directory: Path, out: dict[str, Any]) -> Path:
    """prometheus.yml (the scrape config) and the loki-stack/ files beside it, as the README has them written."""
    write_files(directory, {"prometheus.yml": out["prometheusScrapeConfig"], **readme_files(out)})
    return directory / "prometheus.yml"


@pytest.mark.real_tools
def test_the_scrape_config_has_a_job_per_component_and_passes_promtool(example, tmp_path):
    out = outputs(example)
    jobs = {j["job_name"]: j for j in yaml.safe_load(out["prometheusScrapeConfig"])["scrape_configs"]}
    hosts = out["hosts"]
    targets = {name: [(t, c["labels"]["node"]) for c in j["static_configs"] for t in c["targets"]]
               for name, j in jobs.items()}
    assert targets == {
        "loki": [(f"{hosts[n]['address']}:3100", n) for n in ("loki-01", "loki-02", "loki-03")],
        "loki-objectstore": [(f"{hosts['s3']['address']}:9000", "s3")],
        "loki-grafana": [(f"{hosts['grafana']['address']}:3000", "grafana")],
        "loki-agents": [(f"{h['address']}:12345", n) for n, h in hosts.items()],
    }, f"scrape targets: {targets}"
    for name, job in jobs.items():
        assert job["scheme"] == "https" and job["tls_config"]["ca_file"] == "loki-stack/ca.pem", f"job {name}: {job}"
        assert all(c["labels"]["cluster"] == CLUSTER for c in job["static_configs"]), f"job {name}: cluster label"
    for name in ("loki", "loki-agents"):
        assert jobs[name]["tls_config"]["cert_file"] == "loki-stack/prometheus.pem", f"job {name}: no client cert"
    assert jobs["loki-objectstore"]["metrics_path"] == "/minio/v2/metrics/cluster"
    assert jobs["loki-objectstore"]["authorization"] == {"type": "Bearer",
                                                        "credentials_file": "loki-stack/objectstore.token"}
    assert jobs["loki-grafana"]["basic_auth"] == {"username": "prometheus",
                                                 "password_file": "loki-stack/grafana.password"}
    config = write_prometheus_dir(tmp_path, out)
    proc = promtool("check", "config", str(config), cwd=tmp_path)
    assert proc.returncode == 0, f"promtool check config: {proc.stdout}{proc.stderr}"
    for name in ("prometheus.pem", "objectstore.token"):
        saved = (tmp_path / "loki-stack" / name).read_text()
        (tmp_path / "loki-stack" / name).unlink()
        proc = promtool("check", "config", str(config), cwd=tmp_path)
        assert proc.returncode == 1, f"promtool accepted a missing {name}: the check proves nothing"
        (tmp_path / "loki-stack" / name).write_text(saved)


def test_the_scrape_config_and_rules_hold_no_secret(example):
    out, secrets = example.resolved, example.engine.cloud.secret_values
    for name in ("prometheusScrapeConfig", "prometheusRules"):
        assert out[f"output:{name}"].known and not out[f"output:{name}"].secret, f"output {name}"
        leaked = [v for v in secrets if len(v) >= 16 and v in out[f"output:{name}"].value]
        assert not leaked, f"output {name} holds a secret value"
    for name in ("prometheusObjectStoreToken", "prometheusGrafanaPassword", "prometheusPrivateKey"):
        assert out[f"output:{name}"].known and out[f"output:{name}"].secret, f"output {name} is not secret"


# --- the object store's metrics token ----------------------------------------------------------------


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_the_object_store_token_is_a_jwt_for_a_metrics_only_user(example, tmp_path):
    monitor = example.engine.monitor
    user = monitor.find("minio:index/iamUser:IamUser", "objectstore-metrics-user").plain_inputs
    policy = monitor.find("minio:index/iamPolicy:IamPolicy", "objectstore-metrics-policy").plain_inputs
    attachment = monitor.find("minio:index/iamUserPolicyAttachment:IamUserPolicyAttachment",
                              "objectstore-metrics-policy-attachment").plain_inputs
    assert json.loads(policy["policy"]) == METRICS_POLICY
    assert (attachment["userName"], attachment["policyName"]) == (user["name"], policy["name"])
    token = example.resolved["output:prometheusObjectStoreToken"].value
    header, claims, signature = token.split(".")
    assert json.loads(_unb64(header)) == {"alg": "HS512", "typ": "JWT"}
    assert json.loads(_unb64(claims)) == {"exp": 4102444800, "iss": METRICS_TOKEN_ISSUER, "sub": user["name"]}
    # Signed with the user's secret key: an independent HMAC-SHA512 (openssl) agrees.
    proc = subprocess.run(["openssl", "dgst", "-sha512", "-binary", "-hmac", user["secret"]],
                          input=f"{header}.{claims}".encode(), capture_output=True, timeout=30, check=True)
    assert _unb64(signature) == proc.stdout, "the token's signature is not HMAC-SHA512 with the user's secret key"
    assert user["name"] != example.resolved["output:lokiS3AccessKey"].value


# --- the rules --------------------------------------------------------------------------------------


@pytest.mark.real_tools
def test_the_rules_output_passes_promtool_check_rules(example, tmp_path):
    (tmp_path / "rules.yml").write_text(example.resolved["output:prometheusRules"].value)
    proc = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert proc.returncode == 0, f"promtool check rules: {proc.stdout}{proc.stderr}"
    names = {r.get("alert") for g in yaml.safe_load((tmp_path / "rules.yml").read_text())["groups"]
             for r in g["rules"]}
    assert set(monitoring.alert_names(example.returned.monitoring)) <= names


def test_every_certificate_has_its_end_and_renewal_recorded(example):
    rules = yaml.safe_load(example.resolved["output:prometheusRules"].value)
    recorded = [r for g in rules["groups"] for r in g["rules"]
                if r.get("record") in (monitoring.CERTIFICATE_METRIC, monitoring.RENEWAL_METRIC)]
    names = {r["labels"]["certificate"] for r in recorded}
    hosts = example.resolved["output:hosts"].value
    expected = {"ca", "metrics-ca", "grafana-datasource", "prometheus", "operator", *(f"{h}-server" for h in hosts),
                *(f"{h}-agent" for h in hosts), *(f"loki-0{i}-health" for i in (1, 2, 3))}
    assert names == expected, f"recorded certificates: missing {expected - names}, extra {names - expected}"
    for name in names:
        end, renew = (int(re.fullmatch(r"vector\((\d+)\)", r["expr"]).group(1))  # type: ignore[union-attr]
                      for r in recorded if r["labels"]["certificate"] == name)
        hours = 8760 if name in ("ca", "metrics-ca") else 720  # the example: a CA renews a leaf lifetime early
        assert end - renew == hours * HOUR, f"{name}: renews {end - renew} s before its end, not {hours} h"


def test_thresholds_follow_the_settings():
    """One node: replication 1, quorum 1. Four nodes: 3 and 2. The rate alert follows the setting."""
    def spec_of(**overrides: Any) -> MonitoringSpec:
        return run_program("homelab", read_stack_config("homelab", overrides=overrides)).returned.monitoring

    def expr(spec: MonitoringSpec, alert: str) -> str:
        return next(r["expr"] for r in monitoring.alert_rules(spec) if r["alert"] == alert)

    single = spec_of(lokiNodes=["loki-01"], lokiAddresses=["192.168.50.21"])
    assert (single.replication_factor, single.write_quorum) == (1, 1)
    assert expr(single, "LokiRingShortOfReplicas").endswith(") < 1")
    four = spec_of(lokiNodes=["loki-01", "loki-02", "loki-03", "loki-04"],
                   lokiAddresses=["192.168.50.21", "192.168.50.22", "192.168.50.23", "192.168.50.24"])
    assert (four.replication_factor, four.write_quorum, len(four.loki_nodes)) == (3, 2, 4)
    faster = spec_of(lokiIngestionRateMb=32, lokiIngestionBurstMb=64)
    assert expr(faster, "LokiIngestNearRateLimit").endswith(f"> {int(32 * 1024 * 1024 * 0.8)}")


# --- promtool test rules: a firing and a calm case for every alert ------------------------------------------------


@dataclass
class Case:
    series: dict[str, str]
    """Series -> promtool's expanding notation of its values, one per minute."""
    at: str
    """Evaluation time."""
    fires: list[dict[str, str]] = field(default_factory=list)
    """The labels of each alert expected to fire (the rule's severity is added); empty: none fires."""
    every: str = "1m"
    """promtool's evaluation interval and the series' step (4 minutes for the certificate alerts, which
    have no ``for`` and are checked days into promtool's clock: 2,940 evaluations of every rule took 25 s;
    under the 5-minute lookback, so an alert still sees the recorded renewal time of the last evaluation)."""


def series(metric: str, selector: str, **labels: str) -> str:
    extra = "".join(f', {k}="{v}"' for k, v in labels.items())
    return f"{metric}{{{selector}{extra}}}"


def up(job: str, node: str) -> str:
    return f'up{{job="{job}", cluster="{CLUSTER}", node="{node}"}}'


def ring(node: str) -> str:
    return series("loki_ring_members", LOKI, node=node, name="ingester", state="ACTIVE")


def requests(route: str, code: str, node: str = "loki-01") -> str:
    return series("loki_request_duration_seconds_count", LOKI, node=node, method="POST", route=route,
                  status_code=code)


def s3(code: str) -> str:
    return series("loki_s3_request_duration_seconds_count", LOKI, node="loki-01", operation="S3.PutObject",
                  status_code=code)


COMPACTION = "loki_boltdb_shipper_compact_tables_operation_last_successful_run_timestamp_seconds"
RETENTION = "loki_compactor_apply_retention_last_successful_run_timestamp_seconds"
START = "process_start_time_seconds"
EVERY_10_MIN = " ".join(f"{600 * i}x9" for i in range(8))
"""A timestamp that moves on every 10 minutes (a compaction that runs)."""
C = {"cluster": CLUSTER}


def stale_cases(metric: str) -> list[Case]:
    return [
        Case({series(metric, LOKI, node="loki-01"): "0x60", series(START, LOKI, node="loki-01"): "0x60"}, "50m",
             [C]),
        Case({series(metric, LOKI, node="loki-01"): EVERY_10_MIN, series(START, LOKI, node="loki-01"): "0x80"},
             "70m"),
        # Every node restarted at 45 min (a roll): gauges start again from 0; not stale yet.
        Case({series(metric, LOKI, node="loki-01"): "0x60", series(START, LOKI, node="loki-01"): "0x44 2700x20"},
             "50m"),
    ]


def agent(metric: str, **labels: str) -> str:
    return series(metric, AGENT, host="192.168.50.30:3100", **labels)


def buckets(route: str, counts: dict[str, str]) -> dict[str, str]:
    """A request-duration histogram of ``route``: bucket upper bound -> values."""
    return {series("loki_request_duration_seconds_bucket", LOKI, node="loki-01", route=route, le=le): v
            for le, v in counts.items()}


N1 = {"node": "loki-01", **C}
DISK_USED = "loki_ingester_wal_disk_usage_percent"
SLOW_PUSHES = buckets("loki_api_v1_push", {"0.5": "0+1x30", "1": "0+1x30", "2.5": "0+100x30", "+Inf": "0+100x30"})
FAST_PUSHES = buckets("loki_api_v1_push", {"0.5": "0+100x30", "1": "0+100x30", "2.5": "0+100x30", "+Inf": "0+100x30"})
SLOW_QUERIES = buckets("loki_api_v1_query_range", {"10": "0+1x30", "25": "0+1x30", "50": "0+100x30",
                                                   "+Inf": "0+100x30"})
FAST_QUERIES = buckets("loki_api_v1_query_range", {"10": "0+100x30", "25": "0+100x30", "50": "0+100x30",
                                                   "+Inf": "0+100x30"})
LOAD_DELETES = "loki_compactor_load_pending_requests_attempts_total"
SWEEP = "loki_boltdb_shipper_retention_sweeper_chunk_deleted_duration_seconds_count"

CASES: dict[str, list[Case]] = {
    "LokiPushLatencyHigh": [
        Case(SLOW_PUSHES, "25m", [{"route": "loki_api_v1_push", **C}]),
        Case({**FAST_PUSHES, **SLOW_QUERIES}, "25m"),  # slow queries are not slow pushes
    ],
    "LokiQueryLatencyHigh": [
        Case({**FAST_PUSHES, **SLOW_QUERIES}, "25m", [{"route": "loki_api_v1_query_range", **C}]),
        Case({**SLOW_PUSHES, **FAST_QUERIES}, "25m"),
    ],
    "LokiPanicking": [
        Case({series("loki_panic_total", LOKI, node="loki-01"): "0 0 1x10"}, "5m", [N1]),
        Case({series("loki_panic_total", LOKI, node="loki-01"): "0x30"}, "25m"),
    ],
    "LokiWALCorrupted": [
        # Counted during the replay at the start: the first scrape already has it.
        Case({series("loki_ingester_wal_corruptions_total", LOKI, node="loki-01"): "2x30",
              series(START, LOKI, node="loki-01"): "0x30"}, "25m", [N1]),
        Case({series("loki_ingester_wal_corruptions_total", LOKI, node="loki-01"): "0x30",
              series(START, LOKI, node="loki-01"): "0x30"}, "25m"),
        # A day after that start it is an old story (the node's logs and the alert's history keep it).
        Case({series("loki_ingester_wal_corruptions_total", LOKI, node="loki-01"): "2x1500",
              series(START, LOKI, node="loki-01"): "0x1500"}, "1450m"),
    ],
    # Loki's WAL throttle (0.0-1.0): it refuses pushes from 0.9, for as long as the disk is that full.
    "LokiWALDiskFull": [
        Case({series(DISK_USED, LOKI, node="loki-01"): "0.5 0.85 0.93x30"}, "25m", [N1]),
        Case({series(DISK_USED, LOKI, node="loki-01"): "0.93 0.95 0.89x30"}, "25m"),  # freed: writes resume
    ],
    "LokiDataDiskFilling": [
        Case({series(DISK_USED, LOKI, node="loki-01"): "0.5 0.8+0.001x30"}, "20m", [N1]),
        Case({series(DISK_USED, LOKI, node="loki-01"): "0.79x30"}, "20m"),
    ],
    "LokiDeleteRequestsFailing": [
        # Every compaction (10 min) fails to load the requests for 50 minutes.
        Case({series(LOAD_DELETES, LOKI, node="loki-01", status="fail"): "1+0.1x60"}, "55m", [N1]),
        Case({series("loki_compactor_delete_processing_fails_total", LOKI, node="loki-01", cause="error"):
              "1+0.1x60"}, "55m", [N1]),
        Case({series(LOAD_DELETES, LOKI, node="loki-01", status="fail"): "1x60",
              series(LOAD_DELETES, LOKI, node="loki-01", status="success"): "0+0.1x60"}, "55m"),  # once, long ago
    ],
    "LokiRetentionSweepFailing": [
        Case({series(SWEEP, LOKI, node="loki-01", status="failure"): "0+3x40"}, "35m", [N1]),
        Case({series(SWEEP, LOKI, node="loki-01", status="failure"): "3x40",
              series(SWEEP, LOKI, node="loki-01", status="success"): "0+50x40"}, "35m"),
    ],
    "LokiRuntimeConfigReloadFailing": [
        Case({series("loki_runtime_config_last_reload_successful", LOKI, node="loki-01"): "1 1 0x10"}, "9m",
             [{"job": "loki", "node": "loki-01", **C}]),
        Case({series("loki_runtime_config_last_reload_successful", LOKI, node="loki-01"): "1 0 1x10"}, "9m"),
    ],
    "LokiStackNotScraped": [
        Case({up("loki", "x").replace(CLUSTER, "another"): "1x20"}, "15m", [{"job": "loki", **C}]),
        Case({up("loki", "loki-01"): "1x20"}, "15m"),
    ],
    "LokiNodeDown": [
        Case({up("loki", "loki-02"): "1 1 0x10"}, "8m", [{"job": "loki", "node": "loki-02", **C}]),
        Case({up("loki", "loki-02"): "1 0 1x10"}, "8m"),  # one failed scrape is not an outage
    ],
    "LokiRingShortOfReplicas": [
        Case({ring("loki-01"): "2x10", ring("loki-02"): "2x10"}, "10m", [C]),
        # The best view counts: a node that sees fewer is not the ring.
        Case({ring("loki-01"): "2x10", ring("loki-02"): "3x10"}, "10m"),
    ],
    "LokiRingBelowWriteQuorum": [
        Case({ring("loki-01"): "1x10", up("loki", "loki-01"): "1x10"}, "5m", [C]),
        # Two of three nodes down: no ring view from them, and only one answers.
        Case({ring("loki-01"): "2x10", up("loki", "loki-01"): "1x10", up("loki", "loki-02"): "0x10",
              up("loki", "loki-03"): "0x10"}, "5m", [C]),
        Case({ring("loki-01"): "2x10", up("loki", "loki-01"): "1x10", up("loki", "loki-02"): "1x10",
              up("loki", "loki-03"): "0x10"}, "5m"),
    ],
    "LokiPushErrorsHigh": [
        Case({requests("loki_api_v1_push", "204"): "0+100x20", requests("loki_api_v1_push", "500"): "0+10x20"},
             "15m", [C]),
        Case({requests("loki_api_v1_push", "204"): "0+100x20", requests("loki_api_v1_push", "500"): "0+2x20",
              requests("loki_api_v1_push", "429"): "0+100x20"}, "15m"),  # 429s are limits, not failures
    ],
    "LokiQueryErrorsHigh": [
        Case({requests("loki_api_v1_query_range", "200"): "0+100x30",
              requests("loki_api_v1_query_range", "500"): "0+10x30"}, "25m", [C]),
        Case({requests("loki_api_v1_query_range", "200"): "0+100x30",
              requests("loki_api_v1_push", "500"): "0+100x30"}, "25m"),  # push failures are not query failures
    ],
    "LokiObjectStoreErrors": [
        Case({s3("200"): "0+100x30", s3("500"): "0+20x30"}, "20m", [C]),
        Case({s3("200"): "0+100x30", s3("500"): "0+1x30"}, "20m"),
    ],
    "LokiChunkFlushFailing": [
        Case({series("loki_ingester_chunks_flush_failures_total", LOKI, node="loki-01"): "0+1x30"}, "25m", [C]),
        Case({series("loki_ingester_chunks_flush_failures_total", LOKI, node="loki-01"): "0 1x30"}, "25m"),
    ],
    "LokiCompactionStale": stale_cases(COMPACTION),
    "LokiRetentionStale": stale_cases(RETENTION),
    "LokiCompactorNotElected": [
        Case({series("loki_boltdb_shipper_compactor_running", LOKI, node=n): "0x20" for n in ("loki-01", "loki-02")},
             "20m", [C]),
        Case({series("loki_boltdb_shipper_compactor_running", LOKI, node=n): "1x20" for n in ("loki-01", "loki-02")},
             "20m", [C]),
        Case({series("loki_boltdb_shipper_compactor_running", LOKI, node="loki-01"): "1x20",
              series("loki_boltdb_shipper_compactor_running", LOKI, node="loki-02"): "0x20"}, "20m"),
    ],
    "LokiDiscardingLines": [
        Case({series("loki_discarded_samples_total", LOKI, node="loki-01", reason="rate_limited", tenant="fake"):
              "0+60x30"}, "20m", [{"reason": "rate_limited", **C}]),
        Case({series("loki_discarded_samples_total", LOKI, node="loki-01", reason="rate_limited", tenant="fake"):
              "0 60x30"}, "20m"),  # one burst long ago
    ],
    "LokiIngestNearRateLimit": [
        Case({series("loki_distributor_bytes_received_total", LOKI, node="loki-01", tenant="fake"):
              f"0+{14_000_000 * 60}x30"}, "25m", [{"node": "loki-01", **C}]),
        Case({series("loki_distributor_bytes_received_total", LOKI, node="loki-01", tenant="fake"):
              f"0+{12_000_000 * 60}x30"}, "25m"),
    ],
    "LokiStackObjectStoreDown": [
        Case({up("loki-objectstore", "s3"): "0x10"}, "8m", [{"job": "loki-objectstore", "node": "s3", **C}]),
        Case({up("loki-objectstore", "s3"): "1x10"}, "8m"),
    ],
    "LokiStackObjectStoreServerErrors": [
        Case({series("minio_s3_requests_total", STORE, api="putobject"): "0+100x30",
              series("minio_s3_requests_5xx_errors_total", STORE, api="putobject"): "0+10x30"}, "20m", [C]),
        Case({series("minio_s3_requests_total", STORE, api="putobject"): "0+100x30",
              series("minio_s3_requests_5xx_errors_total", STORE, api="putobject"): "0+1x30"}, "20m"),
    ],
    "LokiStackObjectStoreFull": [
        Case({series("minio_cluster_capacity_usable_free_bytes", STORE): "5x60",
              series("minio_cluster_capacity_usable_total_bytes", STORE): "100x60"}, "40m", [C]),
        Case({series("minio_cluster_capacity_usable_free_bytes", STORE): "50x60",
              series("minio_cluster_capacity_usable_total_bytes", STORE): "100x60"}, "40m"),
    ],
    "LokiStackGrafanaDown": [
        Case({up("loki-grafana", "grafana"): "0x10"}, "8m", [{"job": "loki-grafana", "node": "grafana", **C}]),
        Case({up("loki-grafana", "grafana"): "1x10"}, "8m"),
    ],
    "LokiStackAgentDown": [
        Case({up("loki-agents", "backup-01"): "0x10"}, "8m", [{"job": "loki-agents", "node": "backup-01", **C}]),
        Case({up("loki-agents", "backup-01"): "1x10"}, "8m"),
    ],
    "LokiStackAgentNotSending": [
        Case({agent("loki_write_batch_retries_total"): "0+1x30", agent("loki_write_sent_bytes_total"): "0x30"},
             "20m", [{"node": "backup-01", **C}]),
        # Never sent anything (the counter is not there yet) and retrying.
        Case({agent("loki_write_batch_retries_total"): "0+1x30"}, "20m", [{"node": "backup-01", **C}]),
        Case({agent("loki_write_batch_retries_total"): "0+1x30", agent("loki_write_sent_bytes_total"): "0+1000x30"},
             "20m"),  # retries, but lines get through
    ],
    "LokiStackAgentSilent": [
        Case({up("loki-agents", "backup-01"): "1x150", agent("loki_write_sent_entries_total"): "100x150"}, "140m",
             [{"job": "loki-agents", "node": "backup-01", **C}]),
        Case({up("loki-agents", "backup-01"): "1x150", agent("loki_write_sent_entries_total"): "100+1x150"}, "140m"),
        Case({up("loki-agents", "backup-01"): "1x60", agent("loki_write_sent_entries_total"): "0x60"}, "60m"),
    ],
    "LokiStackAgentDroppedLines": [
        Case({agent("loki_write_dropped_entries_total", reason="ingester_error"): "0 0 5x20"}, "5m",
             [{"node": "backup-01", "reason": "ingester_error", **C}]),
        Case({agent("loki_write_dropped_entries_total", reason="ingester_error"): "0 5x30"}, "25m"),
    ],
    "LokiStackCertificateRenewalDue": [
        Case({}, "25h", [{"certificate": "loki-01-server", "host": "loki-01", **C}], every="4m"),
        Case({}, "23h", every="4m"),
    ],
    "LokiStackCertificateExpiresToday": [
        Case({}, "49h", [{"certificate": "loki-01-server", "host": "loki-01", **C}], every="4m"),
        Case({}, "47h", every="4m"),
    ],
}
TEST_CERTIFICATES = [CertificateExpiry(certificate="loki-01-server", host="loki-01", not_after="1970-01-04T00:00:00Z",
                                       early_renewal_hours=48)]
"""Ends 72 h after promtool's clock starts (Unix time 0): renewal due from 24 h, ends within a day from 48 h."""


def expanded_annotations(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, str]:
    """The rule's annotations as Prometheus expands them for an alert with ``labels``."""
    return {k: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), v)
            for k, v in rule["annotations"].items()}


def test_every_alert_has_a_firing_and_a_calm_case(example):
    names = monitoring.alert_names(example.returned.monitoring)
    assert sorted(CASES) == sorted(names), f"no cases for {set(names) - set(CASES)}, stale {set(CASES) - set(names)}"
    for name, cases in CASES.items():
        assert any(c.fires for c in cases) and any(not c.fires for c in cases), f"{name}: needs both kinds of case"


@pytest.mark.real_tools
@pytest.mark.parametrize("alert", sorted(CASES))
def test_promtool_test_rules(example, tmp_path, alert):
    """The rules as the example stack renders them (with a test certificate whose dates promtool's
    clock reaches), evaluated by promtool on the case's series."""
    spec = example.returned.monitoring
    assert spec.cluster == CLUSTER
    (tmp_path / "rules.yml").write_text(render_rules(spec, TEST_CERTIFICATES))
    rule = next(r for r in monitoring.alert_rules(spec) if r["alert"] == alert)
    tests = []
    for case in CASES[alert]:
        expected = [{"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": expanded_annotations(rule, labels)}
                    for labels in case.fires]
        tests.append({"interval": case.every,
                      "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
                      "alert_rule_test": [{"eval_time": case.at, "alertname": alert, "exp_alerts": expected}]})
    every = {case.every for case in CASES[alert]}
    assert len(every) == 1, f"{alert}: its cases must share one evaluation interval, not {every}"
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": every.pop(),
                                                        "tests": tests}, sort_keys=False))
    proc = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert proc.returncode == 0, f"{alert}: promtool test rules failed:\n{proc.stdout}{proc.stderr}"


@pytest.mark.real_tools
def test_a_wrong_expectation_fails_promtool(example, tmp_path):
    """The harness can fail: the firing case of LokiNodeDown, expected calm, is a failure."""
    spec = example.returned.monitoring
    (tmp_path / "rules.yml").write_text(render_rules(spec, TEST_CERTIFICATES))
    case = CASES["LokiNodeDown"][0]
    tests = [{"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
              "alert_rule_test": [{"eval_time": case.at, "alertname": "LokiNodeDown", "exp_alerts": []}]}]
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "tests": tests}))
    proc = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert proc.returncode == 1, f"promtool passed a wrong expectation: {proc.stdout}"
