"""offline/rehearsal/earlier.py: which earlier versions the upgrade rehearsal starts from."""

from __future__ import annotations

import pytest

from offline.rehearsal.earlier import UPGRADE_FROM, VERSIONS, upgrade_sources


def test_which_earlier_versions_to_upgrade_from_is_checked():
    """A wrong ``LOKISTACK_UPGRADE_FROM`` says which values are known; unset, CI upgrades from every one."""
    assert upgrade_sources({}) == list(VERSIONS) == ["caae4ed", "2395182"]
    assert upgrade_sources({UPGRADE_FROM: "all"}) == list(VERSIONS)
    assert upgrade_sources({UPGRADE_FROM: "2395182"}) == ["2395182"]
    assert upgrade_sources({UPGRADE_FROM: "caae4ed, 2395182"}) == ["caae4ed", "2395182"]
    with pytest.raises(ValueError, match=r"LOKISTACK_UPGRADE_FROM='abc1234': \['abc1234'\] is not an earlier"):
        upgrade_sources({UPGRADE_FROM: "abc1234"})
