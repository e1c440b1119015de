"""Read-ahead for remote sources: tiles loaded into the cache by a bounded pool of background threads.

An in-order pass (``WindowSequence.__iter__``) calls ``src.warm(keys)`` with the tiles of the next
windows, and ``mosaic.assemble`` with a window's own tiles; a remote source hands them to a
:class:`Readahead`, which submits ``cache.get(key, src.load_tile)`` for each tile that is neither
cached nor already submitted. The cache's single flight makes the foreground read of a tile wait for
its background load instead of starting a second one, so every tile is still fetched once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..cache import TileKey

if TYPE_CHECKING:
    from ..sources.base import TileSource

_create_lock = threading.Lock()


class _Released(Exception):
    """A background load skipped: its tile was used up before the load started."""


class Readahead:
    """A pool of ``workers`` threads loading tiles into their source's cache, each tile once at a time.

    Made per source and never pickled; after a fork the child starts a pool of its own on first use.
    A background load that fails leaves nothing behind: the foreground read that needs the tile loads
    it again (or waits for the load in progress) and raises the error itself, with its window.
    """

    def __init__(self, workers: int, name: str = "lazytiles-readahead") -> None:
        self.workers = workers
        self.name = name
        self._pid: int | None = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._pid != os.getpid():  # first use here, or a forked child: the threads did not survive
            with _create_lock:
                if self._pid != os.getpid():
                    self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix=self.name)
                    self._inflight: set[TileKey] = set()
                    self._released: set[TileKey] = set()  # used up by an in-order pass: load no more
                    self._lock = threading.Lock()
                    self._pid = os.getpid()
        return self._executor

    def warm(self, src: TileSource, keys: Iterable[TileKey]) -> None:
        """Submit the loads of ``keys`` that are neither cached nor submitted; returns at once."""
        pool = self._pool()
        cache = src.cache
        for key in keys:
            if key in cache:
                continue
            with self._lock:
                self._released.discard(key)  # asked for again
                if key in self._inflight:
                    continue
                self._inflight.add(key)
            pool.submit(self._load, src, key)

    def forget(self, keys: Iterable[TileKey]) -> None:
        """``keys`` are used up (an in-order pass read their last window): a background load of one
        that has not started yet is skipped instead of reading the tile a second time."""
        if self._pid != os.getpid():
            return
        with self._lock:
            self._released.update(keys)

    def _load(self, src: TileSource, key: TileKey) -> None:
        def load_unless_released(k: TileKey) -> Any:
            # Called by the cache only when the tile is neither cached nor loading. forget() marks a key
            # before the pass drops it from the cache, so a load that starts late sees the mark.
            with self._lock:
                if k in self._released:
                    raise _Released
            return src.load_tile(k)

        try:
            src.cache.get(key, load_unless_released)
        except _Released:
            pass
        finally:
            with self._lock:
                self._inflight.discard(key)

    def shutdown(self) -> None:
        """Stop the threads once their loads finish (a later :meth:`warm` starts new ones)."""
        with _create_lock:
            if self._pid == os.getpid():
                self._executor.shutdown(wait=False, cancel_futures=True)
            self._pid = None
