"""``lt.merge``: one box per object from the boxes of many overlapping windows.

A detector run window by window sees an object on a seam twice (once in each overlapping window) or in
pieces (clipped by each window it crosses). :func:`merge` turns those views back into one whole box.

How boxes are matched
---------------------
Two boxes of the same class *match* when their overlap ``metric`` is at least ``iou``. Boxes from two
different windows are compared **only where both windows could see**: each box is clipped to the
intersection of the two windows first. Two views of one object agree there exactly, however the
object is cut, while two neighbouring objects do not overlap there at all. Windows that only abut
(``overlap=0``) share a line, not an area: two boxes that both reach it (within ``margin`` px) are
then compared by their extents along it. Boxes from the same window, or whose window is unknown, are
compared whole.

How matches are resolved
------------------------
Boxes are ranked: complete before partial (``Detections.partial``: touching an inner window edge),
then by score, best first. Like greedy NMS, the best remaining complete box takes every remaining box
that matches it. Partial boxes left over (objects no window saw whole) are joined with every partial
box they match, transitively, so an object crossing several windows is put back together. Each group
gives one box: ``method="union"`` the union of its complete boxes (of its pieces when it has none),
with the highest score of the group, as SAHI's GREEDYNMM does; ``method="nms"`` the best-ranked box as
it is. A partial fragment never enlarges a complete box.

Streaming
---------
Given the lazy result of ``lt.detect`` (a sequence of per-window :class:`Detections` with a
``.windows`` attribute), boxes are merged as windows arrive: a group is settled and its box emitted
once every window that could still add a matching box has been seen, so memory holds only the boxes
near windows not yet seen. The result equals merging everything at once, exactly.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import shapely
from rasterio.windows import Window as PixelWindow

from .boxes import METRICS, Metric, as_boxes, csr, overlap, overlapping_pairs
from .detections import Detections
from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from .windows import WindowSequence

Method = Literal["union", "nms"]
METHODS: tuple[str, ...] = ("union", "nms")


# -- which boxes may continue past their window ------------------------------------------------------


def _window_tuple(window: Any, what: str) -> tuple[float, float, float, float]:
    if isinstance(window, PixelWindow):
        return float(window.col_off), float(window.row_off), float(window.width), float(window.height)
    try:
        col_off, row_off, width, height = (float(v) for v in window)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"{what} must be a rasterio Window or (col_off, row_off, width, height), got {window!r}"
        ) from None
    return col_off, row_off, width, height


def partial_flags(boxes: Any, window: Any, area: Any, margin: float = 1.0) -> np.ndarray:
    """Which boxes of one window may be cut by its edge: within ``margin`` px of an *inner* edge.

    An inner edge is an edge of ``window`` that is not on the boundary of ``area``, so another window
    continues beyond it. Boxes cut by the edge of the whole area are complete: nothing lies beyond.

    Parameters
    ----------
    boxes
        ``(K, 4)`` x0, y0, x1, y1 in the window's pixels (0, 0 is its upper-left corner).
    window
        The window in the source's pixels: a rasterio ``Window`` or (col_off, row_off, width, height).
    area
        The area all windows cover (``WindowSequence.area``), same kinds as ``window``.
    margin
        Distance in pixels from an inner edge within which a box counts as touching it.

    Returns
    -------
    numpy.ndarray
        ``(K,)`` bool.

    Examples
    --------
    >>> from rasterio.windows import Window
    >>> boxes = [[0, 10, 20, 30], [100, 10, 128, 30], [50, 50, 60, 60]]
    >>> partial_flags(boxes, Window(128, 0, 128, 128), Window(0, 0, 256, 256))
    array([ True, False, False])
    """
    b = as_boxes(boxes)
    c0, r0, w, h = _window_tuple(window, "window")
    ac0, ar0, aw, ah = _window_tuple(area, "area")
    return (
        ((c0 > ac0) & (b[:, 0] <= margin))
        | ((c0 + w < ac0 + aw) & (b[:, 2] >= w - margin))
        | ((r0 > ar0) & (b[:, 1] <= margin))
        | ((r0 + h < ar0 + ah) & (b[:, 3] >= h - margin))
    )


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
    metric: str,
    class_aware: bool,
    margin: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Every matching pair ``(i, j)``, ``i < j``."""
    reach = margin + 1.0  # abutting seams: boxes that only touch must still become candidates
    i, j = overlapping_pairs(boxes + np.array([-reach, -reach, reach, reach]))
    if class_aware:
        same = labels[i] == labels[j]
        i, j = i[same], j[same]
    known = ~np.isnan(wrect[:, 0])
    cross = known[i] & known[j] & (widx[i] != widx[j])
    value = np.zeros(len(i))
    plain = ~cross
    value[plain] = overlap(boxes[i[plain]], boxes[j[plain]], metric)  # type: ignore[arg-type]
    ci, cj = i[cross], j[cross]
    value[cross] = _seam_overlap(boxes[ci], boxes[cj], wrect[ci], wrect[cj], metric, margin)
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


class _Boxes:
    """Columns of boxes waiting to be merged (one row per box)."""

    __slots__ = ("boxes", "scores", "labels", "widx", "partial", "seq", "wrect", "settle")

    def __init__(self, **columns: np.ndarray) -> None:
        for name in self.__slots__:
            setattr(self, name, columns[name])

    @classmethod
    def empty(cls) -> _Boxes:
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

    def take(self, idx: np.ndarray) -> _Boxes:
        return _Boxes(**{name: getattr(self, name)[idx] for name in self.__slots__})

    @classmethod
    def concat(cls, parts: list[_Boxes]) -> _Boxes:
        if not parts:
            return cls.empty()
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in cls.__slots__})


_OUT_COLUMNS = (
    ("boxes", "boxes"),
    ("scores", "scores"),
    ("labels", "labels"),
    ("window_index", "widx"),
    ("partial", "partial"),
)


def _resolve(pool: _Boxes, i: np.ndarray, j: np.ndarray, method: str) -> dict[str, np.ndarray]:
    """One box per group of ``pool``, given its matching pairs ``(i, j)``."""
    n = len(pool)
    if n == 0:
        return {name: getattr(pool, col)[:0] for name, col in _OUT_COLUMNS}
    b = pool.boxes
    order = np.lexsort(
        (pool.seq, pool.labels, b[:, 2], b[:, 3], b[:, 0], b[:, 1], -pool.scores.astype(np.float64), pool.partial)
    )
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    start, nbrs = csr(n, i, j)
    degree = np.diff(start)
    group = np.full(n, -1, np.int64)
    complete = ~pool.partial

    alone = complete & (degree == 0)
    group[alone] = np.flatnonzero(alone)
    for k in order[complete[order] & (degree[order] > 0)].tolist():  # greedy, best complete box first
        if group[k] >= 0:
            continue
        group[k] = k
        near = nbrs[start[k] : start[k + 1]]
        group[near[group[near] < 0]] = k

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

    members = np.lexsort((rank, group))
    g = group[members]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    leaders = g[starts]
    has_complete = np.logical_or.reduceat(complete[members], starts)
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
    }


def _settle(pool: _Boxes, options: dict[str, Any], final: np.ndarray | None) -> tuple[dict[str, np.ndarray], _Boxes]:
    """Resolve the groups of ``pool`` whose boxes are all in ``final`` (None: all of them).

    Returns the merged boxes of those groups and the boxes still waiting.
    """
    match = {name: value for name, value in options.items() if name != "method"}
    i, j = _match_edges(pool.boxes, pool.labels, pool.wrect, pool.widx, **match)
    if final is not None:
        comp = _components(len(pool), i, j)
        open_groups = np.zeros(len(pool), bool)
        open_groups[comp[~final]] = True
        done = ~open_groups[comp]
        if not done.all():
            new_id = np.cumsum(done) - 1
            keep = done[i]  # a group is closed, so an edge is inside the settled part or outside it
            out = _resolve(pool.take(np.flatnonzero(done)), new_id[i[keep]], new_id[j[keep]], options["method"])
            return out, pool.take(np.flatnonzero(~done))
    return _resolve(pool, i, j, options["method"]), _Boxes.empty()


# -- window geometry -------------------------------------------------------------------------------


class _WindowTable:
    """Pixel rectangles (x0, y0, x1, y1) of the windows of a sequence, looked up by window index."""

    def __init__(self, windows: Any) -> None:
        try:
            indices = np.asarray(windows.indices, dtype=np.int64)
            pw = np.asarray(windows.pixel_windows(), dtype=np.float64).reshape(-1, 4)
        except AttributeError:
            raise InvalidArgumentError(
                f"windows must be the lt.WindowSequence the detections came from, got {type(windows).__name__}"
            ) from None
        self.source = getattr(windows, "source", None)
        self.indices = indices
        self.rects = np.stack([pw[:, 0], pw[:, 1], pw[:, 0] + pw[:, 2], pw[:, 1] + pw[:, 3]], axis=1)
        self._sorter = np.argsort(indices, kind="stable")
        self._sorted = indices[self._sorter]
        self._tree: shapely.STRtree | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def lookup(self, window_index: np.ndarray) -> np.ndarray:
        """Rectangles of ``window_index`` (NaN rows for -1); an error for an index not in the table."""
        out = np.full((len(window_index), 4), np.nan)
        known = window_index >= 0
        if known.any():
            wi = window_index[known]
            pos = np.minimum(np.searchsorted(self._sorted, wi), len(self._sorted) - 1)
            found = (len(self._sorted) > 0) & (self._sorted[pos] == wi)
            if not np.all(found):
                bad = int(wi[~found][0])
                raise InvalidArgumentError(
                    f"a box has window_index={bad}, which is not one of the {len(self)} windows given; "
                    "pass the windows the detections were made on (windows=wins), or none"
                )
            out[known] = self.rects[self._sorter[pos]]
        return out

    def last_position(self, boxes: np.ndarray, reach: float) -> np.ndarray:
        """For each box, the last sequence position of a window that could hold a box matching it."""
        if self._tree is None:
            r = self.rects
            self._tree = shapely.STRtree(shapely.box(r[:, 0], r[:, 1], r[:, 2], r[:, 3]))
        g = boxes + np.array([-reach, -reach, reach, reach])
        bi, wi = self._tree.query(shapely.box(g[:, 0], g[:, 1], g[:, 2], g[:, 3]))
        last = np.full(len(boxes), -1, np.int64)
        np.maximum.at(last, bi, wi)
        return last


# -- the public function ---------------------------------------------------------------------------


def _check_options(iou: Any, method: Any, metric: Any, margin: Any) -> None:
    if isinstance(iou, bool) or not isinstance(iou, numbers.Real) or not 0 < iou <= 1:
        raise InvalidArgumentError(f"iou must be a threshold in (0, 1], got {iou!r}")
    if method not in METHODS:
        raise InvalidArgumentError(
            f"method must be 'union' (merge each group into its union box) or 'nms' (keep the best "
            f"box of each group), got {method!r}"
        )
    if metric not in METRICS:
        raise InvalidArgumentError(
            f"metric must be 'ios' (intersection over the smaller box) or 'iou' (intersection over "
            f"union), got {metric!r}"
        )
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not (0 <= margin < math.inf):
        raise InvalidArgumentError(f"margin must be a distance >= 0 in pixels, got {margin!r}")


def _columns(d: Detections, seq0: int, table: _WindowTable | None) -> _Boxes:
    n = len(d)
    return _Boxes(
        boxes=d.boxes,
        scores=d.scores,
        labels=d.labels,
        widx=d.window_index,
        partial=d.partial,
        seq=np.arange(seq0, seq0 + n, dtype=np.int64),
        wrect=np.full((n, 4), np.nan) if table is None else table.lookup(d.window_index),
        settle=np.zeros(n, np.int64),
    )


def _finish(parts: list[dict[str, np.ndarray]], transform: Any, crs: Any) -> Detections:
    if not parts:
        return Detections.empty(transform=transform, crs=crs)
    cols = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    b = cols["boxes"]
    order = np.lexsort(
        (cols["window_index"], cols["labels"], b[:, 2], b[:, 3], b[:, 0], b[:, 1], -cols["scores"].astype(np.float64))
    )
    return Detections(
        b[order],
        cols["scores"][order],
        cols["labels"][order],
        cols["window_index"][order],
        partial=cols["partial"][order],
        transform=transform,
        crs=crs,
    )


def _as_detections(item: Any, where: str) -> Detections:
    if not isinstance(item, Detections):
        raise InvalidArgumentError(
            f"{where} is a {type(item).__name__}, not lt.Detections; merge takes Detections, a list of "
            "them, or the lazy result of lt.detect"
        )
    return item


def merge(
    dets: Detections | Iterable[Detections],
    *,
    iou: float = 0.5,
    method: Method = "union",
    metric: Metric = "ios",
    class_aware: bool = True,
    windows: WindowSequence | None = None,
    margin: float = 1.0,
    progress: bool = True,
) -> Detections:
    """Merge boxes from overlapping windows: each object once, whole.

    Boxes of one object seen in several windows (twice in an overlap, or in pieces cut by window
    edges) become one box; see the module docstring for the exact rule. Given the lazy result of
    ``lt.detect``, it streams: windows are pulled in order and boxes are settled as soon as no window
    still to come can touch them, so memory holds only the boxes near the windows not yet seen. The
    result is the same as merging all boxes at once.

    Parameters
    ----------
    dets
        :class:`Detections` (all windows concatenated), a list of them, or the lazy sequence
        ``lt.detect`` returns (one :class:`Detections` per window, with a ``.windows`` attribute).
    iou
        Match threshold in (0, 1]: boxes whose ``metric`` is at least this are one object.
    method
        ``"union"`` (default): a group becomes the union of its complete boxes (of its pieces if no
        window saw the object whole), scored with the group's best score. ``"nms"``: the group's
        best box is kept as it is (complete before partial, then by score); it cannot rebuild an
        object that no window saw whole, so use it when windows overlap by more than an object.
    metric
        ``"ios"`` (default): intersection over the smaller box, high for a piece inside the whole.
        ``"iou"``: intersection over union, the usual NMS measure.
    class_aware
        Only boxes with the same label match (default). False: labels are ignored; a group keeps
        its best box's label.
    windows
        The :class:`~lazytiles.WindowSequence` the boxes were found in, to compare boxes from
        different windows only where both windows see. Taken from ``dets.windows`` when there; without
        it boxes are compared whole, which cannot join the pieces of an object no window saw whole.
    margin
        Pixels within which boxes count as reaching a seam between windows that only abut.
    progress
        Show a progress bar (tqdm) while pulling a lazy ``dets``.

    Returns
    -------
    Detections
        One box per object, in source pixels; ordered by score (best first), then top, left,
        bottom, right, label. ``window_index`` is the window of each group's best box and
        ``partial`` is True where no window saw the object whole.

    Raises
    ------
    InvalidArgumentError
        A bad option; an item that is not :class:`Detections`; a ``window_index`` not in ``windows``.

    Examples
    --------
    An object cut by the seam between two windows that overlap by 64 px (columns 192 to 256): each
    window sees a piece, and the right window also sees a complete neighbour 3 px away.

    >>> import numpy as np, lazytiles as lt
    >>> wins = lt.windows(lt.ArraySource(np.zeros((1, 256, 448), np.uint8)), 256, stride=192)
    >>> left = lt.Detections([[150, 10, 256, 40]], [0.9], [1], [0], partial=[True])
    >>> right = lt.Detections([[192, 10, 260, 40], [263, 10, 300, 40]], [0.7, 0.8], [1, 1], [1, 1],
    ...                       partial=[True, False])
    >>> found = lt.merge([left, right], windows=wins, progress=False)
    >>> found.boxes
    array([[150.,  10., 260.,  40.],
           [263.,  10., 300.,  40.]])
    >>> found.scores
    array([0.9, 0.8], dtype=float32)
    """
    _check_options(iou, method, metric, margin)
    options = dict(iou=float(iou), metric=metric, class_aware=bool(class_aware), margin=float(margin), method=method)
    if windows is None and not isinstance(dets, Detections):
        windows = getattr(dets, "windows", None)
    table = None if windows is None else _WindowTable(windows)
    lazy = not isinstance(dets, Detections) and isinstance(dets, Sequence)
    if table is not None and lazy and len(dets) == len(table):  # type: ignore[arg-type]
        match = {name: value for name, value in options.items() if name != "method"}
        return _stream(dets, Merger(table, method=method, **match), progress)

    if isinstance(dets, Detections):
        items = [dets]
    else:
        items = [_as_detections(d, f"item {k} of dets") for k, d in enumerate(dets)]
    src = getattr(windows, "source", None)
    transform, crs = getattr(src, "transform", None), getattr(src, "crs", None)
    if items:
        transform, crs = items[0].transform, items[0].crs
    pool = _columns(Detections.concat(items), 0, table) if items else _Boxes.empty()
    return _finish([_settle(pool, options, None)[0]] if len(pool) else [], transform, crs)


class Merger:
    """Merge per-window detections as they arrive, in window order; what :func:`merge` streams with.

    Feed it one :class:`Detections` per window of ``windows``, in order, with :meth:`add`; every
    ``batch`` boxes or so it settles the groups that no window still to come can reach, so it holds
    only the boxes near the windows not yet seen (:attr:`held`). :meth:`result` settles the rest and
    returns exactly what :func:`merge` would return for all the boxes at once. Options are those of
    :func:`merge`.

    Examples
    --------
    >>> import numpy as np, lazytiles as lt
    >>> wins = lt.windows(lt.ArraySource(np.zeros((1, 256, 448), np.uint8)), 256, stride=192)
    >>> merger = Merger(wins)
    >>> merger.add(lt.Detections([[150, 10, 256, 40]], [0.9], [1], [0], partial=[True]))
    >>> merger.add(lt.Detections([[192, 10, 260, 40]], [0.7], [1], [1], partial=[True]))
    >>> merger.result().boxes
    array([[150.,  10., 260.,  40.]])
    """

    def __init__(
        self,
        windows: WindowSequence,
        *,
        iou: float = 0.5,
        method: Method = "union",
        metric: Metric = "ios",
        class_aware: bool = True,
        margin: float = 1.0,
        batch: int = 4096,
    ) -> None:
        _check_options(iou, method, metric, margin)
        if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1:
            raise InvalidArgumentError(f"batch must be a positive number of boxes, got {batch!r}")
        self._options = dict(
            iou=float(iou), metric=metric, class_aware=bool(class_aware), margin=float(margin), method=method
        )
        self._table = windows if isinstance(windows, _WindowTable) else _WindowTable(windows)
        src = self._table.source
        self._transform, self._crs = getattr(src, "transform", None), getattr(src, "crs", None)
        self._batch = int(batch)
        self._reach = float(margin) + 2.0
        self._pending: list[_Boxes] = []
        self._pool = _Boxes.empty()
        self._held = 0  # boxes still waiting after the last settling pass
        self._seq = 0
        self._next = 0  # position of the next window expected
        self._parts: list[dict[str, np.ndarray]] = []

    @property
    def held(self) -> int:
        """Boxes added but not yet settled into merged boxes."""
        return len(self._pool) + sum(len(p) for p in self._pending)

    @property
    def seen(self) -> int:
        """How many windows have been added."""
        return self._next

    def add(self, dets: Detections) -> None:
        """Add the detections of the next window (all of its boxes, possibly none)."""
        k = self._next
        if k >= len(self._table):
            raise InvalidArgumentError(f"all {len(self._table)} windows have been added; this one is one too many")
        d = _as_detections(dets, f"item {k} of dets")
        if k == 0:
            self._transform, self._crs = d.transform, d.crs
        if len(d):
            expected = self._table.indices[k]
            if np.any(d.window_index != expected):
                bad = int(d.window_index[d.window_index != expected][0])
                raise InvalidArgumentError(
                    f"item {k} of dets holds a box from window {bad}, but item {k} is window {expected}; "
                    "a lazy merge needs one Detections per window, in window order (merge a "
                    "Detections.concat(...) of them instead)"
                )
            cols = _columns(d, self._seq, self._table)
            cols.settle = np.maximum(self._table.last_position(d.boxes, self._reach), k)
            self._pending.append(cols)
            self._seq += len(d)
        self._next = k + 1
        if self.held >= 2 * self._held + self._batch:  # amortised: each pass works mostly on new boxes
            pool = _Boxes.concat([self._pool, *self._pending])
            self._pending = []
            out, self._pool = _settle(pool, self._options, pool.settle <= k)
            self._parts.append(out)
            self._held = len(self._pool)

    def result(self) -> Detections:
        """Settle every box still held and return the merged :class:`Detections`."""
        pool = _Boxes.concat([self._pool, *self._pending])
        if len(pool):
            self._parts.append(_settle(pool, self._options, None)[0])
        self._pool, self._pending, self._held = _Boxes.empty(), [], 0
        return _finish([p for p in self._parts if len(p["boxes"])], self._transform, self._crs)


def _stream(dets: Sequence[Detections], merger: Merger, progress: bool) -> Detections:
    """Pull per-window detections in order into ``merger``, with a progress bar."""
    from tqdm.auto import tqdm

    with tqdm(total=len(dets), desc="merge", unit="window", disable=not progress) as bar:
        for d in dets:
            merger.add(d)
            bar.update(1)
    return merger.result()


__all__ = ["Merger", "merge", "partial_flags"]
