"""The stack's two Grafana dashboards, built as dicts (our own, not copied).

"Loki cluster" needs Loki's metrics from a Prometheus data source the user already has (chosen in
the dashboard's ``prometheus`` variable; scrape job: the stack output ``prometheusScrapeConfig``).
"Logs overview" needs only the stack's Loki data source.
"""

from __future__ import annotations

from typing import Any

PROMETHEUS = {"type": "prometheus", "uid": "${prometheus}"}


def _panel(pid: int, title: str, datasource: dict[str, str], targets: list[dict[str, Any]], *,
           kind: str = "timeseries", x: int = 0, y: int = 0, w: int = 12, h: int = 8, unit: str = "") -> dict[str, Any]:
    panel: dict[str, Any] = {
        "id": pid, "type": kind, "title": title, "datasource": datasource,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [{"refId": chr(ord("A") + i), "datasource": datasource, **t} for i, t in enumerate(targets)],
    }
    if unit:
        panel["fieldConfig"] = {"defaults": {"unit": unit}, "overrides": []}
    return panel


def loki_cluster_dashboard() -> dict[str, Any]:
    def prom(expr: str, legend: str) -> dict[str, Any]:
        return {"expr": expr, "legendFormat": legend}

    panels = [
        _panel(1, "Ingest rate per node", PROMETHEUS, [prom(
            'sum by (node) (rate(loki_distributor_bytes_received_total{job="loki"}[$__rate_interval]))', "{{node}}")],
            unit="Bps"),
        _panel(2, "Active streams per node", PROMETHEUS, [prom(
            'sum by (node) (loki_ingester_memory_streams{job="loki"})', "{{node}}")], x=12),
        _panel(3, "Request latency p99 per node", PROMETHEUS, [prom(
            'histogram_quantile(0.99, sum by (le, node) (rate(loki_request_duration_seconds_bucket{job="loki", '
            'route=~"loki_api_v1_push|loki_api_v1_query_range|loki_api_v1_query"}[$__rate_interval])))',
            "{{node}}")], y=8, unit="s"),
        _panel(4, "Request errors (5xx) per node", PROMETHEUS, [prom(
            'sum by (node) (rate(loki_request_duration_seconds_count{job="loki", status_code=~"5.."}'
            '[$__rate_interval]))', "{{node}}")], x=12, y=8, unit="reqps"),
        _panel(5, "Ring members by state", PROMETHEUS, [prom(
            'max by (name, state) ({__name__=~"(loki|cortex)_ring_members", job="loki"})', "{{name}} {{state}}")],
            kind="stat", y=16, w=24),
    ]
    return {
        "uid": "lokistack-cluster", "title": "Loki cluster", "tags": ["loki-stack"], "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "1m", "panels": panels,
        "templating": {"list": [{
            "name": "prometheus", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0,
        }]},
    }


def logs_overview_dashboard(loki_uid: str) -> dict[str, Any]:
    loki = {"type": "loki", "uid": loki_uid}
    panels = [
        _panel(1, "Log volume by host", loki, [{
            "expr": 'sum by (host) (count_over_time({host=~".+"}[$__auto]))', "legendFormat": "{{host}}"}],
            kind="timeseries"),
        _panel(2, "Log volume by job", loki, [{
            "expr": 'sum by (job) (count_over_time({job=~".+"}[$__auto]))', "legendFormat": "{{job}}"}], x=12),
        _panel(3, "Recent errors", loki, [
            {"expr": '{job="varlogs"} |~ "(?i)(error|fatal|panic|critical)"'},
            {"expr": '{job="systemd-journal", level=~"err|crit|alert|emerg"}'},
        ], kind="logs", y=8, w=24, h=14),
    ]
    return {
        "uid": "lokistack-logs", "title": "Logs overview", "tags": ["loki-stack"], "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "panels": panels,
        "templating": {"list": []},
    }
