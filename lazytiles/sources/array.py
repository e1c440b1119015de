"""ArraySource: an in-memory numpy raster, tiled virtually so it goes through the same cache and mosaic."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from ..cache import TileCache, TileKey
from ..errors import InvalidArgumentError
from ..grid import to_crs
from .base import TileSource, _step, _to_source


def _tile_shape(value: int | tuple[int, int], what: str = "tile_shape") -> tuple[int, int]:
    shape = (value, value) if isinstance(value, int | np.integer) else tuple(value)
    if len(shape) != 2 or not all(isinstance(v, int | np.integer) and v > 0 for v in shape):
        raise InvalidArgumentError(f"{what} must be a positive int or (rows, cols), got {value!r}")
    return int(shape[0]), int(shape[1])


class ArraySource(TileSource):
    """A numpy array ``(bands, rows, cols)`` (or ``(rows, cols)``) as a tiled source.

    Tiles are read-only views of the array, so nothing is copied until a window is assembled. The
    array travels with the source when it is pickled (it is the data), under a random token made at
    construction, so copies in other processes share one identity.

    Parameters
    ----------
    array
        Pixels, band-first.
    transform
        Affine transform of the upper-left pixel corner (default: the identity, pixel coordinates).
    crs
        Coordinate reference system of ``transform`` (optional; needed for anything geographic).
    nodata
        Value of pixels that hold no data; also what fills windows outside the array (default 0).
    tile_shape
        Size of the virtual tiles, (rows, cols) or an int (default 512).
    cache
        The :class:`~lazytiles.TileCache` to use (default: the process-wide one).

    Examples
    --------
    >>> import numpy as np, lazytiles as lt
    >>> src = lt.ArraySource(np.zeros((3, 1000, 800), np.uint8), crs="EPSG:32633")
    >>> src.count, src.height, src.width, src.tile_shape
    (3, 1000, 800, (512, 512))
    """

    def __init__(
        self,
        array: np.ndarray,
        *,
        transform: Affine | None = None,
        crs: CRS | str | int | None = None,
        nodata: float | None = None,
        tile_shape: int | tuple[int, int] = 512,
        cache: TileCache | None = None,
        token: str | None = None,
    ) -> None:
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[np.newaxis]
        if array.ndim != 3 or 0 in array.shape:
            raise InvalidArgumentError(
                f"array must be (bands, rows, cols) or (rows, cols) with no empty axis, got shape "
                f"{array.shape}; for an (rows, cols, bands) image pass np.moveaxis(array, -1, 0)"
            )
        if transform is None:
            transform = Affine.identity()
        if not isinstance(transform, Affine):
            raise InvalidArgumentError(f"transform must be an affine.Affine, got {transform!r}")
        self._array = array
        self.count, self.height, self.width = (int(n) for n in array.shape)
        self.dtype = array.dtype
        self.transform = transform
        self.crs = to_crs(crs)
        self.nodata = nodata
        self.tile_shape = _tile_shape(tile_shape)
        self._token = token or f"array:{uuid.uuid4().hex}"
        self._init_tiles(cache)

    @property
    def token(self) -> str:
        return self._token

    @property
    def array(self) -> np.ndarray:
        """The pixels (bands, rows, cols)."""
        return self._array

    def _read_tile(self, key: TileKey) -> np.ndarray:
        w = self.grid.tile_window(key.row, key.col)
        view = self._array[:, w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width]
        view = view.view()  # a view of its own, so marking it read-only leaves the array writable
        view.flags.writeable = False
        return view

    def _overview(self, area: Window, max_size: int) -> tuple[np.ndarray, Affine]:
        """Every n-th pixel of the array: no tile is read."""
        step = _step(area, max_size)
        r0, c0 = int(area.row_off), int(area.col_off)
        data = np.ascontiguousarray(self._array[:, r0 : r0 + int(area.height) : step, c0 : c0 + int(area.width) : step])
        return data, _to_source(area, data)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _restore_array_source,
            (self._array, self.transform, self.crs, self.nodata, self.tile_shape, self.cache, self._token),
        )

    def __repr__(self) -> str:
        crs = None if self.crs is None else self.crs.to_string()
        return (
            f"ArraySource(<{self.count}x{self.height}x{self.width} {self.dtype.name}>, "
            f"transform={tuple(self.transform)[:6]!r}, crs={crs!r}, nodata={self.nodata!r}, "
            f"tile_shape={self.tile_shape!r})"
        )


def _restore_array_source(
    array: np.ndarray,
    transform: Affine,
    crs: CRS | None,
    nodata: float | None,
    tile_shape: tuple[int, int],
    cache: TileCache,
    token: str,
) -> ArraySource:
    return ArraySource(
        array, transform=transform, crs=crs, nodata=nodata, tile_shape=tile_shape, cache=cache, token=token
    )
