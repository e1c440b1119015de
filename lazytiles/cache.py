"""TileCache: decoded tiles shared by every window, sequence and thread of a process.

Bounded in bytes, least-recently-used eviction, and single flight: when several threads want the same
missing tile, one loads it and the others wait for that result. No lock is held while a tile loads,
so different tiles load in parallel.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CacheTooSmallError, InvalidArgumentError

#: Default size of the process-wide cache, in bytes.
DEFAULT_MAX_BYTES = 512 * 2**20


@dataclass(frozen=True, slots=True)
class TileKey:
    """One tile of one source: what the cache stores under."""

    source: str  # stable token of the source's recipe (not id()), equal in every process
    level: int  # zoom for XYZ, overview level for rasters (0 = full resolution)
    row: int
    col: int


Loader = Callable[[TileKey], np.ndarray]

_caches: weakref.WeakSet[TileCache] = weakref.WeakSet()


class TileCache:
    """A byte-bounded LRU cache of decoded tiles with single-flight loading.

    Parameters
    ----------
    max_bytes
        Most bytes of tile pixels held at any moment (default 512 MiB).

    Notes
    -----
    Arrays handed out are read-only: a stray write fails loudly instead of corrupting every window
    that shares the tile. A failed load raises in the caller and in every thread waiting on it, and
    nothing is cached, so the next ``get`` tries again. A cache pickles as its settings and arrives
    empty; the process-wide default cache arrives as the receiving process's default cache.

    Examples
    --------
    >>> import numpy as np
    >>> cache = TileCache(max_bytes=1024)
    >>> key = TileKey("demo", 0, 0, 0)
    >>> cache.get(key, lambda k: np.zeros((1, 16, 16), np.uint8)).shape
    (1, 16, 16)
    >>> cache.stats()["misses"], cache.stats()["nbytes"]
    (1, 256)
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int | np.integer) or max_bytes <= 0:
            raise InvalidArgumentError(
                f"max_bytes must be a positive number of bytes, got {max_bytes!r}; "
                "for example TileCache(max_bytes=512 * 2**20)"
            )
        self._max_bytes = int(max_bytes)
        self._is_default = False
        self._reset()
        _caches.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()  # guards the dicts and counters; never held during a load
        self._tiles: OrderedDict[TileKey, np.ndarray] = OrderedDict()
        self._pending: dict[TileKey, Future[np.ndarray]] = {}
        self._nbytes = 0
        self._hits = self._misses = self._fetches = self._evictions = self._released = 0
        self._generation = 0  # bumped by clear(): loads started before it are not cached

    @property
    def max_bytes(self) -> int:
        """Most bytes of pixels the cache holds."""
        return self._max_bytes

    def get(self, key: TileKey, load: Loader) -> np.ndarray:
        """The tile under ``key``, calling ``load(key)`` only if no thread has it or is loading it."""
        return self.lookup(key, load)[0]

    def lookup(self, key: TileKey, load: Loader) -> tuple[np.ndarray, bool]:
        """Like :meth:`get`, and whether the tile was already there (or being loaded by another thread)."""
        with self._lock:
            tile = self._tiles.get(key)
            if tile is not None:
                self._tiles.move_to_end(key)  # a hit refreshes recency: LRU, not FIFO
                self._hits += 1
                return tile, True
            self._misses += 1
            waiting_on = self._pending.get(key)
            if waiting_on is None:
                mine: Future[np.ndarray] = Future()
                self._pending[key] = mine
                self._fetches += 1
                generation = self._generation
        if waiting_on is not None:
            return waiting_on.result(), True  # single flight: share the load in progress
        return self._load(key, load, mine, generation), False

    def fill(self, key: TileKey, load: Loader) -> bool:
        """Load ``key`` into the cache unless it is cached or another thread is loading it, without
        ever waiting for that thread; whether this call loaded it. For background loads: a fetch
        thread moves on to its next tile instead of waiting for a tile the consumer is reading."""
        with self._lock:
            if key in self._tiles or key in self._pending:
                return False
            mine: Future[np.ndarray] = Future()
            self._pending[key] = mine
            self._fetches += 1
            generation = self._generation
        self._load(key, load, mine, generation)
        return True

    def _load(self, key: TileKey, load: Loader, mine: Future[np.ndarray], generation: int) -> np.ndarray:
        """``load(key)`` outside the lock, cached and handed to the threads waiting on ``mine``."""
        try:
            tile = load(key)  # outside the lock: other tiles keep flowing
            tile.flags.writeable = False
            if tile.nbytes > self._max_bytes:
                raise CacheTooSmallError(
                    f"tile {key} has {tile.nbytes} bytes but the cache holds at most "
                    f"max_bytes={self._max_bytes}; use TileCache(max_bytes=...) of at least a few "
                    "rows of tiles"
                )
        except BaseException as err:  # broad only to clean up and re-raise
            with self._lock:
                del self._pending[key]
            mine.set_exception(err)  # waiters see the same error; nothing is cached
            raise
        with self._lock:
            del self._pending[key]
            if generation == self._generation:
                self._insert(key, tile)
        mine.set_result(tile)
        return tile

    def peek(self, key: TileKey) -> np.ndarray | None:
        """The tile if cached, without loading, counting or refreshing it."""
        with self._lock:
            return self._tiles.get(key)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._tiles

    def discard(self, keys: Iterable[TileKey]) -> int:
        """Drop those of ``keys`` that are cached (a pass will not need them again); how many were."""
        n = 0
        with self._lock:
            for key in keys:
                tile = self._tiles.pop(key, None)
                if tile is not None:
                    self._nbytes -= tile.nbytes
                    n += 1
            self._released += n
        return n

    def _insert(self, key: TileKey, tile: np.ndarray) -> None:
        # Evict first, so nbytes <= max_bytes holds at every moment, not only after the insert.
        while self._tiles and self._nbytes + tile.nbytes > self._max_bytes:
            _, old = self._tiles.popitem(last=False)
            self._nbytes -= old.nbytes
            self._evictions += 1
        self._tiles[key] = tile
        self._nbytes += tile.nbytes

    def stats(self) -> dict[str, int]:
        """Counters since creation or :meth:`clear`.

        ``hits`` and ``misses`` count lookups, ``fetches`` the loads started (a miss that waited on
        another thread's load is a miss without a fetch), ``evictions`` tiles dropped for room,
        ``released`` tiles dropped by :meth:`discard`, ``nbytes`` and ``max_bytes`` the bytes held
        and allowed.
        """
        with self._lock:
            return {
                "hits": self._hits,
                "misses": self._misses,
                "fetches": self._fetches,
                "evictions": self._evictions,
                "released": self._released,
                "nbytes": self._nbytes,
                "max_bytes": self._max_bytes,
                "tiles": len(self._tiles),
            }

    def clear(self) -> None:
        """Drop every tile and zero the counters; loads in progress finish without being cached."""
        with self._lock:
            self._tiles.clear()
            self._nbytes = 0
            self._generation += 1
            self._hits = self._misses = self._fetches = self._evictions = self._released = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._tiles)

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"TileCache(max_bytes={self._max_bytes})  # {s['tiles']} tiles, {s['nbytes']} bytes, "
            f"{s['hits']} hits, {s['misses']} misses"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Settings only: tiles, locks and pending loads stay in this process.
        if self._is_default:
            return (default_cache, ())
        return (TileCache, (self._max_bytes,))


_default: TileCache | None = None
_default_lock = threading.Lock()


def default_cache() -> TileCache:
    """The process-wide cache that sources use when no ``cache=`` is given (512 MiB)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = TileCache(DEFAULT_MAX_BYTES)
            _default._is_default = True
        return _default


def _after_fork_in_child() -> None:
    # A forked child inherits the parent's locks in whatever state another thread left them, and
    # pending loads whose threads did not survive the fork: start every cache afresh.
    global _default_lock
    _default_lock = threading.Lock()
    for cache in list(_caches):
        cache._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)
