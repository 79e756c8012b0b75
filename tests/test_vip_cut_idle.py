"""``vip_cut_idle_connections`` (templates/lib-vip-handover.sh): the drain's way with a server that
cannot be told to close its idle keep-alive connections (an earlier version's Loki on the VIP's
port, during the upgrade from before the gateway, or an earlier version's gateway config): each
connection is cut right after an answer, long before its client sends again; what stays idle is
cut once the drain's bound is over. ``ss`` is a stand-in answering with what
``ss -Htni`` prints for established connections (a line per socket, then its TCP info) and
recording what ``ss -K`` is asked to cut; the upgrade rehearsal runs it on the real kernel
(tests/test_rehearsal_upgrade.py)."""

from __future__ import annotations

import shlex
import subprocess

from components.scripts import TEMPLATES

VIP, PORT = "198.18.0.100", 3100


def connection(peer: str, *, recv_q: int = 0, send_q: int = 0, lastsnd: int, lastrcv: int) -> str:
    return (f"{recv_q:<6} {send_q:<6} {VIP}:{PORT} {peer}\n"
            f"\t cubic wscale:7,7 rto:204 rtt:0.05/0.02 bytes_sent:4096 lastsnd:{lastsnd} lastrcv:{lastrcv} "
            f"lastack:{lastrcv}\n")


def cut(listing: str) -> subprocess.CompletedProcess[str]:
    """The cut over ``listing`` until a pass has cut something; the connections count as gone after it."""
    stub = f"""
ss() {{
  case "$*" in
    *-K*) echo "ss $*" >>"$CUTS" ;;
    *-Htni*) printf '%s' {shlex.quote(listing)} ;;
  esac
}}
# Open until the first pass has cut (it runs in a command substitution: the count is in a file).
vip_open_connections() {{ if [ -s "$CUTS" ]; then echo 0; else echo 1; fi; }}
"""
    params = {"VIP_ADDRESS": VIP, "VIP_PORT": PORT, "VIP_SELF": "loki-01", "VIP_DRAIN_TIMEOUT_S": 2,
              "VIP_ANSWERED_MS": 100}
    script = "\n".join(["set -euo pipefail", *(f"{k}={shlex.quote(str(v))}" for k, v in params.items()),
                        (TEMPLATES / "lib-vip-handover.sh").read_text(), stub,
                        # Real time, not SECONDS: that counts whole seconds of the clock, and a cut of a
                        # millisecond that straddles one reads "1" (a CI run failed so).
                        'CUTS=$(mktemp); t0=$EPOCHREALTIME; vip_cut_idle_connections; '
                        'echo "took $(awk -v a="$t0" -v b="$EPOCHREALTIME" \'BEGIN { printf "%.2f", b - a }\')"; '
                        'cat "$CUTS"; rm -f "$CUTS"', ""])
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=False)


def took(stdout: str) -> float:
    """The seconds the cut took, as the script printed them."""
    return float(stdout.split("took ", 1)[1].split(maxsplit=1)[0])


def test_a_connection_answered_just_now_is_cut_at_once():
    listing = "".join([
        connection("198.18.0.2:40001", lastsnd=40, lastrcv=45),  # answered 40 ms ago
        connection("198.18.0.2:40002", lastsnd=300, lastrcv=350),  # answered 300 ms ago: its client may send soon
    ])
    proc = cut(listing)
    assert proc.returncode == 0, proc.stderr
    cuts = [line for line in proc.stdout.splitlines() if line.startswith("ss ")]
    assert cuts == [f"ss -Htn -K state established src {VIP}:{PORT} dst 198.18.0.2:40001"], (
        f"only the connection answered less than 100 ms ago may be cut now: {cuts}")
    assert took(proc.stdout) < 0.5, f"the cut must not wait for the drain's bound: {proc.stdout}"


def test_only_connections_whose_last_request_was_answered_are_cut():
    """None was answered within the last 100 ms: once the drain's bound is over, the idle ones are cut."""
    listing = "".join([
        # answered 300 ms ago, nothing since: idle
        connection("198.18.0.2:40001", lastsnd=300, lastrcv=350),
        # a request fully received 40 ms ago, its answer not sent yet: in flight
        connection("198.18.0.2:40002", lastsnd=900, lastrcv=40),
        # a request still arriving (bytes queued)
        connection("198.18.0.2:40003", recv_q=65536, lastsnd=700, lastrcv=0),
        # an answer still leaving (bytes queued)
        connection("198.18.0.2:40004", send_q=4096, lastsnd=0, lastrcv=20),
    ])
    proc = cut(listing)
    assert proc.returncode == 0, proc.stderr
    cuts = [line for line in proc.stdout.splitlines() if line.startswith("ss ")]
    assert cuts == [f"ss -Htn -K state established src {VIP}:{PORT} dst 198.18.0.2:40001"], (
        f"only the idle connection may be cut: {cuts}")
    assert "cut the idle connection of 198.18.0.2:40001 to the VIP on loki-01" in proc.stdout, proc.stdout
    assert 0.9 < took(proc.stdout) < 3.5, f"an idle connection answered long ago is cut at the 2 s bound: {proc.stdout}"
