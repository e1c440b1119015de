"""TileSource: what every source shares — metadata, a tile grid, and one tile read through the cache."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from ..cache import TileCache, TileKey, default_cache
from ..errors import CacheTooSmallError, CRSError, InvalidArgumentError
from ..grid import Bounds, TileGrid, window_bounds

if TYPE_CHECKING:
    from ..windowing.readahead import Readahead


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
    #: Windows ahead whose tiles an in-order pass requests early (remote sources); 0 = none.
    readahead: int = 0
    #: The background threads that load tiles ahead (None: this source reads only when asked).
    _readahead: Readahead | None = None
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

    def warm(self, keys: Iterable[TileKey]) -> None:
        """Start loading ``keys`` that are neither cached nor loading on the source's read-ahead threads
        and return at once; sources without read-ahead do nothing. See :mod:`lazytiles.windowing.readahead`."""
        if self._readahead is not None:
            self._readahead.warm(self, keys)

    def release(self, keys: Iterable[TileKey]) -> None:
        """Drop ``keys`` from the cache: an in-order pass has read the last window that needs them."""
        keys = list(keys)
        if self._readahead is not None:
            self._readahead.forget(keys)  # first, so a late background load does not read them again
        self.cache.discard(keys)

    def read(self, window: Window) -> np.ndarray:
        """Pixels of ``window`` as ``(count, height, width)``, through the cache; boundless (filled).

        Examples
        --------
        >>> import numpy as np, lazytiles as lt
        >>> from rasterio.windows import Window
        >>> src = lt.ArraySource(np.arange(16, dtype="uint8").reshape(1, 4, 4), tile_shape=(2, 2))
        >>> src.read(Window(1, 1, 2, 2))
        array([[[ 5,  6],
                [ 9, 10]]], dtype=uint8)
        """
        from ..mosaic import assemble

        return assemble(self, window)[0]

    def stats(self) -> dict[str, Any]:
        """Counters of this source: ``tiles_read``, ``bytes_decoded``, ``read_seconds`` and, for remote
        sources, requests, retries, failures and missing tiles."""
        with self._stats_lock:
            counts = dict(self._counts)
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
