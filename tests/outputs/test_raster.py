"""lt.write_raster: equal to an in-memory stitch, whatever the order; bounded blocks; the perfect model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

import lazytiles as lt
from lazytiles.detection.models import ColourSegmenter
from lazytiles.merging.window_table import WindowTable
from lazytiles.outputs.blocks import BlockPlan, OutputGrid, taper
from lazytiles.outputs.raster import BlockWriter
from lazytiles.testing.sample import sample_classes, sample_scene

pytestmark = pytest.mark.timeout(120)

UTM = Affine(10, 0, 500_000, 0, -10, 5_000_000)


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Scores(torch.nn.Module):
    """K = 3 smooth, position-dependent scores that differ from window to window: band 0 of the
    input times three different ramps across the window, so blending and ownership both show."""

    def __init__(self, factor: int = 1) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        ramp = torch.linspace(0, 1, w).view(1, 1, w).expand(n, h, w)
        base = x[:, 0]
        out = torch.stack([base * ramp, base * (1 - ramp), base * 0.5 + 0.01 * ramp], dim=1)
        if self.factor > 1:
            out = torch.nn.functional.avg_pool2d(out, self.factor)
        return out


def stitched_in_memory(preds: list[lt.Prediction], shape: tuple[int, int], blend: str, factor: int = 1, weights=None):
    """The oracle: the whole raster in memory. center: for every pixel, the covering window with the
    nearest centre (float distance), the lower index on ties; mean: float32 sum in index order / count,
    or with ``weights`` (h, w): sum of weight * score / sum of weights."""
    k = preds[0].data.shape[0]
    height, width = shape
    rows = np.arange(height)[:, None] + 0.5
    cols = np.arange(width)[None, :] + 0.5
    if blend == "center":
        out = np.full((k, height, width), np.nan, np.float32)
        best = np.full((height, width), np.inf)
    else:
        out = np.zeros((k, height, width), np.float32)
        count = np.zeros((height, width), np.float32)
    for p in sorted(preds, key=lambda p: p.index):
        c0, r0 = int(p.window.col_off) // factor, int(p.window.row_off) // factor
        h, w = p.data.shape[1:]
        cut = p.data[:, : max(0, min(h, height - r0)), : max(0, min(w, width - c0))]
        ch, cw = cut.shape[1:]
        if blend == "center":
            dist = (rows - (r0 + h / 2)) ** 2 + (cols - (c0 + w / 2)) ** 2
            inside = np.zeros((height, width), bool)
            inside[r0 : r0 + ch, c0 : c0 + cw] = True
            win = inside & (dist < best)
            best[win] = dist[win]
            full = np.full((k, height, width), np.nan, np.float32)
            full[:, r0 : r0 + ch, c0 : c0 + cw] = cut
            out[:, win] = full[:, win]
        elif weights is None:
            out[:, r0 : r0 + ch, c0 : c0 + cw] += cut
            count[r0 : r0 + ch, c0 : c0 + cw] += 1
        else:
            w = weights[:ch, :cw]
            out[:, r0 : r0 + ch, c0 : c0 + cw] += cut * w
            count[r0 : r0 + ch, c0 : c0 + cw] += w
    if blend == "mean":
        with np.errstate(invalid="ignore"):
            out = out / count
    return out


def ramp_source(height: int = 150, width: int = 200) -> lt.ArraySource:
    rng = np.random.default_rng(0)
    return lt.ArraySource(rng.integers(0, 255, (1, height, width), dtype=np.uint8), transform=UTM, crs="EPSG:32633")


def assemble(writer: BlockWriter, order, preds):
    """Feed ``preds`` to ``writer`` in ``order``; the raster from the blocks it finishes (NaN where no
    block is written, as GDAL fills a float file whose nodata is NaN; 0 for labels)."""
    out = None
    for position in order:
        for key, block in writer.add(position, preds[position]):
            grid = writer.grid
            if out is None:
                empty = np.nan if block.dtype.kind == "f" else 0
                out = np.full((block.shape[0], grid.height, grid.width), empty, block.dtype)
            col, row, w, h = grid.block_window(key)
            out[:, row : row + h, col : col + w] = block
    return out


def windows_area(preds: list[lt.Prediction], shape: tuple[int, int]) -> tuple[slice, slice]:
    """Where the output lies in the raster: the windows' bounding box, cut to the raster."""
    c0 = min(int(p.window.col_off) for p in preds)
    r0 = min(int(p.window.row_off) for p in preds)
    c1 = min(max(int(p.window.col_off + p.window.width) for p in preds), shape[1])
    r1 = min(max(int(p.window.row_off + p.window.height) for p in preds), shape[0])
    return slice(r0, r1), slice(c0, c1)


@pytest.mark.parametrize("blend", ["center", "mean"])
@pytest.mark.parametrize("factor", [1, 2])
def test_the_file_equals_an_in_memory_stitch(tmp_path, blend, factor):
    src = ramp_source()
    wins = lt.windows(src, size=40, stride=26, edge="pad")
    preds = lt.predict(Scores(factor), wins, batch_size=4, progress=False)
    path = lt.write_raster(preds, tmp_path / "s.tif", blend=blend, output="scores", block=32, progress=False)
    shape = (-(-150 // factor), -(-200 // factor))
    oracle = stitched_in_memory(list(preds), shape, blend, factor)
    with rasterio.open(path) as ds:
        assert ds.count == 3 and ds.dtypes == ("float32",) * 3 and ds.block_shapes[0] == (32, 32)
        assert ds.transform == UTM @ Affine.scale(factor) and ds.crs == "EPSG:32633"
        assert_array_equal(ds.read(), oracle)
    labels = lt.write_raster(preds, tmp_path / "l.tif", blend=blend, block=32, progress=False)
    with rasterio.open(labels) as ds:
        assert_array_equal(ds.read(1), oracle.argmax(axis=0).astype(np.uint8))


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    blend=st.sampled_from(["center", "mean"]),
    size=st.integers(8, 30),
    stride=st.integers(4, 30),
    block=st.sampled_from([16, 32]),
    tapered=st.booleans(),
)
def test_any_arrival_order_gives_the_same_raster(data, blend, size, stride, block, tapered):
    src = ramp_source(70, 90)
    wins = lt.windows(src, size=size, stride=min(stride, size), edge="pad")
    keep = data.draw(st.lists(st.booleans(), min_size=len(wins), max_size=len(wins)).filter(any))
    wins = wins[np.flatnonzero(keep)]  # holes: the nearest centres cut blocks along diagonals too
    preds = list(lt.predict(Scores(), wins, batch_size=16, progress=False))
    order = data.draw(st.permutations(range(len(preds))))

    weights = "taper" if tapered and blend == "mean" else None

    def writer():
        return BlockWriter(
            WindowTable.of(wins),
            (70, 90),
            blend=blend,
            output="scores",
            dtype=None,
            nodata=None,
            block=block,
            weights=weights,
        )

    rows, cols = windows_area(preds, (70, 90))
    oracle = stitched_in_memory(preds, (70, 90), blend, weights=None if weights is None else taper(size, size))
    assert_array_equal(assemble(writer(), order, preds), oracle[:, rows, cols])
    assert_array_equal(assemble(writer(), order, preds), assemble(writer(), range(len(preds)), preds))


@settings(max_examples=10, deadline=None)
@given(order=st.permutations(range(20)), k=st.sampled_from([1, 3]))
def test_labels_reduced_on_the_model_thread_are_stitched_like_scores(order, k):
    """write_raster's path for labels with blend='center': each window's scores become labels as the
    batch leaves the model (ToLabels); the blocks equal those stitched from the scores, in any order."""
    wins = lt.windows(ramp_source(70, 90), size=24, stride=17, edge="pad")
    assert len(wins) == 20
    preds = list(lt.predict(Scores(), wins, batch_size=8, progress=False))
    if k == 1:
        preds = [dataclasses.replace(p, data=p.data[:1] / 255) for p in preds]  # one score: >= 0.5 is class 1

    def writer():
        return BlockWriter(
            WindowTable.of(wins), (70, 90), blend="center", output="labels", dtype=None, nodata=None, block=16
        )

    reducing = writer()
    reduce = reducing.reducing()
    reduced = [dataclasses.replace(p, data=reduce(p.index, p.data)) for p in preds]
    assert reduced[0].data.shape == (24, 24) and reduced[0].data.dtype == (np.uint8 if k == 3 else bool)
    assert_array_equal(assemble(reducing, order, reduced), assemble(writer(), range(20), preds))
    assert reducing.layout.bands == k and not reducing.layout.labels
    with pytest.raises(lt.ModelOutputError, match="window 3 has a prediction of shape"):
        reduce(3, np.zeros((2, 24, 24), np.float32))


def test_weighted_mean_in_the_file_and_bad_weights(tmp_path):
    src = ramp_source()
    wins = lt.windows(src, size=40, stride=26, edge="pad")
    preds = lt.predict(Scores(), wins, batch_size=4, progress=False)
    weights = np.random.default_rng(1).uniform(0.1, 2, (40, 40))
    oracle = stitched_in_memory(list(preds), (150, 200), "mean", weights=weights.astype(np.float32))
    path = lt.write_raster(preds, tmp_path / "w.tif", blend="mean", output="scores", weights=weights, progress=False)
    with rasterio.open(path) as ds:
        assert_array_equal(ds.read(), oracle)
        assert not np.array_equal(ds.read(), stitched_in_memory(list(preds), (150, 200), "mean"))
    expected = np.outer([0.5, 1, 1, 0.5], np.array([1, 2, 3, 2, 1]) / 3)
    np.testing.assert_allclose(taper(4, 5), expected, rtol=1e-6)
    for bad, match in [
        ("gauss", "weights must be 'taper'"),
        (np.zeros((40, 40)), "positive finite"),
        (np.ones(40), "shape \\(40,\\)"),
        (np.ones((20, 40)), "weights have shape \\(20, 40\\), but a window's output is 40 x 40"),
    ]:
        with pytest.raises(lt.InvalidArgumentError, match=match):
            lt.write_raster(preds, tmp_path / "x.tif", blend="mean", weights=bad, progress=False)
    with pytest.raises(lt.InvalidArgumentError, match="blend='mean' only"):
        lt.write_raster(preds, tmp_path / "x.tif", weights="taper", progress=False)


def test_the_windows_touching_each_block_match_a_brute_force_search():
    rng = np.random.default_rng(3)
    grid = OutputGrid(0, 0, 1, 100, 70, 16)
    rects = rng.integers(-20, 110, (60, 4))
    rects[:, 2:] = rects[:, :2] + rng.integers(0, 40, (60, 2))  # x1, y1; some empty
    plan = BlockPlan(grid, np.column_stack([rects[:, :2], rects[:, 2:] - rects[:, :2]]), np.arange(60))
    brute = {}
    for key in np.ndindex(*grid.blocks):
        col, row, w, h = grid.block_window(key)
        x0, y0, x1, y1 = plan.rects.T
        hit = (x0 < col + w) & (x1 > col) & (y0 < row + h) & (y1 > row) & (x1 > x0) & (y1 > y0)
        if hit.any():
            brute[key] = np.flatnonzero(hit).tolist()
    assert dict(plan.touching) == brute and len(plan.touching) == len(brute)
    assert all(plan.touching.get(key) is None for key in np.ndindex(*grid.blocks) if key not in brute)


def test_only_blocks_that_windows_to_come_touch_are_held():
    src = ramp_source(1024, 256)
    wins = lt.windows(src, size=64, stride=48, edge="pad")
    preds = list(lt.predict(Scores(), wins, batch_size=16, progress=False))
    for blend in ("center", "mean"):
        writer = BlockWriter(
            WindowTable.of(wins), (1024, 256), blend=blend, output="labels", dtype=None, nodata=None, block=32
        )
        written = sum(len(writer.add(i, p)) for i, p in enumerate(preds))
        assert written == (1024 // 32) * (256 // 32) and writer.stitcher.held == 0
        # a window row spans at most 3 block rows of 8 blocks, and the next row starts before it ends
        assert writer.stitcher.max_held <= 4 * 8 < written


@pytest.mark.parametrize("blend", ["center", "mean"])
def test_a_perfect_model_gives_the_truth(tmp_path, blend):
    pixels, _, _ = sample_scene(size=512, objects=12)
    src = lt.ArraySource(pixels, transform=UTM, crs="EPSG:32633")
    wins = lt.windows(src, size=128, overlap=0.25, edge="pad")
    path = lt.write_raster(lt.predict(ColourSegmenter(), wins, progress=False), tmp_path / "p.tif", blend=blend)
    with rasterio.open(path) as ds:
        assert_array_equal(ds.read(1), sample_classes(size=512, objects=12))


@pytest.mark.parametrize("block", [16, 256])  # 16: blocks no window touches, filled by GDAL with nodata
def test_labels_from_a_model_and_nodata_outside_the_windows(tmp_path, block):
    src = ramp_source(96, 96)
    wins = lt.windows(src, size=32, stride=32)[np.array([0, 2, 4, 6, 8])]  # a checkerboard: 4 holes
    preds = lt.predict(lambda x: (x[:, 0] * 4).to(torch.int16), wins, progress=False)
    path = lt.write_raster(preds, tmp_path / "l.tif", nodata=255, block=block, progress=False)
    with rasterio.open(path) as ds:
        out = ds.read(1)
        assert ds.nodata == 255
    image = src.read(rasterio.windows.Window(0, 0, 96, 96))[0]
    expected = (image / 255 * 4).astype(np.uint8)
    holes = np.zeros((96, 96), bool)
    for r, c in ((0, 32), (32, 0), (32, 64), (64, 32)):
        holes[r : r + 32, c : c + 32] = True
    expected[holes] = 255
    assert_array_equal(out, expected)
    with pytest.raises(lt.InvalidArgumentError, match="labels, which cannot be averaged"):
        lt.write_raster(preds, tmp_path / "m.tif", blend="mean", progress=False)
    assert not (tmp_path / "m.tif").exists() and not list(tmp_path.glob(".*partial"))


def test_bad_options_and_windows_off_the_output_grid(tmp_path):
    src = ramp_source(102, 102)
    preds = lt.predict(Scores(4), lt.windows(src, size=32, stride=24), progress=False)  # shift: last at 70
    with pytest.raises(lt.InvalidArgumentError, match=r"col_off=70.*not on the model's output grid \(every 4"):
        lt.write_raster(preds, tmp_path / "x.tif", progress=False)
    with pytest.raises(lt.InvalidArgumentError, match="blend must be 'center' or 'mean', got 'max'"):
        lt.write_raster(preds, tmp_path / "x.tif", blend="max")
    with pytest.raises(lt.InvalidArgumentError, match="block must be a multiple of 16"):
        lt.write_raster(preds, tmp_path / "x.tif", block=100)
    with pytest.raises(lt.InvalidArgumentError, match="preds must be lt.predict"):
        lt.write_raster([1], tmp_path / "x.tif")
