"""TileSource: what every source shares — metadata, a tile grid, one tile read through the cache, a
pool of threads that fetch tiles in the background when told which, and a shrunk overview.

``_repr_html_`` imports :mod:`lazytiles.display` when called: display sits above sources.
"""

from __future__ import annotations

import math
import os
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from ..assembly import assemble
from ..cache import TileCache, TileKey, default_cache
from ..errors import CacheTooSmallError, CRSError, InvalidArgumentError
from ..grid import Bounds, TileGrid, window_bounds

#: A source with neither overviews nor lower zoom levels is read in full for an overview only up to
#: this many pixels.
FULL_READ_MAX = 4096 * 4096

_create_lock = threading.Lock()


class _Released(Exception):
    """A background load skipped: its tile was used up before the load started."""


class FetchPool:
    """``workers`` threads loading tiles into their source's cache, each tile once at a time.

    Made per source and never pickled; after a fork the child starts a pool of its own on first use.
    It fetches what it is told (:meth:`fetch`) and decides nothing: what to fetch early, and when,
    is :mod:`lazytiles.windowing.readahead`'s call. The cache's single flight makes a foreground read
    of a tile wait for its background load instead of starting a second one, so every tile is still
    fetched once; a fetch thread never waits for a load another thread started (the consumer's), it
    takes its next tile. A background load that fails leaves nothing behind: the foreground read that needs
    the tile loads it again (or waits for the load in progress) and raises the error itself.
    """

    #: Every pool's threads are named ``lazytiles-fetch-<kind>-<n>``: they live as long as their source.
    THREAD_PREFIX = "lazytiles-fetch-"

    def __init__(self, workers: int, kind: str) -> None:
        self.workers = workers
        self.name = self.THREAD_PREFIX + kind
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

    def fetch(self, src: TileSource, keys: Iterable[TileKey]) -> int:
        """Submit the loads of ``keys`` that are neither cached nor submitted; returns at once, with
        how many it submitted."""
        pool = self._pool()
        cache = src.cache
        submitted = 0
        for key in keys:
            if key in cache:
                continue
            with self._lock:
                self._released.discard(key)  # asked for again
                if key in self._inflight:
                    continue
                self._inflight.add(key)
            pool.submit(self._load, src, key)
            submitted += 1
        return submitted

    def forget(self, keys: Iterable[TileKey]) -> None:
        """``keys`` are used up: a background load of one that has not started yet is skipped
        instead of reading the tile a second time."""
        if self._pid != os.getpid():
            return
        with self._lock:
            self._released.update(keys)

    def _load(self, src: TileSource, key: TileKey) -> None:
        def load_unless_released(k: TileKey) -> Any:
            # Called by the cache only when the tile is neither cached nor loading. forget() marks a key
            # before the source drops it from the cache, so a load that starts late sees the mark.
            with self._lock:
                if k in self._released:
                    raise _Released
            return src.load_tile(k)

        try:  # a tile another thread is loading already is left to it: this thread moves on
            src.cache.fill(key, load_unless_released)
        except _Released:
            pass
        finally:
            with self._lock:
                self._inflight.discard(key)


class TileSource(ABC):
    """A georeferenced raster cut into tiles; subclasses read one tile.

    Attributes every source has: ``crs``, ``transform``, ``count`` (bands), ``dtype``, ``nodata``,
    ``tile_shape`` (rows, cols), ``height``, ``width``, ``bounds`` and ``cache``. Reads go through the
    tile cache, so each tile is decoded once while it stays cached, whichever window asks for it.
    """

    crs: CRS | None
    transform: Affine
    count: int
    dtype: np.dtype
    nodata: float | None
    tile_shape: tuple[int, int]
    height: int
    width: int
    cache: TileCache
    #: True for sources read over a network, where a tile's latency outweighs its decoding.
    remote: bool = False
    #: The threads that fetch tiles in the background (None: this source reads only when asked).
    _pool: FetchPool | None = None
    #: True for sources whose extent is nominal (the whole world of a tile service).
    needs_area: bool = False

    def _init_tiles(self, cache: TileCache | None) -> None:
        self.cache = default_cache() if cache is None else cache
        if not isinstance(self.cache, TileCache):
            raise InvalidArgumentError(
                f"cache={cache!r} is not a lazytiles.TileCache; pass lt.TileCache(max_bytes=...) or leave "
                "it out for the shared default"
            )
        th, tw = self.tile_shape
        tile_bytes = self.count * th * tw * np.dtype(self.dtype).itemsize
        if tile_bytes > self.cache.max_bytes:
            raise CacheTooSmallError(
                f"cache max_bytes={self.cache.max_bytes} is smaller than one {th}x{tw} tile of "
                f"{self.count} {np.dtype(self.dtype).name} bands ({tile_bytes} bytes); use "
                f"lt.TileCache(max_bytes={tile_bytes * 64}) or more"
            )
        self.grid = TileGrid(self.height, self.width, th, tw)
        self._stats_lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    # -- what subclasses provide -------------------------------------------------------------------

    @property
    @abstractmethod
    def token(self) -> str:
        """A stable identity of this source's recipe: equal in every process, different for other data."""

    @abstractmethod
    def _read_tile(self, key: TileKey) -> np.ndarray:
        """Read and decode one tile: ``(count, rows, cols)`` of ``dtype``, clipped at the raster's edge."""

    # -- shared behaviour --------------------------------------------------------------------------

    @property
    def bounds(self) -> Bounds:
        """(left, bottom, right, top) of the whole raster in ``crs``."""
        return window_bounds(Window(0, 0, self.width, self.height), self.transform)

    @property
    def fill_value(self) -> float:
        """What pixels outside the raster (or in absent tiles) hold: ``nodata``, or 0 without one."""
        return 0 if self.nodata is None else self.nodata

    def tile_key(self, row: int, col: int) -> TileKey:
        """The cache key of tile (row, col) at full resolution."""
        return TileKey(self.token, 0, row, col)

    def tiles_under(self, window: Window) -> list[TileKey]:
        """Keys of the tiles holding any pixel of ``window``, row by row; no I/O."""
        rows, cols = self.grid.tiles_under(window)
        return [self.tile_key(r, c) for r in rows for c in cols]

    def load_tile(self, key: TileKey) -> np.ndarray:
        """Read one tile from the source itself (not the cache), counting the read in :meth:`stats`."""
        start = time.perf_counter()
        tile = self._read_tile(key)
        elapsed = time.perf_counter() - start
        with self._stats_lock:
            self._counts["tiles_read"] += 1
            self._counts["bytes_decoded"] += tile.nbytes
            self._counts["read_ns"] += int(elapsed * 1e9)
        return tile

    def get_tile(self, key: TileKey) -> tuple[np.ndarray, bool]:
        """One tile through the cache, and whether it was a hit."""
        return self.cache.lookup(key, self.load_tile)

    @property
    def fetch_workers(self) -> int:
        """Threads that fetch tiles in the background when told to (:meth:`warm`); 0: none."""
        return 0 if self._pool is None else self._pool.workers

    def warm(self, keys: Iterable[TileKey]) -> int:
        """Start fetching ``keys`` that are neither cached nor loading, on this source's fetch threads,
        and return at once, with how many loads were started; a source without them does nothing.
        Which keys, and when, is decided by :mod:`lazytiles.windowing.readahead`."""
        if self._pool is None:
            return 0
        return self._pool.fetch(self, keys)

    def release(self, keys: Iterable[TileKey]) -> None:
        """Drop ``keys`` from the cache (and from the fetches not started yet): they are used up."""
        keys = list(keys)
        if self._pool is not None:
            self._pool.forget(keys)  # first, so a late background load does not read them again
        self.cache.discard(keys)

    def read(self, window: Window) -> np.ndarray:
        """Pixels of ``window`` as ``(count, height, width)``, through the cache; boundless (filled).

        The tiles are read one after another on this thread; :func:`lazytiles.windows` fetches a
        window's tiles, and the next windows', in the background where that pays.

        Examples
        --------
        >>> import numpy as np, lazytiles as lt
        >>> from rasterio.windows import Window
        >>> src = lt.ArraySource(np.arange(16, dtype="uint8").reshape(1, 4, 4), tile_shape=(2, 2))
        >>> src.read(Window(1, 1, 2, 2))
        array([[[ 5,  6],
                [ 9, 10]]], dtype=uint8)
        """
        return assemble(self, window, self.tiles_under(window))[0]

    def overview(self, area: Window | None = None, max_size: int = 1024) -> tuple[np.ndarray, Affine]:
        """Pixels of ``area`` (default: the whole raster) shrunk to at most ``max_size`` a side.

        Read as cheaply as the source allows: a raster's overviews, a tile service's lower zoom
        levels, a strided view of an in-memory array; a source with none of these reads the area in
        full, only when it is small (at most :data:`FULL_READ_MAX` pixels).

        Returns
        -------
        pixels, to_source
            ``(bands, rows, cols)`` pixels, and the affine transform from their pixel grid to the source's.

        Examples
        --------
        >>> import numpy as np, lazytiles as lt
        >>> src = lt.ArraySource(np.zeros((3, 1000, 500), np.uint8))
        >>> pixels, to_source = src.overview(max_size=100)
        >>> pixels.shape, to_source.a
        ((3, 100, 50), 10.0)
        """
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise InvalidArgumentError(f"max_size must be a positive number of pixels, got {max_size!r}")
        if area is None:
            if self.needs_area:
                raise InvalidArgumentError(
                    f"{self!r} covers the whole world; preview a window sequence over your area instead: "
                    "lt.windows(src, size, bounds=..., bounds_crs='EPSG:4326').preview()"
                )
            area = Window(0, 0, self.width, self.height)
        c0, r0 = max(int(area.col_off), 0), max(int(area.row_off), 0)
        c1, r1 = min(int(area.col_off + area.width), self.width), min(int(area.row_off + area.height), self.height)
        if c1 <= c0 or r1 <= r0:
            raise InvalidArgumentError(f"{area!r} does not overlap the raster ({self.height} x {self.width} px)")
        return self._overview(Window(c0, r0, c1 - c0, r1 - r0), max_size)

    def _overview(self, area: Window, max_size: int) -> tuple[np.ndarray, Affine]:
        """:meth:`overview` of ``area``, which lies inside the raster; sources with cheaper ways override it."""
        return self._read_small(area, max_size, "has no overviews")

    def _read_small(self, area: Window, max_size: int, why: str) -> tuple[np.ndarray, Affine]:
        if area.height * area.width > FULL_READ_MAX:
            raise InvalidArgumentError(
                f"{self!r} {why}, and {area!r} is too large to read in full for a preview; preview a smaller "
                "area (lt.windows(..., bounds=...).preview())"
            )
        step = _step(area, max_size)
        data = self.read(area)[:, ::step, ::step]
        return data, _to_source(area, data)

    def data_footprint(self) -> shapely.Geometry | None:
        """Where this source may hold data, as a geometry in its pixels (column, row); None when it cannot
        tell without reading at full resolution. ``lt.windows(..., skip_empty=True)`` leaves out the
        windows outside it, so a source leaves out only what it knows is empty."""
        return None

    def levels(self) -> tuple[float, ...]:
        """Pixel-size factors of the levels this source can be read at, finest first: ``(1.0,)`` for
        itself alone; a raster's overviews and a tile service's lower zooms add coarser ones."""
        return (1.0,)

    def level(self, index: int) -> TileSource:
        """This source at level ``index`` of :meth:`levels` (0: the source itself), sharing its cache."""
        if index != 0:
            raise InvalidArgumentError(f"{self!r} has no level {index!r}; its levels are {self.levels()!r}")
        return self

    def at(
        self,
        res: float | tuple[float, float],
        crs: CRS | str | int | None = None,
        resampling: str = "bilinear",
        *,
        tile_shape: int | tuple[int, int] = 512,
    ) -> TileSource:
        """This source on a grid of ``res`` per pixel in ``crs`` (default: its own), covering its footprint.

        ``res`` is in the target CRS's units, one number or ``(x, y)``; ``resampling`` a GDAL
        resampling name (``"nearest"``, ``"bilinear"``, ``"cubic"``, ``"average"``, ...). Tiles are
        warped from the coarsest sufficient level (overviews, lower zooms) and cached; see
        :class:`~lazytiles.sources.warped.WarpedSource`.

        Examples
        --------
        >>> import numpy as np, lazytiles as lt
        >>> from affine import Affine
        >>> src = lt.ArraySource(np.zeros((1, 1000, 1000), np.uint8), transform=Affine(0.5, 0, 0, 0, -0.5, 500),
        ...                      crs="EPSG:32631")
        >>> coarse = src.at(res=2.0)
        >>> coarse.width, coarse.height, coarse.crs.to_epsg()
        (250, 250, 32631)
        """
        from .warped import WarpedSource, target_grid

        target, transform, width, height = target_grid(self, res, crs)
        return WarpedSource(self, target, transform, width, height, resampling, tile_shape=tile_shape)

    def stats(self) -> dict[str, Any]:
        """Counters of this source: ``tiles_read``, ``bytes_decoded``, ``read_seconds`` and, for remote
        sources, requests, retries, failures and missing tiles."""
        with self._stats_lock:
            counts: dict[str, float] = dict(self._counts)
        counts.setdefault("tiles_read", 0)
        counts.setdefault("bytes_decoded", 0)
        counts["read_seconds"] = counts.pop("read_ns", 0) / 1e9
        return counts

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self._counts[name] += n

    def describe(self) -> dict[str, Any]:
        """Metadata as plain values, for ``lazytiles info`` and reprs."""
        return {
            "source": self.token,
            "crs": None if self.crs is None else self.crs.to_string(),
            "width": self.width,
            "height": self.height,
            "count": self.count,
            "dtype": np.dtype(self.dtype).name,
            "nodata": self.nodata,
            "tile_shape": self.tile_shape,
            "tiles": self.grid.rows * self.grid.cols,
            "bounds": self.bounds,
            "resolution": (abs(self.transform.a), abs(self.transform.e)),
        }

    def _repr_html_(self) -> str:
        from ..display.jupyter import source_html

        return source_html(self)

    def _require_crs(self, what: str) -> CRS:
        if self.crs is None:
            raise CRSError(f"{what} needs the source's CRS, but {self!r} has none; give the source crs=...")
        return self.crs


def overview_shape(area: Window, max_size: int) -> tuple[int, int]:
    """(rows, cols) of ``area`` scaled to at most ``max_size`` a side."""
    scale = max(area.height, area.width) / max_size
    if scale <= 1:
        return int(area.height), int(area.width)
    return max(1, round(area.height / scale)), max(1, round(area.width / scale))


def _step(area: Window, max_size: int) -> int:
    """Every how many pixels a strided overview of ``area`` keeps one."""
    out_h, out_w = overview_shape(area, max_size)
    return math.ceil(float(max(area.height / out_h, area.width / out_w)))


def _to_source(area: Window, data: np.ndarray) -> Affine:
    """The transform from the pixel grid of ``data``, an overview of ``area``, to the source's."""
    return Affine.translation(area.col_off, area.row_off) @ Affine.scale(
        area.width / data.shape[2], area.height / data.shape[1]
    )
