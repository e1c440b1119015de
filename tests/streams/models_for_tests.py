"""Tiny CPU models for the stream tests, importable by worker subprocesses (``PYTHONPATH=tests/streams:tests``).

Also the test scene: bright rectangles whose boxes a :class:`~lazytiles.detection.models.BlobDetector` finds
exactly, so the expected result of every window is known by hand (:func:`expected_boxes`).

A worker that imports this module with ``LT_TEST_KILL_AT_COMMIT=N[:after]`` set SIGKILLs itself inside its
N-th run-store commit (:func:`run_child.kill_at_commit`).
"""

from __future__ import annotations

import os
import threading

import numpy as np

from lazytiles.detection.models import BlobDetector

if os.environ.get("LT_TEST_KILL_AT_COMMIT"):  # imported by a worker when its first job loads its model
    from run_child import kill_at_commit  # tests/run_child.py

    kill_at_commit(os.environ["LT_TEST_KILL_AT_COMMIT"])

#: Rectangles (x0, y0, x1, y1, band) in a 256 x 256 scene; several cross the 64-px window seams.
RECTS = [
    (5, 5, 15, 12, 0),
    (58, 20, 70, 30, 1),  # crosses the column seam at 64
    (100, 58, 115, 70, 2),  # crosses the row seam at 64
    (122, 122, 135, 131, 0),  # crosses both seams at 128
    (200, 150, 210, 165, 1),
    (30, 200, 50, 205, 0),
    (150, 235, 170, 250, 2),
    (186, 30, 196, 35, 1),  # crosses the column seam at 192
]


def scene(height: int = 256, width: int = 256) -> np.ndarray:
    """3-band uint8: zeros, and 255 in band ``band`` inside each rectangle of :data:`RECTS`."""
    image = np.zeros((3, height, width), np.uint8)
    for x0, y0, x1, y1, band in RECTS:
        image[band, y0:y1, x0:x1] = 255
    return image


def expected_boxes(window: tuple[int, int, int, int]) -> list[tuple[float, float, float, float, int]]:
    """The boxes (x0, y0, x1, y1 in source pixels, label) a blob detector must find in a window
    (col_off, row_off, width, height): each rectangle clipped to it, by hand."""
    c, r, w, h = window
    out = []
    for x0, y0, x1, y1, band in RECTS:
        a, b, cc, d = max(x0, c), max(y0, r), min(x1, c + w), min(y1, r + h)
        if cc > a and d > b and (cc - a) * (d - b) >= 4:
            out.append((float(a), float(b), float(cc), float(d), band))
    return sorted(out)


class GatedBlobs(BlobDetector):
    """A blob detector that can be stopped mid-job at a known batch, for kill and shutdown tests.

    After ``LT_TEST_HANG_AFTER`` batches it blocks inside the next one: until its process is killed,
    or, when ``LT_TEST_GATE`` names a FIFO, until the test opens that FIFO for writing (then it goes
    on normally). Without those variables it is a plain blob detector.
    """

    def __init__(self) -> None:
        super().__init__(threshold=0.5)
        self._hang_after = int(os.environ["LT_TEST_HANG_AFTER"]) if os.environ.get("LT_TEST_HANG_AFTER") else None
        self._gate = os.environ.get("LT_TEST_GATE")
        self._batches = 0

    def forward(self, images):  # type: ignore[no-untyped-def]
        self._batches += 1
        if self._hang_after is not None and self._batches == self._hang_after + 1:
            if self._gate:
                with open(self._gate, "rb") as gate:  # blocks until the test opens the FIFO to write
                    gate.read()
            else:
                threading.Event().wait(600)  # until SIGKILL
        return super().forward(images)


def blobs() -> BlobDetector:
    return BlobDetector(threshold=0.5)


def gated_blobs() -> GatedBlobs:
    return GatedBlobs()


def broken_factory() -> BlobDetector:
    raise RuntimeError("this factory always fails")


def exits() -> BlobDetector:
    """An allowed model whose factory raises SystemExit, as job code might: a dead letter, not an exit."""
    raise SystemExit(0)


def interrupts() -> BlobDetector:
    raise KeyboardInterrupt


def recurses() -> BlobDetector:
    return recurses()


def aborts() -> BlobDetector:
    """Kills its process outright (as an OOM kill would): the worker's attempt counter catches it."""
    os.abort()
