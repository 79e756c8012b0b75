"""One line of timeouts from a client to Loki: the innermost ends first, so that its answer reaches the client.

A query that takes too long is ended by Loki's query timeout (``limits_config.query_timeout``):
Loki answers ``504`` with its own message ("request timed out, decrease the duration of the
request or add more label matchers ..."), and every layer outside it must still be waiting for
that answer. The timeout bounds each request Loki's query frontend sends its queriers, not the
client's request: the frontend first asks for the index's statistics (to split and shard the
query), a request the timeout ends and the frontend's retry sends again, up to ``LOKI_TRIES``
times with a backoff of up to ``LOKI_BACKOFF_S`` in all (pkg/querier/queryrange/queryrangebase:
``querier.max-retries-per-request``, 5; 0.25 s doubling to 5 s); then the query itself, whose
evaluation has the timeout as its deadline (pkg/logql/engine.go). So Loki answers within
``loki_answer_s`` = (tries + 1) query timeouts and the backoff (measured in the live lab with the
object store stopped: tests/test_loki_live.py). Outside Loki:

- Loki's HTTP server (dskit's ``http_server_read_timeout`` and ``http_server_write_timeout``, 30 s
  by default, below Loki's 1 m query timeout): past its write timeout Loki cannot send the answer
  and closes the connection, which the gateway reports as ``502 Bad Gateway`` (Loki's
  troubleshooting page, docs/sources/shared/troubleshoot-query.md: raise them together);
- the gateway (nginx's ``proxy_read_timeout``, ``proxy_send_timeout``): past it nginx answers
  ``504`` with a page of its own, and its default ``proxy_next_upstream error timeout`` would send
  a query that timed out to a peer, to run again;
- Grafana's Loki data source (``jsonData.timeout``, seconds; Grafana's default is 30 s,
  ``sdkhttpclient.DefaultTimeoutOptions``);
- logcli waits without a limit (pkg/logcli/client/client.go: ``client.Timeout = 0``).

Each layer waits ``STEP_S`` longer than the one inside it. A tail (``/loki/api/v1/tail``, a
WebSocket) is not bounded by these: Loki pings it every second (pkg/querier/tail/http.go), and
nginx's timeouts are between two reads. A push is a separate line: Alloy gives up after its own
``remote_timeout`` (10 s) and sends the batch again.
"""

from __future__ import annotations

from dataclasses import dataclass

LOKI_TRIES = 5
"""Loki's query frontend tries a request to its queriers this many times (``querier.max-retries-per-request``)."""
LOKI_BACKOFF_S = 15
"""The frontend's waits between those tries, at most (0.25 s doubling to 5 s, jittered up to twice)."""
DEFAULT_QUERY_TIMEOUT_S = 60
"""Loki's own default (``DefaultPerTenantQueryTimeout``, 1m)."""
MIN_QUERY_TIMEOUT_S, MAX_QUERY_TIMEOUT_S = 10, 3600
STEP_S = 15
"""How much longer each layer waits than the one inside it: Loki writes its answer, nginx passes it on."""


@dataclass(frozen=True)
class Timeouts:
    query_s: int = DEFAULT_QUERY_TIMEOUT_S
    """Loki's ``query_timeout``: where a slow query ends."""

    @property
    def loki_answer_s(self) -> int:
        """Longest Loki takes to answer a query: its statistics tried ``LOKI_TRIES`` times, then the query."""
        return (LOKI_TRIES + 1) * self.query_s + LOKI_BACKOFF_S

    @property
    def loki_http_s(self) -> int:
        """Loki's HTTP server read and write timeouts."""
        return self.loki_answer_s + STEP_S

    @property
    def gateway_s(self) -> int:
        """The gateway's ``proxy_read_timeout`` and ``proxy_send_timeout`` towards Loki (and a peer's gateway)."""
        return self.loki_http_s + STEP_S

    @property
    def grafana_s(self) -> int:
        """Grafana's Loki data source (``jsonData.timeout``)."""
        return self.gateway_s + STEP_S

    def line(self) -> list[tuple[str, int]]:
        """From the innermost to the client, each with its seconds."""
        return [("Loki query_timeout", self.query_s), ("Loki's answer at the latest", self.loki_answer_s),
                ("Loki HTTP server read/write", self.loki_http_s),
                ("gateway proxy_read/send_timeout", self.gateway_s), ("Grafana data source", self.grafana_s)]


DEFAULT = Timeouts()
"""Loki's default query timeout (1m) and the layers around it."""
