"""Mosaicked windows equal rasterio's own boundless read, bit for bit, for any window anywhere."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import ramp, write_tif
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal
from rasterio.windows import Window

import lazytiles as lt
from lazytiles.assembly import assemble

#: name: (dtype, bands, height, width, block (None = striped), nodata)
RASTERS = {
    "u8-rgb-nonsquare-blocks": ("uint8", 3, 517, 389, (256, 128), None),
    "u16-1band-wide-blocks-nodata": ("uint16", 1, 300, 700, (128, 256), 7),
    "f32-4band-small-blocks-nan": ("float32", 4, 250, 333, (64, 64), math.nan),
    "f32-1band-negative-nodata": ("float32", 1, 129, 257, (128, 128), -9999.0),
    "u8-1band-striped": ("uint8", 1, 401, 301, None, None),
    "u16-3band-striped-nodata": ("uint16", 3, 1000, 700, None, 0),
    "u16-3band-tiny-blocks": ("uint16", 3, 300, 200, (16, 16), None),
    "u8-4band-one-block-odd": ("uint8", 4, 77, 91, (512, 512), 255),
}


def position_coded(dtype: str, bands: int, height: int, width: int) -> np.ndarray:
    """Pixel values that name their position (modulo the dtype's range), with no value equal to nodata 0/7/255."""
    values = ramp(bands, height, width, dtype)
    if np.dtype(dtype).kind == "u":  # keep away from 0, 7 and 255
        values = values.astype(np.uint64) % 200 + 20 if dtype == "uint8" else values % 60000 + 256
    return values.astype(dtype)


@pytest.fixture(scope="module")
def rasters(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("mosaic")
    paths = {}
    for name, (dtype, bands, height, width, block, nodata) in RASTERS.items():
        paths[name] = write_tif(
            folder / f"{name}.tif", position_coded(dtype, bands, height, width), block=block, nodata=nodata
        )
    return paths


@st.composite
def windows_around(draw, height: int, width: int) -> Window:
    """Windows inside, across the edge of, and wholly outside a height x width raster."""
    h = draw(st.integers(1, height + 40))
    w = draw(st.integers(1, width + 40))
    row = draw(st.integers(-h - 30, height + 30))
    col = draw(st.integers(-w - 30, width + 30))
    return Window(col, row, w, h)


def boundless(path: Path, window: Window, fill: float) -> np.ndarray:
    with warnings.catch_warnings():
        # rasterio 1.4's boundless read multiplies Affines with `*`, which affine 3 deprecates
        warnings.filterwarnings("ignore", "Use `@` matmul", PendingDeprecationWarning, module="rasterio")
        with rasterio.open(path) as ds:
            return ds.read(window=window, boundless=True, fill_value=fill)


@pytest.mark.parametrize("name", sorted(RASTERS))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_window_equals_rasterios_boundless_read(rasters, name, data):
    dtype, bands, height, width, block, nodata = RASTERS[name]
    src = lt.open(rasters[name], cache=lt.TileCache(2**24))
    assert (src.count, src.height, src.width, src.dtype) == (bands, height, width, np.dtype(dtype))
    fill = 0 if nodata is None else nodata
    for _ in range(3):
        w = data.draw(windows_around(height, width))
        got = src.read(w)
        assert got.dtype == np.dtype(dtype) and got.shape == (bands, w.height, w.width)
        assert_array_equal(got, boundless(rasters[name], w, fill))  # NaN equals NaN here


@pytest.mark.parametrize("name", sorted(RASTERS))
def test_pinned_windows_equal_rasterios_boundless_read(rasters, name):
    dtype, bands, height, width, block, nodata = RASTERS[name]
    src = lt.open(rasters[name], cache=lt.TileCache(2**24))
    fill = 0 if nodata is None else nodata
    pinned = [
        Window(0, 0, width, height),  # the whole raster
        Window(-5, -3, width + 10, height + 6),  # all of it and a frame
        Window(width - 1, height - 1, 1, 1),  # the last pixel
        Window(width, height, 4, 4),  # just outside the far corner
        Window(-10, -10, 10, 10),  # just outside the origin
        Window(-1000, 5, 20, 20),  # far away
        Window(width // 2, -7, 3, height + 50),  # a column through everything
    ]
    for w in pinned:
        assert_array_equal(src.read(w), boundless(rasters[name], w, fill))


def test_a_window_reads_only_the_tiles_under_it_and_reports_them(rasters):
    src = lt.open(rasters["u8-rgb-nonsquare-blocks"], cache=lt.TileCache(2**24))
    assert src.tile_shape == (256, 128)

    def read(window):
        return assemble(src, window, src.tiles_under(window))

    data, info = read(Window(100, 200, 50, 100))  # rows 200..300, cols 100..150
    assert {(k.row, k.col) for k in info.tiles} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert (info.hits, info.misses) == (0, 4) and src.stats()["tiles_read"] == 4
    _, info = read(Window(110, 210, 5, 5))
    assert (info.hits, info.misses) == (1, 0) and src.stats()["tiles_read"] == 4
    _, info = read(Window(-50, -50, 10, 10))  # wholly outside: no tile at all
    assert info.tiles == () and src.stats()["tiles_read"] == 4
    assert data.flags.writeable  # a new array the caller owns, not a view of the cache


def test_outside_pixels_are_nodata_or_zero():
    arr = np.full((2, 10, 10), 5, np.int16)
    assert lt.ArraySource(arr, tile_shape=4).read(Window(8, 8, 4, 4))[:, -1, -1].tolist() == [0, 0]
    assert lt.ArraySource(arr, tile_shape=4, nodata=-1).read(Window(8, 8, 4, 4))[:, -1, -1].tolist() == [-1, -1]
    assert lt.ArraySource(arr, tile_shape=4, nodata=-1).read(Window(8, 8, 4, 4))[:, 0, 0].tolist() == [5, 5]


@pytest.mark.parametrize(
    "window",
    [Window(0.5, 0, 4, 4), Window(0, 0, 4.2, 4), Window(0, 0, 0, 4), Window(0, 0, 4, 0)],
)
def test_a_window_must_be_whole_pixels_with_a_positive_size(window):
    src = lt.ArraySource(np.zeros((1, 10, 10), np.uint8), tile_shape=4)
    with pytest.raises(
        ValueError, match=r"must have integer offsets and positive integer sizes; round it first"
    ) as info:
        src.read(window)
    assert isinstance(info.value, lt.InvalidArgumentError)


@settings(max_examples=100, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 90), st.integers(1, 90)),
    tile=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    data=st.data(),
)
@example(shape=(1, 1, 1), tile=(1, 1), data=None)
def test_an_array_source_read_equals_numpy_slicing_of_a_padded_array(shape, tile, data):
    bands, height, width = shape
    arr = ramp(bands, height, width)
    src = lt.ArraySource(arr, tile_shape=tile, nodata=4_000_000_000, cache=lt.TileCache(2**22))
    if data is None:
        w = Window(0, 0, 1, 1)
    else:
        w = data.draw(windows_around(height, width))
    pad = 200
    padded = np.pad(arr, ((0, 0), (pad, pad), (pad, pad)), constant_values=4_000_000_000)
    r0, c0 = int(w.row_off) + pad, int(w.col_off) + pad
    assert_array_equal(src.read(w), padded[:, r0 : r0 + int(w.height), c0 : c0 + int(w.width)])
