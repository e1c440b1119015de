"""lt.merge: each object once and whole, checked against painted ground truth and a brute-force merge.

The accuracy tests paint rectangles with known extents into a raster (pixel value = object id), cut it
into real lazytiles windows, and run an *oracle detector* on each window's pixels: it reports every
object it sees, clipped to the window, scored by the visible fraction, with ``partial_flags``. After
merging, each painted object must come out once, with IoU >= 0.95 to its true extent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

import lazytiles as lt
from lazytiles.detections import partial_flags
from lazytiles.merging.grouping import lexsort_ties
from lazytiles.merging.streaming import Merger

UTM_10M = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 6_000_000.0)


# -- partial flags -------------------------------------------------------------------------------------


def test_partial_flags_mark_only_boxes_at_inner_edges():
    area = Window(0, 0, 600, 400)
    window = Window(192, 0, 256, 256)  # left and right and bottom edges are inner; top is the area's
    boxes = np.array(
        [
            [0, 50, 20, 60],  # at the left edge
            [1, 50, 20, 60],  # 1 px in: still within margin
            [2, 50, 20, 60],  # 2 px in: complete
            [230, 50, 256, 60],  # at the right edge
            [100, 0, 120, 20],  # at the top edge, which is the area's edge
            [100, 240, 120, 256],  # at the bottom edge
            [100, 100, 120, 120],  # inside
        ],
        dtype=float,
    )
    assert partial_flags(boxes, window, area).tolist() == [True, True, False, True, False, True, False]
    assert partial_flags(boxes, window, area, margin=0).tolist() == [True, False, False, True, False, True, False]
    as_tuples = partial_flags(boxes, (192, 0, 256, 256), (0, 0, 600, 400))
    assert as_tuples.tolist() == partial_flags(boxes, window, area).tolist()


def test_a_window_that_is_the_whole_area_has_no_partial_boxes():
    boxes = [[0, 0, 256, 256], [0, 0, 1, 1]]
    assert not partial_flags(boxes, Window(0, 0, 256, 256), Window(0, 0, 256, 256)).any()
    assert partial_flags(np.zeros((0, 4)), Window(5, 5, 10, 10), Window(0, 0, 99, 99)).shape == (0,)


# -- a scene of painted objects and an oracle detector ---------------------------------------------


def window_edges(wins) -> tuple[np.ndarray, np.ndarray]:
    pw = wins.pixel_windows()
    xs = np.unique(np.concatenate([pw[:, 0], pw[:, 0] + pw[:, 2]]))
    ys = np.unique(np.concatenate([pw[:, 1], pw[:, 1] + pw[:, 3]]))
    return xs, ys


def paint_scene(height, width, seams_x, seams_y, *, n=150, sizes=(6, 60), big=0, pairs=6, seed=0):
    """Non-overlapping rectangles (>= 3 px apart), most straddling a seam; ``pairs`` pairs of
    same-class objects only 2 px apart across a seam. Returns (ids raster, boxes, labels)."""
    rng = np.random.default_rng(seed)
    taken = np.zeros((height, width), bool)
    boxes, labels = [], []

    def place(x0, y0, w, h, label, gap=3):
        x0, y0 = int(x0), int(y0)
        if x0 < 0 or y0 < 0 or x0 + w > width or y0 + h > height:
            return False
        if taken[max(y0 - gap, 0) : y0 + h + gap, max(x0 - gap, 0) : x0 + w + gap].any():
            return False
        taken[y0 : y0 + h, x0 : x0 + w] = True
        boxes.append((x0, y0, x0 + w, y0 + h))
        labels.append(label)
        return True

    inner_x = seams_x[(seams_x > 0) & (seams_x < width)]
    inner_y = seams_y[(seams_y > 0) & (seams_y < height)]
    placed = 0
    while placed < pairs:  # two objects 2 px apart, the gap right at a seam
        s = int(rng.choice(inner_x))
        y0, h, w = int(rng.integers(0, height - 40)), int(rng.integers(10, 30)), int(rng.integers(8, 30))
        if place(s - w - 1, y0, w, h, 1, gap=2) and place(s + 1, y0, w, h, 1, gap=2):
            placed += 1
        elif len(boxes) % 2:
            taken[boxes[-1][1] : boxes[-1][3], boxes[-1][0] : boxes[-1][2]] = False
            boxes.pop(), labels.pop()
    for _ in range(big):  # bigger than the overlap: no window sees them whole
        for _attempt in range(200):
            w, h = int(rng.integers(260, 400)), int(rng.integers(30, 200))
            if place(rng.integers(0, width - w), rng.integers(0, height - h), w, h, int(rng.integers(0, 3))):
                break
    for _attempt in range(20 * n):
        if len(boxes) >= n + 2 * pairs + big:
            break
        w, h = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, 2))
        x0, y0 = rng.integers(0, width - w), rng.integers(0, height - h)
        if rng.random() < 0.7:  # centre it on a vertical and/or horizontal seam
            if rng.random() < 0.7:
                x0 = rng.choice(inner_x) - rng.integers(1, w)
            if rng.random() < 0.7:
                y0 = rng.choice(inner_y) - rng.integers(1, h)
        place(x0, y0, w, h, int(rng.integers(0, 3)))
    ids = np.zeros((1, height, width), np.uint16)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        ids[0, y0:y1, x0:x1] = k + 1
    return ids, np.array(boxes, dtype=float), np.array(labels, np.int64)


def oracle_detect(w, wins, labels, true_area) -> lt.Detections:
    """Every object visible in window ``w``: its pixels' bounding box, clipped to the window."""
    data = np.asarray(w.data[0]).astype(np.int64)
    n = len(labels) + 1
    rows, cols = np.indices(data.shape)
    flat = data.ravel()
    count = np.bincount(flat, minlength=n)
    x0 = np.full(n, np.iinfo(np.int64).max)
    y0 = np.full(n, np.iinfo(np.int64).max)
    x1 = np.full(n, -1)
    y1 = np.full(n, -1)
    np.minimum.at(x0, flat, cols.ravel())
    np.minimum.at(y0, flat, rows.ravel())
    np.maximum.at(x1, flat, cols.ravel() + 1)
    np.maximum.at(y1, flat, rows.ravel() + 1)
    seen = np.flatnonzero(count)
    seen = seen[seen > 0]
    boxes = np.stack([x0[seen], y0[seen], x1[seen], y1[seen]], axis=1).astype(float)
    partial = partial_flags(boxes, w.window, wins.area)
    offset = np.array([w.window.col_off, w.window.row_off] * 2, dtype=float)
    return lt.Detections(
        boxes + offset,
        (count[seen] / true_area[seen - 1]).astype(np.float32),
        labels[seen - 1],
        np.full(len(seen), w.index),
        partial=partial,
        transform=wins.source.transform,
        crs=wins.source.crs,
    )


class OracleDetections(Sequence):
    """A lazy sequence of per-window detections with ``.windows``, as ``lt.detect`` returns."""

    def __init__(self, wins, labels, truth):
        self.windows = wins
        self._labels = labels
        self._area = (truth[:, 2] - truth[:, 0]) * (truth[:, 3] - truth[:, 1])
        self.calls = 0

    def __len__(self):
        return len(self.windows)

    def __getitem__(self, k):
        if not -len(self) <= k < len(self):
            raise IndexError(k)
        self.calls += 1
        return oracle_detect(self.windows[k], self.windows, self._labels, self._area)


def make_case(
    edge, *, big=0, n=150, sizes=(6, 60), transform=None, crs=None, bounds=None, seed=0, height=900, width=1100
):
    src0 = lt.ArraySource(np.zeros((1, height, width), np.uint16), tile_shape=100, transform=transform, crs=crs)
    wins0 = lt.windows(src0, 256, overlap=0.25, edge=edge, bounds=bounds)
    xs, ys = window_edges(wins0)
    ids, truth, labels = paint_scene(height, width, xs, ys, n=n, sizes=sizes, big=big, seed=seed)
    src = lt.ArraySource(ids, tile_shape=100, transform=transform, crs=crs)
    wins = lt.windows(src, 256, overlap=0.25, edge=edge, bounds=bounds)
    return wins, truth, labels


def expected_boxes(wins, truth, labels):
    """Truth clipped to the area the windows cover (objects outside it cannot be found)."""
    a = wins.area
    pw = wins.pixel_windows()
    x_lo, y_lo = pw[:, 0].min(), pw[:, 1].min()
    x_hi, y_hi = (pw[:, 0] + pw[:, 2]).max(), (pw[:, 1] + pw[:, 3]).max()
    assert (x_lo, y_lo, x_hi, y_hi) == (a.col_off, a.row_off, a.col_off + a.width, a.row_off + a.height)
    clipped = np.clip(truth, [x_lo, y_lo, x_lo, y_lo], [x_hi, y_hi, x_hi, y_hi])
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped[keep], labels[keep]


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def assert_each_object_once(found: lt.Detections, truth: np.ndarray, labels: np.ndarray, min_iou=0.95):
    m = iou(truth, found.boxes) >= min_iou
    per_truth = m.sum(axis=1)
    per_found = m.sum(axis=0)
    missed, duplicated = np.flatnonzero(per_truth == 0), np.flatnonzero(per_truth > 1)
    false = np.flatnonzero(per_found == 0)
    assert not len(missed), f"{len(missed)} of {len(truth)} objects not found whole, e.g. {truth[missed[:3]].tolist()}"
    assert not len(duplicated), f"{len(duplicated)} objects found more than once, e.g. {truth[duplicated[:3]].tolist()}"
    assert not len(false), f"{len(false)} false or partial boxes, e.g. {found.boxes[false[:3]].tolist()}"
    assert len(found) == len(truth)
    t, f = np.nonzero(m)
    assert np.array_equal(labels[t], found.labels[f])


def run_windows(wins, truth, labels) -> list[lt.Detections]:
    area = (truth[:, 2] - truth[:, 0]) * (truth[:, 3] - truth[:, 1])
    return [oracle_detect(w, wins, labels, area) for w in wins]


def seam_statistics(wins, truth):
    """How many objects cross a window edge inside the area, and how many a tile seam."""
    xs, ys = window_edges(wins)
    a = wins.area
    xs = xs[(xs > a.col_off) & (xs < a.col_off + a.width)]
    ys = ys[(ys > a.row_off) & (ys < a.row_off + a.height)]
    crosses = lambda lo, hi, s: ((lo[:, None] < s[None, :]) & (hi[:, None] > s[None, :])).any(axis=1)  # noqa: E731
    window_seam = crosses(truth[:, 0], truth[:, 2], xs) | crosses(truth[:, 1], truth[:, 3], ys)
    t = np.arange(100, 5000, 100)
    tile_seam = crosses(truth[:, 0], truth[:, 2], t) | crosses(truth[:, 1], truth[:, 3], t)
    return int(window_seam.sum()), int(tile_seam.sum())


# -- accuracy --------------------------------------------------------------------------------------


@pytest.mark.parametrize("edge", ["shift", "pad", "drop"])
@pytest.mark.parametrize("method", ["union", "nms"])
def test_every_object_is_found_once_and_whole(edge, method):
    wins, truth, labels = make_case(edge)
    expected, exp_labels = expected_boxes(wins, truth, labels)
    on_seams, on_tiles = seam_statistics(wins, truth)
    assert len(expected) >= 100 and on_seams >= 60 and on_tiles >= 60, (len(expected), on_seams, on_tiles)
    per_window = run_windows(wins, truth, labels)
    raw = lt.Detections.concat(per_window)
    assert len(raw) > 1.3 * len(expected) and raw.partial.sum() > 50  # duplicates and pieces to merge
    found = lt.merge(per_window, windows=wins, method=method)
    assert_each_object_once(found, expected, exp_labels)
    assert not found.partial.any()  # every object here fits inside some window
    if method == "nms":  # the boxes kept are views of the oracle, untouched
        assert np.array_equal(np.sort(iou(expected, found.boxes).max(axis=1)), np.ones(len(expected)))


@pytest.mark.parametrize("edge", ["shift", "pad", "drop"])
def test_objects_no_window_sees_whole_are_put_back_together(edge):
    wins, truth, labels = make_case(edge, big=12, n=120, seed=1)
    expected, exp_labels = expected_boxes(wins, truth, labels)
    per_window = run_windows(wins, truth, labels)
    found = lt.merge(per_window, windows=wins)
    assert_each_object_once(found, expected, exp_labels)
    big = (expected[:, 2] - expected[:, 0]) > 256
    assert big.sum() >= 8
    at = iou(expected[big], found.boxes).argmax(axis=1)
    assert found.partial[at].all()  # no window saw them whole
    # nms keeps one piece: it cannot rebuild them, which the docstring says
    found_nms = lt.merge(per_window, windows=wins, method="nms")
    assert (iou(expected[big], found_nms.boxes).max(axis=1) < 0.95).all()


def test_georeferenced_source_with_an_area_of_interest():
    # a source whose pixel (0, 0) is at (500000, 6000000) in UTM 33N, cut only inside bounds
    bounds = (500_370.0, 5_991_500.0, 510_630.0, 5_999_380.0)  # cols 37..1063, rows 62..850
    wins, truth, labels = make_case("shift", transform=UTM_10M, crs="EPSG:32633", bounds=bounds, seed=2)
    assert (wins.area.col_off, wins.area.row_off) == (37, 62)
    expected, exp_labels = expected_boxes(wins, truth, labels)
    assert len(expected) >= 100
    found = lt.merge(OracleDetections(wins, labels, truth), progress=False)
    assert_each_object_once(found, expected, exp_labels)
    assert found.transform == UTM_10M and found.crs == "EPSG:32633"
    # map coordinates of the corners, by hand: x = 500000 + 10 col, y = 6000000 - 10 row
    m = iou(expected, found.boxes).argmax(axis=1)
    left, top = found.transform @ (found.boxes[m, 0], found.boxes[m, 1])
    np.testing.assert_array_equal(left, 500_000 + 10 * expected[:, 0])
    np.testing.assert_array_equal(top, 6_000_000 - 10 * expected[:, 1])


def test_windows_without_overlap_join_objects_cut_at_the_seam():
    wins, truth, labels = make_case("shift", n=120, seed=3)
    src = wins.source
    flush = lt.windows(src, 300, edge="pad")  # abutting windows: every seam cuts
    assert flush.stride == (300, 300)
    per_window = run_windows(flush, truth, labels)
    found = lt.merge(per_window, windows=flush)
    assert_each_object_once(found, truth, labels)


def test_adjacent_objects_across_a_seam_stay_apart():
    # two same-class objects 2 px apart with a window edge between them, and one cut by that edge
    wins = lt.windows(lt.ArraySource(np.zeros((1, 256, 448), np.uint8)), 256, stride=192)
    left = lt.Detections([[220, 10, 255, 40], [150, 50, 256, 80]], [0.9, 0.9], [1, 1], [0, 0], partial=[False, True])
    right = lt.Detections(
        [[220, 10, 255, 40], [257, 10, 290, 40], [192, 50, 230, 80]],
        [0.9, 0.9, 0.5],
        [1, 1, 1],
        [1, 1, 1],
        partial=[False, False, True],
    )
    found = lt.merge([left, right], windows=wins)
    assert found.boxes.tolist() == [[220, 10, 255, 40], [257, 10, 290, 40], [150, 50, 256, 80]]
    flush = lt.windows(lt.ArraySource(np.zeros((1, 256, 512), np.uint8)), 256)  # abutting at x = 256
    left = lt.Detections([[200, 10, 254, 40], [200, 50, 256, 80]], [0.9, 0.9], [1, 1], [0, 0], partial=[False, True])
    right = lt.Detections([[258, 10, 290, 40], [256, 50, 300, 80]], [0.9, 0.8], [1, 1], [1, 1], partial=[False, True])
    found = lt.merge([left, right], windows=flush)
    assert found.boxes.tolist() == [[200, 10, 254, 40], [258, 10, 290, 40], [200, 50, 300, 80]]


def test_abutting_windows_meeting_at_a_corner():
    wins = lt.windows(lt.ArraySource(np.zeros((1, 200, 200), np.uint8)), 100)  # 2 x 2, corner at (100, 100)
    assert wins.pixel_windows()[:, :2].tolist() == [[0, 0], [100, 0], [0, 100], [100, 100]]
    # an object over the corner, in four pieces: joined through the shared edges
    pieces = [
        lt.Detections([[80, 90, 100, 100]], [0.4], [0], [0], partial=[True]),
        lt.Detections([[100, 90, 130, 100]], [0.6], [0], [1], partial=[True]),
        lt.Detections([[80, 100, 100, 120]], [0.3], [0], [2], partial=[True]),
        lt.Detections([[100, 100, 130, 120]], [0.9], [0], [3], partial=[True]),
    ]
    assert lt.merge(pieces, windows=wins).boxes.tolist() == [[80, 90, 130, 120]]
    # two objects that only meet at the corner, diagonally: nothing is shared to compare, so two boxes
    diagonal = [pieces[0], lt.Detections.empty(), lt.Detections.empty(), pieces[3]]
    assert len(lt.merge(diagonal, windows=wins)) == 2


def test_a_partial_fragment_never_inflates_a_complete_box():
    # window 0 sees the object whole; window 1 sees a piece of it, 3 px too tall and wide (noise)
    wins = lt.windows(lt.ArraySource(np.zeros((1, 256, 448), np.uint8)), 256, stride=192)
    whole = lt.Detections([[180, 20, 240, 60]], [0.6], [2], [0], partial=[False])
    piece = lt.Detections([[192, 17, 243, 63]], [0.95], [2], [1], partial=[True])
    for method in ("union", "nms"):
        found = lt.merge([whole, piece], windows=wins, method=method)
        assert found.boxes.tolist() == [[180, 20, 240, 60]]
        assert not found.partial[0]
    assert lt.merge([whole, piece], windows=wins).scores.tolist() == [pytest.approx(0.95)]  # union: best score
    assert lt.merge([whole, piece], windows=wins, method="nms").scores.tolist() == [pytest.approx(0.6)]


def test_pieces_are_joined_whichever_piece_scores_best():
    # a thin object crossing three windows; the windows at its ends share no pixels
    wins = lt.windows(lt.ArraySource(np.zeros((1, 256, 640), np.uint8)), 256, stride=192)
    assert wins.pixel_windows()[:, 0].tolist() == [0, 192, 384]
    pieces = [
        lt.Detections([[100, 5, 256, 12]], [0.9], [0], [0], partial=[True]),
        lt.Detections([[192, 5, 448, 12]], [0.5], [0], [1], partial=[True]),
        lt.Detections([[384, 5, 500, 12]], [0.7], [0], [2], partial=[True]),
    ]
    for method, box in (("union", [100, 5, 500, 12]), ("nms", [100, 5, 256, 12])):
        found = lt.merge(pieces, windows=wins, method=method)
        assert found.boxes.tolist() == [box]
        assert found.partial.tolist() == [True] and found.window_index.tolist() == [0]
    # without the windows, boxes are compared whole: the left end meets the middle too little (ios 0.41)
    assert len(lt.merge(lt.Detections.concat(pieces))) == 2


def test_class_aware_and_metric():
    big_and_small = lt.Detections([[0, 0, 100, 100], [10, 10, 30, 30]], [0.9, 0.8], [1, 1])
    assert len(lt.merge(big_and_small)) == 1  # ios: the small box lies inside the big one
    assert len(lt.merge(big_and_small, metric="iou")) == 2
    other_class = lt.Detections([[0, 0, 100, 100], [5, 0, 100, 100]], [0.9, 0.8], [1, 2])
    assert lt.merge(other_class).labels.tolist() == [1, 2]
    merged = lt.merge(other_class, class_aware=False)
    assert merged.labels.tolist() == [1] and merged.boxes.tolist() == [[0, 0, 100, 100]]
    assert len(lt.merge(lt.Detections([[0, 0, 10, 10], [0, 0, 10, 16]], [1, 1], [0, 0]), iou=0.7, metric="iou")) == 2


def test_output_is_sorted_by_score_then_position():
    boxes = [[50, 0, 60, 10], [0, 0, 10, 10], [0, 20, 10, 30], [30, 0, 40, 10]]
    d = lt.Detections(boxes, [0.5, 0.9, 0.5, 0.5], [0, 0, 0, 0])
    found = lt.merge(d)
    assert found.boxes[:, :2].tolist() == [[0, 0], [30, 0], [50, 0], [0, 20]]


def test_empty_inputs():
    assert len(lt.merge(lt.Detections.empty())) == 0
    assert len(lt.merge([])) == 0
    wins = lt.windows(lt.ArraySource(np.zeros((1, 300, 300), np.uint8), transform=UTM_10M, crs="EPSG:32633"), 128)
    nothing = [lt.Detections.empty(transform=UTM_10M) for _ in wins]
    found = lt.merge(nothing, windows=wins)
    assert len(found) == 0 and found.transform == UTM_10M and found.boxes.shape == (0, 4)


# -- streaming -------------------------------------------------------------------------------------


@pytest.mark.parametrize("edge", ["shift", "pad", "drop"])
@pytest.mark.parametrize("method", ["union", "nms"])
def test_streaming_equals_batch(edge, method):
    wins, truth, labels = make_case(edge, big=6, seed=4)
    lazy = OracleDetections(wins, labels, truth)
    streamed = lt.merge(lazy, method=method, progress=False)
    assert lazy.calls == len(wins)  # each window pulled once
    batch = lt.merge(lt.Detections.concat(run_windows(wins, truth, labels)), windows=wins, method=method)
    assert streamed == batch and np.array_equal(streamed.partial, batch.partial)
    assert len(batch) >= 100


def test_streaming_holds_only_boxes_near_unseen_windows():
    # a tall strip: 25 rows of windows; settling every ~64 boxes keeps a few rows of windows' boxes
    wins, truth, labels = make_case("shift", n=900, sizes=(6, 40), seed=5, height=4900, width=700)
    lazy = OracleDetections(wins, labels, truth)
    merger = Merger(wins, batch=64)
    held = []
    for d in lazy:
        merger.add(d)
        held.append(merger.held)
    streamed = merger.result()
    total = sum(len(d) for d in run_windows(wins, truth, labels))
    per_row = total / wins.plan.shape[0]
    assert total > 1000 and wins.plan.shape[0] >= 25
    assert max(held) < 3 * per_row + 64, (max(held), per_row)
    assert streamed == lt.merge(lazy, progress=False, method="union")
    assert_each_object_once(streamed, *expected_boxes(wins, truth, labels))


def test_progress_bar_over_a_lazy_input(capsys):
    wins, truth, labels = make_case("shift", n=30, seed=6, height=300, width=500)
    lt.merge(OracleDetections(wins, labels, truth))
    assert "merge" in capsys.readouterr().err
    lt.merge(OracleDetections(wins, labels, truth), progress=False)
    assert capsys.readouterr().err == ""


# -- a brute-force merge: the same rule as plain Python loops over pairs -----------------------------


def ref_pair(a, b, wa, wb, metric, margin):
    if wa is None or wb is None or wa == wb:
        areas = [(a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])]
        inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)
        areas = [max(areas[0], 0), max(areas[1], 0)]
    else:
        inter, areas, seams = 1.0, [1.0, 1.0], 0
        for lo, hi in ((0, 2), (1, 3)):
            s0, s1 = max(wa[lo], wb[lo]), min(wa[hi], wb[hi])
            if s1 < s0:
                return 0.0
            if s1 == s0:  # abutting: both must reach the shared line
                seams += 1
                if not all(box[hi] >= s0 - margin and box[lo] <= s0 + margin for box in (a, b)):
                    inter = 0.0
                continue
            ca = (min(max(a[lo], s0), s1), min(max(a[hi], s0), s1))
            cb = (min(max(b[lo], s0), s1), min(max(b[hi], s0), s1))
            inter *= max(min(ca[1], cb[1]) - max(ca[0], cb[0]), 0)
            areas[0] *= ca[1] - ca[0]
            areas[1] *= cb[1] - cb[0]
        if seams == 2:
            return 0.0
    denom = areas[0] + areas[1] - inter if metric == "iou" else min(areas)
    return inter / denom if denom > 0 else 0.0


def reference_merge(dets, rects, *, iou=0.5, method="union", metric="ios", class_aware=True, margin=1.0):
    """The documented rule, O(n^2): rank, let complete boxes take their matches, join leftover pieces."""
    n = len(dets)
    b = dets.boxes.tolist()
    s = dets.scores.tolist()
    lab = dets.labels.tolist()
    part = dets.partial.tolist()
    win = [rects.get(int(k)) for k in dets.window_index]

    def match(p, q):
        if class_aware and lab[p] != lab[q]:
            return False
        return ref_pair(b[p], b[q], win[p], win[q], metric, margin) >= iou

    order = sorted(range(n), key=lambda k: (part[k], -s[k], b[k][1], b[k][0], b[k][3], b[k][2], lab[k], k))
    group = [None] * n
    for k in order:
        if part[k] or group[k] is not None:
            continue
        group[k] = k
        for m in range(n):
            if group[m] is None and match(k, m):
                group[m] = k
    for k in order:
        if group[k] is not None:
            continue
        group[k], todo = k, [k]
        while todo:
            p = todo.pop()
            for m in range(n):
                if group[m] is None and match(p, m):
                    group[m] = k
                    todo.append(m)
    out = []
    for leader in dict.fromkeys(group[k] for k in order):
        members = [k for k in range(n) if group[k] == leader]
        complete = [k for k in members if not part[k]]
        if method == "nms":
            box, score = b[leader], s[leader]
        else:
            use = complete or members
            box = [min(b[k][c] for k in use) for c in (0, 1)] + [max(b[k][c] for k in use) for c in (2, 3)]
            score = max(s[k] for k in members)
        key = (-score, box[1], box[0], box[3], box[2], lab[leader], int(dets.window_index[leader]))
        out.append((*key, box, score, not complete))
    out.sort(key=lambda r: r[:7])
    return out


def window_rects(wins) -> dict[int, tuple[float, float, float, float]]:
    pw = wins.pixel_windows().tolist()
    return {int(i): (float(c), float(r), float(c + w), float(r + h)) for i, (c, r, w, h) in zip(wins.indices, pw)}


def assert_same_as_reference(found, ref):
    assert found.boxes.tolist() == [r[7] for r in ref]
    assert found.scores.tolist() == [r[8] for r in ref]
    assert found.labels.tolist() == [r[5] for r in ref]
    assert found.window_index.tolist() == [r[6] for r in ref]
    assert found.partial.tolist() == [r[9] for r in ref]


@pytest.mark.parametrize("method", ["union", "nms"])
@pytest.mark.parametrize("metric", ["ios", "iou"])
def test_the_oracle_scene_merges_exactly_like_the_reference(method, metric):
    wins, truth, labels = make_case("shift", big=4, n=60, seed=7, height=600, width=700)
    raw = lt.Detections.concat(run_windows(wins, truth, labels))
    rects = window_rects(wins)
    found = lt.merge(raw, windows=wins, method=method, metric=metric)
    assert_same_as_reference(found, reference_merge(raw, rects, method=method, metric=metric))


@st.composite
def window_scenes(draw):
    """Random boxes (ints, so seams are hit exactly) in a 3 x 3 grid of 40 px windows, stride 30 or 40."""
    stride = draw(st.sampled_from([30, 40]))
    wins = lt.windows(lt.ArraySource(np.zeros((1, 2 * stride + 40, 2 * stride + 40), np.uint8)), 40, stride=stride)
    n = draw(st.integers(0, 30))
    boxes, widx, scores, labels, partial = [], [], [], [], []
    pw = wins.pixel_windows()
    for _ in range(n):
        k = draw(st.integers(0, len(pw) - 1))
        c, r = int(pw[k][0]), int(pw[k][1])
        x0, y0 = draw(st.integers(0, 39)), draw(st.integers(0, 39))
        x1, y1 = draw(st.integers(x0 + 1, 40)), draw(st.integers(y0 + 1, 40))
        boxes.append([c + x0, r + y0, c + x1, r + y1])
        widx.append(k)
        scores.append(draw(st.sampled_from([0.25, 0.5, 0.75, 1.0])))
        labels.append(draw(st.integers(0, 1)))
        partial.append(draw(st.booleans()))
    order = np.argsort(widx, kind="stable")  # window order, for streaming
    dets = lt.Detections(
        np.array(boxes, float).reshape(-1, 4)[order],
        np.array(scores)[order],
        np.array(labels)[order],
        np.array(widx, np.int64)[order],
        partial=np.array(partial, bool)[order],
    )
    return wins, dets


@settings(max_examples=200, deadline=None)
@given(
    window_scenes(),
    st.sampled_from(["union", "nms"]),
    st.sampled_from(["ios", "iou"]),
    st.sampled_from([0.3, 0.5, 1.0]),
    st.booleans(),
)
def test_merge_matches_the_brute_force_rule(scene, method, metric, thr, class_aware):
    wins, dets = scene
    rects = window_rects(wins)
    opts = dict(iou=thr, method=method, metric=metric, class_aware=class_aware)
    found = lt.merge(dets, windows=wins, **opts)
    assert_same_as_reference(found, reference_merge(dets, rects, **opts))
    per_window = [dets[dets.window_index == k] for k in range(len(wins))]
    merger = Merger(wins, lt.MergeRule(**opts), batch=1)  # settle after every window
    for d in per_window:
        merger.add(d)
    assert merger.result() == found


# -- errors ----------------------------------------------------------------------------------------


def test_bad_options_name_the_value_and_the_choices():
    d = lt.Detections([[0, 0, 1, 1]], [1], [0])
    with pytest.raises(lt.InvalidArgumentError, match=r"iou must be a threshold in \(0, 1\], got 0"):
        lt.merge(d, iou=0)
    with pytest.raises(ValueError, match="method must be 'union'.*or 'nms'.*got 'wbf'"):
        lt.merge(d, method="wbf")  # type: ignore[arg-type]
    with pytest.raises(lt.InvalidArgumentError, match="metric must be 'ios'.*got 'giou'"):
        lt.merge(d, metric="giou")  # type: ignore[arg-type]
    with pytest.raises(lt.InvalidArgumentError, match="margin must be a distance >= 0 in pixels, got -1"):
        lt.merge(d, margin=-1)
    with pytest.raises(lt.InvalidArgumentError, match="item 1 of dets is a list, not lt.Detections"):
        lt.merge([d, []])
    with pytest.raises(lt.InvalidArgumentError, match="windows must be the lt.WindowSequence"):
        lt.merge(d, windows=[(0, 0, 10, 10)])


def test_boxes_must_come_from_the_windows_given():
    wins = lt.windows(lt.ArraySource(np.zeros((1, 256, 448), np.uint8)), 256, stride=192)
    stray = lt.Detections([[0, 0, 5, 5]], [1], [0], [7])
    with pytest.raises(lt.InvalidArgumentError, match="window_index=7, which is not one of the 2 windows given"):
        lt.merge(stray, windows=wins)
    swapped = [lt.Detections([[0, 0, 5, 5]], [1], [0], [1]), lt.Detections([[0, 0, 5, 5]], [1], [0], [0])]
    with pytest.raises(lt.InvalidArgumentError, match="item 0 of dets holds a box from window 1, but item 0 is win"):
        lt.merge(swapped, windows=wins)
    merger = Merger(wins)
    merger.add(lt.Detections.empty())
    merger.add(lt.Detections.empty())
    with pytest.raises(lt.InvalidArgumentError, match="all 2 windows have been added"):
        merger.add(lt.Detections.empty())


@pytest.mark.parametrize("n", [7, 200])  # 200: a chain longer than the grouping's numpy rounds
def test_a_chain_of_matches_is_taken_greedily_two_by_two(n):
    x = np.arange(n) * 5.0  # each box overlaps the next by half (IOS 0.5), the one after only at an edge
    boxes = np.stack([x, np.zeros(n), x + 10, np.full(n, 10.0)], axis=1)
    dets = lt.Detections(boxes, 1 - np.arange(n) / (2 * n), np.zeros(n, int), np.full(n, -1))
    found = lt.merge(dets, progress=False)
    lead = np.arange(0, n, 2)  # best first: box 0 takes box 1, box 2 (not taken) takes box 3, ...
    assert found.boxes.tolist() == [[5.0 * k, 0, 5.0 * k + (15 if k + 1 < n else 10), 10] for k in lead]
    assert np.array_equal(found.scores, dets.scores[lead])


def test_lexsort_ties_equals_lexsort():
    rng = np.random.default_rng(5)
    for n in (0, 1, 2, 50, 3000):
        keys = [rng.integers(0, 4, n), rng.integers(0, 3, n).astype(float), rng.integers(0, 2, n).astype(float)]
        keys[1][rng.random(n) < 0.2] = np.nan  # NaNs sort last and tie with each other
        keys[2][rng.random(n) < 0.1] = np.nan
        keys.insert(0, np.arange(n)[::-1])  # least significant: every tie broken
        assert np.array_equal(lexsort_ties(tuple(keys)), np.lexsort(tuple(keys)))
        assert np.array_equal(lexsort_ties(tuple(keys[1:])), np.lexsort(tuple(keys[1:])))
