"""Read-ahead: the one place that decides which tiles a window sequence fetches early and which it frees.

A source only does what it is told and says what it is: ``src.warm(keys)`` starts fetching tiles on
its fetch threads and returns at once (saying how many loads it started), ``src.release(keys)`` drops
used-up tiles from the cache, and ``src.fetch_workers`` and ``src.remote`` describe its pool. One
:class:`ReadAhead` per window sequence tells it what to fetch, for three ways of reading:

- a window's own tiles, just before the window is assembled: fetched together instead of one after
  another (from a remote source always, where latency dominates; from a local one when reading ahead);
- indexing forward (``wins[i]``, ``wins[i + 1]``, ... in a loop, a DataLoader's sequential sampler,
  the threads of ``lt.prefetch`` taking turns): the tiles of the next windows; one index, or a jump,
  reads only what it asks for until indexing moves forward again;
- iterating (``for w in wins``): the tiles of the next windows.

How far ahead is bounded twice: by ``depth`` windows (``lt.windows(..., readahead=N)``, by default
:func:`default_depth`: the rows of windows to the next row of tiles, so its tiles load while this row
is read, even where a whole row of windows needs no new tile, as when the stride is half the tile), and by
:func:`tile_budget` loads started for windows not read yet (an eighth of the cache, at least
:data:`TILES_PER_WORKER` per fetch thread), which bounds the memory read ahead and keeps every fetch
thread (every connection) busy.

Releasing: when a pass follows the plan's order, each tile is released right after the last window
that uses it (:meth:`~lazytiles.windowing.plan.WindowPlan.finished_tiles`), so a pass holds about one
row of tiles, not the cache's ``max_bytes``. Iterating does so after each window; indexing forward
(``lt.prefetch``'s threads, a DataLoader's sequential sampler) does so once :data:`MIN_RUN`
windows have been read one after another, for each window once it and every window before it are
read, so threads finishing out of order never lose a tile another thread still needs. A jump starts
a new run; random access releases nothing. Reading a window behind a run reads its released tiles
again (the same pixels, once more from the source).

The cache's single flight makes a foreground read wait for the background load of the same tile
(and a fetch thread never waits for a load the consumer started: it takes its next tile), and a
released tile is also dropped from the loads not started yet, so every tile is still fetched once
per pass.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np

from ..cache import TileKey
from ..sources.base import TileSource
from .index import Positions
from .plan import WindowPlan

T = TypeVar("T")

#: Loads read-ahead keeps started for windows not read yet, at least, per fetch thread: the queue that
#: keeps every fetch thread (every connection) busy.
TILES_PER_WORKER = 4
#: ...and at most the tiles that fit in this share of the cache (the plan keeps the rest, see
#: :data:`~lazytiles.windowing.plan.CACHE_SHARE`), so the fetch threads also work ahead through rows
#: of windows that need no new tile.
AHEAD_SHARE = 0.125
#: Windows indexing must read one after another, in order, before it releases tiles behind it.
MIN_RUN = 8


def tile_budget(src: TileSource) -> int:
    """Loads in flight for windows not read yet: :data:`AHEAD_SHARE` of the cache, and at least
    :data:`TILES_PER_WORKER` per fetch thread; 0 for a source without fetch threads."""
    workers = src.fetch_workers
    if not workers:
        return 0
    tile_bytes = src.count * src.tile_shape[0] * src.tile_shape[1] * np.dtype(src.dtype).itemsize
    return max(TILES_PER_WORKER * workers, int(AHEAD_SHARE * src.cache.max_bytes) // tile_bytes)


def default_depth(src: TileSource, plan: WindowPlan) -> int:
    """Windows read ahead from ``src`` unless ``lt.windows(..., readahead=)`` says otherwise, for a
    source with fetch threads: as many rows of the plan's windows (a strip's width each) as there are
    window rows to a row of tiles, and one window more, so that from any window the next row of tiles
    is in reach (a stride of half the tile: two rows, as every other row needs no new tile); 0 for a
    source without them (an in-memory array). :func:`tile_budget` bounds the loads in flight."""
    if not src.fetch_workers:
        return 0
    rows_per_tile = -(-src.tile_shape[0] // max(1, plan.rows.stride))
    return min(len(plan), plan.strip * rows_per_tile + 1)


class ReadAhead:
    """What one window sequence fetches early from its source, and what it releases.

    Indices are positions in the sequence ``lt.windows`` made (a window's ``index``); ``keep`` maps
    them to the plan's candidates when a region filtered the plan, and ``positions`` are the indices
    of this sequence (a view's). Not shared between sequences: each view (``wins[10:20]``) has its
    own, so indexing one does not switch read-ahead on in another. Indexing from several threads at
    once is safe: the bookkeeping is under one lock.
    """

    def __init__(
        self, src: TileSource, plan: WindowPlan, keep: np.ndarray | None, positions: Positions, depth: int | None
    ) -> None:
        self._src = src
        self._plan = plan
        self._keep = keep
        self._positions = positions
        self._n = len(plan) if keep is None else len(keep)
        self.depth = default_depth(src, plan) if depth is None else depth
        self.tiles = tile_budget(src)  # loads in flight for windows not read yet
        grid = src.grid
        self._shapes = (grid.tile_height, grid.tile_width), (grid.height, grid.width)
        self._lock = threading.Lock()  # guards the indexing state below
        self._last: int | None = None  # the last index read by indexing
        self._warmed = -1  # the last index whose tiles indexing forward has asked for
        self._started: deque[tuple[int, int]] = deque()  # (index, loads started) warmed ahead by indexing
        self._in_flight = 0  # sum of those loads
        # A run: windows read by indexing since the last jump, as ranks in this sequence's positions
        self._start: int | None = None  # the rank the run started at
        self._next = 0  # the first rank of the run not read yet (all before it are)
        self._released = 0  # ranks before this one had their tiles released
        self._read: set[int] = set()  # ranks after _next already read

    def _candidate(self, index: int) -> int:
        return index if self._keep is None else int(self._keep[index])

    def _tiles(self, index: int) -> list[TileKey]:
        return self._src.tiles_under(self._plan.window(self._candidate(index)))

    def _finished(self, index: int) -> list[TileKey]:
        """Tiles no window after ``index`` (in the plan's order) uses."""
        rows, cols = self._plan.finished_tiles(self._candidate(index), *self._shapes)
        return [self._src.tile_key(r, c) for r in rows for c in cols]

    def _rank(self, index: int) -> int | None:
        """Where ``index`` is in this sequence's positions, if they follow the plan's order."""
        p = self._positions
        if isinstance(p, range):
            return p.index(index) if p.step > 0 and index in p else None
        k = int(np.searchsorted(p, index))
        if k < len(p) and p[k] == index and (k == 0 or p[k - 1] < index) and (k + 1 == len(p) or p[k + 1] > index):
            return k
        return None

    def window(self, keys: list[TileKey], walked: bool = False) -> None:
        """A window made of the tiles ``keys`` is about to be assembled: fetch them together, unless
        it is ``walked`` (read by :meth:`walk`), which fetched them already when reading ahead."""
        if len(keys) > 1 and not (walked and self.depth) and (self.depth or self._src.remote):
            self._src.warm(keys)

    def indexed(self, index: int) -> None:
        """Window ``index`` is about to be read by indexing (call :meth:`done` after). Moving forward
        a little from the last index loads the tiles of the next windows in the background, within
        :attr:`depth` windows and :attr:`tiles` loads; a jump does not, and starts a new run."""
        with self._lock:
            last, self._last = self._last, index
            step = None if last is None else index - last
            reach = max(self.depth, 1)
            if step is None or not -reach <= step <= reach:  # a jump (small steps back: threads taking turns)
                self._start = self._rank(index)
                self._next = self._released = self._start or 0
                self._read.clear()
            if not self.depth or step is None or not 0 < step <= reach:
                if step is None or not -reach <= step <= reach:
                    self._warmed = index
                    self._started.clear()
                    self._in_flight = 0
                return
            while self._started and self._started[0][0] <= index:  # read now: no longer ahead
                self._in_flight -= self._started.popleft()[1]
            stop = min(index + self.depth, self._n - 1)
            k = max(self._warmed, index) + 1
            while k <= stop and self._in_flight < self.tiles:
                got = self._src.warm(self._tiles(k))
                self._started.append((k, got))
                self._in_flight += got
                self._warmed = k
                k += 1

    def done(self, index: int) -> None:
        """Window ``index``, read by indexing, is assembled. Once a run has read :data:`MIN_RUN`
        windows of this sequence one after another, in the plan's order, each window's tiles are
        released once it and every window of the run before it are read: threads that finish out of
        order never release a tile an earlier window still needs, and random access releases nothing."""
        release: list[TileKey] = []
        with self._lock:
            rank = self._rank(index)
            if rank is None or self._start is None or rank < self._next:
                return
            self._read.add(rank)
            while self._next in self._read:
                self._read.discard(self._next)
                self._next += 1
            if self._next - self._start < MIN_RUN:
                return
            for k in range(self._released, self._next):
                release.extend(self._finished(int(self._positions[k])))
            self._released = self._next
        if release:
            self._src.release(release)

    def walk(self, positions: Positions, read: Callable[[int], T]) -> Iterator[T]:
        """``read(index)`` for each index of ``positions`` in turn, yielded, with the tiles of the
        next windows in flight (within :attr:`depth` windows and :attr:`tiles` loads); when
        ``positions`` follow the plan's order, each tile is released right after the last window
        that uses it."""
        in_order = positions.step > 0 if isinstance(positions, range) else bool(np.all(np.diff(positions) > 0))
        n = len(positions)
        warmed = 0
        started: deque[int] = deque()  # loads started for each window from the next one read to the last warmed
        in_flight = 0
        for k, index in enumerate(positions):
            index = int(index)
            while self.depth and warmed < min(n, k + 1 + self.depth) and (in_flight < self.tiles or warmed <= k):
                got = self._src.warm(self._tiles(int(positions[warmed])))
                started.append(got)
                in_flight += got
                warmed += 1
            if started:  # this window's loads are no longer ahead
                in_flight -= started.popleft()
            result = read(index)
            if in_order:  # nothing later needs these tiles
                finished = self._finished(index)
                if finished:
                    self._src.release(finished)
            yield result
