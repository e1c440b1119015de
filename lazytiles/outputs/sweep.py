"""Replaying merges with many settings over stored raw detections: what ``Run.sweep`` computes."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

from ..detections import Detections
from ..merging.rule import MergeRule
from ..merging.streaming import merge_by_rule
from .evaluation import evaluate
from .matching import Match
from .table import Table


def _values(value: Any, default: Any) -> list[Any]:
    if value is None:
        return [default]
    if isinstance(value, (str, int, float)):
        return [value]
    return list(value)


def sweep_merges(
    per_window: Sequence[Detections],
    base: MergeRule,
    *,
    iou: Any = None,
    method: Any = None,
    metric: Any = None,
    truth: Any = None,
    match: Match = "box",
    eval_iou: float = 0.5,
    windows: Any = None,
) -> Table:
    """One row per combination of ``iou`` x ``method`` x ``metric`` (each a value or a list; None:
    ``base``'s): the merge's object count, and with ``truth`` its precision, recall, F1, AP and the
    recall of objects on window seams (``windows``, else the per-window sequence's ``.windows``)."""
    rules = [
        dataclasses.replace(base, iou=i, method=m, metric=k)
        for i, m, k in itertools.product(
            _values(iou, base.iou), _values(method, base.method), _values(metric, base.metric)
        )
    ]  # every rule is checked before any merge runs
    windows = windows if windows is not None else getattr(per_window, "windows", None)
    rows = []
    for rule in rules:
        found = merge_by_rule(per_window, rule, progress=False)
        row: dict[str, Any] = {"iou": rule.iou, "method": rule.method, "metric": rule.metric, "objects": len(found)}
        if truth is not None:
            result = evaluate(found, truth, eval_iou, match, windows=windows)
            row.update(precision=result.precision, recall=result.recall, f1=result.f1, ap=result.ap)
            if result.seams is not None:
                row["seam_recall"] = result.seams[-1]["recall"]
        rows.append(row)
    return Table(rows)


__all__ = ["sweep_merges"]
