"""components/timeouts.py: one line of timeouts from Grafana's data source (or logcli) to Loki, each
layer waiting longer than the one inside it, in what the program renders.

What a slow query gets through the VIP on the real Loki (its 504 and advice, not a 502) is shown
in the live lab: tests/test_loki_live.py."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from components.loki_gateway import CONFIG_FILE as GATEWAY_CONFIG
from components.loki_gateway import STAGE_DIR as GATEWAY_STAGE_DIR
from components.timeouts import DEFAULT, LOKI_BACKOFF_S, LOKI_TRIES, STEP_S, Timeouts
from offline import engine
from offline.plan import read_stack_config, run_program
from tests.labs.example import EXAMPLE_STACK, config_of, files_of

NODES = ("loki-01", "loki-02", "loki-03")


def rendered_line(result: engine.RunResult) -> dict[str, int]:
    """Each layer's timeout in seconds as the program renders it, checked to be the same on every node."""
    seen: dict[str, set[int]] = {}
    for node in NODES:
        config = config_of(result, node)
        server = config["server"]
        for key, value in (("query", config["limits_config"]["query_timeout"]),
                           ("loki read", server["http_server_read_timeout"]),
                           ("loki write", server["http_server_write_timeout"])):
            assert re.fullmatch(r"\d+s", value), f"{node}: {key} timeout {value!r} is not whole seconds"
            seen.setdefault(key, set()).add(int(value[:-1]))
        gateway = files_of(result, node)[f"{GATEWAY_STAGE_DIR}/gateway.conf"][1].value
        for directive in ("proxy_read_timeout", "proxy_send_timeout"):
            values = set(re.findall(rf"^\s*{directive} (\d+)s;$", gateway, re.MULTILINE))
            assert len(values) == 1, f"{node}: {GATEWAY_CONFIG} has {directive} {values or 'nowhere'}"
            seen.setdefault(f"gateway {directive}", set()).add(int(values.pop()))
    datasource = result.engine.monitor.find("grafana:oss/dataSource:DataSource", "grafana-content-loki")
    seen["grafana"] = {json.loads(datasource.plain_inputs["jsonDataEncoded"]).get("timeout")}
    for key, values in seen.items():
        assert len(values) == 1 and None not in values, f"{key}: differs between nodes or is missing: {values}"
    return {key: values.pop() for key, values in seen.items()}


def test_each_layer_waits_longer_than_the_one_inside_it():
    for query in (10, 60, 3600):
        t = Timeouts(query_s=query)
        seconds = [s for _, s in t.line()]
        assert seconds == sorted(seconds) and len(set(seconds)) == len(seconds), f"not one line: {t.line()}"
        assert t.loki_answer_s == (LOKI_TRIES + 1) * query + LOKI_BACKOFF_S
        assert [b - a for a, b in itertools.pairwise(seconds[1:])] == [STEP_S] * 3, t.line()


def test_the_example_stack_renders_the_default_line_on_every_node_and_in_grafana(example):
    line = rendered_line(example)
    t = DEFAULT
    assert line == {"query": t.query_s, "loki read": t.loki_http_s, "loki write": t.loki_http_s,
                    "gateway proxy_read_timeout": t.gateway_s, "gateway proxy_send_timeout": t.gateway_s,
                    "grafana": t.grafana_s}, line
    assert line["query"] == 60, "Loki's own default query timeout (1m)"
    assert line["query"] < line["loki write"] < line["gateway proxy_read_timeout"] < line["grafana"], line


@pytest.mark.parametrize("query", [10, 300])
def test_the_query_timeout_setting_moves_every_layer_with_it(query):
    result = run_program(EXAMPLE_STACK, read_stack_config(EXAMPLE_STACK, overrides={"lokiQueryTimeoutSeconds": query}))
    t = Timeouts(query_s=query)
    line = rendered_line(result)
    assert (line["query"], line["loki write"], line["gateway proxy_read_timeout"], line["grafana"]) == (
        t.query_s, t.loki_http_s, t.gateway_s, t.grafana_s), f"lokiQueryTimeoutSeconds={query}: {line}"
