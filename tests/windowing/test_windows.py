"""lt.windows and WindowSequence over in-memory sources: geometry, laziness, fetch-once, indexing, threads.

Oracles: numpy slicing of a ramp for pixels, a read-counting source and a pixel walk for tiles, a
list for indexing, brute-force shapely tests for regions.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import threading
import tracemalloc
from collections import Counter

import numpy as np
import pytest
import rasterio.warp
import shapely
import shapely.geometry
from conftest import UTM_10M, CountingSource, ramp, tiles_touched
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal
from rasterio.windows import Window as PixelWindow

import lazytiles as lt
from lazytiles.cache import DEFAULT_MAX_BYTES

TIMEOUT = 30


def expected_pixels(array: np.ndarray, w: PixelWindow, fill: float) -> np.ndarray:
    """``array[:, rows, cols]`` of a window that may reach outside it, the rest ``fill`` (plain numpy)."""
    r0, c0, h, wd = int(w.row_off), int(w.col_off), int(w.height), int(w.width)
    out = np.full((array.shape[0], h, wd), fill, dtype=array.dtype)
    rows = [r for r in range(r0, r0 + h) if 0 <= r < array.shape[1]]
    cols = [c for c in range(c0, c0 + wd) if 0 <= c < array.shape[2]]
    if rows and cols:
        out[:, rows[0] - r0 : rows[-1] - r0 + 1, cols[0] - c0 : cols[-1] - c0 + 1] = array[
            :, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1
        ]
    return out


def pixel_tuple(w: PixelWindow) -> tuple[int, int, int, int]:
    return int(w.col_off), int(w.row_off), int(w.width), int(w.height)


def geo_bounds(wins: lt.WindowSequence, k: int) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of item k of a sequence over a UTM_10M source, by hand."""
    c, r, w, h = pixel_tuple(wins.pixel_window(k))
    return (500_000 + 10 * c, 6_000_000 - 10 * (r + h), 500_000 + 10 * (c + w), 6_000_000 - 10 * r)


class CheckingSource(CountingSource):
    """Counts reads and checks, at every read, that the cache holds no more than max_bytes."""

    def _read_tile(self, key):
        s = self.cache.stats()
        assert s["nbytes"] <= s["max_bytes"], s
        return super()._read_tile(key)


# -- laziness and fetch-once ----------------------------------------------------------------------


def test_nothing_is_read_until_indexed_and_each_tile_once(ramp_array):
    src = CountingSource(ramp_array, transform=UTM_10M, crs="EPSG:32633", tile_shape=(256, 256), cache=lt.TileCache())
    wins = lt.windows(src, size=256, overlap=0.5)
    assert len(wins) == 49 and not src.reads  # 7 x 7 offsets, counted by hand
    offsets = {(r, c) for r in range(0, 769, 128) for c in range(0, 769, 128)}
    assert {(int(w[1]), int(w[0])) for w in wins.pixel_windows()} == offsets and not src.reads
    w = wins[17]
    assert {(k.row, k.col) for k in src.reads} == tiles_touched(w.window, 256)
    assert {(k.row, k.col) for k in w.tiles} == tiles_touched(w.window, 256)
    assert_array_equal(w.data, expected_pixels(ramp_array, w.window, 0))
    for _ in wins:
        pass
    assert len(src.reads) == 16 and max(src.reads.values()) == 1  # 4 x 4 tiles, once each


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    height=st.integers(1, 700),
    width=st.integers(1, 900),
    tile=st.tuples(st.sampled_from([16, 32, 50, 64]), st.sampled_from([16, 32, 50, 64, 100])),
    size=st.integers(8, 120),
    stride_frac=st.floats(0.1, 1.0),
    edge=st.sampled_from(["shift", "pad", "drop"]),
    data=st.data(),
)
def test_one_window_reads_exactly_the_tiles_under_it(height, width, tile, size, stride_frac, edge, data):
    src = CountingSource(np.zeros((1, height, width), np.uint8), tile_shape=tile, cache=lt.TileCache())
    try:
        wins = lt.windows(src, size, stride=max(1, int(size * stride_frac)), edge=edge)
    except lt.InvalidArgumentError:
        assert edge == "drop" and size > min(height, width)
        return
    i = data.draw(st.integers(-len(wins), len(wins) - 1))
    w = wins[i]
    touched = {(r, c) for r, c in tiles_touched(w.window, tile) if r * tile[0] < height and c * tile[1] < width}
    assert {(k.row, k.col) for k in src.reads} == touched
    assert max(src.reads.values(), default=1) == 1


def strips_touching(wins: lt.WindowSequence, tile: tuple[int, int], shape: tuple[int, int]) -> Counter:
    """For each tile, how many strips of the pass have a window over it (by walking pixels)."""
    plan, touching = wins.plan, {}
    for k in range(len(wins)):
        strip = plan.cell(k)[1] // plan.strip
        for r, c in tiles_touched(wins.pixel_window(k), tile):
            if r * tile[0] < shape[0] and c * tile[1] < shape[1]:
                touching.setdefault((r, c), set()).add(strip)
    return Counter({t: len(s) for t, s in touching.items()})


def test_a_pass_fetches_each_tile_once_with_a_cache_of_a_few_tile_rows():
    # 2048 x 4096 in 256-px tiles: 8 x 16 tiles; two rows of 512-px windows every 256 px touch 3 tile rows.
    tile_bytes = 3 * 256 * 256
    cache = lt.TileCache(max_bytes=4 * 16 * tile_bytes)  # 4 tile rows of the 8
    src = CheckingSource(np.zeros((3, 2048, 4096), np.uint8), tile_shape=256, cache=cache)
    wins = lt.windows(src, 512, stride=256)
    assert wins.plan.strip == len(wins.plan.cols)  # the width fits: plain row-major
    # by index, moving forward: each tile is freed after its last window too, nothing is evicted
    for i in range(len(wins)):
        wins[i]
        assert cache.stats()["nbytes"] <= cache.max_bytes
    assert len(src.reads) == 128 and set(src.reads.values()) == {1}
    assert cache.stats()["released"] == 128 and cache.stats()["evictions"] == 0
    # iterating: each tile is freed after its last window, so about one tile row is held
    cache.clear()
    src.reads.clear()
    peak = 0
    for _ in wins:
        peak = max(peak, cache.stats()["nbytes"])
    assert len(src.reads) == 128 and set(src.reads.values()) == {1}
    assert peak <= (16 + 4) * tile_bytes  # a row of 16 tiles and the next window's
    assert cache.stats()["released"] == 128 and cache.stats()["evictions"] == 0 and len(cache) == 0


def test_a_tall_pass_holds_only_a_few_tile_rows_and_still_fetches_once():
    # 64 tile rows but a cache of 4: rows are dropped behind the pass and never needed again
    tile_bytes = 256 * 256
    cache = lt.TileCache(max_bytes=4 * 8 * tile_bytes)
    src = CheckingSource(np.zeros((1, 64 * 256, 8 * 256), np.uint8), tile_shape=256, cache=cache)
    wins = lt.windows(src, 512, overlap=0.5)
    for i in range(len(wins)):  # by index, moving forward: freed behind the pass
        wins[i]
        assert cache.stats()["nbytes"] <= cache.max_bytes
    assert len(src.reads) == 64 * 8 and set(src.reads.values()) == {1}
    assert cache.stats()["released"] == 64 * 8 and cache.stats()["evictions"] == 0
    cache.clear()
    for i in range(0, len(wins), 3):  # by index every third window: the run waits for the windows between,
        wins[i]  # so the cache's LRU alone makes room
    assert cache.stats()["released"] == 0 and cache.stats()["evictions"] > 0


def test_only_passes_in_plan_order_free_tiles_and_never_too_early():
    tile_bytes = 128 * 128
    cache = lt.TileCache(max_bytes=64 * tile_bytes)  # the whole raster: LRU evicts nothing
    src = CheckingSource(np.zeros((1, 1024, 1024), np.uint8), tile_shape=128, cache=cache)
    wins = lt.windows(src, 200, overlap=0.3, edge="pad")
    for _ in wins[::-1]:  # backwards: nothing is known to be finished
        pass
    assert cache.stats()["released"] == 0 and len(cache) == 64
    cache.clear()
    src.reads.clear()
    for _ in wins[::2]:  # every other window, in order: frees what its windows finish, reads each tile once
        pass
    assert set(src.reads.values()) == {1} and 0 < cache.stats()["released"] <= len(src.reads)
    cache.clear()
    src.reads.clear()
    ring = shapely.Point(512, 512).buffer(500).difference(shapely.Point(512, 512).buffer(200))
    kept = lt.windows(src, 64, region=ring, bounds=(0, 0, 1024, 1024))
    assert len(kept) < len(lt.windows(src, 64))
    for _ in kept:
        pass
    assert set(src.reads.values()) == {1} and cache.stats()["released"] > 0


@pytest.mark.parametrize("cache_tiles", [6, 10, 20, 40])
def test_a_small_cache_forces_strips_that_cover_everything_and_reread_only_seam_tiles(cache_tiles):
    arr = ramp(1, 1024, 4096)
    cache = lt.TileCache(max_bytes=cache_tiles * 256 * 256 * 4)
    src = CheckingSource(arr, tile_shape=256, cache=cache)
    wins = lt.windows(src, 512, stride=256)
    assert wins.plan.strip < len(wins.plan.cols)  # too narrow for the whole width
    covered = np.zeros(arr.shape[1:], bool)
    for w in wins:
        covered[w.window.toslices()] = True
        assert_array_equal(w.data, expected_pixels(arr, w.window, 0))
        assert cache.stats()["nbytes"] <= cache.max_bytes
    assert covered.all()
    touching = strips_touching(wins, (256, 256), arr.shape[1:])
    reads = Counter({(k.row, k.col): n for k, n in src.reads.items()})
    assert set(reads) == set(touching)  # every tile read
    if cache_tiles >= 10:  # the cache holds a strip's working set: each tile once per strip over it
        assert all(reads[t] <= touching[t] for t in touching), {t: (reads[t], touching[t]) for t in touching}
        assert all(reads[t] == 1 for t in touching if touching[t] == 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    height=st.integers(64, 900),
    width=st.integers(64, 2500),
    tile=st.sampled_from([32, 64, 100, 128]),
    size=st.integers(32, 200),
    stride_frac=st.floats(0.25, 1.0),
    edge=st.sampled_from(["shift", "pad", "drop"]),
    rows_in_cache=st.integers(1, 8),
)
@example(height=1000, width=3000, tile=128, size=300, stride_frac=1 / 3, edge="shift", rows_in_cache=2)
def test_every_pass_covers_all_and_reads_a_tile_at_most_once_per_strip(
    height, width, tile, size, stride_frac, edge, rows_in_cache
):
    size = min(size, height, width)
    tiles_per_row = -(-width // tile)
    window_tiles = -(-size // tile) + 1
    # never smaller than what one window's neighbourhood needs, else no order can help
    cache_tiles = max(rows_in_cache * tiles_per_row, 3 * (window_tiles + 1) ** 2)
    cache = lt.TileCache(max_bytes=cache_tiles * tile * tile)
    src = CheckingSource(np.zeros((1, height, width), np.uint8), tile_shape=tile, cache=cache)
    wins = lt.windows(src, size, stride=max(1, int(size * stride_frac)), edge=edge)
    n = 0
    for _ in wins:
        n += 1
        assert cache.stats()["nbytes"] <= cache.max_bytes
    assert n == len(wins)
    touching = strips_touching(wins, (tile, tile), (height, width))
    reads = Counter({(k.row, k.col): v for k, v in src.reads.items()})
    assert set(reads) == set(touching)
    assert all(reads[t] <= touching[t] for t in touching)
    if wins.plan.strip == len(wins.plan.cols):
        assert set(reads.values()) == {1}


def test_the_default_cache_reads_a_131072_px_wide_rgb_raster_once_per_tile():
    # A real pass with no I/O: a broadcast array costs no memory, its tiles count as 0.75 MiB each.
    width = 131072
    array = np.broadcast_to(np.arange(3, dtype=np.uint8)[:, None, None], (3, 1280, width))
    cache = lt.TileCache(max_bytes=DEFAULT_MAX_BYTES)
    src = CountingSource(array, tile_shape=512, cache=cache)
    wins = lt.windows(src, 512, stride=256)
    assert wins.plan.strip == len(wins.plan.cols) == 511
    for i in range(len(wins)):  # by index: the LRU of a default-sized cache is enough
        assert wins[i].data[2, 0, 0] == 2
    assert len(src.reads) == 3 * 256 and set(src.reads.values()) == {1}
    assert cache.stats()["nbytes"] <= DEFAULT_MAX_BYTES
    cache.clear()
    src.reads.clear()
    peak = 0
    for _ in wins:  # iterating frees tiles behind the pass: about one row of 256 tiles is held
        peak = max(peak, cache.stats()["nbytes"])
    assert len(src.reads) == 3 * 256 and set(src.reads.values()) == {1}
    assert peak <= (256 + 4) * 3 * 512 * 512 < DEFAULT_MAX_BYTES / 2


def test_a_131072_px_square_sequence_is_instant_and_small():
    array = np.broadcast_to(np.zeros((3, 1, 1), np.uint8), (3, 131072, 131072))
    src = CountingSource(array, tile_shape=512, cache=lt.TileCache())
    tracemalloc.start()
    try:
        wins = lt.windows(src, 512, stride=256)
        n = len(wins)
        tail = wins[-1000:]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 511 * 511 == 261_121 and len(tail) == 1000
    assert peak < 1_000_000  # no per-window objects
    assert not src.reads
    assert wins.plan.strip == 511  # row-major with the default-sized cache
    assert pixel_tuple(wins.pixel_window(-1)) == (130560, 130560, 512, 512)


# -- geometry of the plan, through lt.windows ------------------------------------------------------


def coverage(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Which pixels some (col, row, width, height) box covers: +1/-1 at the corners, then prefix sums."""
    c0, r0 = np.clip(boxes[:, 0], 0, width), np.clip(boxes[:, 1], 0, height)
    c1, r1 = np.clip(boxes[:, 0] + boxes[:, 2], 0, width), np.clip(boxes[:, 1] + boxes[:, 3], 0, height)
    corners = np.zeros((height + 1, width + 1), np.int64)
    for rows, cols, sign in ((r0, c0, 1), (r0, c1, -1), (r1, c0, -1), (r1, c1, 1)):
        np.add.at(corners, (rows, cols), sign)
    return corners.cumsum(0).cumsum(1)[:height, :width] > 0


@st.composite
def rasters_and_windows(draw):
    height, width = draw(st.integers(1, 600)), draw(st.integers(1, 600))
    size = (draw(st.integers(1, 200)), draw(st.integers(1, 200)))
    if draw(st.booleans()):
        kw = {"overlap": draw(st.sampled_from([0.0, 0.25, 0.5, 0.75, 0.9]))}
    else:
        kw = {"stride": (draw(st.integers(1, 250)), draw(st.integers(1, 250)))}
    return height, width, size, kw, draw(st.sampled_from(["shift", "pad", "drop"]))


@settings(max_examples=100, deadline=None)
@given(rasters_and_windows())
@example((1024, 1024, (256, 256), {"overlap": 0.5}, "shift"))
@example((100, 300, (256, 64), {"stride": 64}, "shift"))  # raster shorter than a window
def test_windows_cover_the_raster_and_obey_the_edge_rule(args):
    height, width, size, kw, edge = args
    src = lt.ArraySource(np.zeros((1, height, width), np.uint8), transform=UTM_10M, crs="EPSG:32633", tile_shape=64)
    if edge == "drop" and (size[0] > height or size[1] > width):
        with pytest.raises(lt.InvalidArgumentError, match=r"is larger than the area's"):
            lt.windows(src, size, edge=edge, **kw)
        return
    wins = lt.windows(src, size, edge=edge, **kw)
    boxes = wins.pixel_windows()
    assert len(boxes) == len(wins) == len(list(range(len(wins))))
    assert (boxes[:, 2] == size[1]).all() and (boxes[:, 3] == size[0]).all()
    assert len(np.unique(boxes, axis=0)) == len(boxes)  # no window twice
    cover = coverage(boxes, height, width)
    step = wins.stride
    if edge == "shift":
        if height >= size[0] and width >= size[1]:
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + size[1] <= width).all()
            assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + size[0] <= height).all()
        if step[0] <= size[0] and step[1] <= size[1]:
            assert cover.all()
    elif edge == "pad":
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] < width).all() and (boxes[:, 1] < height).all()
        if step[0] <= size[0] and step[1] <= size[1]:
            assert cover.all()
    else:
        assert (boxes[:, 0] + size[1] <= width).all() and (boxes[:, 1] + size[0] <= height).all()
        # nothing left out that would fit: the next window along each axis would overflow
        assert boxes[:, 0].max() + step[1] + size[1] > width and boxes[:, 1].max() + step[0] + size[0] > height


def test_overlap_becomes_a_stride_in_pixels():
    src = lt.ArraySource(np.zeros((1, 1000, 1000), np.uint8))
    assert lt.windows(src, 512, overlap=0.25).stride == (384, 384)
    assert lt.windows(src, (100, 200), overlap=0.5).stride == (50, 100)
    assert lt.windows(src, (100, 200), stride=(10, 20)).stride == (10, 20)
    assert lt.windows(src, 100).stride == (100, 100)


def test_each_window_carries_its_transform_bounds_crs_and_pixels(ramp_array):
    src = lt.ArraySource(ramp_array, transform=UTM_10M, crs="EPSG:32633", tile_shape=(200, 300), nodata=7)
    wins = lt.windows(src, (300, 200), overlap=0.25, edge="pad")
    seen = 0
    for k, w in enumerate(wins):
        seen += 1
        assert w.index == k and w.crs == src.crs
        c0, r0 = w.window.col_off, w.window.row_off
        assert w.transform @ (0, 0) == (500_000 + 10 * c0, 6_000_000 - 10 * r0)  # upper-left corner
        assert w.transform @ (w.window.width, w.window.height) == UTM_10M @ (c0 + w.window.width, r0 + w.window.height)
        left, top = UTM_10M @ (w.window.col_off, w.window.row_off)
        assert w.bounds == (left, top - 10 * w.window.height, left + 10 * w.window.width, top)
        assert_array_equal(w.data, expected_pixels(ramp_array, w.window, 7))
        assert np.asarray(w) is w.data and np.asarray(w, dtype=np.float64).dtype == np.float64
        assert w.shape == (3, 300, 200)
    assert seen == len(wins)


def test_windows_are_frozen_values_with_a_constructor_repr(ramp_array):
    src = lt.ArraySource(ramp_array, transform=UTM_10M, crs="EPSG:32633", tile_shape=256)
    w = lt.windows(src, 256)[3]
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.index = 4
    assert repr(w).startswith("Window(index=3, window=Window(col_off=768, row_off=0, width=256, height=256)")
    assert "data" not in repr(w)


@settings(max_examples=100, deadline=None)
@given(
    quarters=st.lists(st.integers(-200, 4300), min_size=4, max_size=4),
    size=st.integers(1, 64),
)
@example(quarters=[4, 8, 12, 16], size=1)  # whole pixels: nothing to round
@example(quarters=[1, 2, 3, 4], size=1)  # inside one pixel
def test_bounds_become_pixels_by_rounding_outward(quarters, size):
    # quarter-pixel positions are exact in binary, so the oracle's floor/ceil is unambiguous
    src = lt.ArraySource(np.zeros((1, 1000, 1000), np.uint8), transform=UTM_10M, crs="EPSG:32633", tile_shape=100)
    c0, c1 = sorted(quarters[:2])
    r0, r1 = sorted(quarters[2:])
    if c0 == c1 or r0 == r1:
        return
    left, right = 500_000 + 2.5 * c0, 500_000 + 2.5 * c1
    top, bottom = 6_000_000 - 2.5 * r0, 6_000_000 - 2.5 * r1
    col0, col1 = max(0, math.floor(c0 / 4)), min(1000, math.ceil(c1 / 4))
    row0, row1 = max(0, math.floor(r0 / 4)), min(1000, math.ceil(r1 / 4))
    if col1 <= col0 or row1 <= row0:
        with pytest.raises(lt.BoundsError, match="do not intersect the raster"):
            lt.windows(src, size, bounds=(left, bottom, right, top))
        return
    wins = lt.windows(src, size, bounds=(left, bottom, right, top), edge="pad")
    area = wins.pixel_windows()
    assert (area[:, 0].min(), area[:, 1].min()) == (col0, row0)
    # pad windows step from the area's corner until one reaches its far edge
    assert area[:, 0].max() < col1 <= area[:, 0].max() + size
    assert area[:, 1].max() < row1 <= area[:, 1].max() + size


def test_bounds_in_another_crs_cover_the_area_they_name():
    # a lon/lat box over a UTM raster: every point of the box that is on the raster is in some window
    src = lt.ArraySource(np.zeros((1, 2000, 2000), np.uint8), transform=UTM_10M, crs="EPSG:32633", tile_shape=256)
    (lon0, lon1), (lat0, lat1) = rasterio.warp.transform(
        "EPSG:32633", "EPSG:4326", [503_000, 512_000], [5_995_000, 5_985_000]
    )
    west, east, south, north = min(lon0, lon1), max(lon0, lon1), min(lat0, lat1), max(lat0, lat1)
    wins = lt.windows(src, 128, overlap=0.5, bounds=(west, south, east, north), bounds_crs="EPSG:4326")
    boxes = wins.pixel_windows()
    cover = np.zeros((2000, 2000), bool)
    for c, r, w, h in boxes:
        cover[r : r + h, c : c + w] = True
    inner = np.linspace(0.0005, 0.9995, 60)  # the box's edge itself is float noise away from a pixel edge
    lons, lats = np.meshgrid(west + inner * (east - west), south + inner * (north - south))
    xs, ys = rasterio.warp.transform("EPSG:4326", "EPSG:32633", lons.ravel(), lats.ravel())
    cols, rows = (np.array(xs) - 500_000) / 10, (6_000_000 - np.array(ys)) / 10
    inside = (cols >= 0) & (cols < 2000) & (rows >= 0) & (rows < 2000)
    assert inside.sum() > 3000
    assert cover[rows[inside].astype(int), cols[inside].astype(int)].all()
    # and the area is no bigger than the box's outline, rounded out, plus at most one pixel of slack
    assert boxes[:, 0].min() >= math.floor(cols.min()) - 1 and boxes[:, 1].min() >= math.floor(rows.min()) - 1
    assert (boxes[:, 0] + 128).max() <= math.ceil(cols.max()) + 1
    assert (boxes[:, 1] + 128).max() <= math.ceil(rows.max()) + 1
    assert wins.plan.size == (128, 128) and len(wins) < len(lt.windows(src, 128, overlap=0.5))


# -- regions ---------------------------------------------------------------------------------------


@st.composite
def regions(draw):
    pts = [
        (draw(st.integers(-160, 4160)) / 4, draw(st.integers(-160, 4160)) / 4) for _ in range(draw(st.integers(3, 6)))
    ]
    poly = shapely.Polygon(pts).buffer(0)  # repair self-intersections
    if poly.is_empty or poly.area == 0:
        poly = shapely.box(10.25, 20.5, 300.75, 200)
    return poly


@settings(max_examples=60, deadline=None)
@given(poly_px=regions(), size=st.integers(16, 200), overlap=st.sampled_from([0.0, 0.5]))
def test_a_region_in_the_source_crs_keeps_exactly_the_windows_that_overlap_it(poly_px, size, overlap):
    src = lt.ArraySource(np.zeros((1, 1000, 1000), np.uint8), transform=UTM_10M, crs="EPSG:32633", tile_shape=128)
    region = shapely.affinity.affine_transform(poly_px, [10, 0, 0, -10, 500_000, 6_000_000])  # pixels -> UTM
    r_left, r_bottom, r_right, r_top = region.bounds
    try:
        everything = lt.windows(src, size, overlap=overlap, bounds=region.bounds)
    except lt.BoundsError:
        with pytest.raises(lt.BoundsError):
            lt.windows(src, size, overlap=overlap, region=region)
        return
    oracle = [
        pixel_tuple(everything.pixel_window(k))
        for k in range(len(everything))
        if shapely.box(*geo_bounds(everything, k)).intersection(region).area > 0
    ]
    if not oracle:
        with pytest.raises(lt.BoundsError, match="no window overlaps the region"):
            lt.windows(src, size, overlap=overlap, region=region)
        return
    kept = lt.windows(src, size, overlap=overlap, region=region)
    assert [pixel_tuple(kept.pixel_window(k)) for k in range(len(kept))] == oracle  # same windows, same order
    assert list(kept.indices) == list(range(len(kept)))


def test_a_region_in_lon_lat_over_a_utm_raster_keeps_the_overlapping_windows():
    src = lt.ArraySource(np.zeros((1, 1500, 1500), np.uint8), transform=UTM_10M, crs="EPSG:32633", tile_shape=256)
    xs, ys = [502_000, 513_500, 509_000, 503_000], [5_998_000, 5_994_000, 5_986_500, 5_990_000]
    lons, lats = rasterio.warp.transform("EPSG:32633", "EPSG:4326", xs, ys)
    region = shapely.Polygon(zip(lons, lats))  # straight in lon/lat, slightly curved in UTM
    wins = lt.windows(src, 100, overlap=0.5, region=region, region_crs="EPSG:4326")
    plan = wins.plan
    kept = {pixel_tuple(wins.pixel_window(k)) for k in range(len(wins))}
    tol = 1e-6  # degrees, ~0.1 m: far less than a 1 km window, far more than the curve's error
    n_sure = 0
    for k in range(len(plan)):
        w = plan.window(k)
        box_utm = shapely.box(*lt.grid.window_bounds(w, UTM_10M))
        box_ll = shapely.geometry.shape(
            rasterio.warp.transform_geom(
                "EPSG:32633", "EPSG:4326", shapely.geometry.mapping(shapely.segmentize(box_utm, 10))
            )
        )
        if box_ll.intersection(region.buffer(-tol)).area > 0:
            assert pixel_tuple(w) in kept
            n_sure += 1
        elif box_ll.distance(region) > tol:
            assert pixel_tuple(w) not in kept
    assert 0 < n_sure <= len(kept) < len(plan)
    # a GeoJSON mapping is a region too
    again = lt.windows(src, 100, overlap=0.5, region=shapely.geometry.mapping(region), region_crs="EPSG:4326")
    assert again.pixel_windows().tolist() == wins.pixel_windows().tolist()
    # bounds_crs is the default CRS of the region; explicit bounds keep their grid, the region filters it
    grid = lt.windows(src, 100, overlap=0.5, bounds=region.bounds, bounds_crs="EPSG:4326")
    again = lt.windows(src, 100, overlap=0.5, region=region, bounds=region.bounds, bounds_crs="EPSG:4326")
    assert 0 < len(again) < len(grid)
    assert set(map(tuple, again.pixel_windows().tolist())) < set(map(tuple, grid.pixel_windows().tolist()))


def test_a_callable_region_sees_each_window_s_bounds_and_keeps_what_it_returns_true_for():
    src = lt.ArraySource(np.zeros((1, 800, 800), np.uint8), transform=UTM_10M, crs="EPSG:32633", tile_shape=128)
    seen = []

    def east_half(bounds):
        seen.append(bounds)
        return bounds[0] >= 504_000

    everything = lt.windows(src, 100, overlap=0.5)
    kept = lt.windows(src, 100, overlap=0.5, region=east_half)
    assert sorted(seen) == sorted(geo_bounds(everything, k) for k in range(len(everything)))
    oracle = [
        pixel_tuple(everything.pixel_window(k))
        for k in range(len(everything))
        if geo_bounds(everything, k)[0] >= 504_000
    ]
    assert [pixel_tuple(kept.pixel_window(k)) for k in range(len(kept))] == oracle
    assert all(kept[k].bounds[0] >= 504_000 for k in (0, -1))


def test_lines_and_points_belong_to_the_windows_whose_half_open_pixels_hold_them():
    src = lt.ArraySource(np.zeros((1, 1000, 1000), np.uint8), tile_shape=128)  # identity: pixels are coordinates
    line = shapely.LineString([(0.5, 0.5), (999.5, 999.5)])  # through every window corner (100 i, 100 i)
    wins = lt.windows(src, 100, region=line)
    assert [(int(c), int(r)) for c, r, _, _ in wins.pixel_windows()] == [(100 * i, 100 * i) for i in range(10)]
    # a point on the edge between two windows is in the right-hand one, as pixel (100, 50) is
    wins = lt.windows(src, 100, region=shapely.Point(100, 50), bounds=(0, 0, 1000, 1000))
    assert wins.pixel_windows().tolist() == [[100, 0, 100, 100]]
    # a vertical line on a window edge: the windows to its right
    wins = lt.windows(src, 100, region=shapely.LineString([(300, 0), (300, 1000)]), bounds=(0, 0, 1000, 1000))
    assert wins.pixel_windows()[:, 0].tolist() == [300] * 10
    # a polygon sharing only an edge with a window does not overlap it
    wins = lt.windows(src, 100, region=shapely.box(100, 100, 300, 200), bounds=(0, 0, 1000, 1000))
    assert sorted(map(tuple, wins.pixel_windows()[:, :2].tolist())) == [(100, 100), (200, 100)]


# -- indexing like a list --------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(n_side=st.integers(1, 6), data=st.data())
def test_sequence_indexing_matches_a_list_of_indices(n_side, data):
    src = lt.ArraySource(np.zeros((1, 10 * n_side, 10 * n_side + 3), np.uint8), tile_shape=8)
    wins = lt.windows(src, 10)
    n = len(wins)
    oracle = list(range(n))
    outer = data.draw(st.slices(n))
    inner = data.draw(st.slices(len(oracle[outer])))
    assert [w.index for w in wins[outer][inner]] == oracle[outer][inner]
    assert list(wins[outer][inner].indices) == oracle[outer][inner]
    sub = wins[outer]
    i = data.draw(st.integers(-2 * n - 1, 2 * n + 1))
    if -len(sub) <= i < len(sub):
        assert sub[i].index == oracle[outer][i]
        assert pixel_tuple(sub[i].window) == pixel_tuple(wins.pixel_window(oracle[outer][i]))
    else:
        with pytest.raises(IndexError, match=rf"window index {i} is out of range for {len(sub)} windows"):
            sub[i]
    idx = data.draw(st.lists(st.integers(-n, n - 1), max_size=10))
    assert [w.index for w in wins[np.array(idx, dtype=np.int64)]] == [oracle[j] for j in idx]
    mask = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    assert [w.index for w in wins[np.array(mask)]] == [j for j, m in zip(oracle, mask) if m]
    view = wins[outer][inner]  # a view's area is the rectangle around its own windows
    corners = [(c, r, c + w, r + h) for c, r, w, h in map(pixel_tuple, map(wins.pixel_window, view.indices))]
    if corners:
        c0, r0 = min(c[0] for c in corners), min(c[1] for c in corners)
        c1, r1 = max(c[2] for c in corners), max(c[3] for c in corners)
        assert pixel_tuple(view.area) == (c0, r0, c1 - c0, r1 - r0)
        (xa, ya), (xb, yb) = src.transform @ (c0, r0), src.transform @ (c1, r1)
        assert view.bounds == pytest.approx((min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)))
    else:
        assert (view.area.width, view.area.height) == (0, 0)
    assert pixel_tuple(wins[:].area) == pixel_tuple(wins[::-1].area) == pixel_tuple(wins.area)


def test_bad_indices_are_list_like_errors():
    wins = lt.windows(lt.ArraySource(np.zeros((1, 30, 30), np.uint8), tile_shape=8), 10)
    with pytest.raises(lt.WindowIndexError, match="window index 9 is out of range for 9 windows") as info:
        wins[9]
    assert isinstance(info.value, IndexError)
    with pytest.raises(lt.IndexTypeError, match="not float") as info:
        wins[1.0]
    assert isinstance(info.value, TypeError)
    with pytest.raises(IndexError, match="index -10 in the index array is out of range for 9 windows"):
        wins[[0, -10]]
    with pytest.raises(TypeError, match="not str"):
        wins["0"]
    assert [w.index for w in wins] == [w.index for w in wins[:]] == list(range(9))
    assert wins[2:2].indices == range(2, 2) and len(wins[2:2]) == 0 and list(wins[2:2]) == []


def test_a_sub_sequence_keeps_the_root_indices_and_geometry():
    src = lt.ArraySource(ramp(1, 300, 300), tile_shape=64)
    wins = lt.windows(src, 100, overlap=0.5)
    sub = wins[10:20][::3]
    assert [w.index for w in sub] == [10, 13, 16, 19]
    assert sub.pixel_windows().tolist() == wins.pixel_windows()[[10, 13, 16, 19]].tolist()
    assert sub.tiles(0) == wins.tiles(10)
    assert "4 windows of 100x100 px, stride 50x50 px" in repr(sub)


# -- threads ---------------------------------------------------------------------------------------


class SlowCountingSource(CountingSource):
    """Reads take a moment, as decoding does, so threads really overlap on the same tiles."""

    def _read_tile(self, key):
        threading.Event().wait(0.001)  # simulated decode time, not synchronisation
        return super()._read_tile(key)


@pytest.mark.timeout(60)
def test_sixteen_threads_get_the_serial_pixels_and_each_tile_is_read_once():
    arr = ramp(3, 700, 900)
    src = SlowCountingSource(arr, tile_shape=(64, 96), cache=lt.TileCache())
    wins = lt.windows(src, 150, overlap=0.6, edge="pad")
    rng = np.random.default_rng(0)
    picks = [rng.integers(0, len(wins), 40) for _ in range(16)]
    barrier = threading.Barrier(16, timeout=TIMEOUT)
    got: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(t):
        try:
            barrier.wait()
            got[t] = [wins[int(i)] for i in picks[t]]
        except BaseException as err:  # handed to the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads) and not errors
    assert max(src.reads.values()) == 1  # single flight: never two reads of one tile
    for t in range(16):
        for i, w in zip(picks[t], got[t]):
            assert w.index == i
            assert_array_equal(w.data, expected_pixels(arr, wins.pixel_window(int(i)), 0))


# -- pickling --------------------------------------------------------------------------------------


def test_sequences_of_in_memory_sources_pickle_with_their_array_and_plan(ramp_array):
    src = lt.ArraySource(ramp_array, transform=UTM_10M, crs="EPSG:32633", tile_shape=256, cache=lt.TileCache(2**26))
    wins = lt.windows(src, 200, overlap=0.25, edge="pad")
    first = wins[0].data
    copy = pickle.loads(pickle.dumps(wins))
    assert copy.source.token == src.token and copy.source.cache.max_bytes == 2**26
    assert len(copy.source.cache) == 0  # the cache travels as its settings
    assert len(copy) == len(wins) and copy.pixel_windows().tolist() == wins.pixel_windows().tolist()
    assert_array_equal(copy[0].data, first)
    sub = pickle.loads(pickle.dumps(wins[[5, 1, 3]]))
    assert [w.index for w in sub] == [5, 1, 3]


def test_region_filtered_sequences_pickle_small():
    array = np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (1, 12800, 12800))
    disc = shapely.Point(6400, 6400).buffer(6000)
    big = lt.windows(lt.ArraySource(array, tile_shape=512), 64, region=disc, bounds=(0, 0, 12800, 12800))
    assert 40_000 > len(big) > 25_000
    blob = pickle.dumps(big)
    copy = pickle.loads(blob)
    assert copy.pixel_windows().tolist() == big.pixel_windows().tolist()
    mask_bytes = len(blob) - len(pickle.dumps(lt.windows(lt.ArraySource(array, tile_shape=512), 64)))
    assert mask_bytes < 5_000  # a compressed bit mask, not an int64 per window
