"""Assemble one pixel window from the tiles under it.

Pure: it takes the tile grid, the pixel format and a function that gets one tile (a
:class:`TileReader`: every source is one), and knows nothing of where tiles come from. Pixels outside
the raster are filled with ``fill_value`` (a source's nodata, 0 when it has none), so the result
equals ``rasterio.open(p).read(window=w, boundless=True, fill_value=...)`` bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from rasterio.windows import Window

from .cache import TileKey
from .errors import InvalidArgumentError
from .grid import TileGrid


class TileReader(Protocol):
    """What :func:`assemble` needs of a source: its tile grid, pixel format, and one tile at a time."""

    @property
    def grid(self) -> TileGrid: ...

    @property
    def count(self) -> int: ...

    @property
    def dtype(self) -> np.dtype: ...

    @property
    def fill_value(self) -> float: ...

    def get_tile(self, key: TileKey) -> tuple[np.ndarray, bool]:
        """Tile ``key`` as ``(count, rows, cols)`` (clipped at the raster's edge), and whether it was cached."""
        ...


@dataclass(frozen=True, slots=True)
class ReadInfo:
    """How one window was read: the tiles it used, how many were already cached, and the time taken."""

    tiles: tuple[TileKey, ...]
    hits: int
    misses: int
    seconds: float


def _integer_window(window: Window) -> tuple[int, int, int, int]:
    values = (window.row_off, window.col_off, window.height, window.width)
    ints = (int(window.row_off), int(window.col_off), int(window.height), int(window.width))
    if any(v != i for v, i in zip(values, ints)) or ints[2] <= 0 or ints[3] <= 0:
        raise InvalidArgumentError(
            f"{window!r} must have integer offsets and positive integer sizes; round it first, e.g. "
            "window.round_offsets().round_lengths()"
        )
    return ints


def assemble(tiles: TileReader, window: Window, keys: Sequence[TileKey]) -> tuple[np.ndarray, ReadInfo]:
    """Pixels of ``window`` as a new ``(count, height, width)`` array, and how it was read.

    ``keys`` are the tiles under the window (``src.tiles_under(window)``); each is got once, in order.
    """
    start = time.perf_counter()
    r0, c0, h, w = _integer_window(window)
    grid = tiles.grid
    if r0 >= 0 and c0 >= 0 and r0 + h <= grid.height and c0 + w <= grid.width:
        out = np.empty((tiles.count, h, w), dtype=tiles.dtype)  # the tiles under it cover every pixel
    else:
        out = np.full((tiles.count, h, w), tiles.fill_value, dtype=tiles.dtype)
    hits = 0
    for key in keys:
        tile, hit = tiles.get_tile(key)
        hits += hit
        ty, tx = key.row * grid.tile_height, key.col * grid.tile_width
        # the part of this tile inside the window, in raster pixels
        ra, rb = max(r0, ty), min(r0 + h, ty + tile.shape[1])
        ca, cb = max(c0, tx), min(c0 + w, tx + tile.shape[2])
        if ra < rb and ca < cb:
            out[:, ra - r0 : rb - r0, ca - c0 : cb - c0] = tile[:, ra - ty : rb - ty, ca - tx : cb - tx]
    return out, ReadInfo(tuple(keys), hits, len(keys) - hits, time.perf_counter() - start)
