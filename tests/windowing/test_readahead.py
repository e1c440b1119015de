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
from lazytiles.windowing.readahead import TILES_PER_WORKER, tile_budget


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
        return super().warm(keys)


def image() -> np.ndarray:
    return np.arange(2 * 64 * 64, dtype=np.uint16).reshape(2, 64, 64)


def test_the_default_depth_reaches_the_next_row_of_tiles_for_a_source_with_fetch_threads():
    assert lt.windows(lt.ArraySource(image()), 16).readahead == 0  # no fetch threads: nothing to read ahead on
    # one row of windows to a row of tiles: that row (4 windows), and one window
    assert lt.windows(PooledSource(image(), tile_shape=16, workers=3), 16).readahead == 5
    # a stride of half the tile: two rows of windows (7 each) to a row of tiles, and one
    assert lt.windows(PooledSource(image(), tile_shape=16, remote=True), 16, stride=8).readahead == 15
    assert lt.windows(PooledSource(image(), tile_shape=(32, 8)), 16, stride=(8, 16)).readahead == 4 * 4 + 1
    assert lt.windows(PooledSource(image(), tile_shape=64), 16).readahead == 16  # every window: one row of tiles
    assert lt.windows(PooledSource(image(), remote=True), 16, readahead=0).readahead == 0


def test_the_loads_in_flight_are_an_eighth_of_the_cache_and_a_few_per_thread_at_least():
    assert tile_budget(lt.ArraySource(image())) == 0
    big = PooledSource(image(), tile_shape=16, workers=3, cache=lt.TileCache(2**20))  # 1 KiB tiles
    assert tile_budget(big) == 2**20 // 8 // 1024
    small = PooledSource(image(), tile_shape=16, workers=3, cache=lt.TileCache(16 * 1024))
    assert tile_budget(small) == TILES_PER_WORKER * 3


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


def test_iterating_far_ahead_keeps_only_the_budget_of_loads_in_flight():
    src = PooledSource(image(), tile_shape=16, workers=2, cache=lt.TileCache(16 * 1024))  # budget: 8 loads
    for w in lt.windows(src, 16, readahead=100):  # one new tile per window
        assert len(src.warmed) == min(w.index + 8, 16)  # this window's and the next seven
    assert set(src.reads.values()) == {1}


def test_rows_of_windows_that_need_no_new_tile_do_not_stop_the_read_ahead():
    src = PooledSource(image(), tile_shape=16, cache=lt.TileCache(2**20))
    wins = lt.windows(src, 16, stride=8)  # 7 x 7 windows; rows 0, 2, 4... of windows lie in one tile row
    for w in wins:
        if w.index == 14:  # row 2 needs no new tile: tile row 2 (for window row 3) is on its way already
            assert any(key[0] == 2 for keys in src.warmed for key in keys)
    assert set(src.reads.values()) == {1}


def test_indexing_forward_releases_each_tile_after_its_last_window():
    src = PooledSource(image(), tile_shape=8, cache=lt.TileCache(2**20))
    wins = lt.windows(src, 16, stride=8)  # 7 x 7 windows of 2 x 2 tiles over 8 x 8 tiles
    most = 0
    for i in range(len(wins)):
        r, c = 8 * (i // 7), 8 * (i % 7)
        assert_array_equal(wins[i].data, image()[:, r : r + 16, c : c + 16])
        most = max(most, len(src.cache))
    assert src.cache.stats()["released"] == 64 and len(src.cache) == 0
    assert most <= 40 and set(src.reads.values()) == {1}  # a few rows of tiles at most, each read once


def test_a_jump_starts_a_new_run_and_random_access_releases_nothing():
    src = PooledSource(image(), tile_shape=16, cache=lt.TileCache(2**20))
    wins = lt.windows(src, 16, readahead=2)  # one tile per window
    for i in (0, 9, 3, 12, 6, 15, 1, 4, 5):  # jumps, and short runs
        wins[i]
    assert src.cache.stats()["released"] == 0
    for i in range(6, 14):  # a run of MIN_RUN windows from 4: 4 to 13 are released
        wins[i]
    assert src.cache.stats()["released"] == 10


@pytest.mark.parametrize("how", ["iterating", "indexing"])
def test_prefetch_threads_release_tiles_behind_them_like_a_plain_pass(how):
    src = PooledSource(image(), tile_shape=8, workers=2, cache=lt.TileCache(2**20))
    wins = lt.windows(src, 16, stride=8)  # 7 x 7 windows of 2 x 2 tiles over 8 x 8 tiles
    most = 0
    with lt.prefetch(wins, workers=3, progress=False) as pre:
        for w in pre if how == "iterating" else (pre[i] for i in range(len(pre))):
            assert_array_equal(
                w.data, image()[:, w.window.row_off : w.window.row_off + 16, w.window.col_off : w.window.col_off + 16]
            )
            most = max(most, len(src.cache))
        assert bool(pre._engine._threads) is (how == "indexing")  # iterating: wins' own pass, no workers
    assert src.cache.stats()["released"] == 64 and len(src.cache) == 0
    assert most < 64  # never the whole image: the threads release behind them
    assert sum(src.reads.values()) == 64  # and no tile was read twice


def test_a_view_and_a_pickled_copy_keep_the_depth_but_not_the_state():
    src = lt.ArraySource(image(), tile_shape=16)
    wins = lt.windows(src, 16, readahead=3)
    assert wins[2:5].readahead == 3 and pickle.loads(pickle.dumps(wins)).readahead == 3
    assert lt.windows(src, 16).readahead == 0


@pytest.mark.parametrize("readahead", [-1, 1.5, True, "4"])
def test_a_bad_depth_is_refused(readahead):
    with pytest.raises(lt.InvalidArgumentError, match=r"readahead must be a number of windows >= 0"):
        lt.windows(lt.ArraySource(image()), 16, readahead=readahead)
