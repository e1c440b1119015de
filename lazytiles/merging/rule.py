"""The merge rule: when two boxes are one object, and what one box a group of them becomes.

One frozen value, :class:`MergeRule`, checked once when it is made and passed whole to everything
that merges: ``lt.merge`` and :class:`~lazytiles.merging.streaming.Merger`, the cell merge
(:mod:`lazytiles.merging.cells`), runs (``lt.detect_region``, ``Run.merge``), the Beam job and the
Kafka worker. Its defaults are ``lt.merge``'s.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import InvalidArgumentError, is_real
from .boxes import METRICS, Metric

Method = Literal["union", "nms"]
METHODS: tuple[str, ...] = ("union", "nms")


@dataclass(frozen=True)
class MergeRule:
    """How boxes from overlapping windows are merged; see :func:`lazytiles.merge` for the rule itself.

    Parameters
    ----------
    iou
        Match threshold in (0, 1]: boxes whose ``metric`` is at least this are one object.
    method
        ``"union"``: a group becomes the union of its complete boxes (of its pieces if no window saw
        the object whole); ``"nms"``: the group's best box is kept as it is.
    metric
        ``"ios"``: intersection over the smaller box; ``"iou"``: intersection over union.
    class_aware
        Only boxes with the same label match.
    margin
        Pixels within which boxes count as reaching a seam between windows that only abut.

    Raises
    ------
    InvalidArgumentError
        A value out of range or not one of the choices, named with the fix.

    Examples
    --------
    >>> import lazytiles as lt
    >>> lt.MergeRule(iou=0.3, method="nms")
    MergeRule(iou=0.3, method='nms', metric='ios', class_aware=True, margin=1.0)
    >>> lt.MergeRule(iou=1.5)
    Traceback (most recent call last):
    ...
    lazytiles.errors.InvalidArgumentError: iou must be a threshold in (0, 1], got 1.5
    """

    iou: float = 0.5
    method: Method = "union"
    metric: Metric = "ios"
    class_aware: bool = True
    margin: float = 1.0

    def __post_init__(self) -> None:
        iou, margin = self.iou, self.margin
        if not is_real(iou) or not 0 < iou <= 1:
            raise InvalidArgumentError(f"iou must be a threshold in (0, 1], got {iou!r}")
        if self.method not in METHODS:
            raise InvalidArgumentError(
                f"method must be 'union' (merge each group into its union box) or 'nms' (keep the best "
                f"box of each group), got {self.method!r}"
            )
        if self.metric not in METRICS:
            raise InvalidArgumentError(
                f"metric must be 'ios' (intersection over the smaller box) or 'iou' (intersection over "
                f"union), got {self.metric!r}"
            )
        if not is_real(margin) or not (0 <= margin < math.inf):
            raise InvalidArgumentError(f"margin must be a distance >= 0 in pixels, got {margin!r}")
        object.__setattr__(self, "iou", float(iou))
        object.__setattr__(self, "class_aware", bool(self.class_aware))
        object.__setattr__(self, "margin", float(margin))

    def to_dict(self) -> dict[str, Any]:
        """The rule as JSON values, in field order (what a run store records with its merged layer)."""
        return dataclasses.asdict(self)


__all__ = ["METHODS", "MergeRule", "Method"]
