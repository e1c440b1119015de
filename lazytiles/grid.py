"""Tile grids and tile math: raster block grids and the XYZ / web-mercator grid. No I/O.

Everything here is integers and affine transforms. Pixel areas are ``rasterio.windows.Window`` with
integer offsets; bounds are ``(left, bottom, right, top)`` in a projected CRS or
``(west, south, east, north)`` in degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from .errors import CRSError, InvalidArgumentError

Bounds = tuple[float, float, float, float]

#: Width of the web-mercator world (EPSG:3857), in metres.
WORLD = 2 * math.pi * 6378137.0
#: Latitude where web mercator is cut off: tiles are square up to here.
MAX_LATITUDE = math.degrees(2 * math.atan(math.exp(math.pi)) - math.pi / 2)

#: Pixel coordinates this close to an integer are that integer (float noise of reprojection).
PIXEL_SNAP = 1e-6


class TileIndex(NamedTuple):
    """Row and column of a tile in its grid (row 0 at the top)."""

    row: int
    col: int


@dataclass(frozen=True, slots=True)
class TileGrid:
    """A raster of ``height`` x ``width`` pixels cut into tiles of ``tile_height`` x ``tile_width``.

    Tiles on the last row and column are clipped to the raster, as GeoTIFF blocks are.
    """

    height: int
    width: int
    tile_height: int
    tile_width: int

    @property
    def rows(self) -> int:
        """Number of tile rows."""
        return -(-self.height // self.tile_height)

    @property
    def cols(self) -> int:
        """Number of tile columns."""
        return -(-self.width // self.tile_width)

    def tile_window(self, row: int, col: int) -> Window:
        """The pixels of tile (row, col), clipped to the raster."""
        r0, c0 = row * self.tile_height, col * self.tile_width
        return Window(c0, r0, min(self.tile_width, self.width - c0), min(self.tile_height, self.height - r0))

    def tiles_under(self, window: Window) -> tuple[range, range]:
        """Tile rows and columns holding any pixel of ``window`` (empty ranges when it misses the raster)."""
        r0, c0 = max(int(window.row_off), 0), max(int(window.col_off), 0)
        r1 = min(int(window.row_off) + int(window.height), self.height)
        c1 = min(int(window.col_off) + int(window.width), self.width)
        if r1 <= r0 or c1 <= c0:
            return range(0), range(0)
        return (
            range(r0 // self.tile_height, (r1 - 1) // self.tile_height + 1),
            range(c0 // self.tile_width, (c1 - 1) // self.tile_width + 1),
        )


def snap(value: float) -> float:
    """``value`` rounded to the nearest integer when it is within :data:`PIXEL_SNAP` of it."""
    nearest = round(value)
    return float(nearest) if abs(value - nearest) <= PIXEL_SNAP else value


def pixel_window(bounds: Bounds, transform: Affine) -> Window:
    """The smallest integer pixel window covering ``bounds`` (in the transform's CRS): rounds outward."""
    left, bottom, right, top = bounds
    inverse = ~transform
    corners = [inverse @ (x, y) for x in (left, right) for y in (bottom, top)]
    cols = [snap(c) for c, _ in corners]
    rows = [snap(r) for _, r in corners]
    c0, c1 = math.floor(min(cols)), math.ceil(max(cols))
    r0, r1 = math.floor(min(rows)), math.ceil(max(rows))
    return Window(c0, r0, c1 - c0, r1 - r0)


def window_bounds(window: Window, transform: Affine) -> Bounds:
    """(left, bottom, right, top) of a pixel window under ``transform``."""
    c0, r0 = window.col_off, window.row_off
    c1, r1 = c0 + window.width, r0 + window.height
    xs, ys = zip(*(transform @ (c, r) for c in (c0, c1) for r in (r0, r1)))
    return (min(xs), min(ys), max(xs), max(ys))


def window_transform(window: Window, transform: Affine) -> Affine:
    """The affine transform of a window's upper-left pixel corner."""
    return transform @ Affine.translation(window.col_off, window.row_off)


# -- XYZ / web mercator ----------------------------------------------------------------------------


def mercator_bounds(z: int, row: int, col: int) -> Bounds:
    """(left, bottom, right, top) in EPSG:3857 metres of XYZ tile z/col/row (x=col, y=row)."""
    size = WORLD / 2**z
    left, top = -WORLD / 2 + col * size, WORLD / 2 - row * size
    return (left, top - size, left + size, top)


def mercator_tile(x: float, y: float, z: int) -> TileIndex:
    """The zoom-z tile holding EPSG:3857 point (x, y); a point on an edge goes right and down.

    Points beyond the world's edge are clamped to the outermost tiles.
    """
    size = WORLD / 2**z
    n = 2**z
    row = int((WORLD / 2 - y) // size)
    col = int((x + WORLD / 2) // size)
    return TileIndex(min(max(row, 0), n - 1), min(max(col, 0), n - 1))


def mercator_transform(z: int, tile_size: int = 256) -> Affine:
    """Affine transform of the whole-world pixel grid at zoom ``z`` with ``tile_size``-pixel tiles."""
    res = WORLD / (tile_size * 2**z)
    return Affine(res, 0.0, -WORLD / 2, 0.0, -res, WORLD / 2)


def lnglat_to_mercator(lng: float, lat: float) -> tuple[float, float]:
    """EPSG:4326 degrees to EPSG:3857 metres; latitudes are clamped to :data:`MAX_LATITUDE`."""
    lat = min(max(lat, -MAX_LATITUDE), MAX_LATITUDE)
    x = math.radians(lng) * WORLD / (2 * math.pi)
    y = math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)) * WORLD / (2 * math.pi)
    return x, y


def mercator_to_lnglat(x: float, y: float) -> tuple[float, float]:
    """EPSG:3857 metres to EPSG:4326 degrees."""
    r = WORLD / (2 * math.pi)
    return math.degrees(x / r), math.degrees(2 * math.atan(math.exp(y / r)) - math.pi / 2)


def lnglat_tile(lng: float, lat: float, z: int) -> TileIndex:
    """The zoom-z XYZ tile holding a lon/lat point."""
    return mercator_tile(*lnglat_to_mercator(lng, lat), z)


def quadkey(z: int, row: int, col: int) -> str:
    """Bing quadkey of XYZ tile z/col/row (empty string at zoom 0)."""
    digits = []
    for level in range(z, 0, -1):
        mask = 1 << (level - 1)
        digits.append(str((1 if col & mask else 0) + (2 if row & mask else 0)))
    return "".join(digits)


def quadkey_tile(key: str) -> tuple[int, int, int]:
    """(z, row, col) of a Bing quadkey; raises ``InvalidArgumentError`` (a ``ValueError``) on a digit
    other than 0-3."""
    row = col = 0
    for digit in key:
        if digit not in "0123":
            raise InvalidArgumentError(
                f"quadkey {key!r} has digit {digit!r}; quadkey digits are 0, 1, 2 and 3"
            )
        d = int(digit)
        row, col = row * 2 + (d >> 1), col * 2 + (d & 1)
    return len(key), row, col


def tile_lnglat_bounds(z: int, row: int, col: int) -> Bounds:
    """(west, south, east, north) in degrees of XYZ tile z/col/row; the outermost rows end at
    :data:`MAX_LATITUDE`."""
    left, bottom, right, top = mercator_bounds(z, row, col)
    west, south = mercator_to_lnglat(left, bottom)
    east, north = mercator_to_lnglat(right, top)
    return (west, south, east, north)


def mercator_to_pixel(x: float, y: float, z: int, tile_size: int = 256) -> tuple[float, float]:
    """(col, row) pixel coordinates of EPSG:3857 point (x, y) in the whole-world grid at zoom ``z``.

    Pixel (0, 0) is the upper-left corner of tile 0/0/0 (the north-west corner of the world); the
    result is not clamped, so points beyond the world's edge give coordinates outside it.
    """
    res = WORLD / (tile_size * 2**z)
    return (x + WORLD / 2) / res, (WORLD / 2 - y) / res


def pixel_to_mercator(col: float, row: float, z: int, tile_size: int = 256) -> tuple[float, float]:
    """EPSG:3857 (x, y) of pixel coordinates (col, row) in the whole-world grid at zoom ``z``."""
    res = WORLD / (tile_size * 2**z)
    return -WORLD / 2 + col * res, WORLD / 2 - row * res


def lnglat_to_pixel(lng: float, lat: float, z: int, tile_size: int = 256) -> tuple[float, float]:
    """(col, row) pixel coordinates of a lon/lat point at zoom ``z``; latitudes clamp to
    :data:`MAX_LATITUDE`."""
    return mercator_to_pixel(*lnglat_to_mercator(lng, lat), z, tile_size)


def pixel_to_lnglat(col: float, row: float, z: int, tile_size: int = 256) -> tuple[float, float]:
    """(lng, lat) in degrees of pixel coordinates (col, row) at zoom ``z``."""
    return mercator_to_lnglat(*pixel_to_mercator(col, row, z, tile_size))


def mercator_tile_range(bounds: Bounds, z: int) -> tuple[range, range]:
    """Rows and columns of the zoom-z tiles covering EPSG:3857 ``bounds`` (left, bottom, right, top).

    A bound lying exactly on a tile edge does not pull in the tile beyond it; bounds beyond the
    world's edge are clamped to the outermost tiles.
    """
    left, bottom, right, top = bounds
    n = 2**z
    c0, r0 = mercator_to_pixel(left, top, z, 1)
    c1, r1 = mercator_to_pixel(right, bottom, z, 1)

    def clamp(v: int) -> int:
        return min(max(v, 0), n - 1)

    return (
        range(clamp(math.floor(snap(r0))), clamp(math.ceil(snap(r1)) - 1) + 1),
        range(clamp(math.floor(snap(c0))), clamp(math.ceil(snap(c1)) - 1) + 1),
    )


def to_crs(value: CRS | str | int | None, what: str = "crs") -> CRS | None:
    """A ``rasterio.crs.CRS`` from a CRS, an EPSG code, or any string rasterio understands."""
    if value is None or isinstance(value, CRS):
        return value
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            return CRS.from_epsg(value)
        if isinstance(value, str):
            return CRS.from_user_input(value)
    except Exception as err:  # rasterio raises its own CRSError; ours names the argument
        # GDAL's chained CPLE_* errors do not unpickle under tblib (seqtools installs it); the text is in err's
        err.__cause__ = err.__context__ = None
        raise CRSError(
            f"{what}={value!r} is not a CRS rasterio knows ({err}); pass e.g. 'EPSG:4326', "
            "an EPSG integer, a WKT string or a rasterio.crs.CRS"
        ) from err
    raise CRSError(
        f"{what}={value!r} is a {type(value).__name__}, not a CRS; pass e.g. 'EPSG:4326', "
        "an EPSG integer, a WKT string or a rasterio.crs.CRS"
    )
