"""The whole chain with the real built-in detector: windows -> lt.detect -> lt.merge, against the truth.

The scene's objects are drawn from a seeded generator and their true boxes come with it, so every
found box can be matched by hand-independent arithmetic (IoU computed here, in plain numpy).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from affine import Affine

import lazytiles as lt
from lazytiles.detection.models import BlobDetector
from lazytiles.testing.sample import sample_scene

#: A UTM grid whose origin is far from zero, so pixel and map coordinates cannot be confused.
ORIGIN = Affine(0.5, 0.0, 612_345.0, 0.0, -0.5, 5_123_456.0)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scene():
    pixels, boxes, labels = sample_scene(1280, objects=150, seed=7)
    return pixels, boxes, labels


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection over union of xyxy boxes."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def seam_counts(boxes: np.ndarray, wins: lt.WindowSequence) -> tuple[int, int]:
    """(objects cut by some window's edge, objects no single window holds whole)."""
    pw = wins.pixel_windows()
    c0, r0, c1, r1 = pw[:, 0], pw[:, 1], pw[:, 0] + pw[:, 2], pw[:, 1] + pw[:, 3]
    inside = (
        (boxes[:, None, 0] >= c0) & (boxes[:, None, 1] >= r0) & (boxes[:, None, 2] <= c1) & (boxes[:, None, 3] <= r1)
    )
    touches = (boxes[:, None, 0] < c1) & (boxes[:, None, 2] > c0) & (boxes[:, None, 1] < r1) & (boxes[:, None, 3] > r0)
    return int((touches & ~inside).any(axis=1).sum()), int((~inside.any(axis=1)).sum())


@pytest.mark.parametrize("edge, overlap", [("shift", 0.25), ("pad", 0.25), ("drop", 0.25), ("shift", 0.0)])
def test_every_object_is_found_once_whole_and_nothing_else(scene, edge, overlap):
    pixels, truth, labels = scene
    src = lt.ArraySource(pixels, transform=ORIGIN, crs="EPSG:32632", tile_shape=200)  # tile seams != window seams
    wins = lt.windows(src, size=192, overlap=overlap, edge=edge)
    area = wins.area
    c0, r0 = area.col_off, area.row_off
    c1, r1 = c0 + area.width, r0 + area.height
    cut, never_whole = seam_counts(truth, wins)
    assert len(truth) >= 100 and cut >= 50 and (never_whole >= 20 if overlap == 0 else True)

    found = lt.merge(lt.detect(BlobDetector(), wins, batch_size=8, progress=False), progress=False)

    if edge == "drop":  # objects reaching past the last complete window are seen cut by the area's edge
        inside = (truth[:, 0] >= c0) & (truth[:, 1] >= r0) & (truth[:, 2] <= c1) & (truth[:, 3] <= r1)
        of_outside = ~inside[iou(found.boxes, truth).argmax(axis=1)]
        b = found.boxes[of_outside]
        assert ((b[:, 0] <= c0) | (b[:, 1] <= r0) | (b[:, 2] >= c1) | (b[:, 3] >= r1)).all()  # at the edge
        found, truth, labels = found[~of_outside], truth[inside], labels[inside]

    overlap = iou(found.boxes, truth)
    best = overlap.argmax(axis=1)
    assert len(found) == len(truth)  # no duplicates, no false positives ...
    assert sorted(best.tolist()) == list(range(len(truth)))  # ... each object matched by exactly one box
    assert overlap[np.arange(len(found)), best].min() >= 0.95
    assert np.array_equal(found.labels, labels[best])

    # georeferenced: the known map coordinates of each object's pixel box under ORIGIN
    x0, y0 = 612_345.0 + 0.5 * truth[best, 0], 5_123_456.0 - 0.5 * truth[best, 1]
    x1, y1 = 612_345.0 + 0.5 * truth[best, 2], 5_123_456.0 - 0.5 * truth[best, 3]
    geo = found.geo_boxes()
    assert np.allclose(geo, np.stack([x0, y1, x1, y0], axis=1), atol=0.5 * 2)  # within 2 px of the truth


def test_random_access_and_streaming_merge_to_the_same_objects(scene):
    pixels, _, _ = scene
    src = lt.ArraySource(pixels, crs="EPSG:32632", tile_shape=256)
    wins = lt.windows(src, size=256, overlap=0.25)
    dets = lt.detect(BlobDetector(), wins, batch_size=4, progress=False)
    streamed = lt.merge(dets, progress=False)
    one_by_one = lt.merge([dets[i] for i in range(len(dets))], windows=wins, progress=False)
    assert streamed == one_by_one and len(streamed) >= 100
