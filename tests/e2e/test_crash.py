"""The crash drill's short form: three SIGKILLs of `sessiontap record` mid-traffic lose no completed turn."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.crash import drill


@pytest.mark.timeout(300)
def test_killed_recordings_keep_every_completed_turn(tmp_path: Path, sessiontap_home: Path):
    rounds = drill(tmp_path, sessiontap_home, kills=3, seed=7)
    assert all(r.replies > 0 for r in rounds), "each kill came mid-traffic"
    assert sum(r.recovered for r in rounds) > 0, "some kill left open sockets that only the journal holds"
    assert [p for r in rounds for p in r.problems] == []
