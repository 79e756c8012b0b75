"""The rehearsal's account of the VIP's elections (offline/rehearsal/checks.py), which a failed check
on where the VIP went prints: keepalived's lines about states, priorities, scripts, adverts and
track files, whatever their case, and nothing else."""

from __future__ import annotations

from offline.rehearsal.checks import election_lines

SINCE = 1_000.0
LOG = [  # as keepalived 2.2.7 logs them (journalctl -o short-unix, after "keepalived[pid]: ")
    (1_000.5, "loki-01", "Starting VRRP child process, pid=412"),
    (1_001.0, "loki-01", "(VI_1) Entering BACKUP STATE"),
    (1_001.2, "loki-02", "Script `lokistack_gateway` now returning 0"),
    (1_001.3, "loki-02", "VRRP_Script(lokistack_gateway) succeeded"),
    (1_001.4, "loki-03", "(VI_1) Changing effective priority from 130 to 180"),
    (1_001.5, "loki-01", "(VI_1) received lower priority advert 180 from 198.18.0.13"),
    (1_001.6, "loki-01", "Track file lokistack_yield now has value 0"),
    (1_001.7, "loki-02", "(VI_1) Entering MASTER STATE"),
    (1_002.0, "loki-03", "Registering Kernel netlink reflector"),
]


def test_the_elections_are_keepalived_s_lines_about_states_priorities_scripts_adverts_and_track_files():
    lines = election_lines(LOG, SINCE).splitlines()
    assert lines == [
        "   1.00 s loki-01: (VI_1) Entering BACKUP STATE",
        "   1.20 s loki-02: Script `lokistack_gateway` now returning 0",
        "   1.30 s loki-02: VRRP_Script(lokistack_gateway) succeeded",
        "   1.40 s loki-03: (VI_1) Changing effective priority from 130 to 180",
        "   1.50 s loki-01: (VI_1) received lower priority advert 180 from 198.18.0.13",
        "   1.60 s loki-01: Track file lokistack_yield now has value 0",
        "   1.70 s loki-02: (VI_1) Entering MASTER STATE",
    ], "\n".join(lines)
