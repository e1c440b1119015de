"""Where the windows of a sequence are: their pixel rectangles, looked up by window index."""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely

from ..errors import InvalidArgumentError


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
