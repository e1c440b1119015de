"""Instance masks (Mask R-CNN's ``masks`` output) traced into outlines, in window pixels.

A detector may return, per image, ``masks`` beside its boxes: ``(K, 1, h, w)`` (torchvision's
convention) or ``(K, h, w)`` probabilities in window pixels. Each is cut at :data:`THRESHOLD` and
traced into a shapely Polygon (a MultiPolygon when it falls apart), or None when nothing is left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ModelOutputError
from ..geometry import mask_outline

#: A mask pixel belongs to its object at this probability or more (torchvision's paste threshold).
THRESHOLD = 0.5


def mask_shapes(masks: Any, k: int, to_numpy: Callable[[Any], np.ndarray], where: str) -> np.ndarray:
    """One outline (or None) per object from ``masks`` of ``k`` objects, in window pixels."""
    given = arr = to_numpy(masks)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3 or len(arr) != k:
        raise ModelOutputError(
            f"the model returned, {where}, masks of shape {tuple(given.shape)} for {k} boxes; expected (K, 1, h, w) "
            "or (K, h, w) per-pixel probabilities in window pixels, one mask per box (Mask R-CNN's convention)"
        )
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ModelOutputError(f"the model returned NaN or inf in its masks {where}; masks must be finite")
    shapes = np.empty(k, dtype=object)
    shapes[:] = [mask_outline(m >= THRESHOLD if m.dtype != bool else m) for m in arr]
    return shapes


__all__ = ["THRESHOLD", "mask_shapes"]
