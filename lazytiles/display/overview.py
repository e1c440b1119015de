"""Overviews: the pixels of a large area of a source, shrunk, read as cheaply as the source allows.

Used by the region pictures of :mod:`lazytiles.display.jupyter` (``wins.preview()``, ``lt.show(src)``), which
re-exports :func:`overview`. Reads pixels: a raster's overviews, a tile service's lower zoom levels,
a strided view of an in-memory array, or (for a small area only) the source itself.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from affine import Affine
from rasterio.windows import Window as PixelWindow

from ..errors import InvalidArgumentError

if TYPE_CHECKING:
    from ..sources.base import TileSource
    from ..sources.xyz import XYZSource


def _clip(area: PixelWindow, src: TileSource) -> PixelWindow:
    c0, r0 = max(int(area.col_off), 0), max(int(area.row_off), 0)
    c1 = min(int(area.col_off + area.width), src.width)
    r1 = min(int(area.row_off + area.height), src.height)
    if c1 <= c0 or r1 <= r0:
        raise InvalidArgumentError(f"{area!r} does not overlap the raster ({src.height} x {src.width} px)")
    return PixelWindow(c0, r0, c1 - c0, r1 - r0)


def _out_shape(area: PixelWindow, max_size: int) -> tuple[int, int]:
    scale = max(area.height, area.width) / max_size
    if scale <= 1:
        return int(area.height), int(area.width)
    return max(1, round(area.height / scale)), max(1, round(area.width / scale))


#: A source with no overviews is read in full for a preview only up to this many pixels.
FULL_READ_MAX = 4096 * 4096


def overview(src: TileSource, area: PixelWindow | None = None, max_size: int = 1024) -> tuple[np.ndarray, Affine]:
    """Pixels of ``area`` of ``src`` (default: all of it) shrunk to at most ``max_size`` a side.

    Reads as little as the source allows: a raster's overviews (GDAL picks the level), a tile
    service's lower zoom levels, strided views of an in-memory array; other sources are read in full
    only when the area is small (at most 4096 x 4096 pixels).

    Returns
    -------
    pixels, to_source
        ``(bands, rows, cols)`` pixels, and the affine transform from their pixel grid to ``src``'s.
    """
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise InvalidArgumentError(f"max_size must be a positive number of pixels, got {max_size!r}")
    if area is None:
        if src.needs_area:
            raise InvalidArgumentError(
                f"{src!r} covers the whole world; preview a window sequence over your area instead: "
                "lt.windows(src, size, bounds=..., bounds_crs='EPSG:4326').preview()"
            )
        area = PixelWindow(0, 0, src.width, src.height)
    from ..sources import ArraySource, RasterSource
    from ..sources.xyz import XYZSource

    area = _clip(area, src)
    out_h, out_w = _out_shape(area, max_size)
    if isinstance(src, XYZSource):
        return _xyz_overview(src, area, max_size)
    if isinstance(src, ArraySource):
        step = math.ceil(max(area.height / out_h, area.width / out_w))
        r0, c0 = int(area.row_off), int(area.col_off)
        data = np.ascontiguousarray(
            src.array[:, r0 : r0 + int(area.height) : step, c0 : c0 + int(area.width) : step]
        )
    elif isinstance(src, RasterSource):  # GDAL reads from the overview level that fits
        data = src._dataset().read(src.bands, window=area, out_shape=(src.count, out_h, out_w))
    else:
        data = _read_small(src, area, (out_h, out_w), "has no overviews")
    to_source = Affine.translation(area.col_off, area.row_off) @ Affine.scale(
        area.width / data.shape[2], area.height / data.shape[1]
    )
    return data, to_source


def _read_small(src: TileSource, area: PixelWindow, shape: tuple[int, int], why: str) -> np.ndarray:
    if area.height * area.width > FULL_READ_MAX:
        raise InvalidArgumentError(
            f"{src!r} {why}, and {area!r} is too large to read in full for a preview; preview a smaller "
            "area (lt.windows(..., bounds=...).preview())"
        )
    step = math.ceil(max(area.height / shape[0], area.width / shape[1]))
    return src.read(area)[:, ::step, ::step]


def _xyz_overview(src: XYZSource, area: PixelWindow, max_size: int) -> tuple[np.ndarray, Affine]:
    """Read ``area`` from the zoom level ``k`` levels up where it is at most ``max_size`` pixels a
    side (each level up halves the pixels); a level whose tiles are all absent is skipped."""
    from ..sources.xyz import XYZSource

    longest = max(area.height, area.width)
    k = min(src.zoom, max(0, math.ceil(math.log2(longest / max_size)))) if longest > max_size else 0
    if k:
        low = XYZSource(
            src.template, zoom=src.zoom - k, bands=src.bands, tile_size=src.tile_size, nodata=src.nodata,
            subdomains=src.subdomains, http=src.http, cache_dir=src.cache_dir, cache=src.cache,
        )  # fmt: skip
        f = 2**k
        c0, r0 = int(area.col_off) // f, int(area.row_off) // f
        c1 = -(-int(area.col_off + area.width) // f)
        r1 = -(-int(area.row_off + area.height) // f)
        window = PixelWindow(c0, r0, c1 - c0, r1 - r0)
        data = low.read(window)
        if low.stats()["missing"] < len(low.tiles_under(window)):
            return data, Affine.translation(c0 * f, r0 * f) @ Affine.scale(f)
    data = _read_small(src, area, _out_shape(area, max_size), "has no lower zoom levels")
    to_source = Affine.translation(area.col_off, area.row_off) @ Affine.scale(
        area.width / data.shape[2], area.height / data.shape[1]
    )
    return data, to_source
