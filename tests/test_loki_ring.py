"""templates/lib-ring-check.sh (``components/loki_ring.py``): a Loki node may stop only when every
other node is in its ingester ring, ACTIVE, and ready at its gateway. ``curl`` is a stand-in that
answers with the ring JSON Loki 3.7.6 serves (dskit's ring page: ``{"shards": [{"id", "state",
"address", ...}], "now"}``) and each peer's /ready status; the rehearsal runs the check against the
real cluster (tests/test_rehearsal.py: a roll refused while a node is down)."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest

from components.loki_ring import ring_parameters
from components.scripts import TEMPLATES

NODES = {"loki-01": "198.18.0.11", "loki-02": "198.18.0.12", "loki-03": "198.18.0.13"}


def shard(node: str, state: str = "ACTIVE") -> dict[str, str]:
    return {"id": node, "state": state, "address": f"{NODES[node]}:9095", "timestamp": "2026-12-02T18:52:27Z"}


WHOLE = [shard("loki-01"), shard("loki-02"), shard("loki-03")]


def ring_check(shards: list[dict[str, str]] | None, ready: dict[str, int], *, call: str = "ring_problems",
               wait_s: int = 0, ring_port: int = 3101,
               views: dict[str, list[dict[str, str]] | None] | None = None) -> subprocess.CompletedProcess[str]:
    """``call`` on loki-01 with the ring ``shards`` (None: the ring cannot be read) served on
    127.0.0.1:``ring_port``, the peers' /ready statuses, and the peers' own views of the ring at
    their gateways (``views``, None: refused; by default each peer sees all three nodes ACTIVE)."""
    params = {**ring_parameters("loki-01", NODES, wait_s=wait_s), "CA_FILE": "ca", "CERT_FILE": "c", "KEY_FILE": "k"}
    statuses = " ".join(f"{NODES[n]}={s}" for n, s in ready.items())
    peers: dict[str, list[dict[str, str]] | None] = {n: WHOLE for n in NODES if n != "loki-01"}
    views = peers | (views or {})

    def answer(ring: list[dict[str, str]] | None, refusal: str) -> str:
        if ring is None:
            return refusal
        return f"printf '%s' {shlex.quote(json.dumps({'shards': ring, 'now': '2026-12-02T18:52:30Z'}))}"

    refused = 'echo "curl: (22) The requested URL returned error: 403" >&2; return 22'
    peer_rings = "".join(f"    https://{NODES[n]}:3100/ring) {answer(v, refused)} ;;\n" for n, v in views.items())
    own = answer(shards, 'echo "curl: (7) no" >&2; return 7')
    stub = f"""
curl() {{
  local url=${{*: -1}} entry
  case "$url" in
    https://127.0.0.1:{ring_port}/ring) {own} ;;
{peer_rings}    */ring) echo "curl: (7) Failed to connect to 127.0.0.1" >&2; return 7 ;;
    */ready) for entry in {statuses}; do
               if [[ "$url" == "https://${{entry%%=*}}:"* ]]; then printf '%s' "${{entry#*=}}"; return 0; fi
             done; printf '000'; return 7 ;;
  esac
}}
"""
    script = "\n".join(["set -euo pipefail", *(f"{k}={shlex.quote(str(v))}" for k, v in params.items()),
                        (TEMPLATES / "lib-clock.sh").read_text(), (TEMPLATES / "lib-ring-check.sh").read_text(),
                        stub, call, ""])
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=False)


def test_a_whole_ready_cluster_may_lose_this_node():
    proc = ring_check([shard("loki-01"), shard("loki-02"), shard("loki-03")], {"loki-02": 200, "loki-03": 200})
    assert proc.returncode == 0 and proc.stdout == "", f"nothing must stop a healthy cluster's node: {proc.stdout}"


@pytest.mark.parametrize(("shards", "ready", "expected"), [
    ([shard("loki-01"), shard("loki-03")], {"loki-02": 502, "loki-03": 200},
     ["loki-02 (198.18.0.12) is not in the ingester ring",
      "loki-02 (198.18.0.12) is not ready (/ready on port 3100: 502)"]),
    ([shard("loki-01"), shard("loki-02", "UNHEALTHY"), shard("loki-03")], {"loki-02": 200, "loki-03": 200},
     ["loki-02 (198.18.0.12) is UNHEALTHY in the ingester ring, not ACTIVE"]),
    ([shard("loki-01"), shard("loki-02"), shard("loki-03", "JOINING")], {"loki-02": 200, "loki-03": 503},
     ["loki-03 (198.18.0.13) is JOINING in the ingester ring, not ACTIVE",
      "loki-03 (198.18.0.13) is not ready (/ready on port 3100: 503)"]),
    # A node that just died keeps its ACTIVE entry until its heartbeat times out: /ready sees it at once.
    ([shard("loki-01"), shard("loki-02"), shard("loki-03")], {"loki-02": 200},
     ["loki-03 (198.18.0.13) is not ready (/ready on port 3100: 000)"]),
    (None, {"loki-02": 200, "loki-03": 200}, ["loki-01 cannot read its ingester ring"]),
], ids=["left the ring", "unhealthy", "joining", "died", "no ring"])
def test_every_reason_not_to_stop_is_named(shards, ready, expected):
    proc = ring_check(shards, ready)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == len(expected), f"expected {expected}, got {lines} {proc.stderr}"
    for line, want in zip(lines, expected, strict=True):
        assert line.startswith(want), f"the ring check must say {want!r}, said {line!r}"


@pytest.mark.parametrize(("views", "expected"), [
    # loki-03 was restarted just before: ready (its own view was whole), loki-01 sees it ACTIVE,
    # but loki-02 has not heard yet: with loki-01 gone, loki-02 would write to one replica.
    ({"loki-02": [shard("loki-01"), shard("loki-02"), shard("loki-03", "JOINING")]},
     ["loki-03 (198.18.0.13) is JOINING in loki-02's view of the ingester ring, not ACTIVE"]),
    ({"loki-03": [shard("loki-01"), shard("loki-03")]},
     ["loki-02 (198.18.0.12) is not in loki-03's view of the ingester ring"]),
    ({"loki-02": None},
     ["cannot read loki-02's view of the ingester ring (https://198.18.0.12:3100/ring: curl: (22) The requested "
      "URL returned error: 403)"]),
], ids=["a peer has not seen the restarted node", "a peer misses the other peer", "a gateway refuses /ring"])
def test_every_other_node_must_see_the_nodes_that_stay_active(views, expected):
    """Loki's /ready says only that a node's own view was whole once (dskit latches it): the nodes
    that stay must see each other ACTIVE, each in its own view, read at its gateway."""
    proc = ring_check(WHOLE, {"loki-02": 200, "loki-03": 200}, views=views)
    assert proc.returncode == 0 and proc.stdout.splitlines() == expected, (
        f"expected {expected}, got {proc.stdout.splitlines()} {proc.stderr}")


def test_a_peers_view_without_this_node_or_of_a_node_not_ready_is_no_reason_more():
    """This node is about to stop: whether the others see it does not matter. A peer that is not
    ready is named once, for that; its view is not asked."""
    proc = ring_check(WHOLE, {"loki-02": 200, "loki-03": 200},
                      views={"loki-02": [shard("loki-02"), shard("loki-03")],
                             "loki-03": [shard("loki-01", "LEAVING"), shard("loki-02"), shard("loki-03")]})
    assert proc.returncode == 0 and proc.stdout == "", f"only the nodes that stay count: {proc.stdout}"
    proc = ring_check(WHOLE, {"loki-02": 503, "loki-03": 200}, views={"loki-02": None})
    assert proc.stdout.splitlines() == ["loki-02 (198.18.0.12) is not ready (/ready on port 3100: 503)"], (
        proc.stdout)


def test_during_an_upgrade_the_ring_is_read_from_the_earlier_versions_loki_on_the_gateways_port():
    """Before the gateway, Loki itself listened on port 3100: until the upgrade restarts it behind
    the gateway, that is where its ring is (the upgrade rehearsal found the check unable to read it)."""
    proc = ring_check([shard("loki-01"), shard("loki-02"), shard("loki-03")], {"loki-02": 200, "loki-03": 200},
                      ring_port=3100)
    assert proc.returncode == 0 and proc.stdout == "", f"the ring on port 3100 must be read: {proc.stdout}"
    proc = ring_check(None, {"loki-02": 200, "loki-03": 200})
    assert "https://127.0.0.1:3101/ring: curl: (7)" in proc.stdout and "https://127.0.0.1:3100/ring" in proc.stdout, (
        f"an unreadable ring must name every place it was looked for: {proc.stdout}")


def test_the_wait_fails_after_its_bound_naming_the_unhealthy_node():
    proc = ring_check([shard("loki-01"), shard("loki-03")], {"loki-03": 200}, call="ring_wait_safe_to_stop", wait_s=1)
    assert proc.returncode == 1, f"the wait must fail: {proc.stdout}{proc.stderr}"
    assert "loki-01 must not stop" in proc.stderr, proc.stderr
    assert "  - loki-02 (198.18.0.12) is not in the ingester ring" in proc.stderr, proc.stderr


def test_the_wait_passes_at_once_on_a_healthy_cluster():
    proc = ring_check([shard("loki-01"), shard("loki-02"), shard("loki-03")], {"loki-02": 200, "loki-03": 200},
                      call="ring_wait_safe_to_stop", wait_s=30)
    assert proc.returncode == 0 and "loki-01 may stop" in proc.stdout, proc.stdout + proc.stderr


def test_the_parameters_name_every_node_and_refuse_a_stranger():
    params = ring_parameters("loki-02", NODES)
    assert params["RING_NODES"] == "loki-01=198.18.0.11 loki-02=198.18.0.12 loki-03=198.18.0.13"
    assert params["RING_URLS"] == "https://127.0.0.1:3101/ring https://127.0.0.1:3100/ring", params["RING_URLS"]
    assert params["RING_PEER_PORT"] == 3100
    with pytest.raises(ValueError, match="loki-09"):
        ring_parameters("loki-09", NODES)
