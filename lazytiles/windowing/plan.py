"""Window planning: which windows a region is cut into, and in what order. Integers only; no I/O.

A plan is a grid of ``rows x cols`` candidate windows over an area of interest (AOI). Offsets along
each axis are regular (``start + k * stride``) except, with ``edge="shift"``, a last one moved inward
so it ends at the AOI's edge. Window ``k`` of a plan is found in O(1); nothing is stored per window.

Order (cache-aware)
-------------------
Windows are numbered in vertical *strips* of window columns, row-major inside each strip. A strip is
as wide as the tile cache allows: two consecutive window rows of a strip must fit in the cache, so a
pass holds only a few rows of tiles and each tile is decoded once. When the whole width fits (with
the default 512 MiB cache, any raster up to at least 131072 px wide of 3-band 8-bit 512-px tiles),
there is one strip and the order is plain row-major.

That bound is for the cache's least-recently-used eviction alone (any access pattern that follows
the order: indexing, prefetch workers). Iterating a sequence also frees each tile right after the
last window that touches it (:meth:`WindowPlan.finished_tiles`), so a pass holds about one row of
tiles whatever the cache's size.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from rasterio.windows import Window

from ..errors import InvalidArgumentError, is_int, is_real

Edge = Literal["shift", "pad", "drop"]
EDGES: tuple[str, ...] = ("shift", "pad", "drop")

#: Fraction of the cache a pass may plan to fill with the tiles it must keep.
CACHE_SHARE = 0.8


def _pair(value: Any, what: str, *, unit: str = "pixels") -> tuple[int, int]:
    pair = (value, value) if isinstance(value, numbers.Integral) else value
    try:
        a, b = pair
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{what} must be a positive int or (rows, cols) in {unit}, got {value!r}") from None
    if not all(is_int(v) and v > 0 for v in (a, b)):
        raise InvalidArgumentError(f"{what} must be a positive int or (rows, cols) in {unit}, got {value!r}")
    return int(a), int(b)


def size_and_stride(size: Any, overlap: Any, stride: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """(rows, cols) of the windows and of the step between them, from :func:`lazytiles.windows`'s
    ``size`` and either ``stride`` (pixels) or ``overlap`` (a fraction of ``size``)."""
    size_hw = _pair(size, "size")
    if stride is not None:
        if overlap:
            raise InvalidArgumentError(
                f"overlap={overlap!r} and stride={stride!r} were both given; pass one of them "
                "(stride is in pixels, overlap is a fraction of size)"
            )
        return size_hw, _pair(stride, "stride")
    if not is_real(overlap) or not 0 <= overlap < 1:
        raise InvalidArgumentError(
            f"overlap must be in [0, 1), got {overlap!r}; for a step in pixels pass stride= instead"
        )
    return size_hw, (max(1, round(size_hw[0] * (1 - overlap))), max(1, round(size_hw[1] * (1 - overlap))))


def intersect(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """The overlap of two (row, col, height, width) rectangles, or None when they do not overlap."""
    r0, c0 = max(a[0], b[0]), max(a[1], b[1])
    r1, c1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    return None if r1 <= r0 or c1 <= c0 else (r0, c0, r1 - r0, c1 - c0)


@dataclass(frozen=True, slots=True)
class AxisPlan:
    """Window offsets along one axis: ``start + k * stride`` for ``k < regular``, then ``last`` if set."""

    start: int
    stride: int
    regular: int
    last: int | None = None

    def __len__(self) -> int:
        return self.regular + (self.last is not None)

    def offset(self, k: int) -> int:
        if k < self.regular or self.last is None:
            return self.start + k * self.stride
        return int(self.last)

    def offsets(self, k: np.ndarray) -> np.ndarray:
        out = self.start + k.astype(np.int64) * self.stride
        if self.last is not None:
            out = np.where(k < self.regular, out, self.last)
        return out

    def finished(self, k: int, size: int, tile: int, extent: int) -> range:
        """Tiles of ``tile`` px (of an axis ``extent`` px long) that window ``k`` is the last to touch.

        Offsets increase, so a tile window ``k`` touches is touched again only if window ``k + 1``
        starts before the tile ends.
        """
        lo = self.offset(k)
        a, b = max(lo, 0), min(lo + size, extent)
        if b <= a:
            return range(0)
        last = (b - 1) // tile
        if k + 1 < len(self):
            last = min(last, self.offset(k + 1) // tile - 1)
        return range(a // tile, last + 1)


def plan_axis(start: int, length: int, extent: int, size: int, stride: int, edge: Edge, axis: str) -> AxisPlan:
    """Offsets of windows of ``size`` px covering ``[start, start + length)`` of a raster ``extent`` px long.

    ``shift`` moves the last window inward so it ends at the area's end (all windows full size and
    inside the raster; a raster shorter than ``size`` gets one window at 0, padded). ``pad`` lets the
    last window run past the end. ``drop`` keeps only windows that fit inside the area.
    """
    if length >= size:
        regular = (length - size) // stride + 1
        remainder = (length - size) % stride
        if remainder == 0 or edge == "drop":
            return AxisPlan(start, stride, regular)
        if edge == "pad":  # one more window, if it starts inside the area (with gaps it may not)
            return AxisPlan(start, stride, regular + (regular * stride < length))
        return AxisPlan(start, stride, regular, start + length - size)
    if edge == "drop":
        raise InvalidArgumentError(
            f"size={size} px is larger than the area's {length} px {axis} with edge='drop', so no "
            "window fits; use a smaller size, a larger area, or edge='shift' / edge='pad'"
        )
    if edge == "pad":
        return AxisPlan(start, stride, 1)
    return AxisPlan(max(0, min(start, extent - size)), stride, 1)


def _tiles_spanned(lo: int, hi: int, tile: int, extent: int) -> int:
    """Tiles of ``tile`` px holding any pixel of ``[lo, hi)`` clipped to ``[0, extent)``."""
    lo, hi = max(lo, 0), min(hi, extent)
    return 0 if hi <= lo else (hi - 1) // tile - lo // tile + 1


def _rows_held(rows: AxisPlan, size: int, tile: int, extent: int) -> int:
    """Most tile rows two consecutive window rows touch together (what a row-major pass must keep)."""
    n = len(rows)
    if n == 1:
        return _tiles_spanned(rows.offset(0), rows.offset(0) + size, tile, extent)
    period = tile // math.gcd(rows.stride, tile)  # offsets modulo the tile repeat with this period
    pairs = [*range(min(rows.regular - 1, period)), n - 2]
    return max(_tiles_spanned(rows.offset(i), rows.offset(i + 1) + size, tile, extent) for i in pairs)


def strip_width(
    rows: AxisPlan,
    cols: AxisPlan,
    size: tuple[int, int],
    tile_shape: tuple[int, int],
    raster_shape: tuple[int, int],
    tile_bytes: int,
    cache_bytes: int,
) -> int:
    """Window columns per strip so that a strip's working set fits in ``CACHE_SHARE`` of the cache."""
    n_cols = len(cols)
    budget = CACHE_SHARE * cache_bytes
    held_rows = max(1, _rows_held(rows, size[0], tile_shape[0], raster_shape[0]))
    lo, hi = cols.offset(0), cols.offset(n_cols - 1) + size[1]
    if held_rows * _tiles_spanned(lo, hi, tile_shape[1], raster_shape[1]) * tile_bytes <= budget:
        return n_cols  # the whole width fits: plain row-major
    per_row = int(budget // (held_rows * tile_bytes))
    # a strip of s windows spans (s - 1) * stride + size px: at most that / tile + 1 tiles
    span = (per_row - 1) * tile_shape[1] - size[1]
    return max(1, min(n_cols, span // cols.stride + 1 if span >= 0 else 1))


@dataclass(frozen=True, slots=True)
class WindowPlan:
    """The candidate windows of a region, in cache-aware order (see the module docstring)."""

    rows: AxisPlan
    cols: AxisPlan
    size: tuple[int, int]
    strip: int

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def shape(self) -> tuple[int, int]:
        """(window rows, window columns) of the grid."""
        return len(self.rows), len(self.cols)

    def cell(self, k: int) -> tuple[int, int]:
        """(window row, window column) of candidate ``k``."""
        n_rows, n_cols = self.shape
        per_strip = self.strip * n_rows
        s, rem = divmod(k, per_strip)
        width = min(self.strip, n_cols - s * self.strip)
        i, j = divmod(rem, width)
        return i, s * self.strip + j

    def cells(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised :meth:`cell`."""
        n_rows, n_cols = self.shape
        k = np.asarray(k, dtype=np.int64)
        s, rem = np.divmod(k, self.strip * n_rows)
        width = np.minimum(self.strip, n_cols - s * self.strip)
        i, j = np.divmod(rem, width)
        return i, s * self.strip + j

    def window(self, k: int) -> Window:
        """Pixel window of candidate ``k``."""
        i, j = self.cell(k)
        return Window(self.cols.offset(j), self.rows.offset(i), self.size[1], self.size[0])

    def offsets(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row offsets, column offsets) of candidates ``k``."""
        i, j = self.cells(k)
        return self.rows.offsets(i), self.cols.offsets(j)

    def finished_tiles(self, k: int, tile_shape: tuple[int, int], raster_shape: tuple[int, int]) -> tuple[range, range]:
        """Tile rows and columns whose tiles no candidate after ``k`` (in this order) touches.

        Tile (r, c) is last touched by the window at (last window row over r, last window column
        over c): the latest strip over c, and in it the latest row, then column. So an in-order pass
        can free each tile as soon as that window is read, and holds about one row of tiles (not
        the cache's ``max_bytes``).
        """
        i, j = self.cell(k)
        return (
            self.rows.finished(i, self.size[0], tile_shape[0], raster_shape[0]),
            self.cols.finished(j, self.size[1], tile_shape[1], raster_shape[1]),
        )
