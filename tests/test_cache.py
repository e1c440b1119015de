"""TileCache: a byte-bounded LRU with single flight, checked against a plain model and real threads."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
import time
from collections import Counter, OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lazytiles as lt
from lazytiles.cache import DEFAULT_MAX_BYTES, TileKey, default_cache

TIMEOUT = 10  # seconds; every wait in this file has one


def key(n: int) -> TileKey:
    return TileKey("test", 0, n, 0)


def tile_of(nbytes: int, fill: int = 0) -> np.ndarray:
    return np.full((1, 1, nbytes), fill, dtype=np.uint8)


def wait_until(predicate, timeout: float = TIMEOUT) -> bool:
    """Poll ``predicate`` (a few ms apart) until true or ``timeout``; the tests' outcome never depends on it."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.002)
    return True


class Loader:
    """Makes tiles of given sizes, counts calls, and checks the cache's bound every time it is called."""

    def __init__(self, cache: lt.TileCache, sizes: dict[int, int]) -> None:
        self.cache, self.sizes, self.calls = cache, sizes, Counter()

    def __call__(self, k: TileKey) -> np.ndarray:
        self.calls[k.row] += 1
        s = self.cache.stats()
        assert s["nbytes"] <= s["max_bytes"]
        return tile_of(self.sizes[k.row], fill=k.row)


# -- LRU, in bytes ---------------------------------------------------------------------------------


def test_a_hit_refreshes_recency_so_the_oldest_untouched_tile_goes_first():
    cache = lt.TileCache(max_bytes=300)
    load = Loader(cache, {n: 100 for n in range(5)})
    for n in (0, 1, 2):
        cache.get(key(n), load)
    cache.get(key(0), load)  # hit: 0 is now the newest
    cache.get(key(3), load)  # evicts 1, the least recently used, not 0 (FIFO would drop 0)
    assert key(0) in cache and key(1) not in cache and key(2) in cache and key(3) in cache
    cache.get(key(4), load)  # next oldest: 2
    assert key(2) not in cache and key(0) in cache
    assert load.calls == Counter({0: 1, 1: 1, 2: 1, 3: 1, 4: 1})
    assert cache.stats()["evictions"] == 2


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 400), min_size=8, max_size=8),
    ops=st.lists(st.integers(0, 7), max_size=60),
    max_bytes=st.integers(400, 1200),
)
def test_contents_and_counters_match_a_model_lru_at_every_step(sizes, ops, max_bytes):
    cache = lt.TileCache(max_bytes=max_bytes)
    load = Loader(cache, dict(enumerate(sizes)))
    model: OrderedDict[int, int] = OrderedDict()
    hits = misses = evictions = 0
    for n in ops:
        tile = cache.get(key(n), load)
        assert tile.nbytes == sizes[n] and tile[0, 0, 0] == n % 256
        if n in model:
            model.move_to_end(n)
            hits += 1
        else:
            misses += 1
            while model and sum(model.values()) + sizes[n] > max_bytes:
                model.popitem(last=False)
                evictions += 1
            model[n] = sizes[n]
        s = cache.stats()
        assert s["nbytes"] == sum(model.values()) <= max_bytes
        assert {k.row for k in cache._tiles} == set(model)
        assert [k.row for k in cache._tiles] == list(model)  # the same recency order
        assert (s["hits"], s["misses"], s["fetches"], s["evictions"]) == (hits, misses, misses, evictions)
    assert sum(load.calls.values()) == misses


def test_nbytes_never_exceeds_max_bytes_even_while_threads_load_at_once():
    cache = lt.TileCache(max_bytes=10_000)
    sizes = {n: 700 + 37 * n for n in range(64)}
    load = Loader(cache, sizes)
    rng = np.random.default_rng(0)
    orders = [rng.integers(0, 64, 300) for _ in range(8)]
    errors: list[BaseException] = []

    def work(order):
        try:
            for n in order:
                assert cache.get(key(int(n)), load).nbytes == sizes[int(n)]
                s = cache.stats()
                assert s["nbytes"] <= s["max_bytes"]
        except BaseException as err:  # handed to the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(o,)) for o in orders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads) and not errors


# -- single flight ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("n_threads", [8, 16])
def test_threads_wanting_one_missing_tile_share_one_load(n_threads):
    cache = lt.TileCache(max_bytes=2**20)
    release, started = threading.Event(), threading.Event()
    calls = Counter()

    def load(k):
        calls[k] += 1
        started.set()
        assert release.wait(TIMEOUT), "the test never released the load"
        return np.arange(1000, dtype=np.uint16).reshape(1, 10, 100)

    barrier = threading.Barrier(n_threads, timeout=TIMEOUT)
    results: list = [None] * n_threads

    def work(i):
        barrier.wait()
        results[i] = cache.get(key(7), load)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    assert started.wait(TIMEOUT)
    # all threads are inside get(): one loading, the rest waiting on it
    assert wait_until(lambda: cache.stats()["misses"] == n_threads)
    release.set()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    assert calls == Counter({key(7): 1})
    assert all(r is results[0] for r in results)
    s = cache.stats()
    assert (s["fetches"], s["misses"], s["hits"]) == (1, n_threads, 0)


@pytest.mark.timeout(30)
def test_a_slow_load_does_not_block_other_tiles():
    cache = lt.TileCache(max_bytes=2**20)
    release, started = threading.Event(), threading.Event()

    def slow(k):
        started.set()
        assert release.wait(TIMEOUT)
        return tile_of(10)

    t = threading.Thread(target=cache.get, args=(key(1), slow))
    t.start()
    assert started.wait(TIMEOUT)
    # key 1 is loading and holds no lock: key 2 loads and returns meanwhile
    assert cache.get(key(2), lambda k: tile_of(20)).nbytes == 20
    release.set()
    t.join(TIMEOUT)
    assert not t.is_alive() and key(1) in cache


@pytest.mark.timeout(30)
def test_a_failed_load_raises_in_every_waiter_and_is_retried_by_the_next_get():
    n_threads = 8
    cache = lt.TileCache(max_bytes=2**20)
    release, started = threading.Event(), threading.Event()
    calls = Counter()

    def failing(k):
        calls["fail"] += 1
        started.set()
        assert release.wait(TIMEOUT)
        raise lt.TileFetchError(f"tile {k} is broken")

    barrier = threading.Barrier(n_threads, timeout=TIMEOUT)
    raised: list = [None] * n_threads

    def work(i):
        barrier.wait()
        try:
            cache.get(key(3), failing)
        except lt.TileFetchError as err:
            raised[i] = err

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    assert started.wait(TIMEOUT)
    assert wait_until(lambda: cache.stats()["misses"] == n_threads)
    release.set()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    assert calls["fail"] == 1
    assert all(isinstance(e, lt.TileFetchError) and "is broken" in str(e) for e in raised)
    assert key(3) not in cache and len(cache) == 0 and cache.stats()["nbytes"] == 0
    # nothing was cached: the next get loads again, and now it works
    assert cache.get(key(3), lambda k: tile_of(5, 9))[0, 0, 0] == 9
    assert cache.stats()["fetches"] == 2


def test_a_failed_load_leaves_no_pending_entry_for_a_single_caller():
    cache = lt.TileCache(max_bytes=100)

    def boom(k):
        raise OSError("disk on fire")

    for _ in range(3):
        with pytest.raises(OSError, match="disk on fire"):
            cache.get(key(0), boom)
    assert cache.stats()["fetches"] == 3 and not cache._pending


# -- what comes out -------------------------------------------------------------------------------


def test_tiles_handed_out_are_read_only():
    cache = lt.TileCache(max_bytes=1000)
    tile = cache.get(key(0), lambda k: np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="read-only"):
        tile[0, 0, 0] = 1
    assert cache.get(key(0), lambda k: pytest.fail("hit expected")) is tile


def test_lookup_tells_hits_from_loads_and_peek_does_not_count():
    cache = lt.TileCache(max_bytes=1000)
    _, hit = cache.lookup(key(0), lambda k: tile_of(10))
    assert hit is False
    _, hit = cache.lookup(key(0), lambda k: tile_of(10))
    assert hit is True
    assert cache.peek(key(1)) is None and cache.peek(key(0)) is not None
    s = cache.stats()
    assert (s["hits"], s["misses"]) == (1, 1)


def test_stats_keys_and_clear():
    cache = lt.TileCache(max_bytes=250)
    for n in (0, 1, 2, 0):
        cache.get(key(n), lambda k: tile_of(100))
    s = cache.stats()
    assert {"hits", "misses", "fetches", "evictions", "nbytes", "max_bytes"} <= set(s)
    assert (s["hits"], s["misses"], s["fetches"], s["evictions"], s["nbytes"], s["max_bytes"]) == (
        0,
        4,
        4,
        2,
        200,
        250,
    )
    cache.clear()
    assert len(cache) == 0
    assert cache.stats() == {**s, "hits": 0, "misses": 0, "fetches": 0, "evictions": 0, "nbytes": 0, "tiles": 0}
    assert "TileCache(max_bytes=250)" in repr(cache)


@pytest.mark.timeout(30)
def test_clear_during_a_load_does_not_cache_the_loaded_tile():
    cache = lt.TileCache(max_bytes=1000)
    release, started = threading.Event(), threading.Event()
    got = []

    def slow(k):
        started.set()
        assert release.wait(TIMEOUT)
        return tile_of(10)

    t = threading.Thread(target=lambda: got.append(cache.get(key(0), slow)))
    t.start()
    assert started.wait(TIMEOUT)
    cache.clear()
    release.set()
    t.join(TIMEOUT)
    assert not t.is_alive() and got[0].nbytes == 10  # the caller still gets its tile
    assert len(cache) == 0 and cache.stats()["nbytes"] == 0


# -- bad sizes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1.5, "512", True, None])
def test_max_bytes_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=rf"max_bytes must be a positive number of bytes, got {bad!r}") as info:
        lt.TileCache(max_bytes=bad)
    assert isinstance(info.value, lt.InvalidArgumentError)


def test_a_tile_bigger_than_the_cache_is_an_error_and_is_not_cached():
    cache = lt.TileCache(max_bytes=100)
    cache.get(key(0), lambda k: tile_of(60))
    with pytest.raises(lt.CacheTooSmallError, match=r"has 101 bytes but the cache holds at most max_bytes=100") as info:
        cache.get(key(1), lambda k: tile_of(101))
    assert isinstance(info.value, ValueError) and isinstance(info.value, lt.InvalidArgumentError)
    assert key(1) not in cache and key(0) in cache and not cache._pending


# -- pickling --------------------------------------------------------------------------------------


def test_a_custom_cache_pickles_as_its_settings_and_arrives_empty():
    cache = lt.TileCache(max_bytes=12345)
    cache.get(key(0), lambda k: tile_of(100))
    copy = pickle.loads(pickle.dumps(cache))
    assert copy is not cache and isinstance(copy, lt.TileCache)
    assert copy.max_bytes == 12345 and len(copy) == 0 and copy.stats()["misses"] == 0
    assert len(pickle.dumps(cache)) < 200


def test_the_default_cache_arrives_as_the_receiving_default():
    cache = default_cache()
    assert cache.max_bytes == DEFAULT_MAX_BYTES == 512 * 2**20
    assert pickle.loads(pickle.dumps(cache)) is default_cache()
    blob = pickle.dumps(cache)
    code = (
        "import pickle, sys; from lazytiles.cache import default_cache; "
        "c = pickle.loads(sys.stdin.buffer.read()); print(c is default_cache(), len(c))"
    )
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=60, check=True)
    assert out.stdout.split() == [b"True", b"0"]


def test_discard_drops_cached_tiles_only_and_counts_them():
    cache = lt.TileCache(max_bytes=1000)
    for n in range(3):
        cache.get(key(n), lambda k: tile_of(100))
    assert cache.discard([key(0), key(2), key(9)]) == 2  # key 9 was never cached
    assert key(1) in cache and key(0) not in cache and key(2) not in cache
    s = cache.stats()
    assert (s["released"], s["evictions"], s["nbytes"], s["tiles"]) == (2, 0, 100, 1)
    cache.get(key(0), lambda k: tile_of(100))  # a discarded tile loads again on demand
    assert cache.stats()["fetches"] == 4


def test_fill_loads_a_missing_tile_and_never_waits_for_another_thread_s_load():
    cache = lt.TileCache(max_bytes=2**20)
    key, other = TileKey("fill", 0, 0, 0), TileKey("fill", 0, 0, 1)
    started, finish = threading.Event(), threading.Event()

    def slow(k):
        started.set()
        assert finish.wait(TIMEOUT)
        return np.ones((1, 4, 4), np.uint8)

    reader = threading.Thread(target=cache.get, args=(key, slow))
    reader.start()
    assert started.wait(TIMEOUT)
    calls = []
    assert cache.fill(key, lambda k: calls.append(k) or np.zeros((1, 4, 4), np.uint8)) is False  # at once
    assert calls == [] and key not in cache
    finish.set()
    reader.join(TIMEOUT)
    assert cache.get(key, slow).sum() == 16  # the reader's tile, not a second load
    assert cache.fill(key, lambda k: calls.append(k) or np.zeros((1, 4, 4), np.uint8)) is False  # cached
    assert cache.fill(other, lambda k: np.zeros((1, 4, 4), np.uint8)) is True and other in cache
    assert calls == [] and cache.stats()["fetches"] == 2
