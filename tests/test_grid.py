"""Tile math in lazytiles.grid: hypothesis round-trips, mercantile and affine as the oracles."""

from __future__ import annotations

import math

import mercantile
import pytest
from affine import Affine
from hypothesis import example, given
from hypothesis import strategies as st
from rasterio.windows import Window

from lazytiles.grid import (
    MAX_LATITUDE,
    WORLD,
    mercator_bounds,
    mercator_to_lnglat,
    mercator_transform,
    quadkey,
    tile_lnglat_bounds,
    window_transform,
)


@st.composite
def xyz_tiles(draw, max_zoom: int = 28) -> tuple[int, int, int]:
    """(z, row, col) of any tile up to ``max_zoom``."""
    z = draw(st.integers(0, max_zoom))
    return z, draw(st.integers(0, 2**z - 1)), draw(st.integers(0, 2**z - 1))


# -- against mercantile ---------------------------------------------------------------------------


@given(xyz_tiles())
@example((0, 0, 0))  # the whole world is one tile
@example((1, 1, 0))  # south-west quarter: row is y, col is x
def test_tile_bounds_match_mercantile(t):
    z, row, col = t
    expected = mercantile.xy_bounds(mercantile.Tile(col, row, z))
    assert mercator_bounds(z, row, col) == pytest.approx(tuple(expected), rel=0, abs=1e-6)
    west, south, east, north = mercantile.bounds(mercantile.Tile(col, row, z))
    assert tile_lnglat_bounds(z, row, col) == pytest.approx((west, south, east, north), abs=1e-9)


@given(xyz_tiles(max_zoom=30))
@example((0, 0, 0))
@example((3, 2, 5))
def test_quadkey_matches_mercantile(t):
    z, row, col = t
    assert quadkey(z, row, col) == mercantile.quadkey(mercantile.Tile(col, row, z))


@given(st.floats(-WORLD / 2, WORLD / 2), st.floats(-WORLD / 2, WORLD / 2))
def test_mercator_to_lnglat_matches_mercantile(x, y):
    assert mercator_to_lnglat(x, y) == pytest.approx(mercantile.lnglat(x, y), abs=1e-9)


# -- the pixel grid -------------------------------------------------------------------------------


@given(xyz_tiles(max_zoom=24))
@example((0, 0, 0))
def test_a_tile_s_corners_are_its_pixels_in_the_whole_world_grid(t):
    z, row, col = t
    transform = mercator_transform(z, 256)
    left, bottom, right, top = mercator_bounds(z, row, col)
    assert ~transform @ (left, top) == pytest.approx((col * 256, row * 256), abs=1e-6)
    assert ~transform @ (right, bottom) == pytest.approx((col * 256 + 256, row * 256 + 256), abs=1e-6)


def test_the_outermost_tiles_end_at_the_world_edge():
    assert math.isclose(tile_lnglat_bounds(0, 0, 0)[3], MAX_LATITUDE)
    assert mercator_bounds(0, 0, 0) == pytest.approx((-WORLD / 2, -WORLD / 2, WORLD / 2, WORLD / 2))


finite = st.floats(-1e9, 1e9, allow_nan=False, allow_infinity=False)


@given(
    st.tuples(finite, finite, finite, finite, finite, finite),
    st.integers(-(10**6), 10**7),
    st.integers(-(10**6), 10**7),
)
def test_a_window_s_transform_is_affine_s_own_product_bit_for_bit(coefficients, col, row):
    transform, window = Affine(*coefficients), Window(col, row, 512, 256)
    assert tuple(window_transform(window, transform)) == tuple(transform @ Affine.translation(col, row))
