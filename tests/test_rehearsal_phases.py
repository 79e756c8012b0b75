"""The rehearsal's phases (offline/rehearsal/phases.py): what a check or an event needs is declared,
and asking for it too early names what was asked and how far the rehearsal is, before anything
runs. No machines: this runs anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from offline.rehearsal.converge import refused_roll
from offline.rehearsal.phases import NotYetError, Phase
from offline.rehearsal.run import CHECKS, Rehearsal


def test_what_a_phase_makes_is_asked_for_too_early_by_name(tmp_path: Path):
    lab = Rehearsal(run_dir=tmp_path)
    assert lab.phase == Phase.NEW
    with pytest.raises(NotYetError, match=r"^refused_roll needs the rehearsal deployed \(the steps run\); it is new"):
        refused_roll(lab)
    with pytest.raises(NotYetError, match=r"^the program's run needs the rehearsal planned"):
        lab.vm_plans()
    lab.program()
    assert lab.phase == Phase.PLANNED, f"after the program ran the rehearsal is {lab.phase!r}"
    assert sorted(p.name for p in lab.vm_plans()) == ["grafana", "loki-01", "loki-02", "loki-03", "s3"]
    with pytest.raises(NotYetError, match=r"^the network needs the rehearsal booted \(the machines up\); it is "
                                          r"planned"):
        lab.operator()
    with pytest.raises(NotYetError, match=r"^second_run needs the rehearsal deployed \(the steps run\); it is planned"):
        lab.second_run()


@pytest.mark.parametrize("name", [name for name, _ in CHECKS])
def test_every_check_of_make_rehearse_needs_the_deployed_stack(tmp_path: Path, name: str):
    check = dict(CHECKS)[name]
    with pytest.raises(NotYetError, match=r"needs the rehearsal deployed \(the steps run\); it is new"):
        check(Rehearsal(run_dir=tmp_path))
