"""What a run store holds, read back: its raw detections as a sequence of one per window.

:meth:`lazytiles.runs.store.RunStore.raw` makes a :class:`StoredDetections` from one query, and ``lt.merge``
takes it in place of ``lt.detect(model, wins)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from ..detections import Detections
from ..merging.window_table import WindowTable
from ..windowing.index import select


class StoredDetections(Sequence[Detections]):
    """Raw detections of a run: one :class:`~lazytiles.Detections` per window of the run, in its order.

    A window that is not done (missing or failed) gives an empty ``Detections``. ``windows`` is the
    run's :class:`~lazytiles.merging.window_table.WindowTable`, so ``lt.merge(stored)`` merges exactly
    as ``lt.merge(lt.detect(model, wins))`` does. Every box is held in a few numpy arrays; per-window
    objects are made on access.
    """

    def __init__(
        self, windows: WindowTable, columns: dict[str, np.ndarray], transform: Affine, crs: CRS | None
    ) -> None:
        self.windows = windows
        self.transform, self.crs = transform, crs
        self._cols = columns
        w = columns["window_index"]
        self._start = np.searchsorted(w, windows.indices, side="left")
        self._stop = np.searchsorted(w, windows.indices, side="right")

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, key: Any) -> Any:
        picked = select(range(len(self)), key, what="window")
        if isinstance(picked, int):
            return self._take(np.arange(self._start[picked], self._stop[picked]))
        return StoredDetections(self.windows[np.asarray(picked, dtype=np.int64)], self._cols, self.transform, self.crs)

    def __iter__(self) -> Iterator[Detections]:
        for a, b in zip(self._start.tolist(), self._stop.tolist()):
            yield self._take(slice(a, b))

    def _take(self, idx: Any) -> Detections:
        c = self._cols
        boxes = np.stack([c["x0"][idx], c["y0"][idx], c["x1"][idx], c["y1"][idx]], axis=1)
        return Detections(
            boxes,
            c["score"][idx],
            c["label"][idx],
            c["window_index"][idx],
            partial=c["partial"][idx],
            shapes=c["outline"][idx],
            transform=self.transform,
            crs=self.crs,
        )

    def concat(self) -> Detections:
        """Every box, in window order, as one :class:`~lazytiles.Detections`."""
        lengths = self._stop - self._start
        idx = np.repeat(self._start - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))
        return self._take(idx)

    def __repr__(self) -> str:
        return f"<StoredDetections: {len(self)} windows, {int((self._stop - self._start).sum())} boxes>"


__all__ = ["StoredDetections"]
