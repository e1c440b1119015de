"""Window planning is integer math: offsets per axis, the cache-aware order, the strip width. No I/O."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import tiles_touched
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from lazytiles.cache import DEFAULT_MAX_BYTES
from lazytiles.errors import InvalidArgumentError
from lazytiles.windowing.plan import CACHE_SHARE, AxisPlan, WindowPlan, plan_axis, strip_width


def brute_offsets(start: int, length: int, extent: int, size: int, stride: int, edge: str) -> list[int]:
    """Offsets along one axis by walking the area one stride at a time."""
    end = start + length
    if edge == "pad":
        offsets = [start]
        while offsets[-1] + size < end and offsets[-1] + stride < end:  # until one reaches the end
            offsets.append(offsets[-1] + stride)  # (or the next would start past it: a gap)
        return offsets
    if length < size:  # no window fits: drop has none (an error), shift one that holds the area
        return [] if edge == "drop" else [max(0, min(start, extent - size))]
    offsets = list(range(start, end - size + 1, stride))
    if edge == "shift" and offsets[-1] + size < end:
        offsets.append(end - size)  # one more, moved inward to end at the area's end
    return offsets


@st.composite
def axes(draw, edges=("shift", "pad", "drop")):
    extent = draw(st.integers(1, 3000))
    start = draw(st.integers(0, extent - 1))
    length = draw(st.integers(1, extent - start))
    size = draw(st.integers(1, 700))
    stride = draw(st.integers(1, 800))
    edge = draw(st.sampled_from(edges))
    return start, length, extent, size, stride, edge


def offsets_of(axis: AxisPlan) -> list[int]:
    return [axis.offset(k) for k in range(len(axis))]


@given(axes())
@example((0, 1024, 1024, 256, 128, "shift"))  # divides evenly: no shifted window
@example((0, 1000, 1000, 256, 256, "shift"))
@example((0, 100, 100, 256, 64, "shift"))  # raster smaller than a window
@example((10, 100, 1000, 256, 64, "shift"))  # area smaller than a window, raster larger
@example((0, 1000, 1000, 256, 300, "pad"))  # stride larger than size: gaps
@example((0, 2, 2, 1, 2, "pad"))  # the next window would start past the end: none
def test_axis_offsets_match_a_walk_over_the_area(args):
    start, length, extent, size, stride, edge = args
    if edge == "drop" and length < size:
        with pytest.raises(InvalidArgumentError, match=rf"size={size} px is larger than the area's {length} px"):
            plan_axis(*args, "width")
        return
    axis = plan_axis(*args, "width")
    assert offsets_of(axis) == brute_offsets(*args)
    assert list(axis.offsets(np.arange(len(axis)))) == offsets_of(axis)


@given(axes(edges=("shift",)))
def test_shift_windows_are_full_size_inside_the_raster_and_cover_the_area(args):
    start, length, extent, size, stride, _ = args
    assume(stride <= size)  # with gaps between windows nothing can cover
    offs = offsets_of(plan_axis(*args, "height"))
    if extent >= size:
        assert all(o >= 0 and o + size <= extent for o in offs)
    covered = np.zeros(extent + size, bool)
    for o in offs:
        covered[max(o, 0) : o + size] = True
    assert covered[start : start + length].all()
    assert offs == sorted(set(offs))  # increasing, no duplicates


@given(axes(edges=("pad",)))
def test_pad_windows_step_regularly_from_the_start_and_the_last_reaches_the_end(args):
    start, length, extent, size, stride, _ = args
    offs = offsets_of(plan_axis(*args, "height"))
    assert offs == [start + k * stride for k in range(len(offs))]
    assert all(o < start + length for o in offs)  # every window starts inside the area
    if stride <= size:
        assert offs[-1] + size >= start + length  # the last reaches the end (maybe past the raster)
    assert len(offs) == 1 or offs[-2] + size < start + length  # and no window is wholly redundant


@given(axes(edges=("drop",)))
def test_drop_keeps_only_complete_windows_and_all_of_them(args):
    start, length, extent, size, stride, _ = args
    assume(length >= size)
    offs = offsets_of(plan_axis(*args, "height"))
    assert offs == [start + k * stride for k in range(len(offs))]
    assert offs[-1] + size <= start + length < offs[-1] + stride + size


# -- the order ------------------------------------------------------------------------------------


@given(n_rows=st.integers(1, 12), n_cols=st.integers(1, 30), strip=st.integers(1, 35))
def test_the_order_is_a_permutation_of_the_grid_in_strips_row_major_inside(n_rows, n_cols, strip):
    strip = min(strip, n_cols)
    plan = WindowPlan(AxisPlan(0, 10, n_rows), AxisPlan(0, 10, n_cols), (10, 10), strip)
    cells = [plan.cell(k) for k in range(len(plan))]
    assert sorted(cells) == [(i, j) for i in range(n_rows) for j in range(n_cols)]
    expected = [
        (i, j) for s0 in range(0, n_cols, strip) for i in range(n_rows) for j in range(s0, min(s0 + strip, n_cols))
    ]
    assert cells == expected
    i, j = plan.cells(np.arange(len(plan)))
    assert list(zip(i.tolist(), j.tolist())) == cells
    r, c = plan.offsets(np.arange(len(plan)))
    for k in range(len(plan)):
        w = plan.window(k)
        assert (w.row_off, w.col_off, w.height, w.width) == (r[k], c[k], 10, 10)


# -- the strip width: the cache-aware part --------------------------------------------------------


def working_set(plan: WindowPlan, tile: tuple[int, int], raster: tuple[int, int], i: int, strip_cols: range) -> int:
    """Tiles two consecutive window rows (i, i + 1) of one strip touch, by walking their pixels."""
    tiles: set[tuple[int, int]] = set()
    for row in (i, i + 1):
        if row >= plan.shape[0]:
            continue
        for j in strip_cols:
            w = Window(plan.cols.offset(j), plan.rows.offset(row), plan.size[1], plan.size[0])
            tiles |= {(r, c) for r, c in tiles_touched(w, tile) if r * tile[0] < raster[0] and c * tile[1] < raster[1]}
    return len(tiles)


@settings(max_examples=150, deadline=None)
@given(
    height=st.integers(200, 1500),
    width=st.integers(200, 4000),
    tile=st.sampled_from([64, 100, 128, 256]),
    size=st.integers(64, 300),
    stride_frac=st.floats(0.2, 1.0),
    cache_tiles=st.integers(4, 200),
)
def test_a_strip_s_two_consecutive_window_rows_fit_in_the_cache_share(
    height, width, tile, size, stride_frac, cache_tiles
):
    stride = max(1, int(size * stride_frac))
    rows = plan_axis(0, height, height, size, stride, "shift", "height")
    cols = plan_axis(0, width, width, size, stride, "shift", "width")
    tile_bytes = 3 * tile * tile
    cache = cache_tiles * tile_bytes
    strip = strip_width(rows, cols, (size, size), (tile, tile), (height, width), tile_bytes, cache)
    assert 1 <= strip <= len(cols)
    plan = WindowPlan(rows, cols, (size, size), strip)
    if strip == 1:
        return  # as narrow as it gets; a cache this small cannot do better
    for s0 in range(0, len(cols), strip):
        strip_cols = range(s0, min(s0 + strip, len(cols)))
        for i in range(len(rows)):
            assert working_set(plan, (tile, tile), (height, width), i, strip_cols) * tile_bytes <= CACHE_SHARE * cache


def test_a_131072_px_wide_rgb_raster_is_one_strip_with_the_default_cache():
    # 3-band uint8, 512-px tiles, 512-px windows every 256 px: two window rows touch two tile rows of
    # 256 tiles, 384 MiB, which fits in 80 % of 512 MiB, so the pass is plain row-major.
    side = 131072
    rows = plan_axis(0, side, side, 512, 256, "shift", "height")
    cols = plan_axis(0, side, side, 512, 256, "shift", "width")
    assert len(rows) == len(cols) == 511
    tile_bytes = 3 * 512 * 512
    strip = strip_width(rows, cols, (512, 512), (512, 512), (side, side), tile_bytes, DEFAULT_MAX_BYTES)
    assert strip == 511
    assert 2 * (side // 512) * tile_bytes <= CACHE_SHARE * DEFAULT_MAX_BYTES
    # twice as wide does not fit: strips, each as wide as the cache allows
    rows2 = plan_axis(0, side, side, 512, 256, "shift", "height")
    cols2 = plan_axis(0, 2 * side, 2 * side, 512, 256, "shift", "width")
    strip2 = strip_width(rows2, cols2, (512, 512), (512, 512), (side, 2 * side), tile_bytes, DEFAULT_MAX_BYTES)
    assert 1 < strip2 < len(cols2)
    span_tiles = math.ceil(((strip2 - 1) * 256 + 512) / 512) + 1
    assert 2 * span_tiles * tile_bytes <= CACHE_SHARE * DEFAULT_MAX_BYTES


# -- which tiles a pass can free -------------------------------------------------------------------


@given(args=axes(edges=("shift", "pad")), tile=st.integers(1, 300))
def test_an_axis_knows_the_last_window_over_each_tile(args, tile):
    start, length, extent, size, stride, edge = args
    axis = plan_axis(*args, "width")
    offs = offsets_of(axis)
    last: dict[int, int] = {}
    for k, o in enumerate(offs):  # walk the pixels of every window
        for px in range(max(o, 0), min(o + size, extent)):
            last[px // tile] = k
    freed = {t: k for k in range(len(axis)) for t in axis.finished(k, size, tile, extent)}
    assert freed == last


@settings(max_examples=100, deadline=None)
@given(
    n_rows=st.integers(1, 6),
    n_cols=st.integers(1, 9),
    strip=st.integers(1, 9),
    size=st.integers(5, 40),
    stride=st.integers(3, 40),
    tile=st.tuples(st.integers(4, 30), st.integers(4, 30)),
)
def test_a_plan_frees_each_tile_at_its_last_window_in_pass_order(n_rows, n_cols, strip, size, stride, tile):
    rows, cols = AxisPlan(0, stride, n_rows), AxisPlan(0, stride, n_cols)
    raster = ((n_rows - 1) * stride + size, (n_cols - 1) * stride + size)
    plan = WindowPlan(rows, cols, (size, size), min(strip, n_cols))
    last: dict[tuple[int, int], int] = {}
    for k in range(len(plan)):  # in pass order: the last writer wins
        for t in tiles_touched(plan.window(k), tile):
            last[t] = k
    freed: dict[tuple[int, int], int] = {}
    for k in range(len(plan)):
        r, c = plan.finished_tiles(k, tile, raster)
        for t in ((i, j) for i in r for j in c):
            assert t not in freed
            freed[t] = k
    assert freed == last
