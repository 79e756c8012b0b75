"""The phases of a rehearsal, and what each check and event declares it needs.

A ``Rehearsal`` (offline/rehearsal/run.py) goes through them in order: the program runs
(``PLANNED``), the machines boot (``BOOTED``), the program's steps run on them (``DEPLOYED``).
What a phase makes is reached through the rehearsal's accessors (``planned``, ``net``,
``booted_template``), which raise ``NotYetError`` naming what was asked for too early; a check or an
event says which phase it needs with ``@needs``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from offline.rehearsal.run import Rehearsal


class Phase(IntEnum):
    """The phases of a rehearsal, in order; each part of it names the one it needs (``needs``)."""

    NEW = 0
    PLANNED = 1
    """The program has run (``Rehearsal.program``, or an earlier version's: ``deploy_earlier``)."""
    BOOTED = 2
    """The machines, their network and the package repository are up (``Rehearsal.boot``)."""
    DEPLOYED = 3
    """The program's steps have run on them (``Rehearsal.run_steps``)."""

    def describe(self) -> str:
        return {Phase.NEW: "new (nothing run yet)", Phase.PLANNED: "planned (the program run)",
                Phase.BOOTED: "booted (the machines up)", Phase.DEPLOYED: "deployed (the steps run)"}[self]


class NotYetError(RuntimeError):
    """A part of the rehearsal was asked for before the phase that makes what it needs."""


Check = TypeVar("Check", bound=Callable[..., Any])


def needs(phase: Phase) -> Callable[[Check], Check]:
    """Declare the phase a check or event needs: called earlier, it raises ``NotYetError`` naming itself."""
    def declare(check: Check) -> Check:
        @functools.wraps(check)
        def guarded(lab: Rehearsal, *args: Any, **kwargs: Any) -> Any:
            lab.require(phase, check.__name__)
            return check(lab, *args, **kwargs)
        return guarded  # type: ignore[return-value]
    return declare
