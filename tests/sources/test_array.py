"""ArraySource: a numpy array as a real tiled source, through the same cache and mosaic."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
from affine import Affine
from conftest import UTM_10M, ramp
from numpy.testing import assert_array_equal
from rasterio.crs import CRS
from rasterio.windows import Window

import lazytiles as lt


def test_metadata_and_repr():
    src = lt.ArraySource(ramp(3, 100, 250), transform=UTM_10M, crs="EPSG:32633", nodata=0, tile_shape=(64, 100))
    assert (src.count, src.height, src.width, src.dtype) == (3, 100, 250, np.dtype("uint32"))
    assert src.crs == CRS.from_epsg(32633) and src.transform == UTM_10M and src.nodata == 0
    assert src.tile_shape == (64, 100) and (src.grid.rows, src.grid.cols) == (2, 3)
    assert src.bounds == (500_000, 6_000_000 - 1000, 500_000 + 2500, 6_000_000)
    assert repr(src) == (
        "ArraySource(<3x100x250 uint32>, transform=(10.0, 0.0, 500000.0, 0.0, -10.0, 6000000.0), "
        "crs='EPSG:32633', nodata=0, tile_shape=(64, 100))"
    )
    assert lt.ArraySource(np.zeros((5, 6), np.float32)).count == 1  # (rows, cols) is one band
    assert lt.ArraySource(np.zeros((1, 2, 2)), crs=4326).crs == CRS.from_epsg(4326)
    plain = lt.ArraySource(np.zeros((1, 2, 2)))
    assert plain.transform == Affine.identity() and plain.crs is None and plain.tile_shape == (512, 512)


def test_tiles_are_read_only_views_and_the_array_stays_writable():
    arr = ramp(2, 50, 50)
    src = lt.ArraySource(arr, tile_shape=20, cache=lt.TileCache(2**20))
    tile, hit = src.get_tile(src.tile_key(2, 2))  # the clipped corner tile
    assert not hit and tile.shape == (2, 10, 10) and np.shares_memory(tile, arr)
    assert_array_equal(tile, arr[:, 40:, 40:])
    with pytest.raises(ValueError, match="read-only"):
        tile[0, 0, 0] = 1
    arr[0, 0, 0] = 7  # the caller's array is untouched by the flags
    window = src.read(Window(0, 0, 5, 5))
    window[0, 0, 0] = 9  # windows are fresh arrays the caller owns
    assert arr[0, 0, 0] == 7


def test_pickled_copies_share_the_token_and_cache_settings():
    src = lt.ArraySource(ramp(1, 30, 30), tile_shape=8, nodata=3, crs="EPSG:3857", cache=lt.TileCache(10_000))
    copy = pickle.loads(pickle.dumps(src))
    assert copy.token == src.token and copy.token.startswith("array:")
    assert (copy.nodata, copy.crs, copy.tile_shape, copy.cache.max_bytes) == (3, src.crs, (8, 8), 10_000)
    assert_array_equal(copy.read(Window(-2, -2, 40, 40)), src.read(Window(-2, -2, 40, 40)))
    assert lt.ArraySource(ramp(1, 30, 30)).token != src.token  # another array, another identity


def test_sources_sharing_a_cache_do_not_see_each_other_s_tiles():
    cache = lt.TileCache(2**20)
    a = lt.ArraySource(np.zeros((1, 10, 10), np.uint8), tile_shape=5, cache=cache)
    b = lt.ArraySource(np.ones((1, 10, 10), np.uint8), tile_shape=5, cache=cache)
    assert a.read(Window(0, 0, 10, 10)).max() == 0 and b.read(Window(0, 0, 10, 10)).min() == 1
    assert len(cache) == 8


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (
            np.zeros((2, 3, 4, 5)),
            r"array must be \(bands, rows, cols\) or \(rows, cols\) with no empty axis, got shape \(2, 3, 4, 5\)",
        ),
        (np.zeros((3, 0, 4)), r"got shape \(3, 0, 4\); for an \(rows, cols, bands\) image pass np.moveaxis"),
        (np.zeros(5), r"got shape \(5,\)"),
    ],
)
def test_bad_arrays_are_value_errors(array, message):
    with pytest.raises(ValueError, match=message) as info:
        lt.ArraySource(array)
    assert isinstance(info.value, lt.InvalidArgumentError)


def test_bad_options_are_value_errors():
    arr = np.zeros((1, 8, 8), np.uint8)
    with pytest.raises(lt.InvalidArgumentError, match=r"transform must be an affine.Affine, got \(1, 0, 0, 0, 1, 0\)"):
        lt.ArraySource(arr, transform=(1, 0, 0, 0, 1, 0))
    for bad in (0, (4, 0), (4, 4, 4), "8"):
        with pytest.raises(
            lt.InvalidArgumentError,
            match=rf"tile_shape must be a positive int or \(rows, cols\), got {re.escape(repr(bad))}",
        ):
            lt.ArraySource(arr, tile_shape=bad)
    with pytest.raises(
        lt.CRSError, match=r"crs='EPSG:nope' is not a CRS rasterio knows .*; pass e.g. 'EPSG:4326'"
    ) as info:
        lt.ArraySource(arr, crs="EPSG:nope")
    assert isinstance(info.value, ValueError)
    with pytest.raises(lt.CRSError, match=r"crs=4\.5 is a float, not a CRS"):
        lt.ArraySource(arr, crs=4.5)
    with pytest.raises(lt.InvalidArgumentError, match=r"cache=.* is not a lazytiles.TileCache"):
        lt.ArraySource(arr, cache=2**20)


def test_a_cache_smaller_than_one_tile_is_refused_when_the_source_is_made():
    with pytest.raises(
        lt.CacheTooSmallError,
        match=r"cache max_bytes=1000 is smaller than one 32x32 tile of 3 uint8 bands \(3072 bytes\); use lt.TileCache\(max_bytes=196608\) or more",
    ) as info:
        lt.ArraySource(np.zeros((3, 64, 64), np.uint8), tile_shape=32, cache=lt.TileCache(1000))
    assert isinstance(info.value, ValueError)
