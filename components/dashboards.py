"""The stack's two Grafana dashboards, built as dicts (our own, not copied).

"Loki cluster" needs the stack's metrics from a Prometheus data source the user already has (chosen
in the dashboard's ``prometheus`` variable; scrape jobs: the stack output ``prometheusScrapeConfig``).
Below its overview it draws every signal the stack's alert rules watch, with the same expressions
(``components.monitoring.signals``).
"Logs overview" needs only the stack's Loki data source.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from components.monitoring import Signal

PROMETHEUS = {"type": "prometheus", "uid": "${prometheus}"}
HEALTH_ROW_TITLE = "Health: what the alerts watch"
HEALTH_COLUMNS = 3


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


def _health_panels(signals: Mapping[str, Signal], first_id: int, top: int) -> list[dict[str, Any]]:
    """A row, then one panel per signal, three to a line."""
    width = 24 // HEALTH_COLUMNS
    panels: list[dict[str, Any]] = [{"id": first_id, "type": "row", "title": HEALTH_ROW_TITLE, "collapsed": False,
                                     "gridPos": {"x": 0, "y": top, "w": 24, "h": 1}, "panels": []}]
    for i, signal in enumerate(signals.values()):
        panels.append(_panel(first_id + 1 + i, signal.title, PROMETHEUS,
                             [{"expr": signal.expr, "legendFormat": signal.legend}],
                             x=(i % HEALTH_COLUMNS) * width, y=top + 1 + (i // HEALTH_COLUMNS) * 7, w=width, h=7,
                             unit=signal.unit))
    return panels


def loki_cluster_dashboard(signals: Mapping[str, Signal]) -> dict[str, Any]:
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
    panels += _health_panels(signals, first_id=len(panels) + 1, top=24)
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
