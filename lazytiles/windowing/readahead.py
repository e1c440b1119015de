"""Read-ahead: the one place that decides which tiles a window sequence fetches early and which it frees.

A source only does what it is told and says what it is: ``src.warm(keys)`` starts fetching tiles on
its fetch threads and returns at once, ``src.release(keys)`` drops used-up tiles from the cache, and
``src.fetch_workers`` and ``src.remote`` describe its pool. One :class:`ReadAhead` per window
sequence tells it what to fetch, for three ways of reading:

- a window's own tiles, just before the window is assembled: fetched together instead of one after
  another (from a remote source always, where latency dominates; from a local one when reading ahead);
- indexing forward (``wins[i]``, ``wins[i + 1]``, ... in a loop, a DataLoader's sequential sampler,
  the threads of ``lt.prefetch`` taking turns): the tiles of the next ``depth`` windows; one index, or
  a jump, reads only what it asks for until indexing moves forward again;
- iterating (``for w in wins``): the tiles of the next ``depth`` windows; and when the pass follows
  the plan's order, each tile is released right after the last window that uses it
  (:meth:`~lazytiles.windowing.plan.WindowPlan.finished_tiles`), so a pass holds about one row of
  tiles, not the cache's ``max_bytes``.

``depth`` is a number of windows: ``lt.windows(..., readahead=N)``, by default :func:`default_depth`.
The cache's single flight makes a foreground read wait for the background load of the same tile, and
a released tile is also dropped from the loads not started yet, so every tile is still fetched once
per pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np

from ..cache import TileKey
from ..sources.base import TileSource
from .index import Positions
from .plan import WindowPlan

T = TypeVar("T")

#: Windows read ahead by default from a local source with fetch threads (decoding on other cores).
LOCAL_DEPTH = 4
#: Windows read ahead by default from a remote source, per fetch thread (to keep its connections busy).
REMOTE_DEPTH_PER_WORKER = 2


def default_depth(src: TileSource) -> int:
    """Windows read ahead from ``src`` unless ``lt.windows(..., readahead=)`` says otherwise:
    :data:`REMOTE_DEPTH_PER_WORKER` per fetch thread for a remote source, :data:`LOCAL_DEPTH` for a
    local one, 0 for a source without fetch threads (an in-memory array)."""
    workers = src.fetch_workers
    if not workers:
        return 0
    return REMOTE_DEPTH_PER_WORKER * workers if src.remote else LOCAL_DEPTH


class ReadAhead:
    """What one window sequence fetches early from its source, and what it releases.

    Indices are positions in the sequence ``lt.windows`` made (a window's ``index``); ``keep`` maps
    them to the plan's candidates when a region filtered the plan. Not shared between sequences:
    each view (``wins[10:20]``) has its own, so indexing one does not switch read-ahead on in another.
    """

    def __init__(self, src: TileSource, plan: WindowPlan, keep: np.ndarray | None, depth: int | None) -> None:
        self._src = src
        self._plan = plan
        self._keep = keep
        self.depth = default_depth(src) if depth is None else depth
        self._last: int | None = None  # the last index read by indexing
        self._warmed = -1  # the last index whose tiles indexing forward has asked for

    def _candidate(self, index: int) -> int:
        return index if self._keep is None else int(self._keep[index])

    def _tiles(self, index: int) -> list[TileKey]:
        return self._src.tiles_under(self._plan.window(self._candidate(index)))

    def window(self, keys: list[TileKey]) -> None:
        """A window made of the tiles ``keys`` is about to be assembled: fetch them together."""
        if len(keys) > 1 and (self.depth or self._src.remote):
            self._src.warm(keys)

    def indexed(self, index: int) -> None:
        """Window ``index`` is about to be read by indexing. Moving forward a little from the last
        index loads the tiles of the next ``depth`` windows in the background; a jump does not.
        Threads may race here: the worst outcome is asking twice for a tile, which the source ignores."""
        if not self.depth:
            return
        last, self._last = self._last, index
        if last is None or not 0 < index - last <= self.depth:
            self._warmed = index
            return
        stop = min(index + self.depth, (len(self._plan) if self._keep is None else len(self._keep)) - 1)
        for k in range(max(self._warmed, index) + 1, stop + 1):
            self._src.warm(self._tiles(k))
        self._warmed = max(self._warmed, stop)

    def walk(self, positions: Positions, read: Callable[[int], T]) -> Iterator[T]:
        """``read(index)`` for each index of ``positions`` in turn, yielded, with the tiles of the
        next ``depth`` windows in flight; when ``positions`` follow the plan's order, each tile is
        released right after the last window that uses it."""
        in_order = positions.step > 0 if isinstance(positions, range) else bool(np.all(np.diff(positions) > 0))
        grid = self._src.grid
        shapes = (grid.tile_height, grid.tile_width), (grid.height, grid.width)
        n = len(positions)
        warmed = 0
        for k, index in enumerate(positions):
            index = int(index)
            while self.depth and warmed < min(n, k + 1 + self.depth):
                self._src.warm(self._tiles(int(positions[warmed])))
                warmed += 1
            result = read(index)
            if in_order:  # nothing later needs these tiles
                rows, cols = self._plan.finished_tiles(self._candidate(index), *shapes)
                if rows and cols:
                    self._src.release([self._src.tile_key(r, c) for r in rows for c in cols])
            yield result
