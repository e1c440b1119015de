"""``lt.evaluate``: found objects against ground truth — precision, recall, F1 and AP per class, seams apart.

See :mod:`lazytiles.outputs.matching` for the matching rule and the average precision, and
:mod:`lazytiles.outputs.truth` for how a vector file becomes truth.
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely

from ..detections import Detections
from ..errors import InvalidArgumentError, is_real
from ..merging.window_table import WindowTable
from .matching import MATCHES, Match, average_precision, greedy_match
from .table import Table
from .truth import as_truth


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def _row(name: Any, found: Detections, truth: Detections, hit: np.ndarray, taken: np.ndarray) -> dict[str, Any]:
    tp = int(hit.sum())
    p, r = _ratio(tp, len(found)), _ratio(int(taken.sum()), len(truth))
    if math.isnan(p) or math.isnan(r):
        f1 = float("nan")
    else:
        f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {
        "class": name,
        "truth": len(truth),
        "found": len(found),
        "matched": tp,
        "precision": p,
        "recall": r,
        "f1": f1,
        "ap": average_precision(found.scores, hit, len(truth)),
    }


def _table(found: Detections, truth: Detections, match_of: np.ndarray) -> Table:
    """One row per class, then ``all``: counts summed, AP the mean over classes with truth (mAP)."""
    hit = match_of >= 0
    taken = np.zeros(len(truth), bool)
    taken[match_of[hit]] = True
    rows = []
    for label in np.union1d(found.labels, truth.labels).tolist():
        f, t = found.labels == label, truth.labels == label
        rows.append(_row(int(label), found[f], truth[t], hit[f], taken[t]))
    total = _row("all", found, truth, hit, taken)
    aps = [r["ap"] for r in rows if r["truth"]]
    total["ap"] = float(np.mean(aps)) if aps else float("nan")
    return Table([*rows, total])


def _cut_by_windows(d: Detections, windows: WindowTable) -> np.ndarray:
    """Which objects no single window holds whole (they cross a seam)."""
    if not len(d):
        return np.zeros(0, bool)
    r = windows.rects.astype(np.float64)
    tree = shapely.STRtree(shapely.box(r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]))
    b = d.boxes
    inside, _ = tree.query(shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3]), predicate="within")
    cut = np.ones(len(d), bool)
    cut[inside] = False
    return cut


@dataclass(frozen=True, repr=False)
class Evaluation:
    """What :func:`evaluate` found: tables of scores, and the objects behind them.

    Attributes
    ----------
    table
        One row per class and a last row ``all``: ``truth``, ``found``, ``matched`` counts,
        ``precision``, ``recall``, ``f1``, ``ap`` (NaN where undefined; ``all``'s AP is the mean over
        classes with truth, mAP).
    seams
        The same table over the objects no window holds whole (each true object, and each found one,
        that crosses a window seam), or None when no windows were given.
    matched, extra
        The found objects matched to a true one, and those that match none (false positives).
    missed
        The true objects no found object matched (false negatives), in the found objects' pixel grid.
    """

    table: Table
    seams: Table | None
    matched: Detections
    missed: Detections
    extra: Detections
    iou: float
    match: str

    @property
    def precision(self) -> float:
        return float(self.table[-1]["precision"])

    @property
    def recall(self) -> float:
        return float(self.table[-1]["recall"])

    @property
    def f1(self) -> float:
        return float(self.table[-1]["f1"])

    @property
    def ap(self) -> float:
        """Mean average precision over the classes with true objects."""
        return float(self.table[-1]["ap"])

    def _head(self) -> str:
        return f"Evaluation: {self.match} IoU >= {self.iou:g}; {len(self.missed)} missed, {len(self.extra)} extra"

    def __repr__(self) -> str:
        seams = "" if self.seams is None else f"\nobjects on window seams:\n{self.seams!r}"
        return f"<{self._head()}>\n{self.table!r}{seams}"

    def _repr_html_(self) -> str:
        seams = "" if self.seams is None else f"<br>objects on window seams:{self.seams._repr_html_()}"
        return f"<div><b>lt.{html.escape(self._head())}</b>{self.table._repr_html_()}{seams}</div>"


def evaluate(
    found: Detections,
    truth: Detections | str | os.PathLike[str],
    iou: float = 0.5,
    match: Match = "box",
    *,
    windows: Any = None,
    label_column: str | None = None,
) -> Evaluation:
    """Score found objects against ground truth: precision, recall, F1 and average precision per class.

    Parameters
    ----------
    found
        The objects found (``lt.merge(...)``, ``lt.polygons(...)``, a run's result).
    truth
        The true objects: :class:`~lazytiles.Detections` in the same pixel grid, or the path of any
        vector file pyogrio reads (GeoPackage, GeoJSON, Shapefile, ...) of polygons, reprojected to
        ``found``'s CRS. Each feature's class is its ``label_column``, else its ``label`` or ``class``
        column (integers), else 0.
    iou
        A found object matches a true one of its class when their intersection over union is at least
        this (each true object is matched once, best-scored found objects first).
    match
        ``"box"``: IoU of the boxes; ``"polygon"``: of the outlines (boxes where an object has none).
    windows
        The windows the objects were found in (a WindowSequence, or a run's window table): objects
        that no window holds whole are also scored apart, in :attr:`Evaluation.seams`.
    label_column
        The column of the truth file holding classes.

    Returns
    -------
    Evaluation

    Examples
    --------
    >>> import lazytiles as lt
    >>> truth = lt.Detections([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], None, [1, 1, 2])
    >>> found = lt.Detections([[1, 0, 11, 10], [60, 0, 70, 10], [40, 0, 50, 10]], [0.9, 0.8, 0.7], [1, 1, 2])
    >>> result = lt.evaluate(found, truth)
    >>> result.recall, result.precision
    (0.6666666666666666, 0.6666666666666666)
    >>> result.table
    class  truth  found  matched  precision  recall      f1    ap
        1      2      2        1        0.5     0.5     0.5   0.5
        2      1      1        1          1       1       1     1
      all      3      3        2     0.6667  0.6667  0.6667  0.75
    """
    if not isinstance(found, Detections):
        raise InvalidArgumentError(f"found must be lt.Detections, got {type(found).__name__}")
    if not is_real(iou) or not 0 < iou <= 1:
        raise InvalidArgumentError(f"iou must be a threshold in (0, 1], got {iou!r}")
    if match not in MATCHES:
        raise InvalidArgumentError(f"match must be 'box' or 'polygon', got {match!r}")
    true = as_truth(truth, found, label_column)
    match_of = greedy_match(found, true, float(iou), match)
    hit = match_of >= 0
    taken = np.zeros(len(true), bool)
    taken[match_of[hit]] = True
    seams = None
    if windows is not None:
        table = WindowTable.of(windows)
        fc, tc = _cut_by_windows(found, table), _cut_by_windows(true, table)
        inner = np.full(len(true), -1, np.int64)
        inner[np.flatnonzero(tc)] = np.arange(int(tc.sum()))
        sub = np.where(hit[fc], inner[np.maximum(match_of[fc], 0)], -1)
        seams = _table(found[fc], true[tc], sub)
    return Evaluation(_table(found, true, match_of), seams, found[hit], true[~taken], found[~hit], float(iou), match)


__all__ = ["Evaluation", "evaluate"]
