"""Tile grids and tile math: raster block grids and the XYZ / web-mercator grid. No I/O.

Everything here is integers and affine transforms. Pixel areas are ``rasterio.windows.Window`` with
integer offsets; bounds are ``(left, bottom, right, top)`` in a projected CRS or
``(west, south, east, north)`` in degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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


def as_bounds(value: Any, what: str = "bounds") -> Bounds:
    """``value`` as (left, bottom, right, top) floats, checked: finite, left < right, bottom < top."""
    try:
        left, bottom, right, top = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{what} must be (left, bottom, right, top), got {value!r}") from None
    if not (math.isfinite(left + bottom + right + top) and left < right and bottom < top):
        raise InvalidArgumentError(
            f"{what}={value!r} is not (left, bottom, right, top) with left < right and bottom < top"
        )
    return left, bottom, right, top


def window_bounds(window: Window, transform: Affine) -> Bounds:
    """(left, bottom, right, top) of a pixel window under ``transform``."""
    c0, r0 = window.col_off, window.row_off
    c1, r1 = c0 + window.width, r0 + window.height
    xs, ys = zip(*(transform @ (c, r) for c in (c0, c1) for r in (r0, r1)))
    return (min(xs), min(ys), max(xs), max(ys))


def window_transform(window: Window, transform: Affine) -> Affine:
    """The affine transform of a window's upper-left pixel corner: ``transform @
    Affine.translation(col_off, row_off)``, worked out (the same sums in the same order, a quarter
    of the time: it runs once a window)."""
    a, b, c, d, e, f = transform[:6]
    col, row = window.col_off, window.row_off
    return Affine(a, b, a * col + b * row + c, d, e, d * col + e * row + f)


# -- XYZ / web mercator ----------------------------------------------------------------------------


def mercator_bounds(z: int, row: int, col: int) -> Bounds:
    """(left, bottom, right, top) in EPSG:3857 metres of XYZ tile z/col/row (x=col, y=row)."""
    size = WORLD / 2**z
    left, top = -WORLD / 2 + col * size, WORLD / 2 - row * size
    return (left, top - size, left + size, top)


def mercator_transform(z: int, tile_size: int = 256) -> Affine:
    """Affine transform of the whole-world pixel grid at zoom ``z`` with ``tile_size``-pixel tiles."""
    res = WORLD / (tile_size * 2**z)
    return Affine(res, 0.0, -WORLD / 2, 0.0, -res, WORLD / 2)


def mercator_to_lnglat(x: float, y: float) -> tuple[float, float]:
    """EPSG:3857 metres to EPSG:4326 degrees."""
    r = WORLD / (2 * math.pi)
    return math.degrees(x / r), math.degrees(2 * math.atan(math.exp(y / r)) - math.pi / 2)


def quadkey(z: int, row: int, col: int) -> str:
    """Bing quadkey of XYZ tile z/col/row (empty string at zoom 0)."""
    digits = []
    for level in range(z, 0, -1):
        mask = 1 << (level - 1)
        digits.append(str((1 if col & mask else 0) + (2 if row & mask else 0)))
    return "".join(digits)


def tile_lnglat_bounds(z: int, row: int, col: int) -> Bounds:
    """(west, south, east, north) in degrees of XYZ tile z/col/row; the outermost rows end at
    :data:`MAX_LATITUDE`."""
    left, bottom, right, top = mercator_bounds(z, row, col)
    west, south = mercator_to_lnglat(left, bottom)
    east, north = mercator_to_lnglat(right, top)
    return (west, south, east, north)


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
