"""How the outage rehearsal turns its samples into growth per minute and a survival time
(offline/rehearsal/outage.py): the figures the README and the runbook quote."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from components.loki_config import WAL_DISK_FULL_THRESHOLD
from offline.rehearsal.outage import Sample, per_minute, survival


def samples(rss: Sequence[float], every_s: float = 30) -> list[Sample]:
    return [Sample(at=i * every_s, rss=v, heap=0, wal=0, chunks=0, received=0, flushed=0, flush_failures=0)
            for i, v in enumerate(rss)]


def test_growth_per_minute_is_the_slope_through_every_sample_not_the_ends():
    steady = samples([100 + 25 * i for i in range(21)])  # 25 MiB every 30 s
    assert per_minute(steady, "rss") == pytest.approx(50), "a steady growth of 25 MiB per 30 s is 50 MiB/min"
    # Go's memory in steps: a collection just before the last sample must not halve the figure.
    stepped = samples([100 + 25 * i for i in range(20)] + [300])
    assert 40 < per_minute(stepped, "rss") < 50, f"one low last sample moved the slope to {per_minute(stepped, 'rss')}"


def test_the_survival_is_the_first_of_memory_and_the_wals_disk():
    minutes, bound = survival(memory_mib=4096, data_disk_gib=50, used_mib=96, wal_mib=0, memory_growth=50,
                              wal_growth=60)
    assert (minutes, bound) == (80, "memory"), "(4096 - 96) MiB at 50 MiB/min is 80 minutes, before the disk"
    minutes, bound = survival(memory_mib=4096, data_disk_gib=1, used_mib=96, wal_mib=0, memory_growth=50,
                              wal_growth=60)
    expected = 1024 * WAL_DISK_FULL_THRESHOLD / 60
    assert (minutes, bound) == (pytest.approx(expected), "the WAL's disk"), (
        "the WAL stops at Loki's disk-full threshold of a 1 GiB disk first")
    minutes, _ = survival(memory_mib=4096, data_disk_gib=50, used_mib=96, wal_mib=0, memory_growth=0, wal_growth=0)
    assert math.isinf(minutes), "nothing grows: no end"
