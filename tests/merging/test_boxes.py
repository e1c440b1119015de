"""Box arithmetic against brute-force loops over plain Python numbers."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import lazytiles as lt
from lazytiles.merging.boxes import (
    area,
    intersection_matrix,
    ios_matrix,
    iou_matrix,
    nms,
    overlap,
    overlapping_pairs,
    union,
)


@st.composite
def box_lists(draw, max_boxes: int = 25, extent: int = 40):
    """Integer boxes on a small canvas, so touching, nesting, duplicates and empty boxes are common."""
    n = draw(st.integers(0, max_boxes))
    out = []
    for _ in range(n):
        x0, y0 = draw(st.integers(0, extent)), draw(st.integers(0, extent))
        w, h = draw(st.integers(0, 15)), draw(st.integers(0, 15))
        out.append((x0, y0, x0 + w, y0 + h))
    return out


def ref_area(b):
    return max(b[2] - b[0], 0) * max(b[3] - b[1], 0)


def ref_inter(a, b):
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0)


def ref_metric(a, b, metric):
    inter = ref_inter(a, b)
    denom = ref_area(a) + ref_area(b) - inter if metric == "iou" else min(ref_area(a), ref_area(b))
    return inter / denom if denom > 0 else 0.0


def ref_nms(boxes, scores, thr, metric):
    order = sorted(range(len(boxes)), key=lambda k: (-scores[k], k))
    alive, keep = set(order), []
    for k in order:
        if k not in alive:
            continue
        keep.append(k)
        alive.discard(k)
        for m in list(alive):
            if ref_metric(boxes[k], boxes[m], metric) >= thr:
                alive.discard(m)
    return keep


@given(box_lists())
def test_area_matches_a_loop(boxes):
    assert area(boxes).tolist() == [float(ref_area(b)) for b in boxes]


@given(box_lists(12), box_lists(12))
@example([(0, 0, 10, 10)], [(10, 0, 20, 10)])  # sharing an edge is no overlap
@example([(0, 0, 0, 10)], [(0, 0, 0, 10)])  # empty boxes: 0, not NaN
def test_matrices_match_a_double_loop(a, b):
    assert intersection_matrix(a, b).shape == (len(a), len(b))
    assert intersection_matrix(a, b).tolist() == [[float(ref_inter(x, y)) for y in b] for x in a]
    assert iou_matrix(a, b).tolist() == [[ref_metric(x, y, "iou") for y in b] for x in a]
    assert ios_matrix(a, b).tolist() == [[ref_metric(x, y, "ios") for y in b] for x in a]


@given(box_lists(), st.sampled_from(["iou", "ios"]))
def test_paired_overlap_matches_a_loop(boxes, metric):
    a, b = boxes, boxes[::-1]
    assert overlap(a, b, metric).tolist() == [ref_metric(x, y, metric) for x, y in zip(a, b)]


@given(box_lists(40))
@example([(0, 0, 10, 10), (10, 10, 20, 20), (10, 0, 20, 10)])  # corners and edges only
def test_overlapping_pairs_are_exactly_the_pairs_with_positive_overlap(boxes):
    i, j = overlapping_pairs(boxes)
    n = len(boxes)
    expected = [(p, q) for p in range(n) for q in range(p + 1, n) if ref_inter(boxes[p], boxes[q]) > 0]
    assert list(zip(i.tolist(), j.tolist())) == expected
    assert i.dtype == j.dtype == np.int64


def test_overlapping_pairs_in_chunks_equal_one_query():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 500, (2000, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 30, (2000, 2))], axis=1)
    boxes[::10, 2:] += rng.uniform(30, 300, (200, 2))  # every tenth box larger than the grid's cells
    one = overlapping_pairs(boxes)
    many = overlapping_pairs(boxes, chunk=97)
    assert len(one[0]) > 1000
    assert np.array_equal(one[0], many[0]) and np.array_equal(one[1], many[1])
    tree = shapely.STRtree(shapely.box(*boxes.T))  # what a spatial index alone finds
    qi, tj = tree.query(shapely.box(*boxes.T), predicate="intersects")
    a, b = qi[qi < tj], tj[qi < tj]
    inter = np.minimum(boxes[a, 2:], boxes[b, 2:]) - np.maximum(boxes[a, :2], boxes[b, :2])
    expected = sorted(p for p, (w, h) in zip(zip(a.tolist(), b.tolist()), inter.tolist()) if w > 0 and h > 0)
    assert list(zip(one[0].tolist(), one[1].tolist())) == expected


def test_overlapping_pairs_far_apart_and_tiny():
    boxes = np.array([[0, 0, 1e-9, 1e-9], [5e-10, 5e-10, 2e-9, 2e-9], [1e12, 1e12, 1e12 + 1e-3, 1e12 + 1e-3]])
    i, j = overlapping_pairs(boxes)
    assert i.tolist() == [0] and j.tolist() == [1]


@settings(max_examples=150)
@given(
    box_lists(),
    st.data(),
    st.sampled_from([0.1, 0.3, 0.5, 0.7, 1.0]),
    st.sampled_from(["iou", "ios"]),
)
@example([(0, 0, 10, 10), (0, 0, 10, 10)], None, 1.0, "iou")  # exact duplicates, equal scores
def test_nms_matches_greedy_reference(boxes, data, thr, metric):
    if data is None:
        scores = [0.5] * len(boxes)
    else:
        scores = data.draw(st.lists(st.sampled_from([0.1, 0.5, 0.9, 0.95]), min_size=len(boxes), max_size=len(boxes)))
    assert nms(boxes, scores, thr, metric=metric).tolist() == ref_nms(boxes, scores, thr, metric)


def test_nms_takes_and_returns_torch_tensors():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 0, 30, 10]])
    keep = nms(boxes, torch.tensor([0.5, 0.9, 0.7]), 0.5)
    assert isinstance(keep, torch.Tensor) and keep.dtype == torch.int64
    assert keep.tolist() == [1, 2]


@given(box_lists())
def test_union_holds_every_box(boxes):
    u = union(boxes)
    if not boxes:
        assert np.isnan(u).all()
    else:
        xs0, ys0, xs1, ys1 = zip(*boxes)
        assert u.tolist() == [min(xs0), min(ys0), max(xs1), max(ys1)]


def test_bad_input_names_the_problem():
    with pytest.raises(lt.InvalidArgumentError, match=r"boxes must be \(N, 4\).*shape \(2, 3\)"):
        area([[0, 0, 1], [0, 0, 1]])
    with pytest.raises(ValueError, match="metric must be 'iou'.*got 'dice'"):
        overlap([[0, 0, 1, 1]], [[0, 0, 1, 1]], "dice")  # type: ignore[arg-type]
    with pytest.raises(lt.InvalidArgumentError, match=r"iou must be in \(0, 1\], got 0"):
        nms([[0, 0, 1, 1]], [1.0], 0)
    with pytest.raises(lt.InvalidArgumentError, match=r"one value per box \(1\), got 2"):
        nms([[0, 0, 1, 1]], [1.0, 0.5])


def test_overlapping_pairs_within_groups_are_the_pairs_of_equal_group():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 300, (1500, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 25, (1500, 2))], axis=1)
    boxes[::50, 2:] += 200  # a few much larger ones
    i, j = overlapping_pairs(boxes)
    for groups in (
        rng.integers(0, 3, 1500),
        rng.integers(-(10**12), 10**12, 1500) % 3 * 10**11,
        rng.random(1500) < 0.5,
    ):
        gi, gj = overlapping_pairs(boxes, groups=groups)
        same = groups[i] == groups[j]
        assert np.array_equal(gi, i[same]) and np.array_equal(gj, j[same]) and len(gi) > 100
