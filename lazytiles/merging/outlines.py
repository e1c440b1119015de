"""Outlines in the merge: overlap measured on polygons, and one polygon per merged group.

When both boxes of a candidate pair carry an outline (``Detections.shapes``), :func:`outline_overlap`
replaces their box overlap with the overlap of the polygons, measured, like boxes, only where both
windows see (each polygon clipped to the intersection of the two windows; windows that only abut
keep the box measure along their shared line). :func:`group_outlines` gives each merged group its
polygon: the union of the outlines of the boxes the group's box is made of (``"union"``), or the best
box's outline (``"nms"``).
"""

from __future__ import annotations

import numpy as np
import shapely


def has_outlines(shapes: np.ndarray) -> np.ndarray:
    """Which rows carry an outline."""
    known: np.ndarray = shapes != None  # noqa: E711 -- elementwise, on an object array
    return known


def outline_overlap(
    value: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    shapes: np.ndarray,
    wrect: np.ndarray,
    widx: np.ndarray,
    metric: str,
) -> np.ndarray:
    """``value`` (the box overlap of pairs ``(i, j)``) with the polygon overlap where both have outlines."""
    both = np.flatnonzero(has_outlines(shapes[i]) & has_outlines(shapes[j]))
    if not len(both):
        return value
    a, b = shapes[i[both]], shapes[j[both]]
    wa, wb = wrect[i[both]], wrect[j[both]]
    cross = ~np.isnan(wa[:, 0]) & ~np.isnan(wb[:, 0]) & (widx[i[both]] != widx[j[both]])
    lo, hi = np.maximum(wa[:, :2], wb[:, :2]), np.minimum(wa[:, 2:], wb[:, 2:])
    line = cross & ((hi <= lo).any(axis=1))  # abutting windows: keep the box measure along the seam
    clip = cross & ~line
    if clip.any():
        seen = shapely.box(lo[clip, 0], lo[clip, 1], hi[clip, 0], hi[clip, 1])
        a, b = a.copy(), b.copy()
        a[clip], b[clip] = shapely.intersection(a[clip], seen), shapely.intersection(b[clip], seen)
    area_a, area_b = shapely.area(a), shapely.area(b)
    inter = shapely.area(shapely.intersection(a, b))
    denom = area_a + area_b - inter if metric == "iou" else np.minimum(area_a, area_b)
    ratio = np.zeros(len(both))
    np.divide(inter, denom, out=ratio, where=denom > 0)
    out = value.copy()
    out[both[~line]] = ratio[~line]
    return out


def group_outlines(
    shapes: np.ndarray, members: np.ndarray, starts: np.ndarray, use: np.ndarray | None, leaders: np.ndarray
) -> np.ndarray:
    """One outline (or None) per group: the union of the outlines of its ``use``d members (``members``
    sorted by group, groups beginning at ``starts``), or, with ``use`` None, its leader's outline."""
    if use is None or not has_outlines(shapes).any():
        picked: np.ndarray = shapes[leaders]
        return picked
    out = np.empty(len(starts), dtype=object)
    ends = np.r_[starts[1:], len(members)]
    for g, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
        rows = members[a:b][use[a:b]]
        parts = shapes[rows][has_outlines(shapes[rows])]
        if len(parts) == 1:
            out[g] = parts[0]
        elif len(parts) > 1:
            out[g] = shapely.simplify(shapely.union_all(parts), 0)  # 0: drop the vertices seams left
    return out


__all__ = ["group_outlines", "has_outlines", "outline_overlap"]
