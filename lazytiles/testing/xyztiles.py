"""Tiles from an array: write an image aligned to the web-mercator grid as ``{z}/{x}/{y}.png`` tiles.

:func:`write_xyz_tiles` cuts a uint8 image into XYZ tiles on disk and returns the :class:`XYZCoverage`
it wrote: which tiles, their bounds and their pixel window. A :class:`~lazytiles.testing.tileserver.TileServer`
serves such a directory as a tile service; :mod:`lazytiles.testing.tileserver` re-exports both names.

Examples
--------
>>> import tempfile, numpy as np
>>> from lazytiles.testing.xyztiles import write_xyz_tiles
>>> image = np.zeros((3, 256, 512), dtype=np.uint8)
>>> cover = write_xyz_tiles(image, tempfile.mkdtemp(), zoom=3, top_left_tile=(2, 5))
>>> cover.tiles(), len(cover), (3, 5) in cover
([(2, 5), (3, 5)], 2, True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from ..errors import InvalidArgumentError
from ..grid import Bounds, mercator_bounds, tile_lnglat_bounds


@dataclass(frozen=True, slots=True)
class XYZCoverage:
    """The block of XYZ tiles :func:`write_xyz_tiles` wrote: ``cols`` x ``rows`` tiles from ``(x, y)``."""

    zoom: int
    x: int
    y: int
    cols: int
    rows: int
    tile_size: int

    @property
    def bounds(self) -> Bounds:
        """(left, bottom, right, top) in EPSG:3857 metres."""
        left, _, _, top = mercator_bounds(self.zoom, self.y, self.x)
        _, bottom, right, _ = mercator_bounds(self.zoom, self.y + self.rows - 1, self.x + self.cols - 1)
        return (left, bottom, right, top)

    @property
    def lnglat_bounds(self) -> Bounds:
        """(west, south, east, north) in degrees."""
        west, _, _, north = tile_lnglat_bounds(self.zoom, self.y, self.x)
        _, south, east, _ = tile_lnglat_bounds(self.zoom, self.y + self.rows - 1, self.x + self.cols - 1)
        return (west, south, east, north)

    @property
    def window(self) -> Window:
        """The pixels of the block in the zoom's whole-world grid (what an ``XYZSource`` reads)."""
        ts = self.tile_size
        return Window(self.x * ts, self.y * ts, self.cols * ts, self.rows * ts)

    def tiles(self) -> list[tuple[int, int]]:
        """(x, y) of every tile, row by row."""
        return [(self.x + c, self.y + r) for r in range(self.rows) for c in range(self.cols)]

    def __contains__(self, tile: object) -> bool:
        if not isinstance(tile, tuple) or len(tile) != 2:
            return False
        x, y = tile
        return bool(self.x <= x < self.x + self.cols and self.y <= y < self.y + self.rows)

    def __len__(self) -> int:
        return self.cols * self.rows


_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def write_xyz_tiles(
    array: np.ndarray,
    directory: str | os.PathLike[str],
    *,
    zoom: int,
    top_left_tile: tuple[int, int] = (0, 0),
    tile_size: int = 256,
    template: str = "{z}/{x}/{y}.png",
    **save_options: Any,
) -> XYZCoverage:
    """Cut a uint8 image ``(bands, rows, cols)`` into XYZ tiles under ``directory``.

    The image's upper-left pixel is the upper-left pixel of tile ``top_left_tile = (x, y)`` at
    ``zoom``; its height and width must be whole numbers of ``tile_size``. Bands 1 to 4 are written
    as grey, grey+alpha, RGB or RGBA; the format follows the template's extension (PNG is lossless,
    so reading the tiles back gives the image bit for bit). ``{-y}`` and ``{q}`` templates work too.

    Returns
    -------
    XYZCoverage
        Which tiles were written, with their bounds and pixel window.
    """
    from PIL import Image

    from ..grid import quadkey

    image = np.asarray(array)
    if image.ndim == 2:
        image = image[np.newaxis]
    if image.ndim != 3 or image.dtype != np.uint8 or image.shape[0] not in _MODES:
        raise InvalidArgumentError(
            f"array must be uint8 (bands, rows, cols) with 1 to 4 bands, got {image.dtype} {image.shape}"
        )
    bands, height, width = image.shape
    if height % tile_size or width % tile_size or not height:
        raise InvalidArgumentError(
            f"array of {height}x{width} px is not whole {tile_size}-px tiles; "
            f"crop or pad it to multiples of {tile_size}"
        )
    x0, y0 = top_left_tile
    rows, cols = height // tile_size, width // tile_size
    n = 2**zoom
    if not (x0 >= 0 and x0 + cols <= n and y0 >= 0 and y0 + rows <= n):
        raise InvalidArgumentError(
            f"{cols}x{rows} tiles from top_left_tile={top_left_tile} do not fit the {n}x{n} tiles of zoom {zoom}"
        )
    root = Path(directory)
    for r in range(rows):
        for c in range(cols):
            x, y = x0 + c, y0 + r
            name = (
                template.replace("{z}", str(zoom))
                .replace("{x}", str(x))
                .replace("{-y}", str(n - 1 - y))
                .replace("{y}", str(y))
                .replace("{q}", quadkey(zoom, y, x))
            )
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            block = image[:, r * tile_size : (r + 1) * tile_size, c * tile_size : (c + 1) * tile_size]
            pixels = block[0] if bands == 1 else np.ascontiguousarray(block.transpose(1, 2, 0))
            Image.fromarray(pixels).save(path, **save_options)  # mode from the shape: L, LA, RGB, RGBA
    return XYZCoverage(zoom, x0, y0, cols, rows, tile_size)


__all__ = ["XYZCoverage", "write_xyz_tiles"]
