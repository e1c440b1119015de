"""The merge by cells (lazytiles.merging.cells) gives ``lt.merge``'s result exactly; no Beam needed.

The Beam job (tests/beam) runs this merge on its workers; here it runs in one process against the
local pipeline on the built-in sample, and against ``lt.merge`` on random windows and boxes.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import assert_same
from hypothesis import given, settings
from hypothesis import strategies as st

import lazytiles as lt
from lazytiles.detection.models import BlobDetector
from lazytiles.detections import partial_flags
from lazytiles.merging.cells import CellGrid, merge_by_cells, merge_in_cells, merged_detections
from lazytiles.testing.sample import make_sample


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory):
    """The oracle: per-window detections and the merged result of the local pipeline on the sample
    (121 windows of 128 px, stride 96: most objects straddle a window seam)."""
    sample = make_sample(tmp_path_factory.mktemp("cells-sample"), size=1024, objects=130, tiles=False)
    wins = lt.windows(lt.open(sample.cog, cache=lt.TileCache()), size=128, overlap=0.25)
    per_window = list(lt.detect(BlobDetector(), wins, progress=False))
    merged = lt.merge(lt.detect(BlobDetector(), wins, progress=False), progress=False)
    assert len(merged) == len(sample.boxes) and sum(bool(d.partial.any()) for d in per_window) > 50
    return wins, per_window, merged


@pytest.mark.parametrize("cell, fanin", [(17, 2), (50, 3), (100, 2), (300, 4), (5000, 4)])
def test_merging_cell_by_cell_gives_the_local_merge_exactly(local, cell, fanin):
    wins, per_window, merged = local
    grid = CellGrid.for_area(wins.area, cell=cell, fanin=fanin, margin=1.0)
    items = ((k, wins.pixel_windows()[k], d) for k, d in enumerate(per_window))
    chunks, stats = merge_in_cells(items, grid, lt.MergeRule())
    assert_same(merged_detections(chunks, merged.transform, merged.crs), merged)
    assert [s["level"] for s in stats] == list(range(grid.levels + 1))
    assert sum(s["merged"] for s in stats) == len(merged)
    if cell == 17:  # tiny cells: most objects cross a cell edge and are merged levels up
        assert grid.levels == 6 and stats[0]["merged"] < len(merged) / 2


@st.composite
def window_scenes(draw):
    """Random windows (overlapping, often abutting, or with gaps), random boxes in them (often on a
    window edge, with ties), and a cell size (often a multiple of the stride: cell edges on seams)."""
    height, width = draw(st.integers(40, 260)), draw(st.integers(40, 260))
    size = draw(st.integers(16, 40))
    stride = draw(st.one_of(st.just(size), st.integers(size // 2, size + 4)))
    wins = lt.windows(
        lt.ArraySource(np.zeros((1, height, width), np.uint8)),
        size,
        stride=stride,
        edge=draw(st.sampled_from(["shift", "pad"])),
    )
    rects = wins.pixel_windows()
    near_edge = st.one_of(st.integers(-2, 3), st.integers(size - 3, size + 2), st.integers(-2, size + 2))
    per_window = []
    for k in range(len(wins)):
        c, r = int(rects[k][0]), int(rects[k][1])
        n = draw(st.integers(0, 4))
        boxes = []
        for _ in range(n):
            x = sorted([draw(near_edge), draw(near_edge)])
            y = sorted([draw(near_edge), draw(near_edge)])
            boxes.append([x[0], y[0], max(x[1], x[0] + 1), max(y[1], y[0] + 1)])
        boxes = np.array(boxes, float).reshape(-1, 4)
        part = (
            partial_flags(boxes, rects[k], wins.area)
            if draw(st.booleans())
            else draw(st.lists(st.booleans(), min_size=n, max_size=n))
        )
        per_window.append(
            lt.Detections(
                boxes + [c, r, c, r],
                [draw(st.sampled_from([0.5, 0.75, 1.0])) for _ in range(n)],
                [draw(st.integers(0, 1)) for _ in range(n)],
                np.full(n, k),
                partial=part,
            )
        )
    cell = draw(
        st.one_of(st.sampled_from([3.0, 11.0, 25.0, 1000.0]), st.integers(1, 3).map(lambda m: float(m * stride)))
    )
    return wins, per_window, cell


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(
    window_scenes(),
    st.integers(2, 4),
    st.sampled_from(["union", "nms"]),
    st.sampled_from(["ios", "iou"]),
    st.sampled_from([0.3, 0.5, 1.0]),
    st.booleans(),
    st.sampled_from([0.0, 1.0, 3.0]),
)
def test_merge_by_cells_equals_lt_merge_on_random_boxes(scene, fanin, method, metric, thr, class_aware, margin):
    wins, per_window, cell = scene
    opts = dict(iou=thr, method=method, metric=metric, class_aware=class_aware, margin=margin)
    expected = lt.merge(per_window, windows=wins, progress=False, **opts)
    assert_same(merge_by_cells(per_window, wins, lt.MergeRule(**opts), cell_size=cell, fanin=fanin), expected)


def test_boxes_that_are_not_finite_come_out_as_the_local_merge_gives_them():
    wins = lt.windows(lt.ArraySource(np.zeros((1, 64, 128), np.uint8)), 64)
    per_window = [
        lt.Detections([[np.nan, 1, 5, 5], [1, 1, 9, 9]], [0.5, 0.9], [0, 0], [0, 0]),
        lt.Detections([[70, 2, 80, np.inf]], [0.7], [0], [1]),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy compares NaN inside lt.merge too
        expected = lt.merge(per_window, windows=wins, progress=False)
        found = merge_by_cells(per_window, wins, cell_size=20, fanin=2)
    np.testing.assert_array_equal(found.boxes, expected.boxes)
    assert len(found) == 3
