"""Box arithmetic on ``(N, 4)`` arrays of ``x0, y0, x1, y1``: areas, overlaps, NMS, unions. Pure numpy.

Boxes are half-open pixel rectangles (``x1``/``y1`` exclusive, like a window's right and bottom
edges), so two boxes that only share an edge do not overlap. Every function takes anything
``np.asarray`` accepts (lists, numpy arrays, CPU torch tensors); :func:`nms` also hands a torch tensor
back when given one. Finding which boxes overlap buckets them on a grid of box-sized cells (a spatial
index, shapely's STRtree, for the few much larger ones), so the cost grows with the number of boxes
near each other, not with ``N ** 2``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import shapely

from ..detections import as_boxes
from ..errors import InvalidArgumentError

Metric = Literal["iou", "ios"]
METRICS: tuple[str, ...] = ("iou", "ios")


def check_metric(metric: Any) -> Metric:
    """``metric`` if it is ``"iou"`` or ``"ios"``, else an error naming the choices."""
    if metric not in METRICS:
        raise InvalidArgumentError(
            f"metric must be 'iou' (intersection over union) or 'ios' (intersection over the smaller "
            f"box), got {metric!r}"
        )
    return "iou" if metric == "iou" else "ios"


def area(boxes: Any) -> np.ndarray:
    """Area of each box; 0 for an empty or inverted box.

    Examples
    --------
    >>> area([[0, 0, 10, 5], [3, 3, 2, 9]])
    array([50.,  0.])
    """
    b = as_boxes(boxes)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def intersection_matrix(a: Any, b: Any) -> npt.NDArray[np.float64]:
    """``(N, M)`` areas of overlap between every box of ``a`` and every box of ``b``."""
    p, q = as_boxes(a, "a"), as_boxes(b, "b")
    w = np.minimum(p[:, None, 2], q[None, :, 2]) - np.maximum(p[:, None, 0], q[None, :, 0])
    h = np.minimum(p[:, None, 3], q[None, :, 3]) - np.maximum(p[:, None, 1], q[None, :, 1])
    inter: npt.NDArray[np.float64] = np.clip(w, 0, None) * np.clip(h, 0, None)
    return inter


def _ratio(inter: np.ndarray, area_a: np.ndarray, area_b: np.ndarray, metric: str) -> np.ndarray:
    denom = area_a + area_b - inter if metric == "iou" else np.minimum(area_a, area_b)
    out = np.zeros(np.broadcast(inter, denom).shape)
    np.divide(inter, denom, out=out, where=denom > 0)
    return out


def iou_matrix(a: Any, b: Any) -> np.ndarray:
    """``(N, M)`` intersection over union of every pair (0 where both boxes are empty).

    Examples
    --------
    >>> iou_matrix([[0, 0, 10, 10]], [[5, 0, 15, 10], [10, 0, 20, 10]]).round(3)
    array([[0.333, 0.   ]])
    """
    a, b = as_boxes(a, "a"), as_boxes(b, "b")
    return _ratio(intersection_matrix(a, b), area(a)[:, None], area(b)[None, :], "iou")


def ios_matrix(a: Any, b: Any) -> np.ndarray:
    """``(N, M)`` intersection over the smaller box of every pair: 1 when one box holds the other.

    Examples
    --------
    >>> ios_matrix([[0, 0, 10, 10]], [[5, 0, 15, 10], [2, 2, 4, 4]])
    array([[0.5, 1. ]])
    """
    a, b = as_boxes(a, "a"), as_boxes(b, "b")
    return _ratio(intersection_matrix(a, b), area(a)[:, None], area(b)[None, :], "ios")


def overlap(a: Any, b: Any, metric: Metric = "iou") -> np.ndarray:
    """Elementwise ``metric`` of ``a[k]`` and ``b[k]`` (two ``(N, 4)`` arrays of paired boxes)."""
    a, b = as_boxes(a, "a"), as_boxes(b, "b")
    metric = check_metric(metric)
    w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    return _ratio(inter, area(a), area(b), metric)


def overlapping_pairs(
    boxes: Any, chunk: int = 1 << 16, *, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every pair ``i < j`` of boxes that overlap with a positive area (and are in the same ``groups``,
    when given: one value per box, such as its label).

    Returns two int64 arrays ``(i, j)``, sorted by ``i`` then ``j``. Boxes that only touch along an
    edge or at a corner are not a pair; empty boxes pair with nothing. Boxes are bucketed on a grid of
    cells as large as nearly all of them (in numpy); the few larger ones are looked up in a spatial
    index, ``chunk`` at a time.

    Examples
    --------
    >>> overlapping_pairs([[0, 0, 10, 10], [5, 5, 20, 20], [10, 0, 20, 6]])
    (array([0, 1]), array([1, 2]))
    """
    b = as_boxes(boxes)
    good = np.flatnonzero((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]))
    if len(good) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    g = b[good]
    x0, y0, x1, y1 = (np.ascontiguousarray(g[:, k]) for k in range(4))
    extent = np.maximum(x1 - x0, y1 - y0)
    k = (len(extent) * 19) // 20
    cell = float(np.partition(extent, k)[k])  # the 95th percentile
    if extent.max() <= 2 * cell:  # sizes alike (the usual case): every box on the grid
        cell = float(extent.max())
    span = (x1.max() - x0.min(), y1.max() - y0.min())
    code = np.zeros(len(g), np.int64)
    if groups is not None:
        group = np.asarray(groups)[good]
        low = group.min()
        if group.dtype.kind in "iu" and int(group.max()) - int(low) < 4 * len(group):  # labels: small ints
            code = group.astype(np.int64) - int(low)
        else:
            code = np.unique(group, return_inverse=True)[1].reshape(-1)
    if (span[0] / cell + 2) * (span[1] / cell + 3) * (code.max() + 1) > 2.0**60:  # too many cells to number
        cell = 0.0
    small = np.flatnonzero(extent <= cell)
    found = [_grid_pairs(g, small, cell, code)]
    big = np.flatnonzero(extent > cell)
    if len(big):
        found.append(_indexed_pairs(g, big, chunk))
    i, j = (
        found[0] if len(found) == 1 else (np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found]))
    )
    keep = np.minimum(x1[i], x1[j]) > np.maximum(x0[i], x0[j])
    keep &= np.minimum(y1[i], y1[j]) > np.maximum(y0[i], y0[j])
    keep &= code[i] == code[j]
    i, j = good[i[keep]], good[j[keep]]
    order = np.argsort(i * len(b) + j)  # by i, then j
    return i[order].astype(np.int64), j[order].astype(np.int64)


def _grid_pairs(g: np.ndarray, which: np.ndarray, cell: float, code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs ``i < j`` among the boxes ``which`` of ``g``, none wider or taller than ``cell``,
    with the same ``code``.

    A box goes to the grid cell of its top-left corner (one grid per code); two such boxes can only
    overlap from the same or neighbouring cells, so each pair is met once, from (0, 0), (0, 1), (1, -1),
    (1, 0) or (1, 1).
    """
    if len(which) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    left, top = g[which, 0], g[which, 1]
    cx = np.floor((left - left.min()) / cell).astype(np.int64)
    cy = np.floor((top - top.min()) / cell).astype(np.int64) + 1  # rows 0, ny-1 stay empty
    ny = int(cy.max()) + 2
    key = (code[which] * (int(cx.max()) + 2) + cx) * ny + cy  # column cx.max() + 1 stays empty
    order = np.argsort(key)
    key, ids = key[order], which[order]
    n = len(key)
    here = np.arange(n)
    cells = int(key[-1]) + ny + 2
    start = None
    if cells <= 8 * n + 1024:  # few cells: where each begins, by counting
        start = np.zeros(cells + 1, np.int64)
        np.cumsum(np.bincount(key, minlength=cells), out=start[1:])
    out_i, out_j = [], []
    for dx, dy in ((0, 0), (0, 1), (1, -1), (1, 0), (1, 1)):
        target = key + (dx * ny + dy)
        if start is None:
            hi = np.searchsorted(key, target, "right")
            lo = here + 1 if dx == dy == 0 else np.searchsorted(key, target, "left")
        else:
            hi = start[target + 1]
            lo = here + 1 if dx == dy == 0 else start[target]
        count = np.clip(hi - lo, 0, None)
        total = int(count.sum())
        if not total:
            continue
        first = np.cumsum(count) - count
        p = np.repeat(here, count)
        q = np.arange(total) - np.repeat(first - lo, count)
        a, c = ids[p], ids[q]
        out_i.append(np.minimum(a, c))
        out_j.append(np.maximum(a, c))
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_i), np.concatenate(out_j)


def _indexed_pairs(g: np.ndarray, which: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs ``i < j`` with at least one box in ``which``, each once, from a spatial index."""
    geoms = shapely.box(g[:, 0], g[:, 1], g[:, 2], g[:, 3])
    tree = shapely.STRtree(geoms)
    is_big = np.zeros(len(g), bool)
    is_big[which] = True
    out_i, out_j = [], []
    for start in range(0, len(which), chunk):  # the envelope query is exact for rectangles
        part = which[start : start + chunk]
        qi, tj = tree.query(geoms[part])
        qi = part[qi]
        keep = (qi != tj) & (~is_big[tj] | (qi < tj))  # a pair of two big boxes is met twice
        qi, tj = qi[keep], tj[keep]
        out_i.append(np.minimum(qi, tj))
        out_j.append(np.maximum(qi, tj))
    return np.concatenate(out_i), np.concatenate(out_j)


def csr(n: int, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Undirected adjacency of ``n`` nodes with edges ``(i, j)``: ``nbrs[start[k]:start[k + 1]]``."""
    src = np.concatenate([i, j])
    dst = np.concatenate([j, i])
    order = np.argsort(src, kind="stable")
    start = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=start[1:])
    return start, dst[order]


def nms(boxes: Any, scores: Any, iou: float = 0.5, *, metric: Metric = "iou") -> Any:
    """Greedy non-maximum suppression: indices of the boxes kept, best score first.

    The best remaining box is kept and every remaining box whose ``metric`` with it is ``>= iou`` is
    dropped, until none remain; equal scores go in input order. Given torch tensors, it returns a
    torch int64 tensor (computed on the CPU), like ``torchvision.ops.nms``.

    Examples
    --------
    >>> nms([[0, 0, 10, 10], [1, 0, 11, 10], [20, 0, 30, 10]], [0.5, 0.9, 0.7])
    array([1, 2])
    """
    torch_in = hasattr(boxes, "detach")
    b = as_boxes(boxes)
    s = scores.detach().cpu().numpy() if hasattr(scores, "detach") else np.asarray(scores)
    s = s.astype(np.float64).reshape(-1)
    if len(s) != len(b):
        raise InvalidArgumentError(f"scores must have one value per box ({len(b)}), got {len(s)}")
    if not 0 < iou <= 1:
        raise InvalidArgumentError(f"iou must be in (0, 1], got {iou!r}")
    metric = check_metric(metric)
    order = np.argsort(-s, kind="stable")
    rank = np.empty(len(b), np.int64)
    rank[order] = np.arange(len(b))
    i, j = overlapping_pairs(b)
    hit = overlap(b[i], b[j], metric) >= iou
    start, nbrs = csr(len(b), i[hit], j[hit])
    removed = np.zeros(len(b), bool)
    keep = []
    for k in order.tolist():
        if removed[k]:
            continue
        keep.append(k)
        near = nbrs[start[k] : start[k + 1]]
        removed[near[rank[near] > rank[k]]] = True
    out = np.asarray(keep, dtype=np.int64)
    if torch_in:
        import torch

        return torch.from_numpy(out)
    return out


def union(boxes: Any) -> np.ndarray:
    """The smallest box holding all of ``boxes`` (``(4,)``); NaNs when there are none.

    Examples
    --------
    >>> union([[0, 5, 10, 10], [4, 0, 12, 6]])
    array([ 0.,  0., 12., 10.])
    """
    b = as_boxes(boxes)
    if len(b) == 0:
        return np.full(4, np.nan)
    return np.array([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()])


__all__ = [
    "area",
    "intersection_matrix",
    "ios_matrix",
    "iou_matrix",
    "nms",
    "overlap",
    "overlapping_pairs",
    "union",
]
