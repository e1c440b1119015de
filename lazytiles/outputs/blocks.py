"""Stitching window predictions into output blocks, holding only blocks that windows still to come touch.

The output grid is the source's pixel grid coarsened by the model's factor, cut into square blocks.
:class:`BlockPlan` knows, from the windows' rectangles alone (no pixels), which windows touch each
block. :class:`Stitcher` takes each window's prediction, in any order, into the blocks it touches and
hands back each block as soon as the last window touching it has arrived; the block is then freed.
The result does not depend on the order windows arrive in:

- ``blend="center"``: each output pixel comes from the window whose centre is nearest (Euclidean, in
  exact integer arithmetic), ties broken by the lower window index;
- ``blend="mean"``: the float32 average of the windows covering the pixel, summed in window-index order,
  optionally weighted by a per-pixel weight of the window (:func:`taper`: the middle counts most).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import InvalidArgumentError

Blend = Literal["center", "mean"]
#: A block of the output grid: (block row, block column).
BlockKey = tuple[int, int]


@dataclass(frozen=True)
class OutputGrid:
    """Where the output raster lies: its upper-left corner ``col_off, row_off`` in source pixels,
    ``factor`` source pixels per output pixel, its ``width, height`` and square ``block`` in output pixels."""

    col_off: int
    row_off: int
    factor: int
    width: int
    height: int
    block: int

    @property
    def blocks(self) -> tuple[int, int]:
        """Block rows and block columns."""
        return math.ceil(self.height / self.block), math.ceil(self.width / self.block)

    def block_window(self, key: BlockKey) -> tuple[int, int, int, int]:
        """``(col, row, width, height)`` of block ``key`` in output pixels (edge blocks are cut)."""
        row, col = key[0] * self.block, key[1] * self.block
        return col, row, min(self.block, self.width - col), min(self.block, self.height - row)


def output_grid(rects: np.ndarray, raster_shape: tuple[int, int], factor: int, block: int) -> OutputGrid:
    """The output grid of windows ``rects`` ``(N, 4)`` (col, row, width, height, source pixels) on a
    raster of ``raster_shape`` (rows, cols): their bounding box, cut to the raster, coarsened by
    ``factor``. Every window must lie on that grid (offsets from its corner multiples of ``factor``)."""
    if not len(rects):
        raise InvalidArgumentError("there are no windows to write; pass at least one window")
    c0, r0 = max(int(rects[:, 0].min()), 0), max(int(rects[:, 1].min()), 0)
    c1 = min(int((rects[:, 0] + rects[:, 2]).max()), raster_shape[1])
    r1 = min(int((rects[:, 1] + rects[:, 3]).max()), raster_shape[0])
    off = (rects[:, 0] - c0) % factor + (rects[:, 1] - r0) % factor
    if off.any():
        bad = int(np.flatnonzero(off)[0])
        col, row = int(rects[bad, 0]), int(rects[bad, 1])
        raise InvalidArgumentError(
            f"the window at col_off={col}, row_off={row} is not on the model's output grid (every {factor} source "
            f"pixels from col {c0}, row {r0}); use a stride that is a multiple of {factor} and edge='pad' or 'drop' "
            "(edge='shift' moves the last windows off the grid)"
        )
    return OutputGrid(c0, r0, factor, math.ceil((c1 - c0) / factor), math.ceil((r1 - r0) / factor), block)


def taper(height: int, width: int) -> np.ndarray:
    """Weights ``(height, width)`` float32 falling linearly from 1 in a window's middle to ``1/ceil(n/2)``
    at its edges (a pyramid; never 0, so a pixel only one window covers keeps its value)."""

    def ramp(n: int) -> np.ndarray:
        i = np.arange(n)
        return (np.minimum(i, n - 1 - i) + 1) / math.ceil(n / 2)

    weights: np.ndarray = np.outer(ramp(height), ramp(width)).astype(np.float32)
    return weights


class Touching(Mapping[BlockKey, list[int]]):
    """The windows touching each block (positions, in sequence order), for the blocks some window touches.

    Held as two flat arrays (an offset per block, a position per window and block it touches), about
    8 bytes per block: a 131072² raster of 256-px blocks (262144 of them) needs 2 MB, not the hundreds
    a dict of lists would.
    """

    def __init__(self, grid: OutputGrid, rects: np.ndarray) -> None:
        self.shape = grid.blocks
        b = grid.block
        live = np.flatnonzero((rects[:, 2] > rects[:, 0]) & (rects[:, 3] > rects[:, 1]))
        r0, c0 = rects[live, 1] // b, rects[live, 0] // b
        rn, cn = (rects[live, 3] - 1) // b - r0 + 1, (rects[live, 2] - 1) // b - c0 + 1
        per = rn * cn  # blocks each live window touches
        owner = np.repeat(np.arange(len(live)), per)
        k = np.arange(int(per.sum())) - np.repeat(np.cumsum(per) - per, per)  # which of its blocks
        block = (r0[owner] + k // cn[owner]) * self.shape[1] + c0[owner] + k % cn[owner]
        order = np.argsort(block, kind="stable")  # by block, then position
        self.positions = live[owner[order]].astype(np.int32)
        counts = np.bincount(block, minlength=self.shape[0] * self.shape[1])
        self.counts = counts.reshape(self.shape).astype(np.int32)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __getitem__(self, key: BlockKey) -> list[int]:
        br, bc = key
        if not (0 <= br < self.shape[0] and 0 <= bc < self.shape[1]) or not self.counts[br, bc]:
            raise KeyError(key)
        i = br * self.shape[1] + bc
        positions: list[int] = self.positions[self.offsets[i] : self.offsets[i + 1]].tolist()
        return positions

    def __iter__(self) -> Iterator[BlockKey]:
        yield from ((br, bc) for br, bc in np.argwhere(self.counts > 0).tolist())

    def __len__(self) -> int:
        return int(np.count_nonzero(self.counts))


class BlockPlan:
    """Which windows touch each block of ``grid``: from the windows' rectangles, no pixels.

    ``rects`` are the windows' ``(col, row, width, height)`` in source pixels, in sequence order
    (positions); ``indices`` their window indices (the tie-break of ``blend="center"``).
    """

    def __init__(self, grid: OutputGrid, rects: np.ndarray, indices: np.ndarray) -> None:
        self.grid = grid
        f = grid.factor
        out = np.empty((len(rects), 4), np.int64)  # x0, y0, x1, y1 in output pixels, cut to the grid
        out[:, 0] = (rects[:, 0] - grid.col_off) // f
        out[:, 1] = (rects[:, 1] - grid.row_off) // f
        out[:, 2] = out[:, 0] + rects[:, 2] // f
        out[:, 3] = out[:, 1] + rects[:, 3] // f
        self.full = out.copy()  # the whole window, where its centre is
        out[:, 0:2] = np.maximum(out[:, 0:2], 0)
        out[:, 2] = np.minimum(out[:, 2], grid.width)
        out[:, 3] = np.minimum(out[:, 3], grid.height)
        self.rects = out
        self.indices = np.asarray(indices, np.int64)
        self.touching = Touching(grid, out)

    def blocks_of(self, position: int) -> list[BlockKey]:
        """The blocks window ``position`` touches."""
        x0, y0, x1, y1 = self.rects[position].tolist()
        b = self.grid.block
        if x1 <= x0 or y1 <= y0:
            return []
        return [(br, bc) for br in range(y0 // b, (y1 - 1) // b + 1) for bc in range(x0 // b, (x1 - 1) // b + 1)]

    def piece(self, position: int, key: BlockKey, data: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray]:
        """``(inner, piece)``: the part of window ``position``'s array ``data`` ``(bands, h, w)`` in block
        ``key``, and where it lies in the block."""
        col, row, width, height = self.grid.block_window(key)
        x0, y0, _, _ = self.full[position].tolist()
        cx0, cy0, cx1, cy1 = self.rects[position].tolist()
        bx0, by0 = max(cx0, col), max(cy0, row)
        bx1, by1 = min(cx1, col + width), min(cy1, row + height)
        inner = (slice(by0 - row, by1 - row), slice(bx0 - col, bx1 - col))
        return inner, data[:, by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0]

    def owners(self, key: BlockKey) -> np.ndarray:
        """The window each pixel of block ``key`` comes from with ``blend="center"``, as its place in
        ``touching[key]`` (-1 where none covers it): the nearest centre, ties to the lower window index.
        int8 for up to 127 windows (the owners of the blocks in memory are much of the stitcher's memory)."""
        col, row, width, height = self.grid.block_window(key)
        ys = 2 * np.arange(row, row + height, dtype=np.int64)[:, None] + 1  # doubled pixel centres
        xs = 2 * np.arange(col, col + width, dtype=np.int64)[None, :] + 1
        touching = self.touching.get(key, [])
        owner = np.full((height, width), -1, np.int8 if len(touching) < 2**7 else np.int32)
        best = np.full((height, width), np.iinfo(np.int64).max, np.int64)
        for place, position in sorted(enumerate(touching), key=lambda t: int(self.indices[t[1]])):
            x0, y0, x1, y1 = self.rects[position].tolist()
            fx0, fy0, fx1, fy1 = self.full[position].tolist()
            r0, r1 = max(y0, row) - row, min(y1, row + height) - row  # the part of the block it covers
            c0, c1 = max(x0, col) - col, min(x1, col + width) - col
            if r1 <= r0 or c1 <= c0:
                continue
            dy, dx = ys[r0:r1] - (fy0 + fy1), xs[:, c0:c1] - (fx0 + fx1)
            dist = dy * dy + dx * dx
            near = best[r0:r1, c0:c1]
            better = dist < near  # strictly: an equal distance keeps the lower index
            np.copyto(owner[r0:r1, c0:c1], place, where=better)
            np.minimum(near, dist, out=near)
        return owner


class _MeanBlock:
    """One block of ``blend="mean"``: a float32 sum and count, added to in window-index order.

    A piece that arrives before a window of lower index touching the block waits (parked) until that
    one has been added: the sums are rounded the same whatever the arrival order, and for windows in
    their usual order nothing waits.
    """

    def __init__(self, order: list[int], bands: int, height: int, width: int) -> None:
        self.order, self.cursor = order, 0
        self.total = np.zeros((bands, height, width), np.float32)
        self.count = np.zeros((height, width), np.float32)
        self.parked: dict[int, tuple[tuple[slice, slice], np.ndarray, np.ndarray | None]] = {}

    def add(self, position: int, inner: tuple[slice, slice], piece: np.ndarray, weight: np.ndarray | None) -> None:
        """Add window ``position``'s ``piece`` at ``inner``, times ``weight`` (its part of the window's weights;
        None: 1) when its turn comes."""
        self.parked[position] = (inner, piece, weight)
        while self.cursor < len(self.order) and self.order[self.cursor] in self.parked:
            where, values, w = self.parked.pop(self.order[self.cursor])
            self.cursor += 1
            if w is None:
                self.total[(slice(None), *where)] += values
                self.count[where] += 1
            else:
                self.total[(slice(None), *where)] += values * w
                self.count[where] += w

    def mean(self, fill: float) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            out: np.ndarray = self.total / self.count
        out[:, self.count == 0] = fill
        return out


class Stitcher:
    """Window predictions in, finished blocks out: holds only blocks some window still to come touches.

    Parameters
    ----------
    plan
        The blocks and the windows touching each.
    bands, dtype
        Of the blocks: ``bands`` of ``dtype`` for ``blend="center"``; ``"mean"`` sums float32.
    convert
        ``blend="center"``: what turns a window's ``(K, pixels)`` values into the block's
        ``(bands, pixels)``, applied to the pixels each window gives (default: none).
    blend
        ``"center"`` or ``"mean"`` (see the module's docstring).
    fill
        The value of pixels no window covers.
    weights
        ``blend="mean"``: each window's per-pixel weights ``(h, w)`` (positive, float32); None: all 1.
    """

    def __init__(
        self,
        plan: BlockPlan,
        bands: int,
        dtype: np.dtype,
        blend: Blend,
        fill: float,
        convert: Callable[[np.ndarray], np.ndarray] | None = None,
        weights: np.ndarray | None = None,
    ) -> None:
        self.plan, self.bands, self.blend, self.fill = plan, bands, blend, fill
        self.weights = None if weights is None else np.asarray(weights, np.float32)[None]
        self.dtype = np.dtype(np.float32) if blend == "mean" else np.dtype(dtype)
        self.convert = convert
        self.remaining = plan.touching.counts.copy()  # per block: windows still to come
        self._center: dict[BlockKey, tuple[np.ndarray, np.ndarray]] = {}  # buffer, owners
        self._mean: dict[BlockKey, _MeanBlock] = {}
        self.max_held = 0

    @property
    def held(self) -> int:
        """Blocks in memory now."""
        return len(self._center) + len(self._mean)

    def add(self, position: int, data: np.ndarray) -> list[tuple[BlockKey, np.ndarray]]:
        """Take window ``position``'s array ``(bands, h, w)``; return the blocks it finished,
        ``(key, (bands, bh, bw) array)``."""
        finished = []
        for key in self.plan.blocks_of(position):
            if self.remaining[key] > 0:  # else finished before, or stitched elsewhere
                block = self.take(key, position, *self.plan.piece(position, key, data))
                if block is not None:
                    finished.append((key, block))
        return finished

    def take(self, key: BlockKey, position: int, inner: tuple[slice, slice], piece: np.ndarray) -> np.ndarray | None:
        """Take the part ``piece`` of window ``position`` that lies at ``inner`` in block ``key``; the block
        when that was the last window touching it."""
        if self.blend == "center":
            buffer, owners = self._center_block(key)
            mine = owners[inner] == self.plan.touching[key].index(position)
            rows, cols = np.flatnonzero(mine.any(axis=1)), np.flatnonzero(mine.any(axis=0))
            if len(rows) and mine[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all():  # a rectangle: slices
                part = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
                values = piece[part]
                buffer[(slice(None), *inner)][part] = values if self.convert is None else self.convert(values)
            elif len(rows):
                values = piece[:, mine]  # (bands, pixels owned): converted only where they are kept
                buffer[(slice(None), *inner)][:, mine] = values if self.convert is None else self.convert(values)
        else:
            block = self._mean.get(key)
            if block is None:
                _, _, width, height = self.plan.grid.block_window(key)
                order = sorted(self.plan.touching[key], key=lambda p: int(self.plan.indices[p]))
                block = self._mean[key] = _MeanBlock(order, self.bands, height, width)
            weight = None if self.weights is None else self.plan.piece(position, key, self.weights)[1][0]
            block.add(position, inner, piece.astype(np.float32), weight)
        self.max_held = max(self.max_held, self.held)
        self.remaining[key] -= 1
        return self._finish(key) if self.remaining[key] == 0 else None

    def _center_block(self, key: BlockKey) -> tuple[np.ndarray, np.ndarray]:
        if key not in self._center:
            _, _, width, height = self.plan.grid.block_window(key)
            buffer = np.full((self.bands, height, width), self.fill, self.dtype)
            self._center[key] = (buffer, self.plan.owners(key))
        return self._center[key]

    def _finish(self, key: BlockKey) -> np.ndarray:
        if self.blend == "center":
            return self._center.pop(key)[0]
        return self._mean.pop(key).mean(self.fill)


__all__ = ["Blend", "BlockKey", "BlockPlan", "OutputGrid", "Stitcher", "Touching", "output_grid", "taper"]
