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

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..detections import Detections
from ..errors import InvalidArgumentError, is_int
from .boxes import Metric
from .grouping import BoxPool, finish_groups, settle_groups
from .rule import MergeRule, Method
from .window_table import WindowTable

if TYPE_CHECKING:
    from ..windowing.sequence import WindowSequence


def _columns(d: Detections, seq0: int, table: WindowTable | None) -> BoxPool:
    n = len(d)
    return BoxPool(
        boxes=d.boxes,
        scores=d.scores,
        labels=d.labels,
        widx=d.window_index,
        partial=d.partial,
        seq=np.arange(seq0, seq0 + n, dtype=np.int64),
        wrect=np.full((n, 4), np.nan) if table is None else table.lookup(d.window_index),
        settle=np.zeros(n, np.int64),
        shapes=d.shapes,
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
    iou: float = MergeRule.iou,
    method: Method = MergeRule.method,
    metric: Metric = MergeRule.metric,
    class_aware: bool = MergeRule.class_aware,
    windows: WindowSequence | WindowTable | None = None,
    margin: float = MergeRule.margin,
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
    rule = MergeRule(iou=iou, method=method, metric=metric, class_aware=class_aware, margin=margin)
    return merge_by_rule(dets, rule, windows=windows, progress=progress)


def merge_by_rule(
    dets: Detections | Iterable[Detections],
    rule: MergeRule,
    *,
    windows: WindowSequence | WindowTable | None = None,
    progress: bool = True,
) -> Detections:
    """:func:`merge` with its options given as one :class:`~lazytiles.MergeRule` (what runs replay with)."""
    if windows is None and not isinstance(dets, Detections):
        windows = getattr(dets, "windows", None)
    merger = None if windows is None else Merger(windows, rule)
    if (
        merger is not None
        and isinstance(dets, Sequence)
        and not isinstance(dets, Detections)
        and len(dets) == len(merger.table)
    ):
        return _stream(dets, merger, progress)
    table = None if merger is None else merger.table

    if isinstance(dets, Detections):
        items = [dets]
    else:
        items = [_as_detections(d, f"item {k} of dets") for k, d in enumerate(dets)]
    src = getattr(windows, "source", None)
    transform, crs = getattr(src, "transform", None), getattr(src, "crs", None)
    if items:
        transform, crs = items[0].transform, items[0].crs
    pool = _columns(Detections.concat(items), 0, table) if items else BoxPool.empty()
    return finish_groups([settle_groups(pool, rule, None)[0]] if len(pool) else [], transform, crs)


class Merger:
    """Merge per-window detections as they arrive, in window order; what :func:`merge` streams with.

    Feed it one :class:`Detections` per window of ``windows``, in order, with :meth:`add`; every
    ``batch`` boxes or so it settles the groups that no window still to come can reach, so it holds
    only the boxes near the windows not yet seen (:attr:`held`). :meth:`result` settles the rest and
    returns exactly what :func:`merge` would return for all the boxes at once. ``rule`` is a
    :class:`~lazytiles.MergeRule` (default: :func:`merge`'s options).

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
        self, windows: WindowSequence | WindowTable, rule: MergeRule = MergeRule(), *, batch: int = 4096
    ) -> None:
        if not isinstance(rule, MergeRule):
            raise InvalidArgumentError(f"rule must be an lt.MergeRule(...), got {type(rule).__name__} {rule!r}")
        if not is_int(batch) or batch < 1:
            raise InvalidArgumentError(f"batch must be a positive number of boxes, got {batch!r}")
        self._rule = rule
        self._table = WindowTable.of(windows)
        src = getattr(windows, "source", None)
        self._transform, self._crs = getattr(src, "transform", None), getattr(src, "crs", None)
        self._batch = int(batch)
        self._reach = rule.margin + 2.0
        self._pending: list[tuple[int, Detections]] = []  # (position, boxes) of windows not yet pooled
        self._npending = 0
        self._pool = BoxPool.empty()
        self._held = 0  # boxes still waiting after the last settling pass
        self._seq = 0
        self._next = 0  # position of the next window expected
        self._parts: list[dict[str, np.ndarray]] = []

    @property
    def table(self) -> WindowTable:
        """The windows, in the order their detections are added."""
        return self._table

    @property
    def held(self) -> int:
        """Boxes added but not yet settled into merged boxes."""
        return len(self._pool) + self._npending

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
        n = len(d.boxes)
        if n:
            expected = self._table.indices[k]
            if (d.window_index != expected).any():
                bad = int(d.window_index[d.window_index != expected][0])
                raise InvalidArgumentError(
                    f"item {k} of dets holds a box from window {bad}, but item {k} is window {expected}; "
                    "a lazy merge needs one Detections per window, in window order (merge a "
                    "Detections.concat(...) of them instead)"
                )
            self._pending.append((k, d))
            self._npending += n
        self._next = k + 1
        # amortised: each pass works mostly on new boxes
        if len(self._pool) + self._npending >= 2 * self._held + self._batch:
            pool = self._pooled()
            out, self._pool = settle_groups(pool, self._rule, pool.settle <= k)
            self._parts.append(out)
            self._held = len(self._pool)

    def _pooled(self) -> BoxPool:
        """The held boxes and the pending windows' boxes as one pool (the windows' columns made in one go)."""
        if not self._pending:
            return self._pool
        ds = [d for _, d in self._pending]
        positions = np.repeat([k for k, _ in self._pending], [len(d.boxes) for d in ds])
        n = len(positions)
        boxes = np.concatenate([d.boxes for d in ds])
        widx = np.concatenate([d.window_index for d in ds])
        cols = BoxPool(
            boxes=boxes,
            scores=np.concatenate([d.scores for d in ds]),
            labels=np.concatenate([d.labels for d in ds]),
            widx=widx,
            partial=np.concatenate([d.partial for d in ds]),
            seq=np.arange(self._seq, self._seq + n, dtype=np.int64),
            wrect=self._table.lookup(widx),
            settle=np.maximum(self._table.last_position(boxes, self._reach, positions), positions),
            shapes=np.concatenate([d.shapes for d in ds]),
        )
        self._seq += n
        self._pending, self._npending = [], 0
        return BoxPool.concat([self._pool, cols])

    def result(self) -> Detections:
        """Settle every box still held and return the merged :class:`Detections`."""
        pool = self._pooled()
        if len(pool):
            self._parts.append(settle_groups(pool, self._rule, None)[0])
        self._pool, self._held = BoxPool.empty(), 0
        return finish_groups([p for p in self._parts if len(p["boxes"])], self._transform, self._crs)


def _stream(dets: Sequence[Detections], merger: Merger, progress: bool) -> Detections:
    """Pull per-window detections in order into ``merger``, with a progress bar."""
    from tqdm.auto import tqdm

    with tqdm(total=len(dets), desc="merge", unit="window", disable=not progress) as bar:
        for d in dets:
            merger.add(d)
            bar.update(1)
    return merger.result()


__all__ = ["Merger", "merge", "merge_by_rule"]
