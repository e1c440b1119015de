"""The grouping engine behind ``lt.merge``: match boxes pairwise, group them, one box per group.

Boxes travel as :class:`BoxPool` columns. :func:`settle_groups` finds the matching pairs (:func:`_match_edges`,
which compares boxes from different windows where both windows see), joins them into groups and
resolves each group into one box (:func:`_resolve`); :func:`finish_groups` orders the merged boxes into
:class:`~lazytiles.Detections`. The rules are those the :mod:`lazytiles.merge` docstring states;
``lazytiles.merge`` streams with this engine and ``lazytiles.merging.cells`` runs it cell by cell.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ..detections import Detections
from .boxes import Metric, csr, overlap, overlapping_pairs
from .outlines import group_outlines, has_outlines, outline_overlap
from .rule import MergeRule

# -- matching ------------------------------------------------------------------------------------------


def _seam_overlap(
    a: np.ndarray, b: np.ndarray, wa: np.ndarray, wb: np.ndarray, metric: str, margin: float
) -> np.ndarray:
    """``metric`` of paired boxes from different windows, compared where both windows see."""
    inter = np.ones(len(a))
    area_a = np.ones(len(a))
    area_b = np.ones(len(a))
    degenerate = np.ones(len(a), bool)
    for lo, hi in ((0, 2), (1, 3)):
        s0 = np.maximum(wa[:, lo], wb[:, lo])
        s1 = np.minimum(wa[:, hi], wb[:, hi])
        a0, a1 = np.clip(a[:, lo], s0, s1), np.clip(a[:, hi], s0, s1)
        b0, b1 = np.clip(b[:, lo], s0, s1), np.clip(b[:, hi], s0, s1)
        la, lb = a1 - a0, b1 - b0
        li = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None)
        seam = s1 == s0  # abutting windows: do both boxes reach the shared line?
        reach = (a[:, hi] >= s0 - margin) & (a[:, lo] <= s0 + margin)
        reach &= (b[:, hi] >= s0 - margin) & (b[:, lo] <= s0 + margin)
        la = np.where(seam, 1.0, la)
        lb = np.where(seam, 1.0, lb)
        li = np.where(seam, reach.astype(float), np.where(s1 > s0, li, 0.0))
        inter *= li
        area_a *= la
        area_b *= lb
        degenerate &= seam
    inter[degenerate] = 0.0  # windows meeting only at a corner share nothing to compare
    denom = area_a + area_b - inter if metric == "iou" else np.minimum(area_a, area_b)
    out = np.zeros(len(a))
    np.divide(inter, denom, out=out, where=denom > 0)
    return out


def _match_edges(
    boxes: np.ndarray,
    labels: np.ndarray,
    wrect: np.ndarray,
    widx: np.ndarray,
    *,
    iou: float,
    metric: Metric,
    class_aware: bool,
    margin: float,
    shapes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Every matching pair ``(i, j)``, ``i < j``."""
    reach = margin + 1.0  # abutting seams: boxes that only touch must still become candidates
    grown = boxes + np.array([-reach, -reach, reach, reach])
    i, j = overlapping_pairs(grown, groups=labels if class_aware else None)
    known = ~np.isnan(wrect[:, 0])
    cross = known[i] & known[j] & (widx[i] != widx[j])
    value = np.zeros(len(i))
    plain = ~cross
    value[plain] = overlap(boxes[i[plain]], boxes[j[plain]], metric)
    ci, cj = i[cross], j[cross]
    value[cross] = _seam_overlap(boxes[ci], boxes[cj], wrect[ci], wrect[cj], metric, margin)
    if shapes is not None:
        value = outline_overlap(value, i, j, shapes, wrect, widx, metric)
    hit = value >= iou
    return i[hit], j[hit]


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component label (the smallest node id in it) of each of ``n`` nodes."""
    lab = np.arange(n)
    while len(i):
        li, lj = lab[i], lab[j]
        differ = li != lj
        if not differ.any():
            break
        li, lj = li[differ], lj[differ]
        low = np.minimum(li, lj)
        np.minimum.at(lab, li, low)  # hook each root under the smallest root it meets
        np.minimum.at(lab, lj, low)
        while True:  # pointer jumping: every node points at its root
            nxt = lab[lab]
            if np.array_equal(nxt, lab):
                break
            lab = nxt
    return lab


# -- resolving groups ------------------------------------------------------------------------------


def _same(a: np.ndarray) -> np.ndarray:
    """Whether each element of ``a`` after the first equals the one before it (NaN equal to NaN)."""
    eq: np.ndarray = a[1:] == a[:-1]
    if a.dtype.kind == "f":
        eq |= np.isnan(a[1:]) & np.isnan(a[:-1])
    return eq


def lexsort_ties(keys: tuple[np.ndarray, ...]) -> np.ndarray:
    """``np.lexsort(keys)`` (last key primary, stable), sorting by the two primary keys and by the others
    (and the position) only among the elements those two leave tied: scores are rarely equal, so this is
    about one sort."""
    second, first = keys[-2], keys[-1]
    order = np.argsort(second)  # not stable: ties are ordered below
    order = order[np.argsort(first[order], kind="stable")]
    tie = _same(first[order]) & _same(second[order])
    if tie.any():
        in_run = np.r_[tie, False] | np.r_[False, tie]
        run = np.cumsum(np.r_[True, ~tie])
        at = np.flatnonzero(in_run)
        tied = order[at]
        order[at] = tied[np.lexsort((tied, *(k[tied] for k in keys[:-2]), run[at]))]
    return order


class BoxPool:
    """Columns of boxes waiting to be merged (one row per box)."""

    __slots__ = ("boxes", "labels", "partial", "scores", "seq", "settle", "shapes", "widx", "wrect")

    def __init__(
        self,
        *,
        boxes: npt.NDArray[np.float64],
        scores: npt.NDArray[np.float32],
        labels: npt.NDArray[np.int64],
        widx: npt.NDArray[np.int64],
        partial: npt.NDArray[np.bool_],
        seq: npt.NDArray[np.int64],
        wrect: npt.NDArray[np.float64],
        settle: npt.NDArray[np.int64],
        shapes: np.ndarray | None = None,
    ) -> None:
        self.boxes = boxes  # (N, 4) x0, y0, x1, y1
        self.scores = scores
        self.labels = labels
        self.widx = widx  # window index
        self.partial = partial
        self.seq = seq  # arrival order, the last tie-break
        self.wrect = wrect  # (N, 4) the box's window as x0, y0, x1, y1; NaN when unknown
        self.settle = settle  # the last window position that can still add a matching box
        self.shapes = np.full(len(seq), None, dtype=object) if shapes is None else shapes  # outlines or None

    @classmethod
    def empty(cls) -> BoxPool:
        return cls(
            boxes=np.zeros((0, 4)),
            scores=np.zeros(0, np.float32),
            labels=np.zeros(0, np.int64),
            widx=np.zeros(0, np.int64),
            partial=np.zeros(0, bool),
            seq=np.zeros(0, np.int64),
            wrect=np.zeros((0, 4)),
            settle=np.zeros(0, np.int64),
        )

    def __len__(self) -> int:
        return len(self.seq)

    def take(self, idx: np.ndarray) -> BoxPool:
        return BoxPool(**{name: getattr(self, name)[idx] for name in self.__slots__})

    @classmethod
    def concat(cls, parts: list[BoxPool]) -> BoxPool:
        if not parts:
            return cls.empty()
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in cls.__slots__})


_OUT_COLUMNS = (
    ("boxes", "boxes"),
    ("scores", "scores"),
    ("labels", "labels"),
    ("window_index", "widx"),
    ("partial", "partial"),
    ("shapes", "shapes"),
)


def _leaders(i: np.ndarray, j: np.ndarray, rank: np.ndarray, order: np.ndarray, complete: np.ndarray) -> np.ndarray:
    """Which complete boxes greedy matching keeps: best-ranked first, each taking every box it matches.

    A complete box leads exactly when no better-ranked complete box matching it leads, so rounds of
    numpy decide every box whose better neighbours are all decided (a handful of rounds: chains of
    matches are short). Should a chain be long, a plain loop in rank order finishes it.
    """
    n = len(rank)
    undecided, lead = complete.copy(), np.zeros(n, bool)
    both = complete[i] & complete[j]
    better = np.where(rank[i] < rank[j], i, j)[both]  # each match between complete boxes, oriented
    worse = np.where(rank[i] < rank[j], j, i)[both]
    for _ in range(32):
        if not undecided.any():
            return lead
        live = undecided[worse]
        better, worse = better[live], worse[live]
        taken = np.zeros(n, bool)  # a better box leads: this one is taken
        taken[worse[lead[better]]] = True
        waiting = np.zeros(n, bool)  # a better box is still undecided
        waiting[worse[undecided[better]]] = True
        leads = undecided & ~taken & ~waiting
        lead |= leads
        undecided &= ~(taken | leads)
    start, nbrs = csr(n, better, worse)  # the rest, one box at a time
    for k in order[undecided[order]].tolist():
        near = nbrs[start[k] : start[k + 1]]
        lead[k] = not (lead[near] & (rank[near] < rank[k])).any()
    return lead


def _greedy_groups(
    n: int, i: np.ndarray, j: np.ndarray, rank: np.ndarray, order: np.ndarray, complete: np.ndarray
) -> np.ndarray:
    """Each box's group (its leader's id) under greedy matching; -1 for partial boxes no leader took.

    Equal to walking the complete boxes best-ranked first, each not yet taken becoming a leader that
    takes every box not yet taken that matches it: a box goes to the best-ranked leader it matches.
    """
    lead = _leaders(i, j, rank, order, complete)
    a = np.concatenate([i, j])
    b = np.concatenate([j, i])
    by_leader = lead[a] & ~lead[b]
    a, b = a[by_leader], b[by_leader]
    best = np.full(n, n, np.int64)
    np.minimum.at(best, b, rank[a])
    group = np.full(n, -1, np.int64)
    group[lead] = np.flatnonzero(lead)
    took = best < n
    group[took] = order[best[took]]
    return group


def _resolve(pool: BoxPool, i: np.ndarray, j: np.ndarray, method: str) -> dict[str, np.ndarray]:
    """One box per group of ``pool``, given its matching pairs ``(i, j)``."""
    n = len(pool)
    if n == 0:
        return {name: getattr(pool, col)[:0] for name, col in _OUT_COLUMNS}
    b = pool.boxes
    order = lexsort_ties(
        (pool.seq, pool.labels, b[:, 2], b[:, 3], b[:, 0], b[:, 1], -pool.scores.astype(np.float64), pool.partial)
    )
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    complete = ~pool.partial
    group = _greedy_groups(n, i, j, rank, order, complete)

    left = group < 0  # partial boxes no complete box took: join the pieces of each object
    if left.any():
        keep = left[i] & left[j]
        comp = _components(n, i[keep], j[keep])
        idx = np.flatnonzero(left)
        by = idx[np.lexsort((rank[idx], comp[idx]))]
        first = np.r_[True, comp[by][1:] != comp[by][:-1]]
        leader_of = np.empty(n, np.int64)
        leader_of[comp[by][first]] = by[first]
        group[idx] = leader_of[comp[idx]]

    members = np.argsort(group * n + rank)  # by group, then rank
    g = group[members]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    leaders = g[starts]
    has_complete = np.logical_or.reduceat(complete[members], starts)
    use = None
    if method == "nms":
        out_boxes = b[leaders]
        out_scores = pool.scores[leaders]
    else:
        use = complete[members] | ~np.repeat(has_complete, np.diff(np.r_[starts, len(members)]))
        mb = b[members]
        inf = np.inf
        x0 = np.minimum.reduceat(np.where(use, mb[:, 0], inf), starts)
        y0 = np.minimum.reduceat(np.where(use, mb[:, 1], inf), starts)
        x1 = np.maximum.reduceat(np.where(use, mb[:, 2], -inf), starts)
        y1 = np.maximum.reduceat(np.where(use, mb[:, 3], -inf), starts)
        out_boxes = np.stack([x0, y0, x1, y1], axis=1)
        out_scores = np.maximum.reduceat(pool.scores[members], starts)
    return {
        "boxes": out_boxes,
        "scores": out_scores,
        "labels": pool.labels[leaders],
        "window_index": pool.widx[leaders],
        "partial": ~has_complete,
        "shapes": group_outlines(pool.shapes, members, starts, use, leaders),
    }


def settle_groups(pool: BoxPool, rule: MergeRule, final: np.ndarray | None) -> tuple[dict[str, np.ndarray], BoxPool]:
    """Resolve the groups of ``pool`` whose boxes are all in ``final`` (None: all of them), by ``rule``.

    Returns the merged boxes of those groups and the boxes still waiting.
    """
    i, j = _match_edges(
        pool.boxes,
        pool.labels,
        pool.wrect,
        pool.widx,
        iou=rule.iou,
        metric=rule.metric,
        class_aware=rule.class_aware,
        margin=rule.margin,
        shapes=pool.shapes if has_outlines(pool.shapes).any() else None,
    )
    if final is not None:
        comp = _components(len(pool), i, j)
        open_groups = np.zeros(len(pool), bool)
        open_groups[comp[~final]] = True
        done = ~open_groups[comp]
        if not done.all():
            new_id = np.cumsum(done) - 1
            keep = done[i]  # a group is closed, so an edge is inside the settled part or outside it
            out = _resolve(pool.take(np.flatnonzero(done)), new_id[i[keep]], new_id[j[keep]], rule.method)
            return out, pool.take(np.flatnonzero(~done))
    return _resolve(pool, i, j, rule.method), BoxPool.empty()


# -- the merged boxes ------------------------------------------------------------------------------


def finish_groups(parts: list[dict[str, np.ndarray]], transform: Any, crs: Any) -> Detections:
    if not parts:
        return Detections.empty(transform=transform, crs=crs)
    cols = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    b = cols["boxes"]
    order = lexsort_ties(
        (cols["window_index"], cols["labels"], b[:, 2], b[:, 3], b[:, 0], b[:, 1], -cols["scores"].astype(np.float64))
    )
    return Detections(
        b[order],
        cols["scores"][order],
        cols["labels"][order],
        cols["window_index"][order],
        partial=cols["partial"][order],
        shapes=cols["shapes"][order] if "shapes" in cols else None,
        transform=transform,
        crs=crs,
    )
