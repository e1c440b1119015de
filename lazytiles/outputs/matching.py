"""Matching found objects to true ones, and average precision: the arithmetic of ``lt.evaluate``.

Within each class, found objects are taken best score first (ties: in their order); each takes the
unmatched true object it overlaps most, if that overlap (IoU of boxes, or of polygons) is at least the
threshold — the greedy rule of PASCAL VOC and COCO. Average precision is the area under the
precision-recall curve made monotone (every-point interpolation, as VOC since 2010 and COCO do).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import shapely

from ..detections import Detections

Match = Literal["box", "polygon"]
MATCHES = ("box", "polygon")


def geometries(d: Detections, match: Match) -> np.ndarray:
    """Each object's geometry in pixels: its box, or (``"polygon"``) its outline where it has one."""
    b = d.boxes
    geoms: np.ndarray = shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3]) if len(b) else np.empty(0, dtype=object)
    if match == "polygon":
        shaped = np.flatnonzero(d.shapes != None)  # noqa: E711 -- elementwise, on an object array
        geoms[shaped] = d.shapes[shaped]
    return geoms


def candidate_ious(found: Detections, truth: Detections, match: Match) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(f, t, iou)`` for every found/true pair of one class whose geometries overlap with an area."""
    fg, tg = geometries(found, match), geometries(truth, match)
    if not len(fg) or not len(tg):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    t, f = shapely.STRtree(tg).query(fg, predicate="intersects")[::-1]
    same = found.labels[f] == truth.labels[t]
    f, t = f[same], t[same]
    inter = shapely.area(shapely.intersection(fg[f], tg[t]))
    union = shapely.area(fg[f]) + shapely.area(tg[t]) - inter
    iou = np.zeros(len(f))
    np.divide(inter, union, out=iou, where=union > 0)
    return f.astype(np.int64), t.astype(np.int64), iou


def greedy_match(found: Detections, truth: Detections, iou: float, match: Match) -> np.ndarray:
    """For each found object, the index of the true object it matches, or -1."""
    f, t, value = candidate_ious(found, truth, match)
    keep = value >= iou
    f, t, value = f[keep], t[keep], value[keep]
    out = np.full(len(found), -1, np.int64)
    taken = np.zeros(len(truth), bool)
    by_f = np.lexsort((-value, f))  # per found object, its candidates best first
    f, t = f[by_f], t[by_f]
    starts = np.searchsorted(f, np.arange(len(found)))
    ends = np.searchsorted(f, np.arange(len(found)), side="right")
    for k in np.argsort(-found.scores.astype(np.float64), kind="stable").tolist():
        for cand in t[starts[k] : ends[k]].tolist():
            if not taken[cand]:
                taken[cand] = True
                out[k] = cand
                break
    return out


def average_precision(scores: np.ndarray, hit: np.ndarray, n_truth: int) -> float:
    """Area under the monotone precision-recall curve of found objects (``scores``, ``hit``: matched).

    NaN when there is no true object.

    Examples
    --------
    Three found objects, best first: right, wrong, right; three true objects.

    >>> average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 3)
    0.5555555555555556
    """
    if n_truth == 0:
        return float("nan")
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    tp = np.cumsum(hit[order])
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / n_truth
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.r_[0.0, recall])
    return float((steps * envelope).sum())


__all__ = ["MATCHES", "Match", "average_precision", "candidate_ious", "geometries", "greedy_match"]
