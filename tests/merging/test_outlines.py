"""Outlines through detect and merge: masks become polygons, pieces cut by window edges are united,
and overlap is measured on the polygons when both objects have one."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import torch
from rasterio.features import rasterize, shapes
from torch import nn

import lazytiles as lt
from lazytiles.geometry import mask_outline
from lazytiles.merging.streaming import Merger


class MaskModel(nn.Module):
    """One object per window: the bright pixels, as Mask R-CNN reports them (box, score, label, mask)."""

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for img in x:
            m = img[0] > 0
            if not m.any():
                empty = torch.zeros(0, 4)
                out.append({"boxes": empty, "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
                            "masks": torch.zeros(0, 1, *m.shape)})  # fmt: skip
                continue
            rows, cols = torch.nonzero(m, as_tuple=True)
            box = torch.stack([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]).float()
            out.append({"boxes": box[None], "scores": torch.tensor([0.9]), "labels": torch.tensor([3]),
                        "masks": m[None, None].float() * 0.8})  # fmt: skip
        return out


def disc_scene(size: int = 160, radius: float = 50.0) -> np.ndarray:
    r, c = np.indices((size, size))
    return ((r - 83) ** 2 + (c - 77) ** 2 <= radius**2).astype(np.uint8) * 255


@pytest.mark.parametrize("overlap", [0.0, 0.25])
def test_a_masked_object_cut_by_window_edges_becomes_one_polygon(overlap):
    scene = disc_scene()
    wins = lt.windows(lt.ArraySource(scene[None]), 64, overlap=overlap)
    dets = lt.detect(MaskModel(), wins, progress=False)
    per_window = list(dets)
    pieces = lt.Detections.concat(per_window)
    assert len(pieces) >= 4 and all(s is not None for s in pieces.shapes)  # no window sees the disc whole
    first = next(d for d in per_window if len(d))
    assert first.shapes[0].within(shapely.box(*first.boxes[0]))  # source pixels, inside its box
    w = wins[int(first.window_index[0])].window
    c0, r0 = int(w.col_off), int(w.row_off)
    seen = scene[r0 : r0 + int(w.height), c0 : c0 + int(w.width)] > 0
    assert first.shapes[0].equals(mask_outline(seen, c0, r0))  # the piece that window sees, in source pixels
    found = lt.merge(dets, progress=False)
    assert len(found) == 1 and found.labels.tolist() == [3]
    truth = mask_outline(scene > 0)
    assert found.shapes[0].equals(truth)
    np.testing.assert_array_equal(found.boxes[0], truth.bounds)


def test_the_streaming_merge_equals_merging_everything_at_once():
    scene = disc_scene(size=200, radius=30.0) | np.roll(disc_scene(size=200, radius=20.0), (60, -50), (0, 1))
    wins = lt.windows(lt.ArraySource(scene[None]), 48, overlap=0.25)
    per_window = list(lt.detect(MaskModel(), wins, progress=False))
    merger = Merger(wins, batch=1)
    for d in per_window:
        merger.add(d)
    streamed = merger.result()
    whole = lt.merge(lt.Detections.concat(per_window), windows=wins, progress=False)
    assert streamed == whole and len(whole) >= 1
    assert all(s is not None for s in whole.shapes)


def interlocked() -> tuple[shapely.Polygon, shapely.Polygon]:
    """Two combs whose teeth interleave: their boxes are nearly the same, their polygons do not overlap."""
    a = shapely.union_all([shapely.box(0, 0, 40, 4)] + [shapely.box(x, 4, x + 4, 40) for x in range(0, 40, 8)])
    b = shapely.union_all([shapely.box(0, 40, 40, 44)] + [shapely.box(x, 6, x + 4, 40) for x in range(4, 40, 8)])
    return a, b


@pytest.mark.parametrize("metric", ["ios", "iou"])
def test_overlap_is_measured_on_polygons_when_both_have_them(metric):
    a, b = interlocked()
    boxes = [a.bounds, b.bounds]
    plain = lt.Detections(boxes, [0.9, 0.8], [1, 1], [0, 0])
    shaped = lt.Detections(boxes, [0.9, 0.8], [1, 1], [0, 0], shapes=[a, b])
    assert len(lt.merge(plain, iou=0.5, metric=metric, progress=False)) == 1  # boxes: one object
    found = lt.merge(shaped, iou=0.5, metric=metric, progress=False)
    assert len(found) == 2 and {found.shapes[0], found.shapes[1]} == {a, b}
    half = shapely.box(0, 0, 40, 20)  # a polygon half of a's box overlaps half of it: IOS 0.5 on boxes
    mixed = lt.Detections([a.bounds, half.bounds], [0.9, 0.8], [1, 1], [0, 0], shapes=[a, None])
    assert len(lt.merge(mixed, iou=0.9, metric="ios", progress=False)) == 1  # one side has no outline: boxes


def test_nms_keeps_the_best_outline_and_union_unites_complete_views():
    a = shapely.box(10, 10, 30, 30)
    b = shapely.Polygon([(10, 10), (31, 10), (31, 30), (10, 30)])  # a second, slightly larger view
    dets = lt.Detections([a.bounds, b.bounds], [0.7, 0.9], [1, 1], [0, 1], shapes=[a, b])
    assert lt.merge(dets, method="nms", progress=False).shapes[0].equals(b)
    assert lt.merge(dets, method="union", progress=False).shapes[0].equals(shapely.union(a, b))


def test_masks_that_do_not_fit_the_boxes_are_named():
    from lazytiles.detection.runner import parse_outputs

    item = {"boxes": torch.zeros(2, 4), "scores": torch.ones(2), "labels": torch.ones(2, dtype=torch.int64)}
    with pytest.raises(
        lt.ModelOutputError, match=r"masks of shape \(1, 1, 8, 8\) for 2 boxes; expected \(K, 1, h, w\)"
    ):
        parse_outputs([{**item, "masks": torch.ones(1, 1, 8, 8)}], 1, [5])
    with pytest.raises(lt.ModelOutputError, match="NaN or inf in its masks for image 0"):
        parse_outputs([{**item, "masks": torch.full((2, 8, 8), float("nan"))}], 1, [5])
    ((_, _, _, shapes),) = parse_outputs([{**item, "masks": torch.zeros(2, 8, 8)}], 1, [5])
    assert list(shapes) == [None, None]  # nothing above 0.5: box only


# -- the cell merge (Beam's algorithm) ---------------------------------------------------------------------


def discs_scene(seed: int = 0, size: int = 256, n: int = 14) -> np.ndarray:
    """Discs of 6..30 px radius, many across window seams, a few touching each other."""
    rng = np.random.default_rng(seed)
    r, c = np.indices((size, size))
    scene = np.zeros((size, size), np.uint8)
    for _ in range(n):
        y, x, rad = rng.integers(0, size, 2).tolist() + [int(rng.integers(6, 30))]
        scene[(r - y) ** 2 + (c - x) ** 2 <= rad**2] = 255
    return scene


class ComponentMasks(nn.Module):
    """Every 4-connected bright area of a window is an object, with its mask (what a Mask R-CNN gives)."""

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for img in x:
            m = (img[0] > 0).numpy().astype(np.uint8)
            parts = [shapely.geometry.shape(g) for g, _ in shapes(m, mask=m.astype(bool))]
            masks = torch.zeros(len(parts), 1, *m.shape)
            for k, g in enumerate(parts):
                masks[k, 0] = torch.from_numpy(rasterize([g], out_shape=m.shape).astype(np.float32))
            boxes = torch.tensor([g.bounds for g in parts], dtype=torch.float32).reshape(-1, 4)
            out.append({"boxes": boxes, "scores": torch.linspace(0.9, 0.5, len(parts)),
                        "labels": torch.ones(len(parts), dtype=torch.int64), "masks": masks})  # fmt: skip
        return out


@pytest.fixture(scope="module")
def masked():
    scene = discs_scene()
    wins = lt.windows(lt.ArraySource(scene[None]), 64, overlap=0.25)
    per_window = list(lt.detect(ComponentMasks(), wins, progress=False))
    merged = lt.merge(per_window, windows=wins, progress=False)
    return scene, wins, per_window, merged


def test_each_object_is_one_polygon_equal_to_the_truth(masked):
    scene, _, _, merged = masked
    truth = [shapely.geometry.shape(g) for g, _ in shapes(scene, mask=scene > 0)]  # one trace of the whole scene
    assert len(merged) == len(truth) > 10
    for g in merged.shapes:  # every merged outline is one object of the whole-scene trace
        assert sum(g.equals(t) for t in truth) == 1


@pytest.mark.parametrize("cell, fanin", [(17, 2), (64, 3), (5000, 4)])
def test_the_cell_merge_gives_the_local_merge_with_outlines(masked, cell, fanin):
    from lazytiles.merging.cells import merge_by_cells

    _, wins, per_window, merged = masked
    by_cells = merge_by_cells(per_window, wins, cell_size=cell, fanin=fanin)
    assert by_cells == merged  # boxes, scores, ... and the outlines, exactly


def test_chunks_carry_outlines_through_bytes(masked):
    from lazytiles.merging.cells import MERGED, RECORD, merged_records, window_chunk
    from lazytiles.merging.chunks import Chunk

    _, wins, per_window, merged = masked
    k = next(i for i, d in enumerate(per_window) if len(d) > 1)
    chunk = window_chunk(k, wins.pixel_windows()[k].tolist(), per_window[k])
    back = Chunk.frombytes(chunk.tobytes(), RECORD)
    assert back.records.tobytes() == chunk.records.tobytes() and list(back.shapes) == list(per_window[k].shapes)
    records = merged_records(merged.boxes, merged.scores, merged.labels, merged.window_index, merged.partial)
    one = np.full(len(merged), None, dtype=object)
    one[0] = merged.shapes[0]
    mixed = Chunk.with_shapes(records, one)
    assert list(Chunk.frombytes(mixed.tobytes(), MERGED).shapes) == list(mixed.shapes)
    plain = Chunk(chunk.records)
    assert len(plain.tobytes()) == len(chunk.records.tobytes()) + 9
    assert Chunk.frombytes(plain.tobytes(), RECORD).shapes is None
