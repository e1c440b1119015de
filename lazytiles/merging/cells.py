"""Merging by spatial cells: ``lt.merge``'s result, computed cell by cell so that it can scale out.

This is the algorithm of :class:`lazytiles.beam.MergeDetections`, in plain numpy (no Beam), so it can
be tested and measured alone: :func:`merge_in_cells` runs it in one process, the Beam transform runs
each step of it on workers, with a ``GroupByKey`` between the levels.

Why it is exact
---------------
``lt.merge`` compares two boxes only when they are near each other: both grown by ``reach = margin
+ 1`` px overlap (see :mod:`lazytiles.merge`). Boxes that match form groups (connected components),
and the merge of a group depends on that group alone: its boxes, their windows and their rank
(complete first, then score, position, label, and finally the order in which the boxes came).

So the area is cut into square cells. Each box goes to the cell holding its centre, its *home*, and
as a copy to every other cell that the box grown by ``halo = 2 * reach + 1`` px touches. A box
whose grown box lies inside a cell has all its possible partners in that cell: a partner comes
within ``2 * reach`` px of it, so its own grown box reaches into the cell. Hence a group all of whose
boxes lie inside the cell (with a pixel to spare) is a whole group of the global merge, and its
boxes are at home there and nowhere else: it is merged there, once. Every other group reaches a
cell's edge; its boxes are sent on from their home cells only (copies are dropped: each box has
one home) to the next level, whose cells are ``fanin`` times larger per side, with fresh halo
copies. Boxes merged at a level have no partners among those sent on (they are whole groups), so
the argument repeats. After the last level one cell holds what is left: the groups on the seams of
the largest cells. Each box carries ``seq = position << 32 | k`` (its window's place in the sequence,
its place in the window), which orders boxes as the local merge's arrival order does, so ties break
the same way. The union of the cells' results, sorted as ``lt.merge`` sorts, is ``lt.merge``'s result.

What moves
----------
A box is a 93-byte record (:data:`RECORD`) and a merged box a 53-byte one (:data:`MERGED`); outlines, when
boxes have them, travel beside their records as WKB (:class:`~lazytiles.merging.chunks.Chunk`). At level
0 a box is copied to 1 cell, or 2 to 4 within ``halo`` px of a cell's edge; at each later level only
the boxes of groups that reach an edge move, a fraction that shrinks about ``fanin`` times a level.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..detections import Detections
from ..errors import InvalidArgumentError, is_int, is_real
from .chunks import Chunk
from .grouping import BoxPool, finish_groups, settle_groups
from .rule import MergeRule

#: A box on its way through the merge: what ``lazytiles.merge`` needs of it, in 93 bytes.
RECORD = np.dtype(
    [
        ("box", "<f8", (4,)),
        ("wrect", "<f8", (4,)),
        ("seq", "<i8"),
        ("widx", "<i8"),
        ("label", "<i8"),
        ("score", "<f4"),
        ("partial", "?"),
    ]
)
#: A merged box, in 53 bytes.
MERGED = np.dtype([("box", "<f8", (4,)), ("score", "<f4"), ("label", "<i8"), ("widx", "<i8"), ("partial", "?")])

#: Default side of a level-0 cell, in windows (of the longer window side).
CELL_WINDOWS = 8

Key = tuple[int, int]


@dataclass(frozen=True)
class CellGrid:
    """The merge's cells: level-``L`` cells are squares of ``cell * fanin ** L`` px from ``origin``.

    Keys are ``(column, row)`` of a cell at its level. After ``levels`` levels of cells, one last
    cell (key ``(0, 0)`` at level ``levels``) holds every box left. ``halo`` is how far, in pixels,
    a box is copied into neighbouring cells.

    Examples
    --------
    >>> from rasterio.windows import Window
    >>> grid = CellGrid.for_area(Window(0, 0, 10_000, 6_000), cell=1024, fanin=4, margin=1.0)
    >>> grid.levels, grid.side(1), grid.halo
    (2, 4096.0, 5.0)
    """

    origin: tuple[float, float]
    cell: float
    fanin: int
    levels: int
    halo: float

    @classmethod
    def for_area(cls, area: Any, *, cell: float, fanin: int, margin: float) -> CellGrid:
        """The grid over a pixel area (``WindowSequence.area``): levels until one cell covers it."""
        extent = max(float(area.width), float(area.height))
        levels = 0
        while cell * fanin**levels < extent:
            levels += 1
        return cls((float(area.col_off), float(area.row_off)), float(cell), int(fanin), levels, 2 * (margin + 1) + 1)

    def side(self, level: int) -> float:
        """Side of a cell of ``level``, in pixels."""
        return float(self.cell * self.fanin**level)

    def _extent(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(lo x, lo y, hi x, hi y) of boxes relative to the origin; a box that is not finite at 0."""
        b = np.asarray(boxes, dtype=np.float64) - np.array([*self.origin, *self.origin])
        lo_x, hi_x = np.minimum(b[:, 0], b[:, 2]), np.maximum(b[:, 0], b[:, 2])
        lo_y, hi_y = np.minimum(b[:, 1], b[:, 3]), np.maximum(b[:, 1], b[:, 3])
        finite = np.isfinite(lo_x) & np.isfinite(hi_x) & np.isfinite(lo_y) & np.isfinite(hi_y)
        lo_x, lo_y, hi_x, hi_y = (np.where(finite, v, 0.0) for v in (lo_x, lo_y, hi_x, hi_y))
        return lo_x, lo_y, hi_x, hi_y

    def home(self, boxes: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
        """(column, row) of the cell of ``level`` holding each box's centre."""
        lo_x, lo_y, hi_x, hi_y = self._extent(boxes)
        s = self.side(level)
        return np.floor((lo_x + hi_x) / 2 / s).astype(np.int64), np.floor((lo_y + hi_y) / 2 / s).astype(np.int64)

    def inside(self, boxes: np.ndarray, level: int, key: Key) -> np.ndarray:
        """Which boxes lie in cell ``key`` of ``level`` with their halo and a pixel to spare.

        Not finite boxes count as inside: ``lt.merge`` never matches them, so each is a group alone.
        """
        lo_x, lo_y, hi_x, hi_y = self._extent(boxes)
        s, g = self.side(level), self.halo + 1
        x0, y0 = key[0] * s, key[1] * s
        return (lo_x - g >= x0) & (hi_x + g <= x0 + s) & (lo_y - g >= y0) & (hi_y + g <= y0 + s)

    def route(self, records: Any, level: int) -> list[tuple[Key, Any]]:
        """``(cell key, records)`` for each cell of ``level`` that ``records`` (an array of :data:`RECORD`,
        or a :class:`~lazytiles.merging.chunks.Chunk` of them) go to: home and halo copies."""
        if not len(records):
            return []
        if level >= self.levels:
            return [((0, 0), records)]
        rec = records.records if isinstance(records, Chunk) else records
        pick = records.take if isinstance(records, Chunk) else records.__getitem__
        lo_x, lo_y, hi_x, hi_y = self._extent(rec["box"])
        s, g = self.side(level), self.halo
        cx0, cx1 = np.floor((lo_x - g) / s).astype(np.int64), np.floor((hi_x + g) / s).astype(np.int64)
        cy0, cy1 = np.floor((lo_y - g) / s).astype(np.int64), np.floor((hi_y + g) / s).astype(np.int64)
        nx = cx1 - cx0 + 1
        count = nx * (cy1 - cy0 + 1)
        box = np.repeat(np.arange(len(rec)), count)
        k = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        cx, cy = cx0[box] + k % nx[box], cy0[box] + k // nx[box]
        order = np.lexsort((box, cy, cx))
        cx, cy, box = cx[order], cy[order], box[order]
        cut = np.flatnonzero((cx[1:] != cx[:-1]) | (cy[1:] != cy[:-1])) + 1
        return [((int(cx[a]), int(cy[a])), pick(box[a:b])) for a, b in zip(np.r_[0, cut], np.r_[cut, len(box)])]


def window_records(position: int, window: Sequence[int], detections: Detections) -> np.ndarray:
    """The boxes of one window as :data:`RECORD` rows.

    ``position`` is the window's place in the sequence, ``window`` its ``(col_off, row_off, width,
    height)``; ``seq`` ranks the boxes as the local merge's arrival order does.
    """
    n = len(detections)
    if n >= 1 << 32:
        raise InvalidArgumentError(f"window {position} has {n} boxes; the merge ranks at most 2**32 per window")
    rec = np.empty(n, RECORD)
    col, row, width, height = (float(v) for v in window)
    rec["box"] = detections.boxes
    rec["wrect"] = (col, row, col + width, row + height)
    rec["seq"] = (np.int64(position) << 32) + np.arange(n, dtype=np.int64)
    rec["widx"] = detections.window_index
    rec["label"] = detections.labels
    rec["score"] = detections.scores
    rec["partial"] = detections.partial
    return rec


def window_chunk(position: int, window: Sequence[int], detections: Detections) -> Chunk:
    """:func:`window_records` with the boxes' outlines beside them."""
    return Chunk.with_shapes(window_records(position, window, detections), detections.shapes)


def _pool(chunk: Chunk) -> BoxPool:
    rec = chunk.records
    return BoxPool(
        boxes=np.ascontiguousarray(rec["box"]),
        scores=rec["score"].copy(),
        labels=rec["label"].copy(),
        widx=rec["widx"].copy(),
        partial=rec["partial"].copy(),
        seq=rec["seq"].copy(),
        wrect=np.ascontiguousarray(rec["wrect"]),
        settle=np.zeros(len(rec), np.int64),
        shapes=chunk.shapes,
    )


def _records_of(pool: BoxPool) -> Chunk:
    rec = np.empty(len(pool), RECORD)
    rec["box"], rec["wrect"], rec["seq"], rec["widx"] = pool.boxes, pool.wrect, pool.seq, pool.widx
    rec["label"], rec["score"], rec["partial"] = pool.labels, pool.scores, pool.partial
    return Chunk.with_shapes(rec, pool.shapes)


def merged_records(boxes: Any, scores: Any, labels: Any, window_index: Any, partial: Any) -> np.ndarray:
    """Merged boxes as :data:`MERGED` rows."""
    rec = np.empty(len(boxes), MERGED)
    rec["box"], rec["score"], rec["label"], rec["widx"], rec["partial"] = boxes, scores, labels, window_index, partial
    return rec


def settle_cell(
    grid: CellGrid, level: int, key: Key, chunks: Iterable[Any], rule: MergeRule
) -> tuple[Chunk, list[tuple[Key, Chunk]]]:
    """Merge the groups complete in one cell; send the others' boxes on from their home cell.

    Parameters
    ----------
    grid, level, key
        The cell.
    chunks
        :data:`RECORD` arrays, or :class:`~lazytiles.merging.chunks.Chunk` s of them with outlines:
        every box whose home or halo is the cell.
    rule
        The :class:`~lazytiles.MergeRule`.

    Returns
    -------
    merged, up
        The merged boxes (a chunk of :data:`MERGED`), and ``(key, chunk)`` of the next level.
    """
    chunk = Chunk.concat([Chunk.of(c, RECORD) for c in chunks], RECORD)
    if not len(chunk):
        return Chunk(np.empty(0, MERGED)), []
    pool = _pool(chunk)
    final = grid.inside(pool.boxes, level, key) if level < grid.levels else None
    out, rest = settle_groups(pool, rule, final)
    up: list[tuple[Key, Chunk]] = []
    if len(rest):
        hx, hy = grid.home(rest.boxes, level)
        mine = (hx == key[0]) & (hy == key[1])  # halo copies are sent on by their own home cell
        up = grid.route(_records_of(rest.take(np.flatnonzero(mine))), level + 1)
    merged = merged_records(out["boxes"], out["scores"], out["labels"], out["window_index"], out["partial"])
    return Chunk.with_shapes(merged, out["shapes"]), up


def merge_in_cells(
    items: Iterable[tuple[int, Sequence[int], Detections]], grid: CellGrid, rule: MergeRule
) -> tuple[list[Chunk], list[dict[str, int]]]:
    """Every level of the merge, in this process: what :class:`lazytiles.beam.MergeDetections` runs.

    ``items`` are ``(position, window, detections)`` of each window (see :func:`window_records`).
    Returns the merged chunks (of :data:`MERGED`, one per cell and level) and, per level, ``cells``
    (how many), ``records`` (box records shuffled into them, halo copies included) and ``merged``
    (boxes that came out there).
    """
    routed: dict[Key, list[Chunk]] = defaultdict(list)
    for position, window, detections in items:
        for key, rec in grid.route(window_chunk(position, window, detections), 0):
            routed[key].append(rec)
    merged, stats = [], []
    for level in range(grid.levels + 1):
        nxt: dict[Key, list[Chunk]] = defaultdict(list)
        done = 0
        for key, chunks in sorted(routed.items()):
            out, up = settle_cell(grid, level, key, chunks, rule)
            merged.append(out)
            done += len(out)
            for k2, r2 in up:
                nxt[k2].append(r2)
        records = sum(len(c) for chunks in routed.values() for c in chunks)
        stats.append({"level": level, "cells": len(routed), "records": records, "merged": done})
        routed = nxt
    return merged, stats


def merged_detections(chunks: Iterable[Any], transform: Any, crs: Any) -> Detections:
    """One :class:`~lazytiles.Detections` from merged chunks (:data:`MERGED` arrays, or chunks of them
    with outlines), in ``lt.merge``'s order."""
    parts = []
    for chunk in chunks:
        merged = Chunk.of(chunk, MERGED)
        c = merged.records
        if len(c):
            parts.append(
                {
                    "boxes": np.ascontiguousarray(c["box"]),
                    "scores": c["score"].copy(),
                    "labels": c["label"].copy(),
                    "window_index": c["widx"].copy(),
                    "partial": c["partial"].copy(),
                    "shapes": merged.all_shapes(),
                }
            )
    return finish_groups(parts, transform, crs)


def merge_by_cells(
    dets: Sequence[Detections],
    windows: Any,
    rule: MergeRule = MergeRule(),
    *,
    cell_size: float | None = None,
    fanin: int = 4,
) -> Detections:
    """``lt.merge(dets, windows=windows)`` by ``rule``, computed cell by cell in this process.

    ``dets`` holds one :class:`~lazytiles.Detections` per window of ``windows`` (a
    :class:`~lazytiles.WindowSequence`), in order. The result equals ``lt.merge``'s, exactly.

    Examples
    --------
    >>> import numpy as np, lazytiles as lt
    >>> wins = lt.windows(lt.ArraySource(np.zeros((1, 256, 448), np.uint8)), 256, stride=192)
    >>> left = lt.Detections([[150, 10, 256, 40]], [0.9], [1], [0], partial=[True])
    >>> right = lt.Detections([[192, 10, 260, 40]], [0.7], [1], [1], partial=[True])
    >>> merge_by_cells([left, right], wins, cell_size=64).boxes
    array([[150.,  10., 260.,  40.]])
    """
    grid = cell_grid(windows, rule, cell_size, fanin)
    rects = windows.pixel_windows()
    if len(dets) != len(rects):
        raise InvalidArgumentError(
            f"dets has {len(dets)} items but windows has {len(rects)}; give one Detections per window"
        )
    chunks, _ = merge_in_cells(((k, rects[k], d) for k, d in enumerate(dets)), grid, rule)
    src = windows.source
    return merged_detections(chunks, src.transform, src.crs)


def cell_grid(windows: Any, rule: MergeRule, cell_size: Any, fanin: Any) -> CellGrid:
    """The cells to merge the detections of ``windows`` (a :class:`~lazytiles.WindowSequence`) in by
    ``rule``: ``cell_size`` px (None: :data:`CELL_WINDOWS` windows), ``fanin`` cells a side per level."""
    if not isinstance(rule, MergeRule):
        raise InvalidArgumentError(f"rule must be an lt.MergeRule(...), got {type(rule).__name__} {rule!r}")
    if not is_int(fanin) or fanin < 2:
        raise InvalidArgumentError(f"fanin must be an integer >= 2 (cells per side merged into one), got {fanin!r}")
    if cell_size is None:
        cell_size = CELL_WINDOWS * max(windows.size)
    if not is_real(cell_size) or not 0 < cell_size < math.inf:
        raise InvalidArgumentError(f"cell_size must be a positive number of pixels, got {cell_size!r}")
    return CellGrid.for_area(windows.area, cell=float(cell_size), fanin=int(fanin), margin=rule.margin)


__all__ = [
    "CELL_WINDOWS",
    "MERGED",
    "RECORD",
    "CellGrid",
    "cell_grid",
    "merge_by_cells",
    "merge_in_cells",
    "merged_detections",
    "merged_records",
    "settle_cell",
    "window_chunk",
    "window_records",
]
