"""Web-mercator tile math in lazytiles.grid: hypothesis round-trips, and mercantile as the oracle."""

from __future__ import annotations

import math

import mercantile
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

import lazytiles as lt
from lazytiles.grid import (
    MAX_LATITUDE,
    WORLD,
    lnglat_tile,
    lnglat_to_mercator,
    lnglat_to_pixel,
    mercator_bounds,
    mercator_tile,
    mercator_tile_range,
    mercator_to_lnglat,
    mercator_to_pixel,
    mercator_transform,
    pixel_to_lnglat,
    pixel_to_mercator,
    quadkey,
    quadkey_tile,
    tile_lnglat_bounds,
)


@st.composite
def xyz_tiles(draw, max_zoom: int = 28) -> tuple[int, int, int]:
    """(z, row, col) of any tile up to ``max_zoom``."""
    z = draw(st.integers(0, max_zoom))
    return z, draw(st.integers(0, 2**z - 1)), draw(st.integers(0, 2**z - 1))


lngs = st.floats(-180, 180, allow_nan=False)
lats = st.floats(-MAX_LATITUDE, MAX_LATITUDE, allow_nan=False)


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
def test_quadkey_matches_mercantile_and_round_trips(t):
    z, row, col = t
    key = quadkey(z, row, col)
    assert key == mercantile.quadkey(mercantile.Tile(col, row, z))
    assert quadkey_tile(key) == (z, row, col)


@given(lngs, lats)
@example(0.0, 0.0)
@example(-180.0, MAX_LATITUDE)
def test_lnglat_to_mercator_matches_mercantile(lng, lat):
    assert lnglat_to_mercator(lng, lat) == pytest.approx(mercantile.xy(lng, lat), rel=1e-12, abs=1e-6)


@given(lngs, lats, st.integers(0, 24))
@example(13.4, 52.5, 17)
def test_lnglat_tile_matches_mercantile_away_from_edges(lng, lat, z):
    col, row = lnglat_to_pixel(lng, lat, z, tile_size=1)
    # mercantile nudges points within 1e-14 of an edge into the next tile; we do not: skip edges
    assume(min(col % 1, 1 - col % 1, row % 1, 1 - row % 1) > 1e-7)
    expected = mercantile.tile(lng, lat, z)
    assert lnglat_tile(lng, lat, z) == (expected.y, expected.x)


@given(st.floats(-WORLD / 2, WORLD / 2), st.floats(-WORLD / 2, WORLD / 2))
def test_mercator_to_lnglat_matches_mercantile(x, y):
    assert mercator_to_lnglat(x, y) == pytest.approx(mercantile.lnglat(x, y), abs=1e-9)


# -- round trips ----------------------------------------------------------------------------------


@given(xyz_tiles())
@example((0, 0, 0))
@example((10, 10, 10))
def test_centre_of_a_tile_maps_back_to_it(t):
    z, row, col = t
    left, bottom, right, top = mercator_bounds(z, row, col)
    assert mercator_tile((left + right) / 2, (bottom + top) / 2, z) == (row, col)
    west, south, east, north = tile_lnglat_bounds(z, row, col)
    assert lnglat_tile((west + east) / 2, (south + north) / 2, z) == (row, col)


@given(xyz_tiles(max_zoom=24))
@example((0, 0, 0))
def test_a_tile_covers_exactly_its_tile_range_and_pixels(t):
    z, row, col = t
    assert mercator_tile_range(mercator_bounds(z, row, col), z) == (range(row, row + 1), range(col, col + 1))
    transform = mercator_transform(z, 256)
    c, r = ~transform @ mercator_bounds(z, row, col)[::3]  # upper-left corner (left, top)
    assert (c, r) == pytest.approx((col * 256, row * 256), abs=1e-6)


@given(lngs, lats)
def test_lnglat_round_trips_through_mercator(lng, lat):
    back = mercator_to_lnglat(*lnglat_to_mercator(lng, lat))
    assert back == pytest.approx((lng, lat), abs=1e-9)


@given(lngs, lats, st.integers(0, 24), st.sampled_from([256, 512]))
def test_lnglat_round_trips_through_pixels(lng, lat, z, tile_size):
    col, row = lnglat_to_pixel(lng, lat, z, tile_size)
    edge = tile_size * 2**z
    assert -1e-6 <= col <= edge + 1e-6 and -1e-6 <= row <= edge + 1e-6
    assert pixel_to_lnglat(col, row, z, tile_size) == pytest.approx((lng, lat), abs=1e-9)


@given(st.floats(-1e3, 1e6), st.floats(-1e3, 1e6), st.integers(0, 22))
def test_pixels_round_trip_through_mercator_and_agree_with_the_transform(col, row, z):
    x, y = pixel_to_mercator(col, row, z)
    assert mercator_to_pixel(x, y, z) == pytest.approx((col, row), abs=1e-6)
    assert mercator_transform(z) @ (col, row) == pytest.approx((x, y), abs=1e-6)


def test_outermost_latitudes_clamp_to_the_world_edge():
    assert lnglat_to_mercator(0, 90) == pytest.approx((0, WORLD / 2))
    assert lnglat_tile(180, -90, 3) == (7, 7)  # right and bottom edges go into the last tile
    assert lnglat_tile(-180, 90, 3) == (0, 0)
    assert math.isclose(tile_lnglat_bounds(0, 0, 0)[3], MAX_LATITUDE)


def test_tile_range_of_bounds_beyond_the_world_is_clamped():
    assert mercator_tile_range((-WORLD, -WORLD, WORLD, WORLD), 2) == (range(0, 4), range(0, 4))


def test_bad_quadkey_digit_is_a_lazytiles_value_error():
    with pytest.raises(lt.InvalidArgumentError, match=r"quadkey '0124' has digit '4'") as info:
        quadkey_tile("0124")
    assert isinstance(info.value, ValueError)
