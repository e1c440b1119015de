"""A scene put on another pixel grid, tile by tile, for :func:`lazytiles.mosaic` (scenes in another CRS
or at another resolution than the mosaic).

Each tile of the target grid is warped with GDAL (``rasterio.warp.reproject``) from the parent's pixels
under it, read through the parent's tiles and so through the shared cache; the warped tile is cached
too. It reads the parent at full resolution (no overview choice).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import rasterio.warp
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window

from ..cache import TileKey
from ..errors import InvalidArgumentError
from ..grid import pixel_window, window_bounds, window_transform
from .base import TileSource

#: Parent pixels read around a tile's footprint, so resampling kernels see their neighbours.
MARGIN = 2


class RegriddedSource(TileSource):
    """``parent`` on the grid ``crs``/``transform``/``width`` x ``height``, warped tile by tile.

    Pixels outside the parent read as its ``nodata`` (0 without one). Pickles as its recipe: the
    parent's recipe and the grid.
    """

    def __init__(
        self,
        parent: TileSource,
        crs: CRS | None,
        transform: Affine,
        width: int,
        height: int,
        resampling: str = "nearest",
        tile_shape: tuple[int, int] = (512, 512),
    ) -> None:
        try:
            self._resampling = Resampling[resampling]
        except KeyError:
            names = ", ".join(r.name for r in Resampling if r.value < 8)
            raise InvalidArgumentError(f"resampling={resampling!r} is not one of {names}") from None
        self.parent = parent
        self.crs = crs
        self.transform = transform
        self.width, self.height = int(width), int(height)
        self.count, self.dtype, self.nodata = parent.count, parent.dtype, parent.nodata
        self.tile_shape = (min(tile_shape[0], self.height), min(tile_shape[1], self.width))
        grid = json_grid(crs, transform, self.width, self.height)
        digest = hashlib.sha256(f"{parent.token}|{grid}|{resampling}".encode()).hexdigest()[:16]
        self._token = f"regrid:{digest}|{parent.token}"
        self._recipe = (parent, crs, transform, self.width, self.height, resampling, self.tile_shape)
        self._init_tiles(parent.cache)

    @property
    def token(self) -> str:
        return self._token

    def _read_tile(self, key: TileKey) -> np.ndarray:
        win = self.grid.tile_window(key.row, key.col)
        out = np.full((self.count, int(win.height), int(win.width)), self.fill_value, dtype=self.dtype)
        parent = self.parent
        bounds = window_bounds(win, self.transform)
        if parent.crs is not None and self.crs is not None and parent.crs != self.crs:
            bounds = rasterio.warp.transform_bounds(self.crs, parent.crs, *bounds, densify_pts=21)
        need = pixel_window(bounds, parent.transform)
        c0, r0 = max(int(need.col_off) - MARGIN, 0), max(int(need.row_off) - MARGIN, 0)
        c1 = min(int(need.col_off + need.width) + MARGIN, parent.width)
        r1 = min(int(need.row_off + need.height) + MARGIN, parent.height)
        if c1 <= c0 or r1 <= r0:
            return out
        area = Window(c0, r0, c1 - c0, r1 - r0)
        rasterio.warp.reproject(
            parent.read(area),
            out,
            src_transform=window_transform(area, parent.transform),
            src_crs=parent.crs or self.crs,
            src_nodata=parent.nodata,
            dst_transform=window_transform(win, self.transform),
            dst_crs=self.crs or parent.crs,
            dst_nodata=parent.nodata,
            resampling=self._resampling,
        )
        return out

    def __reduce__(self) -> tuple[Any, ...]:
        return (RegriddedSource, self._recipe)

    def __repr__(self) -> str:
        return f"RegriddedSource({self.parent!r}, {self.width}x{self.height} px, {self._resampling.name})"


def json_grid(crs: CRS | None, transform: Affine, width: int, height: int) -> str:
    """A grid as stable text: for tokens, equal in every process."""
    wkt = "" if crs is None else crs.to_wkt()
    return f"{wkt}|{','.join(repr(float(v)) for v in tuple(transform)[:6])}|{width}x{height}"

