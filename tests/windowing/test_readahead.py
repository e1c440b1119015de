"""Read-ahead: what a window sequence tells its source to fetch early, for each way of reading."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
from conftest import CountingSource
from numpy.testing import assert_array_equal

import lazytiles as lt
from lazytiles.sources.base import FetchPool
from lazytiles.windowing.readahead import LOCAL_DEPTH, default_depth


class PooledSource(CountingSource):
    """An in-memory source with fetch threads, as a file (``remote=False``) or a server has; it
    records every :meth:`warm` it is told."""

    def __init__(self, *args, workers: int = 2, remote: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._pool = FetchPool(workers, "lazytiles-test")
        self.remote = remote
        self.warmed: list[tuple[int, ...]] = []
        self._warmed_lock = threading.Lock()

    def warm(self, keys):
        keys = list(keys)
        with self._warmed_lock:
            self.warmed.append(tuple((k.row, k.col) for k in keys))
        super().warm(keys)


def image() -> np.ndarray:
    return np.arange(2 * 64 * 64, dtype=np.uint16).reshape(2, 64, 64)


def test_the_default_depth_follows_the_source_s_fetch_threads():
    assert default_depth(lt.ArraySource(image())) == 0  # no fetch threads: nothing to read ahead on
    assert default_depth(PooledSource(image(), workers=3)) == LOCAL_DEPTH
    assert default_depth(PooledSource(image(), workers=3, remote=True)) == 6  # two per connection
    assert lt.windows(PooledSource(image(), remote=True), 16).readahead == 4
    assert lt.windows(PooledSource(image(), remote=True), 16, readahead=0).readahead == 0


def test_a_window_s_own_tiles_are_fetched_together_when_reading_ahead_or_remote():
    for remote, readahead, together in [(False, 0, False), (False, 2, True), (True, 0, True)]:
        src = PooledSource(image(), tile_shape=16, remote=remote)
        wins = lt.windows(src, 32, stride=16, readahead=readahead)
        assert_array_equal(wins[4].data, image()[:, 16:48, 16:48])
        assert (((1, 1), (1, 2), (2, 1), (2, 2)) in src.warmed) is together
        assert set(src.reads.values()) == {1}


def test_indexing_forward_warms_the_next_windows_and_a_jump_warms_nothing():
    src = PooledSource(image(), tile_shape=16)
    wins = lt.windows(src, 16, readahead=2)  # one tile per window, 4 a row
    wins[0]
    assert src.warmed == []  # one index is not a pattern
    wins[1]
    assert src.warmed == [((0, 2),), ((0, 3),)]  # windows 2 and 3
    wins[2]
    assert src.warmed[2:] == [((1, 0),)]  # only window 4 is new
    src.warmed.clear()
    wins[10], wins[3]  # jumps
    assert src.warmed == []


def test_iterating_warms_ahead_and_releases_behind():
    src = PooledSource(image(), tile_shape=16, cache=lt.TileCache(2**20))
    seen = []
    for w in lt.windows(src, 16, readahead=3):  # one tile per window
        seen.append(w.index)
        assert len(src.warmed) == min(w.index + 4, 16)  # this window's and the next three
    assert seen == list(range(16)) and set(src.reads.values()) == {1}
    assert src.cache.stats()["released"] == 16 and len(src.cache) == 0


def test_a_view_and_a_pickled_copy_keep_the_depth_but_not_the_state():
    src = lt.ArraySource(image(), tile_shape=16)
    wins = lt.windows(src, 16, readahead=3)
    assert wins[2:5].readahead == 3 and pickle.loads(pickle.dumps(wins)).readahead == 3
    assert lt.windows(src, 16).readahead == 0


@pytest.mark.parametrize("readahead", [-1, 1.5, True, "4"])
def test_a_bad_depth_is_refused(readahead):
    with pytest.raises(lt.InvalidArgumentError, match=r"readahead must be a number of windows >= 0"):
        lt.windows(lt.ArraySource(image()), 16, readahead=readahead)
