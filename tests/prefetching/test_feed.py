"""lt.prefetch on threads iterating windows in order: the sequence's own pass, on the consumer's thread
until a core is spare, then on one producer thread.

Most tests run in both places: ``here`` (the pass never moves) and ``moved`` (it moves to the
producer after the first window). Oracles: the plain pass (``for w in wins``) and numpy slicing for
pixels, a counting source for tile reads and the cache's own counters for what is held. Waits have
timeouts; no timing is asserted.
"""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest
import seqtools
from conftest import CountingSource
from numpy.testing import assert_array_equal

import lazytiles as lt
from lazytiles.prefetching import feed
from lazytiles.prefetching.feed import in_order_pass
from lazytiles.sources.base import FetchPool

WAIT = 20  # seconds: the most any wait may take before a test fails instead of hanging


class FetchingSource(CountingSource):
    """An in-memory source with fetch threads, as a file has (so its windows read ahead); reading
    tile ``fail`` raises ``error`` (a type and a message), reading tile ``gate`` waits for ``opened``."""

    def __init__(self, *args, fail=None, gate=None, error=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._pool = FetchPool(2, "lazytiles-test")
        self.fail, self.gate, self.error = fail, gate, error
        self.entered, self.opened = threading.Event(), threading.Event()

    def _read_tile(self, key):
        if (key.row, key.col) == self.gate:
            self.entered.set()
            assert self.opened.wait(2 * WAIT), "the gated tile was never let through"
        if (key.row, key.col) == self.fail:
            raise self.error[0](self.error[1])
        return super()._read_tile(key)


def image() -> np.ndarray:
    return np.arange(2 * 64 * 64, dtype=np.uint16).reshape(2, 64, 64)


def pixels(w: lt.Window) -> np.ndarray:
    r, c = int(w.window.row_off), int(w.window.col_off)
    return image()[:, r : r + 16, c : c + 16]


def producers(prefix: str = "lazytiles-prefetch") -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def first_window_of(wins: lt.WindowSequence, tile: tuple[int, int]) -> int:
    return next(i for i in range(len(wins)) if any((k.row, k.col) == tile for k in wins.tiles(i)))


def keep_here(monkeypatch) -> None:
    """The pass stays on the consumer's thread."""
    monkeypatch.setattr(feed, "SPARE_CORES", float("inf"))


def move_at_once(monkeypatch) -> None:
    """The pass moves to the producer after the first window."""
    monkeypatch.setattr(feed, "SPARE_CORES", float("-inf"))
    monkeypatch.setattr(feed, "PROBE_SECONDS", 0.0)


@pytest.fixture(params=["here", "moved"])
def where(request, monkeypatch) -> str:
    """Where the pass runs: on the consumer's thread throughout, or moved after the first window."""
    (keep_here if request.param == "here" else move_at_once)(monkeypatch)
    return request.param


def up_to_the_gate(src: FetchingSource):
    """A prefetched pass over ``src``'s windows, iterated up to the first window of its gated tile:
    (the prefetched sequence, its iterator, that window's index)."""
    wins = lt.windows(src, 16, stride=8)
    gated = first_window_of(wins, src.gate)
    pre = lt.prefetch(wins, workers=2, progress=False)
    it = iter(pre)
    assert [next(it).index for _ in range(gated)] == list(range(gated))
    return pre, it, gated


def consume_one(it) -> tuple[threading.Thread, list[Exception]]:
    """A thread taking the next item of ``it``, started, and the WorkerError it gets, if any."""
    errors: list[Exception] = []

    def consume() -> None:
        try:
            next(it)
        except lt.WorkerError as err:
            errors.append(err)

    consumer = threading.Thread(target=consume)
    consumer.start()
    return consumer, errors


@pytest.fixture(autouse=True)
def no_thread_left():
    yield
    deadline = time.monotonic() + WAIT
    while producers("lazytiles") and time.monotonic() < deadline:  # a failed background load may still
        gc.collect()  # be finishing: once it has, its source is garbage, and its fetch threads stop
        for t in producers("lazytiles"):
            t.join(0.1)
    assert producers("lazytiles") == []


def test_only_threads_iterating_windows_in_order_run_the_pass_itself():
    wins = lt.windows(FetchingSource(image(), tile_shape=8), 16, stride=8)
    assert wins.readahead
    for positions in (range(49), range(3, 40, 5), np.array([2, 9, 30])):
        view = in_order_pass(wins, positions, "thread", 4)
        assert isinstance(view, lt.WindowSequence) and list(view.indices) == list(positions)
    assert in_order_pass(wins[10:], range(5), "thread", 4).indices == range(10, 15)  # a view of a view
    for seq, positions, method, ahead in [
        (wins, range(48, -1, -1), "thread", 4),  # reverse
        (wins, np.array([5, 3, 9]), "thread", 4),  # out of order
        (wins, range(49), "process", 4),
        (wins, range(49), "thread", 0),  # no read-ahead asked for
        (wins, range(0), "thread", 4),
        (lt.windows(FetchingSource(image(), tile_shape=8), 16, readahead=0), range(16), "thread", 4),
        (lt.windows(lt.ArraySource(image(), tile_shape=8), 16), range(16), "thread", 4),  # no fetch threads
        (seqtools.smap(pixels, wins), range(49), "thread", 4),
        (list(range(49)), range(49), "thread", 4),
    ]:
        assert in_order_pass(seq, positions, method, ahead) is None


@pytest.mark.timeout(60)
def test_the_same_windows_in_order_and_the_tiles_released_behind(where):
    src = FetchingSource(image(), tile_shape=8, cache=lt.TileCache(2**20))
    wins = lt.windows(src, 16, stride=8)  # 7 x 7 windows of 2 x 2 tiles over 8 x 8 tiles
    most = 0
    with lt.prefetch(wins, workers=2, ahead=3, progress=False) as pre:
        seen = []
        for w in pre:
            if where == "here":
                assert producers() == []
            elif 0 < w.index < 49 - 3 - 1:  # the producer has windows left to give: it has not ended
                assert [t.name for t in producers()] == ["lazytiles-prefetch-pass"]
            assert_array_equal(w.data, pixels(w))
            seen.append(w.index)
            most = max(most, len(src.cache))
            counts = pre.stats()
            assert counts["computed"] - counts["hits"] <= 3  # never more than ahead windows waiting
        assert seen == list(range(49)) and pre._engine._threads == []  # no worker threads started
        assert pre.stats() == dict(computed=49, hits=49, misses=0, wasted=0, restarts=0)
        assert src.cache.stats()["released"] == 64 and len(src.cache) == 0
        assert most < 64 and set(src.reads.values()) == {1}  # never the whole image; every tile read once
        assert [w.index for w in pre[5:30:4]] == list(range(5, 30, 4))
        assert [w.index for w in pre[[1, 4, 40]]] == [1, 4, 40]
    with lt.prefetch(wins[20:], ahead=2, progress=False) as pre:
        assert [w.index for w in pre[3:6]] == [23, 24, 25]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "error, kind, text",
    [
        (
            (lt.TileFetchError, "tile (3, 4) is gone"),
            lt.TileFetchError,
            r"TileFetchError: window {i} .*\(3, 4\) is gone",
        ),
        ((ValueError, "bad bytes in tile (3, 4)"), lt.WorkerError, r"ValueError: bad bytes in tile \(3, 4\)"),
    ],
)
def test_a_failure_is_raised_at_its_window_with_the_scheduler_s_type_and_text(error, kind, text, where):
    src = FetchingSource(image(), tile_shape=8, fail=(3, 4), error=error)
    wins = lt.windows(src, 16, stride=8)
    bad = first_window_of(wins, (3, 4))
    with lt.prefetch(wins, workers=2, progress=False) as pre:
        got = []
        with pytest.raises(kind, match=rf"item {bad} failed in the prefetch pass: " + text.format(i=bad)) as info:
            for w in pre:
                got.append(w.index)
        assert got == list(range(bad))
        assert isinstance(info.value.__cause__, error[0])
        with pytest.raises(kind, match=rf"item {bad} failed in .*" + text.format(i=bad)):
            pre[bad]  # indexing (the scheduler) says the same
        assert_array_equal(pre[bad - 1].data, pixels(wins[bad - 1]))


@pytest.mark.timeout(60)
def test_a_break_stops_the_pass_after_a_few_windows(where):
    src = FetchingSource(image(), tile_shape=8, cache=lt.TileCache(2**20))
    wins = lt.windows(src, 16, stride=8)
    pre = lt.prefetch(wins, workers=2, ahead=2, progress=False)
    for w in pre:
        if w.index == 10:
            break
    for t in producers():
        t.join(WAIT)
    assert producers() == []  # stopped at the break, before close()
    counts = pre.stats()
    most = 11 if where == "here" else 11 + 2 + 1  # moved: ahead, and the one in progress
    assert counts["hits"] == 11 and 11 <= counts["computed"] <= most
    assert counts["wasted"] == counts["computed"] - 11
    reach = 11 + (2 + 1 if where == "moved" else 0) + wins.readahead  # windows computed, and their read-ahead
    assert set(src.reads) <= {k for i in range(min(len(wins), reach + 1)) for k in wins.tiles(i)}
    assert len(src.reads) < 64  # the pass stopped reading ahead at the break
    assert [w.index for w in pre] == list(range(49))  # a new pass starts afresh
    pre.close()
    with pytest.raises(lt.WorkerError, match="this prefetched sequence is closed"):
        next(iter(pre))


@pytest.mark.timeout(60)
def test_close_tells_a_waiting_consumer_at_once_and_stops_the_producer(monkeypatch):
    move_at_once(monkeypatch)
    src = FetchingSource(image(), tile_shape=8, gate=(4, 0))
    pre, it, _ = up_to_the_gate(src)
    assert src.entered.wait(WAIT)
    consumer, errors = consume_one(it)
    closer = threading.Thread(target=pre.close)
    closer.start()
    consumer.join(WAIT)  # told while the gated tile still blocks the producer
    assert not consumer.is_alive() and len(errors) == 1 and not src.opened.is_set()
    assert "closed" in str(errors[0]) and "index the underlying sequence" in str(errors[0])
    src.opened.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    with pytest.raises(lt.WorkerError, match="this prefetched sequence is closed"):
        next(iter(pre))


@pytest.mark.timeout(60)
def test_an_abandoned_pass_and_prefetch_stop_their_producer(where):
    wins = lt.windows(FetchingSource(image(), tile_shape=8), 16, stride=8)
    pre = lt.prefetch(wins, workers=2, progress=False)
    it = iter(pre)
    next(it)
    next(it)
    assert len(producers()) == (where == "moved")
    del it
    gc.collect()
    for t in producers():
        t.join(WAIT)
    assert producers() == []
    it = iter(pre)
    next(it)
    del pre  # the iterator keeps the prefetched sequence alive: the pass goes on
    assert next(it).index == 1
    del it
    gc.collect()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cores", [1, 4])
def test_the_pass_moves_to_a_producer_once_the_process_leaves_a_core_idle(monkeypatch, cores):
    monkeypatch.setattr(feed, "usable_cores", lambda: cores)
    monkeypatch.setattr(feed, "PROBE_SECONDS", 0.05)
    wins = lt.windows(FetchingSource(image(), tile_shape=8), 16, stride=8)
    seen, moved_at = [], None
    with lt.prefetch(wins, workers=2, progress=False) as pre:
        for w in pre:  # a consumer that waits (on a GPU, say) and leaves the cores idle
            seen.append(w.index)
            if moved_at is None and producers():
                moved_at = w.index
            time.sleep(0.01)
    assert seen == list(range(49))
    if cores == 1:  # this consumer's thread is all one core can run: no core is left to a producer
        assert moved_at is None
    else:  # the process used far less than three of the four cores: moved at the first look that saw it
        assert moved_at is not None and moved_at >= 5  # 0.05 s of a consumer that takes 0.01 s a window


@pytest.mark.timeout(60)
def test_closing_while_the_consumer_computes_its_window_tells_it_after_that_window(monkeypatch):
    keep_here(monkeypatch)
    src = FetchingSource(image(), tile_shape=8, gate=(4, 0))
    pre, it, gated = up_to_the_gate(src)
    assert producers() == []
    consumer, errors = consume_one(it)
    assert src.entered.wait(WAIT)
    pre.close()  # returns at once: the consumer's thread computes the window, nothing can stop it
    assert consumer.is_alive() and not errors
    src.opened.set()
    consumer.join(WAIT)
    assert not consumer.is_alive() and len(errors) == 1
    assert f"item {gated} was still being computed when this prefetched sequence was closed" in str(errors[0])
    with pytest.raises(lt.WorkerError, match="this prefetched sequence is closed"):
        next(iter(pre))


def counting_pass(n: int, closed: list[bool]):
    """A pass of ``n`` items that records in ``closed`` when it is closed."""
    try:
        yield from range(n)
    finally:
        closed.append(True)


@pytest.mark.timeout(60)
def test_a_close_while_the_consumer_holds_the_pass_still_ends_the_pass(monkeypatch):
    keep_here(monkeypatch)
    closed: list[bool] = []
    feeds: list[feed.Feed] = []

    def count(**counts):  # called on the consumer's thread, after the item, holding the pass: close now
        if counts.get("computed") and feeds:
            t = threading.Thread(target=feeds.pop().stop, kwargs={"closed": True})
            t.start()
            t.join(WAIT)

    f = feed.Feed(counting_pass(10, closed), 4, count)
    feeds.append(f)
    with pytest.raises(lt.WorkerError, match="item 0 was still being computed"):
        f.take(0)
    assert closed == [True]  # the pass (and its read-ahead) closed, though stop() could not take it
    with pytest.raises(lt.WorkerError, match="this prefetched sequence is closed"):
        f.take(1)


@pytest.mark.timeout(60)
def test_a_producer_that_cannot_start_leaves_the_pass_on_the_consumer_s_thread(monkeypatch):
    move_at_once(monkeypatch)  # tries to, after every window
    start = threading.Thread.start

    def refuse(self):
        if self.name == "lazytiles-prefetch-pass":
            raise RuntimeError("can't start new thread")
        return start(self)

    monkeypatch.setattr(threading.Thread, "start", refuse)
    closed: list[bool] = []
    f = feed.Feed(counting_pass(10, closed), 4, lambda **counts: None)
    assert [f.take(i) for i in range(10)] == list(range(10)) and f.thread is None
    f.stop()
    assert closed == [True]
