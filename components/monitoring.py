"""Watching the log platform itself: the Prometheus scrape jobs and alert rules the stack hands out.

Two documents for an operator's existing Prometheus, both built as dicts and dumped once:

- ``prometheusScrapeConfig``: a scrape job per component, every one over HTTPS with the stack's CA.
  ``loki`` (every node's gateway, Prometheus' client certificate, role ``metrics``),
  ``loki-objectstore`` (the object store's cluster metrics, a bearer token of a user that may do
  nothing but read metrics), ``loki-grafana`` (Grafana's ``/metrics`` with a password of its own)
  and ``loki-agents`` (every log agent's own metrics, which accept Prometheus' certificates, of a
  CA of their own, and no other). Every target carries ``cluster`` and ``node`` (the host name).
- ``prometheusRules``: alert rules for this topology, thresholds derived from the settings (node
  count, replication factor, ingestion rate, certificates' early-renewal windows), and one
  recording rule per certificate the stack issued (when it ends), because no component exports
  the expiry of the files it reads.

``signals`` are the expressions the alerts compare with their thresholds; the cluster dashboard
(``components.dashboards``) draws the same expressions, so what an alert watches is on screen.

Metric names were read off Loki 3.7.6's ``/metrics`` in the live lab (``tests/test_loki_live.py``
checks them on every run); the object store's and Alloy's come from their sources
(``minio/minio`` ``cmd/metrics-v2.go``, ``grafana/alloy`` ``internal/component/loki/write``).
Prometheus: https://prometheus.io/docs/prometheus/latest/configuration/configuration/ and
https://prometheus.io/docs/prometheus/latest/configuration/alerting_rules/
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

PROMETHEUS_TLS_DIR = "loki-stack"
"""Relative to prometheus.yml: the directory for the CA, Prometheus' client certificate and the two secrets."""
CA_FILE = f"{PROMETHEUS_TLS_DIR}/ca.pem"
CERT_FILE = f"{PROMETHEUS_TLS_DIR}/prometheus.pem"
KEY_FILE = f"{PROMETHEUS_TLS_DIR}/prometheus.key"
OBJECTSTORE_TOKEN_FILE = f"{PROMETHEUS_TLS_DIR}/objectstore.token"
GRAFANA_PASSWORD_FILE = f"{PROMETHEUS_TLS_DIR}/grafana.password"

JOB_LOKI, JOB_OBJECTSTORE, JOB_GRAFANA, JOB_AGENTS = "loki", "loki-objectstore", "loki-grafana", "loki-agents"
OBJECTSTORE_METRICS_PATH = "/minio/v2/metrics/cluster"
GRAFANA_METRICS_USER = "prometheus"
CERTIFICATE_METRIC = "lokistack_certificate_not_after_timestamp_seconds"
RENEWAL_METRIC = "lokistack_certificate_renew_after_timestamp_seconds"

ERROR_RATIO = 0.05
"""Share of failed requests (5xx) that is an incident rather than noise: push, query and object store."""
INGEST_WARNING_SHARE = 0.8
"""A node's ingest above this share of ``lokiIngestionRateMb`` for a while is close to 429s."""
OBJECTSTORE_FREE_SHARE = 0.1
DATA_DISK_WARNING_SHARE = 0.8
"""A Loki node's data disk in use above this share for a while: time to grow it, before Loki
refuses writes (``MonitoringSpec.wal_disk_full_threshold``)."""
COMPACTOR_START_WAIT_S = 600
"""A newly elected compactor waits 10 minutes for the ring to settle before its first run (Loki
3.7's tables manager, measured: "waiting 10m0s for ring to stay stable")."""
COMPACTION_INTERVAL_S = 600
"""Loki's ``compactor.compaction_interval`` default (the stack does not set it); retention is applied
on every compaction (``apply_retention_interval`` 0)."""
COMPACTION_MISSED_RUNS = 3
PUSH_P99_S = 1.0
"""Push latency (p99 over 5 minutes) that is an incident: a 1 MiB batch is taken in about 0.1 s on
a healthy cluster (the rehearsal's kept-alive client: slowest 0.2 s through a roll), and Alloy
gives up on a push after 10 s. Above 1 s for 15 minutes the ingesters or their WAL disks are
falling behind (the Loki mixin's ``LokiRequestLatency`` uses 1 s too)."""
QUERY_P99_S = 20.0
"""Query latency (p99 over 5 minutes) that users feel: Loki ends a query's evaluation at its
``query_timeout`` (1 m by default, ``components.timeouts``), so above 20 s for 15 minutes the
slowest queries are a third of the way to failing; look at what is queried, the nodes' CPU and the
object store."""
WAL_CORRUPTION_ALERT_S = 86400
"""How long LokiWALCorrupted fires after the start whose WAL replay found corruption."""
LATENCY_RECORD = "cluster_route:loki_request_duration_seconds:99quantile"
"""The recording rule both latency alerts read (one series per route, as the Loki mixin records)."""


@dataclass(frozen=True, kw_only=True)
class Target:
    name: str
    """Host name: the target's ``node`` label."""
    address: str


@dataclass(frozen=True, kw_only=True)
class CertificateExpiry:
    certificate: str
    """The stack's name for it (``loki-01-server``, ``ca``, ``prometheus``...)."""
    host: str
    """The host it lives on; "" for the CA and the client certificates handed out as outputs."""
    not_after: str
    """RFC 3339, as the TLS provider reports it."""
    early_renewal_hours: int


@dataclass(frozen=True, kw_only=True)
class MonitoringSpec:
    cluster: str
    """Every target's ``cluster`` label, and the one every rule selects."""
    loki_nodes: Sequence[Target]
    loki_port: int
    object_store: Target
    object_store_port: int
    grafana: Target
    grafana_port: int
    agents: Sequence[Target]
    """Every host with a log agent (the stack's VMs and the extra hosts)."""
    agent_port: int
    replication_factor: int
    ingestion_rate_mb: int
    """Per node: the stack's Loki enforces ``ingestion_rate_strategy: local``."""
    wal_disk_full_threshold: float
    """Share of a node's data disk in use at which its ingester refuses pushes (Loki's WAL throttle)."""

    @property
    def write_quorum(self) -> int:
        """Healthy ingesters a push needs (Loki writes to a quorum of ``replication_factor``)."""
        return self.replication_factor // 2 + 1

    @property
    def compaction_stale_s(self) -> int:
        return COMPACTOR_START_WAIT_S + COMPACTION_MISSED_RUNS * COMPACTION_INTERVAL_S


class _Dumper(yaml.SafeDumper):
    """No anchors for repeated label maps, and multi-line expressions as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _represent_str)


def _dump(document: dict[str, Any]) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1000)


# --- scrape jobs ------------------------------------------------------------------------------


def _job(spec: MonitoringSpec, name: str, targets: Sequence[Target], port: int, metrics_path: str,
         *, client_cert: bool, **auth: Any) -> dict[str, Any]:
    tls: dict[str, str] = {"ca_file": CA_FILE}
    if client_cert:
        tls |= {"cert_file": CERT_FILE, "key_file": KEY_FILE}
    return {
        "job_name": name, "scheme": "https", "metrics_path": metrics_path, **auth, "tls_config": tls,
        "static_configs": [{"targets": [f"{t.address}:{port}"], "labels": {"cluster": spec.cluster, "node": t.name}}
                           for t in targets],
    }


def scrape_config(spec: MonitoringSpec) -> dict[str, Any]:
    """One scrape job per component. Targets by address: the servers' certificates carry it."""
    return {"scrape_configs": [
        # The gateway grants the role ``metrics`` exactly GET /metrics.
        _job(spec, JOB_LOKI, spec.loki_nodes, spec.loki_port, "/metrics", client_cert=True),
        # The object store wants a bearer token (a JWT signed with the key of a user whose only
        # permission is admin:Prometheus); it asks for no client certificate.
        _job(spec, JOB_OBJECTSTORE, [spec.object_store], spec.object_store_port, OBJECTSTORE_METRICS_PATH,
             client_cert=False, authorization={"type": "Bearer", "credentials_file": OBJECTSTORE_TOKEN_FILE}),
        # Grafana's /metrics behind basic auth (grafana.ini [metrics]); no client certificates.
        _job(spec, JOB_GRAFANA, [spec.grafana], spec.grafana_port, "/metrics", client_cert=False,
             basic_auth={"username": GRAFANA_METRICS_USER, "password_file": GRAFANA_PASSWORD_FILE}),
        # Each agent's HTTP server accepts Prometheus' certificates (their own CA) and no other (components.alloy).
        _job(spec, JOB_AGENTS, spec.agents, spec.agent_port, "/metrics", client_cert=True),
    ]}


def render_scrape_config(spec: MonitoringSpec) -> str:
    return _dump(scrape_config(spec))


# --- signals: what the alerts compare and the dashboard draws --------------------------------------


@dataclass(frozen=True)
class Signal:
    title: str
    expr: str
    legend: str
    unit: str = ""


def signals(spec: MonitoringSpec) -> dict[str, Signal]:
    cluster = f'cluster="{spec.cluster}"'
    loki, store = f'job="{JOB_LOKI}", {cluster}', f'job="{JOB_OBJECTSTORE}", {cluster}'
    agents = f'job="{JOB_AGENTS}", {cluster}'
    push = f'{loki}, route="loki_api_v1_push"'
    query = f'{loki}, route=~"loki_api_v1_.+", route!="loki_api_v1_push"'

    def ratio(metric: str, selector: str, failed: str, *, failed_metric: str = "") -> str:
        """Failed requests over all requests, both per second over 5 minutes."""
        numerator = f"{failed_metric or metric}{{{selector}{', ' + failed if failed else ''}}}"
        return (f"sum by (cluster) (rate({numerator}[5m]))\n"
                f"  / sum by (cluster) (rate({metric}{{{selector}}}[5m]))")

    return {
        "loki_up": Signal("Loki nodes up (1) or down (0)", f"up{{{loki}}}", "{{node}}"),
        "ingesters_active": Signal(
            f"Healthy ingesters (best view; writes need {spec.write_quorum}, replicas {spec.replication_factor})",
            f'max by (cluster) (loki_ring_members{{{loki}, name="ingester", state="ACTIVE"}})', "healthy"),
        "loki_nodes_up": Signal("Loki nodes answering", f"sum by (cluster) (up{{{loki}}})", "up"),
        "push_errors": Signal("Push error ratio (5xx)", ratio(
            "loki_request_duration_seconds_count", push, 'status_code=~"5.."'), "push", "percentunit"),
        "query_errors": Signal("Query error ratio (5xx)", ratio(
            "loki_request_duration_seconds_count", query, 'status_code=~"5.."'), "query", "percentunit"),
        "s3_errors": Signal("Loki's object-store request error ratio", ratio(
            "loki_s3_request_duration_seconds_count", loki, 'status_code!~"2.."'), "errors", "percentunit"),
        "flush_failures": Signal("Chunk flushes failed (10 min)", f"sum by (cluster) (increase(loki_ingester_chunks_"
                                 f"flush_failures_total{{{loki}}}[10m]))", "failed"),
        "compaction_age": Signal("Since the last compaction", "time() - max by (cluster) (loki_boltdb_shipper_"
                                 "compact_tables_operation_last_successful_run_timestamp_seconds"
                                 f"{{{loki}}})", "compaction", "s"),
        "retention_age": Signal("Since retention was last applied", "time() - max by (cluster) (loki_compactor_apply_"
                                f"retention_last_successful_run_timestamp_seconds{{{loki}}})", "retention", "s"),
        "oldest_node": Signal("Longest-running Loki process", f"max by (cluster) (time() - process_start_time_seconds"
                              f"{{{loki}}})", "age", "s"),
        "compactors": Signal("Nodes running the compactor (should be 1)",
                             f"sum by (cluster) (loki_boltdb_shipper_compactor_running{{{loki}}})", "compactors"),
        "discarded": Signal("Discarded lines per second by reason", f"sum by (cluster, reason) (rate(loki_discarded_"
                            f"samples_total{{{loki}}}[5m]))", "{{reason}}"),
        "ingest_bytes": Signal("Ingest per node (each node's limit: lokiIngestionRateMb)",
                               f"sum by (cluster, node) (rate(loki_distributor_bytes_received_total{{{loki}}}[5m]))",
                               "{{node}}", "Bps"),
        "objectstore_up": Signal("Object store up", f"up{{{store}}}", "{{node}}"),
        "objectstore_errors": Signal("Object store 5xx ratio", ratio(
            "minio_s3_requests_total", store, "", failed_metric="minio_s3_requests_5xx_errors_total"), "5xx",
            "percentunit"),
        "objectstore_free": Signal("Object store free space", f"sum by (cluster) (minio_cluster_capacity_usable_free_"
                                   f"bytes{{{store}}})\n  / sum by (cluster) (minio_cluster_capacity_usable_total_bytes"
                                   f"{{{store}}})", "free", "percentunit"),
        "grafana_up": Signal("Grafana up", f'up{{job="{JOB_GRAFANA}", {cluster}}}', "{{node}}"),
        "agents_up": Signal("Log agents up", f"up{{{agents}}}", "{{node}}"),
        "agent_sent": Signal("Bytes each agent sent", f"sum by (cluster, node) (rate(loki_write_sent_bytes_total"
                             f"{{{agents}}}[10m]))", "{{node}}", "Bps"),
        "agent_lines": Signal("Lines each agent sent (15 min)", f"sum by (cluster, node) (increase(loki_write_sent_"
                              f"entries_total{{{agents}}}[15m]))", "{{node}}"),
        "agent_retries": Signal("Push retries per agent (10 min)", f"sum by (cluster, node) (increase(loki_write_batch_"
                                f"retries_total{{{agents}}}[10m]))", "{{node}}"),
        "agent_dropped": Signal("Lines agents gave up on (15 min)", f"sum by (cluster, node, reason) (increase("
                                f"loki_write_dropped_entries_total{{{agents}}}[15m]))", "{{node}} {{reason}}"),
        "push_p99": Signal("Push latency p99 (5 min; recorded)", f'{LATENCY_RECORD}{{{cluster}, route="loki_api_v1_'
                           'push"}', "push", "s"),
        "query_p99": Signal("Query latency p99 by route (5 min; recorded)", f'{LATENCY_RECORD}{{{cluster}, route!="'
                            'loki_api_v1_push"}', "{{route}}", "s"),
        "panics": Signal("Panics Loki recovered from (10 min)", f"sum by (cluster, node) (increase(loki_panic_total"
                         f"{{{loki}}}[10m]))", "{{node}}"),
        "wal_corruptions": Signal("WAL corruptions found when Loki last started", f"sum by (cluster, node) (loki_"
                                  f"ingester_wal_corruptions_total{{{loki}}})", "{{node}}"),
        "node_age": Signal("Since each Loki process started", f"sum by (cluster, node) (time() - process_start_"
                           f"time_seconds{{{loki}}})", "{{node}}", "s"),
        "data_disk_used": Signal(f"Data disk in use (a node refuses writes from {spec.wal_disk_full_threshold:.0%})",
                                 f"max by (cluster, node) (loki_ingester_wal_disk_usage_percent{{{loki}}})",
                                 "{{node}}", "percentunit"),
        "delete_failures": Signal("Delete requests the compactor failed to load or apply (20 min)",
                                  f'sum by (cluster, node) (increase(loki_compactor_load_pending_requests_attempts_'
                                  f'total{{{loki}, status="fail"}}[20m]))\nor\nsum by (cluster, node) (increase('
                                  f"loki_compactor_delete_processing_fails_total{{{loki}}}[20m]))", "{{node}}"),
        "sweep_failures": Signal("Chunk deletions by retention that failed (10 min)",
                                 "sum by (cluster, node) (increase("
                                 "loki_boltdb_shipper_retention_sweeper_chunk_deleted_duration_seconds_count"
                                 f'{{{loki}, status="failure"}}[10m]))', "{{node}}"),
        "runtime_config_ok": Signal("Runtime config (limits) last reload good (1) or failed (0)",
                                    f"loki_runtime_config_last_reload_successful{{{loki}}}", "{{node}}"),
        "certificate_left": Signal("Certificates: time left", f"{CERTIFICATE_METRIC}{{{cluster}}} - time()",
                                   "{{certificate}}", "s"),
    }


# --- rules --------------------------------------------------------------------------------------


def _epoch(rfc3339: str) -> int:
    return int(datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp())


def certificate_rules(spec: MonitoringSpec, certificates: Sequence[CertificateExpiry]) -> list[dict[str, Any]]:
    """Two recorded series per certificate: when it ends, and from when ``pulumi up`` renews it."""
    rules: list[dict[str, Any]] = []
    for c in certificates:
        labels = {"cluster": spec.cluster, "certificate": c.certificate, **({"host": c.host} if c.host else {})}
        end = _epoch(c.not_after)
        rules.append({"record": CERTIFICATE_METRIC, "expr": f"vector({end})", "labels": labels})
        rules.append({"record": RENEWAL_METRIC, "expr": f"vector({end - c.early_renewal_hours * 3600})",
                      "labels": labels})
    return rules


def _alert(name: str, expr: str, duration: str, severity: str, summary: str,  # noqa: PLR0917 (read as a table)
           action: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if duration:
        rule["for"] = duration
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "action": action}
    return rule


def alert_rules(spec: MonitoringSpec) -> list[dict[str, Any]]:
    s = {k: v.expr for k, v in signals(spec).items()}
    cluster = f'cluster="{spec.cluster}"'
    rf, quorum = spec.replication_factor, spec.write_quorum
    rate_limit = spec.ingestion_rate_mb * 1024 * 1024
    stale = spec.compaction_stale_s

    def stale_alert(name: str, age: str, summary: str, action: str) -> dict[str, Any]:
        """``age`` past the limit while a Loki process has run that long: a roll restarts every
        node, and with it the gauges (0 until the new compactor's first run)."""
        return _alert(name, f"({s[age]} > {stale})\nand on (cluster)\n({s['oldest_node']} > {stale})", "5m",
                      "warning", summary, action)

    return [
        _alert("LokiStackNotScraped", f'absent(up{{job="{JOB_LOKI}", {cluster}}})', "10m", "warning",
               f"Prometheus scrapes no Loki node of {spec.cluster}",
               "Add the stack output prometheusScrapeConfig to prometheus.yml (README: Watching the platform)."),
        _alert("LokiNodeDown", f"{s['loki_up']} == 0", "2m", "warning",
               "Loki node {{ $labels.node }} does not answer its scrape",
               "ssh to the node: systemctl status loki nginx; journalctl -u loki. The others take its traffic."),
        _alert("LokiRingShortOfReplicas", f"{s['ingesters_active']} < {rf}", "5m", "warning",
               f"Fewer than {rf} healthy ingesters: new logs are written with fewer than {rf} copies",
               "Bring the missing node back (LokiNodeDown says which); check `loki_ring_members` per node."),
        _alert("LokiRingBelowWriteQuorum",
               f"({s['ingesters_active']} < {quorum})\nor\n({s['loki_nodes_up']} < {quorum})", "1m", "critical",
               f"Fewer than {quorum} healthy ingesters: pushes fail",
               "Start the stopped Loki nodes first; agents keep their lines and resend for a while."),
        _alert("LokiPushErrorsHigh", f"({s['push_errors']}) > {ERROR_RATIO}", "5m", "critical",
               f"More than {ERROR_RATIO:.0%} of pushes fail with 5xx",
               "journalctl -u loki on the nodes: ring, object store or disk errors name the cause."),
        _alert("LokiQueryErrorsHigh", f"({s['query_errors']}) > {ERROR_RATIO}", "10m", "warning",
               f"More than {ERROR_RATIO:.0%} of queries fail with 5xx",
               "journalctl -u loki: look for object-store or timeout errors; LokiObjectStoreErrors may fire too."),
        _alert("LokiObjectStoreErrors", f"({s['s3_errors']}) > {ERROR_RATIO}", "10m", "warning",
               f"More than {ERROR_RATIO:.0%} of Loki's object-store requests fail",
               "Check the object store (LokiStackObjectStoreDown, its disk) and Loki's S3 keys."),
        _alert("LokiPushLatencyHigh", f"{s['push_p99']} > {PUSH_P99_S:g}",
               "15m", "warning", f"The slowest pushes (p99) take more than {PUSH_P99_S:g} s",
               "Check the nodes' CPU and data disks (journalctl -u loki: WAL or flush errors) and "
               "LokiIngestNearRateLimit; agents give up on a push after 10 s."),
        _alert("LokiQueryLatencyHigh", f"{s['query_p99']} > {QUERY_P99_S:g}", "15m", "warning",
               f"The slowest {{{{ $labels.route }}}} queries (p99) take more than {QUERY_P99_S:g} s",
               "Grafana and logcli give up at a minute: look for wide queries (long ranges, no label filter), "
               "the nodes' CPU and LokiObjectStoreErrors."),
        _alert("LokiPanicking", f"{s['panics']} > 0", "", "critical",
               "Loki on {{ $labels.node }} recovered from a panic: a request failed on a bug",
               "journalctl -u loki on the node shows the stack trace; report it upstream with the Loki version."),
        # The replay counts corruptions before the first scrape, so no increase() sees them: the
        # count of the running process, for a day after its start. Loki 3.7.6 counts records it
        # cannot decode, not a damaged segment (its replay stops at the WAL reader's error without
        # looking at it, and logs no error: measured, tests/test_loki_live.py).
        _alert("LokiWALCorrupted", f"({s['wal_corruptions']} > 0)\nand on (cluster, node)\n({s['node_age']} < "
               f"{WAL_CORRUPTION_ALERT_S})", "", "warning",
               "Loki on {{ $labels.node }} found a corrupted WAL when it started: lines only it held may be lost",
               "Check the node's data disk (dmesg, smartctl) and whether it was full. The other replicas hold "
               "the lines pushed to them: a loss needs the same on a write quorum of nodes (Loki's own words)."),
        _alert("LokiWALDiskFull", f"{s['data_disk_used']} >= {spec.wal_disk_full_threshold}", "", "critical",
               f"Loki on {{{{ $labels.node }}}} refuses writes: its data disk is "
               f"{spec.wal_disk_full_threshold:.0%} full or more",
               "The other nodes take the pushes while they are a write quorum. Free or grow the disk "
               "(docs/runbook/data-disk-full.md); Loki takes writes again within 10 s of it being below "
               f"{spec.wal_disk_full_threshold:.0%}."),
        _alert("LokiDataDiskFilling", f"{s['data_disk_used']} >= {DATA_DISK_WARNING_SHARE}", "15m", "warning",
               f"The data disk of Loki on {{{{ $labels.node }}}} is {DATA_DISK_WARNING_SHARE:.0%} full or more",
               f"At {spec.wal_disk_full_threshold:.0%} the node refuses writes: grow lokiDataDiskGiB "
               "(docs/runbook/data-disk-full.md), or find what grows (du -sh /var/lib/loki/*)."),
        _alert("LokiDeleteRequestsFailing", f"({s['delete_failures']}) > 0", "30m", "warning",
               "The compactor on {{ $labels.node }} keeps failing to load or apply delete requests",
               "journalctl -u loki on that node (the elected compactor): object-store or boltdb errors name "
               "the cause; requests wait meanwhile."),
        _alert("LokiRetentionSweepFailing", f"{s['sweep_failures']} > 0", "20m", "warning",
               "The compactor on {{ $labels.node }} keeps failing to delete chunks past retention",
               "journalctl -u loki on that node: object-store errors name the cause; the bucket grows meanwhile."),
        _alert("LokiRuntimeConfigReloadFailing", f"{s['runtime_config_ok']} == 0", "5m", "warning",
               "Loki on {{ $labels.node }} cannot load its runtime config: limit changes do not apply",
               "journalctl -u loki on the node names the error in /etc/loki/runtime.yml; run `pulumi up` again "
               "to write a good one."),
        _alert("LokiChunkFlushFailing", f"{s['flush_failures']} > 0", "10m", "critical",
               "Loki cannot write chunks to the object store: new logs live only in the nodes' WALs",
               "Fix the object store now; the WAL is replayed and flushed once it answers."),
        stale_alert("LokiCompactionStale", "compaction_age", f"No compaction for {stale // 60} minutes",
                    "Find the elected compactor (loki_boltdb_shipper_compactor_running 1) and read its journal."),
        stale_alert("LokiRetentionStale", "retention_age",
                    f"Retention not applied for {stale // 60} minutes: old logs are not deleted",
                    "Read the elected compactor's journal (retention runs with compaction)."),
        _alert("LokiCompactorNotElected", f"{s['compactors']} != 1", "15m", "warning",
               "Not exactly one Loki node runs the compactor",
               "Check the compactor ring on the nodes' /compactor/ring page (operator certificate)."),
        _alert("LokiDiscardingLines", f"{s['discarded']} > 0", "10m", "warning",
               "Loki discards lines: {{ $labels.reason }}",
               "rate_limited: raise lokiIngestionRateMb or find the loud host; greater_than_max_sample_age: "
               "a client sends old lines (clock or replay)."),
        _alert("LokiIngestNearRateLimit", f"{s['ingest_bytes']} > {int(rate_limit * INGEST_WARNING_SHARE)}", "15m",
               "warning", f"Loki node {{{{ $labels.node }}}} takes more than {INGEST_WARNING_SHARE:.0%} of its "
               f"{spec.ingestion_rate_mb} MiB/s limit", "Raise lokiIngestionRateMb before pushes get 429."),
        _alert("LokiStackObjectStoreDown", f"{s['objectstore_up']} == 0", "5m", "critical",
               "The object store {{ $labels.node }} does not answer its scrape",
               "ssh to it: systemctl status objectstore. Loki keeps new logs in its WAL meanwhile."),
        _alert("LokiStackObjectStoreServerErrors", f"({s['objectstore_errors']}) > {ERROR_RATIO}", "10m", "warning",
               f"More than {ERROR_RATIO:.0%} of the object store's requests fail with 5xx",
               "journalctl -u objectstore; check its data disk."),
        _alert("LokiStackObjectStoreFull", f"({s['objectstore_free']}) < {OBJECTSTORE_FREE_SHARE}", "30m", "warning",
               f"The object store has less than {OBJECTSTORE_FREE_SHARE:.0%} of its space free",
               "Grow its data disk (objectStoreDataDiskGiB) or shorten lokiRetention."),
        _alert("LokiStackGrafanaDown", f"{s['grafana_up']} == 0", "5m", "warning",
               "Grafana {{ $labels.node }} does not answer its scrape", "ssh to it: systemctl status grafana-server."),
        _alert("LokiStackAgentDown", f"{s['agents_up']} == 0", "5m", "warning",
               "The log agent on {{ $labels.node }} does not answer: its logs are not collected",
               "ssh to the host: systemctl status alloy; journalctl -u alloy."),
        _alert("LokiStackAgentNotSending",
               f"({s['agent_retries']} > 0)\nunless on (cluster, node)\n({s['agent_sent']} > 0)", "5m", "warning",
               "The log agent on {{ $labels.node }} retries and sends nothing",
               "journalctl -u alloy on the host: certificate, VIP or 429 errors name the cause."),
        _alert("LokiStackAgentSilent",
               f"({s['agents_up']} == 1)\nunless on (cluster, node)\n({s['agent_lines']} > 0)", "2h", "warning",
               "The log agent on {{ $labels.node }} runs and has sent no line for 2 hours",
               "A Debian host's journal has lines every hour (cron): check the agent's config and its journal."),
        _alert("LokiStackAgentDroppedLines", f"{s['agent_dropped']} > 0", "", "warning",
               "The log agent on {{ $labels.node }} gave up on lines ({{ $labels.reason }})",
               "These lines are lost; fix what LokiStackAgentNotSending or Loki's alerts point at."),
        _alert("LokiStackCertificateRenewalDue", f"time() >= {RENEWAL_METRIC}{{{cluster}}}", "", "warning",
               "Certificate {{ $labels.certificate }} is in its early-renewal window",
               "Run `pulumi up -s <stack>`, then write prometheusRules again (it carries the new dates)."),
        _alert("LokiStackCertificateExpiresToday", f"{s['certificate_left']} < 86400", "", "critical",
               "Certificate {{ $labels.certificate }} ends within a day: TLS to its holder will fail",
               "Run `pulumi up -s <stack>` now, then write prometheusRules again."),
    ]


def recording_rules(spec: MonitoringSpec) -> list[dict[str, Any]]:
    """What the latency alerts read, recorded once a minute rather than computed per alert."""
    loki = f'job="{JOB_LOKI}", cluster="{spec.cluster}", route=~"loki_api_v1_.+"'
    return [{"record": LATENCY_RECORD, "expr": "histogram_quantile(0.99, sum by (cluster, route, le) "
                                               f"(rate(loki_request_duration_seconds_bucket{{{loki}}}[5m])))"}]


def rules(spec: MonitoringSpec, certificates: Sequence[CertificateExpiry]) -> dict[str, Any]:
    return {"groups": [
        {"name": "loki-stack-certificates", "rules": certificate_rules(spec, certificates)},
        {"name": "loki-stack-records", "rules": recording_rules(spec)},
        {"name": "loki-stack", "rules": alert_rules(spec)},
    ]}


def render_rules(spec: MonitoringSpec, certificates: Sequence[CertificateExpiry]) -> str:
    header = (f"# Alert rules for the loki-stack cluster {spec.cluster}, written by loki-stack "
              "(`pulumi stack output prometheusRules`).\n# Write it again after every `pulumi up`: "
              "the certificate rules carry the dates of the certificates it issued.\n")
    return header + _dump(rules(spec, certificates))


def alert_names(spec: MonitoringSpec) -> list[str]:
    return [r["alert"] for r in alert_rules(spec)]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (for the check against a real Loki's /metrics)."""
    words = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr))
    return words - {"up"}
