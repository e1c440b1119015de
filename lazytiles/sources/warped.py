"""WarpedSource: a source on another pixel grid (resolution, CRS), warped tile by tile from its parent.

Constructor (stable; :meth:`TileSource.at <lazytiles.TileSource.at>` computes the grid for you)::

    WarpedSource(parent, crs, transform, width, height, resampling="bilinear", *, tile_shape=512, cache=None)

``parent`` is any :class:`~lazytiles.TileSource`; ``crs``, ``transform``, ``width`` and ``height`` are the
target grid; ``resampling`` a ``rasterio.enums.Resampling`` name or member. Each target tile is
computed with GDAL's warper (``rasterio.warp.reproject``) from the parent's tiles at one level — the
source itself, a GeoTIFF overview, a lower XYZ zoom — and cached in the shared
:class:`~lazytiles.TileCache` under this source's token; the parent tiles it reads go through the same
cache under the level's own token, so neighbouring warped tiles never fetch a parent tile twice.

**Level choice** (:func:`choose_level`, the rule of ``gdalwarp -ovr AUTO``): the target-to-parent
pixel-size ratio ``t`` is the target's x resolution over the parent's x resolution in the target
CRS (GDAL's suggested warp output, ``rasterio.warp.calculate_default_transform``). Going from the full
resolution down the levels (factors ``1 < f1 < f2 < ...``, each the full width over a level's width),
the first level ``i`` with ``f[i] < t < f[i + 1]`` or ``|f[i] - t| < 0.1`` is used, else the coarsest:
the coarsest level whose pixels are finer than the target's or (within 0.1) as fine. A target finer
than the parent (``t <= 1``) reads the full resolution.

Pixels equal windowed reads of ``rasterio.vrt.WarpedVRT(level_dataset, crs=..., transform=...,
width=..., height=..., resampling=...)``, whatever the resampling and tile shape: each tile is warped
in the chunks GDAL's warped VRT warps (its 512 x 128 blocks, :data:`WARP_CHUNK`, whole), from enough
source pixels that GDAL finds the same source window for each, so GDAL's per-chunk approximations (the
transformation to 1/8 pixel, the kernel's scale) are the same. (A VRT read of the whole raster in one
call warps other chunks, and differs from the VRT's own windowed reads by those approximations.)
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import threading
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import rasterio.env
import rasterio.warp
import shapely
import shapely.affinity
import shapely.geometry
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from ..assembly import assemble
from ..cache import TileCache, TileKey
from ..errors import CRSError, InvalidArgumentError
from ..grid import Bounds, pixel_window, to_crs, window_bounds
from .array import _tile_shape
from .base import FetchPool, TileSource, _to_source, overview_shape

# rasterio.warp.reproject of arrays, run on several threads at once, now and then warns that a dataset
# "has no geotransform": one of its own in-memory datasets, never the caller's (the pixels are right).
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning, module="rasterio.warp")
#: Tries of one reproject where that warning is raised as an error (``-W error``, pytest's ``error``).
REPROJECT_TRIES = 3

#: GDAL's tolerance in choosing an overview level: a level within this of the target ratio is used.
LEVEL_TOLERANCE = 0.1
#: Source pixels read around a warped tile's footprint, per unit of the kernel's scale (GDAL's kernels
#: reach at most 3 pixels, lanczos, times the downsampling scale).
KERNEL_MARGIN = 4
#: Source pixels read on each side of a warped tile's footprint, as a fraction of its size. GDAL clips a
#: chunk's source window to the raster it warps from and widens it to whole rows when a chunk needs most
#: of them, which changes the kernel's scale: with this margin (or the level's own edge) around a tile,
#: GDAL finds the window it finds over the whole level (found by experiment, tested against WarpedVRT).
WIDTH_MARGIN = 0.08
#: (rows, cols) of the chunks a tile is warped in, on the target grid: the blocks of GDAL's warped VRT,
#: so that GDAL's per-chunk approximations (of the transformation and of the kernel's scale) are the same.
WARP_CHUNK = (128, 512)


def resampling_of(value: Resampling | str) -> Resampling:
    """``value`` as a ``rasterio.enums.Resampling`` member; raises naming the choices."""
    if isinstance(value, Resampling):
        return value
    if isinstance(value, str) and value in Resampling.__members__ and value not in ("gauss",):
        return Resampling[value]
    names = ", ".join(n for n in Resampling.__members__ if n != "gauss")
    raise InvalidArgumentError(f"resampling={value!r} is not a GDAL warp resampling; use one of {names}")


def choose_level(ratio: float, factors: tuple[float, ...]) -> int:
    """The index into ``factors`` (1.0 first, growing) that GDAL's ``-ovr AUTO`` picks for ``ratio``.

    >>> choose_level(4.0, (1.0, 2.0, 4.0, 8.0)), choose_level(3.0, (1.0, 2.0, 4.0)), choose_level(3.95, (1.0, 2.0, 4.0))
    (2, 1, 1)
    >>> choose_level(0.5, (1.0, 2.0)), choose_level(100.0, (1.0, 2.0, 4.0))
    (0, 2)
    """
    if ratio <= 1.0 or len(factors) == 1:
        return 0
    for i in range(len(factors) - 1):
        if factors[i] < ratio < factors[i + 1] or abs(factors[i] - ratio) < LEVEL_TOLERANCE:
            return i
    return len(factors) - 1


def target_grid(
    parent: TileSource, res: float | tuple[float, float], crs: CRS | str | int | None = None
) -> tuple[CRS | None, Affine, int, int]:
    """``(crs, transform, width, height)`` of a north-up grid of ``res`` (target-CRS units per pixel,
    one number or ``(x, y)``) covering ``parent``'s footprint, its upper-left corner on the footprint's."""
    pair = (res, res) if isinstance(res, int | float | np.number) else tuple(res)
    if len(pair) != 2 or not all(
        isinstance(v, int | float | np.number) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in pair
    ):
        raise InvalidArgumentError(
            f"res={res!r} must be a positive pixel size in the target CRS's units: one number or (x, y)"
        )
    rx, ry = float(pair[0]), float(pair[1])
    target = to_crs(crs) if crs is not None else parent.crs
    if crs is not None and parent.crs is None:
        raise CRSError(f"crs={crs!r} needs the source's CRS, but {parent!r} has none; give the source crs=...")
    left, bottom, right, top = footprint(parent, target)
    width = max(1, math.ceil((right - left) / rx - 1e-6))
    height = max(1, math.ceil((top - bottom) / ry - 1e-6))
    if width * height > 2**46:
        raise InvalidArgumentError(
            f"res={res!r} makes a grid of {width} x {height} pixels over {parent!r}; choose a coarser res"
        )
    return target, Affine(rx, 0.0, left, 0.0, -ry, top), width, height


def footprint(parent: TileSource, crs: CRS | None) -> Bounds:
    """``parent``'s bounds in ``crs`` (densified edges, as GDAL does)."""
    bounds = parent.bounds
    if crs is None or parent.crs is None or crs == parent.crs:
        return bounds
    try:
        left, bottom, right, top = rasterio.warp.transform_bounds(parent.crs, crs, *bounds, densify_pts=21)
    except Exception as err:  # rasterio's CRSError / GDAL's errors: ours names the CRSs
        err.__cause__ = err.__context__ = None
        raise CRSError(f"the footprint of {parent!r} cannot be carried to {crs.to_string()!r}: {err}") from None
    out = (float(left), float(bottom), float(right), float(top))
    if not all(math.isfinite(v) for v in out) or left >= right or bottom >= top:
        raise CRSError(
            f"the footprint of {parent!r} has no finite bounds in {crs.to_string()!r}; choose a CRS that covers it"
        )
    return out


def _carry(window: Window, transform: Affine, crs: CRS | None, to: Affine, to_crs: CRS | None) -> Window | None:
    """The pixel window of grid ``to`` (in ``to_crs``) covering ``window`` of grid ``transform`` (in
    ``crs``), not clipped; None where the CRSs cannot carry it (outside a projection's domain)."""
    bounds = window_bounds(window, transform)
    if crs is not None and to_crs is not None and crs != to_crs:
        try:
            bounds = rasterio.warp.transform_bounds(crs, to_crs, *bounds, densify_pts=21)
        except Exception:  # rasterio's CRSError or GDAL's: a window outside the CRS's domain
            return None
        if not all(math.isfinite(v) for v in bounds):
            return None
    return pixel_window(bounds, to)


def _reproject(source: np.ndarray, destination: np.ndarray, **options: Any) -> None:
    """``rasterio.warp.reproject``, tried again when it raises the stray warning above as an error: the
    warning comes from making its in-memory datasets (rasterio's warning filter there is not
    thread-safe), before anything is warped, so trying again is safe."""
    for attempt in range(REPROJECT_TRIES):
        try:
            rasterio.warp.reproject(source, destination, **options)
            return
        except NotGeoreferencedWarning:
            if attempt == REPROJECT_TRIES - 1:
                raise


class WarpedSource(TileSource):
    """``parent`` on the grid ``crs``, ``transform``, ``width`` x ``height``, warped tile by tile.

    See the module docstring for the level choice and what the pixels equal. Pickles as its recipe:
    the parent's recipe and the grid.

    Examples
    --------
    >>> import numpy as np, lazytiles as lt
    >>> from affine import Affine
    >>> src = lt.ArraySource(np.arange(64, dtype="uint8").reshape(1, 8, 8), transform=Affine(1, 0, 0, 0, -1, 8),
    ...                      crs="EPSG:32631")
    >>> half = src.at(res=2, resampling="nearest")
    >>> type(half).__name__, half.width, half.height, half.transform.a
    ('WarpedSource', 4, 4, 2.0)
    """

    def __init__(
        self,
        parent: TileSource,
        crs: CRS | str | int | None,
        transform: Affine,
        width: int,
        height: int,
        resampling: Resampling | str = "bilinear",
        *,
        tile_shape: int | tuple[int, int] = 512,
        cache: TileCache | None = None,
    ) -> None:
        if not isinstance(parent, TileSource):
            raise InvalidArgumentError(f"parent must be a lazytiles TileSource, got {type(parent).__name__}")
        if not isinstance(transform, Affine) or transform.b or transform.d or transform.a <= 0 or transform.e >= 0:
            raise InvalidArgumentError(
                f"transform={transform!r} must be a north-up affine.Affine (a > 0, e < 0, no rotation)"
            )
        for name, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise InvalidArgumentError(f"{name}={value!r} must be a positive number of pixels")
        self.parent = parent
        self.crs = to_crs(crs)
        if (self.crs is None) != (parent.crs is None):
            raise CRSError(f"crs={crs!r} and the parent's CRS {parent.crs!r} must both be given or both be None")
        self.transform = transform
        self.width, self.height = int(width), int(height)
        self.resampling = resampling_of(resampling)
        self.count, self.dtype, self.nodata = parent.count, np.dtype(parent.dtype), parent.nodata
        self.tile_shape = _tile_shape(tile_shape)
        self.remote, self.needs_area = parent.remote, parent.needs_area
        self._pool = FetchPool(min(4, os.cpu_count() or 1), "warp")
        self._level_lock = threading.Lock()
        self._level_source: TileSource | None = None
        self._needs: dict[tuple[int, int], list[TileKey]] = {}  # level tiles each warped tile was made from
        self._used_up: set[tuple[int, int]] = set()  # warped tiles released by a pass
        self._held: dict[TileKey, set[tuple[int, int]]] = {}  # level tiles read, and the warped tiles they make
        self._token = self._make_token()
        self._init_tiles(parent.cache if cache is None else cache)
        self.level_index = choose_level(self.ratio, parent.levels())

    def at(
        self,
        res: float | tuple[float, float],
        crs: CRS | str | int | None = None,
        resampling: str = "bilinear",
        *,
        tile_shape: int | tuple[int, int] = 512,
    ) -> TileSource:
        """Like :meth:`TileSource.at`, warped from the parent (not resampled twice); ``crs`` defaults to this
        source's, the grid covers this source's footprint."""
        target, transform, width, height = target_grid(self, res, self.crs if crs is None else crs)
        return WarpedSource(self.parent, target, transform, width, height, resampling, tile_shape=tile_shape)

    # -- the level read from -----------------------------------------------------------------------

    @property
    def ratio(self) -> float:
        """Target x resolution over the parent's x resolution in the target CRS (GDAL's warp ratio)."""
        parent = self.parent
        if self.crs is None or parent.crs is None or self.crs == parent.crs:
            return self.transform.a / abs(parent.transform.a)
        with warnings.catch_warnings():  # rasterio 1.4 multiplies Affines with *, which affine 3.1 frowns on
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            suggested, _, _ = rasterio.warp.calculate_default_transform(
                parent.crs, self.crs, parent.width, parent.height, *parent.bounds
            )
        return float(self.transform.a / suggested.a)

    @property
    def level_source(self) -> TileSource:
        """The source at the chosen level (:meth:`TileSource.level`), made on first use."""
        if self._level_source is None:
            with self._level_lock:
                if self._level_source is None:
                    self._level_source = self.parent.level(self.level_index)
        return self._level_source

    @property
    def token(self) -> str:
        return self._token

    def _make_token(self) -> str:  # once: a CRS's text costs PROJ a fraction of a millisecond
        crs = "none" if self.crs is None else self.crs.to_string()
        crs = crs if len(crs) <= 40 else "sha256:" + hashlib.sha256(crs.encode()).hexdigest()[:16]
        grid = f"{tuple(self.transform)[:6]!r}|{self.width}x{self.height}|tile={'x'.join(map(str, self.tile_shape))}"
        digest, rx, ry = hashlib.sha256(grid.encode()).hexdigest()[:16], self.transform.a, -self.transform.e
        return f"at:res={rx!r},{ry!r}|crs={crs}|{self.resampling.name}|grid={digest}|of={self.parent.token}"

    # -- warping one tile --------------------------------------------------------------------------

    def release(self, keys: Iterable[TileKey]) -> None:
        """Drop used-up warped tiles, and the level's tiles that no warped tile still to come needs."""
        keys = list(keys)
        super().release(keys)
        level = self.level_source
        with self._level_lock:
            self._used_up.update((k.row, k.col) for k in keys)
            for k in keys:
                for p in self._needs.pop((k.row, k.col), ()):
                    if p not in self._held:
                        self._held[p] = self._users(p, level)
            free = [p for p, users in self._held.items() if users <= self._used_up]
            for p in free:
                del self._held[p]
        if free:
            level.release(free)

    def _users(self, key: TileKey, level: TileSource) -> set[tuple[int, int]]:
        """Warped tiles that may be made from level tile ``key``: those under its footprint, and a tile
        and a chunk more on every side (more than the margins a warped tile reads)."""
        area = _carry(level.grid.tile_window(key.row, key.col), level.transform, level.crs, self.transform, self.crs)
        if area is None:
            return set()
        th, tw = self.tile_shape
        grow_r, grow_c = th + WARP_CHUNK[0], tw + WARP_CHUNK[1]
        grown = Window(area.col_off - grow_c, area.row_off - grow_r, area.width + 2 * grow_c, area.height + 2 * grow_r)
        rows, cols = self.grid.tiles_under(grown)
        return {(r, c) for r in rows for c in cols}

    def _source_window(self, tile: Window, level: TileSource) -> Window | None:
        """The level's pixels a warped ``tile`` needs (its footprint plus the kernel's reach), clipped
        to the level's raster; None when the tile lies outside it."""
        area = _carry(tile, self.transform, self.crs, level.transform, level.crs)
        if area is None:
            return None
        scale = max(1.0, area.width / tile.width, area.height / tile.height)
        kernel = math.ceil(KERNEL_MARGIN * scale) + 1
        pad_x = kernel + math.ceil(WIDTH_MARGIN * area.width)
        pad_y = kernel + math.ceil(WIDTH_MARGIN * area.height)
        c0, r0 = max(0, int(area.col_off) - pad_x), max(0, int(area.row_off) - pad_y)
        c1 = min(level.width, int(area.col_off + area.width) + pad_x)
        r1 = min(level.height, int(area.row_off + area.height) + pad_y)
        if c1 <= c0 or r1 <= r0:
            return None
        return Window(c0, r0, c1 - c0, r1 - r0)

    def _read_tile(self, key: TileKey) -> np.ndarray:
        tile = self.grid.tile_window(key.row, key.col)
        top, left = int(tile.row_off), int(tile.col_off)
        bottom, right = top + int(tile.height), left + int(tile.width)
        # GDAL's warped VRT warps its blocks (cut at the raster's edge) one by one: warping the same
        # chunks, from pixels where GDAL finds the same source window, makes the same approximations
        # (the transformation to 1/8 pixel, the kernel's scale), so the same pixels.
        ch, cw = WARP_CHUNK
        r_first, c_first = top // ch * ch, left // cw * cw
        r_last = min(self.height, -(-bottom // ch) * ch)
        c_last = min(self.width, -(-right // cw) * cw)
        span = Window(c_first, r_first, c_last - c_first, r_last - r_first)
        level = self.level_source
        area = self._source_window(span, level)
        if area is None:
            return np.full((self.count, bottom - top, right - left), self.fill_value, dtype=self.dtype)
        out = np.empty((self.count, bottom - top, right - left), dtype=self.dtype)  # the chunks cover it whole
        keys = level.tiles_under(area)
        with self._level_lock:
            self._needs[(key.row, key.col)] = keys
        level.warm(keys)  # the parent's tiles decode in parallel on its own threads
        pixels, _ = assemble(level, area, keys)
        src_transform = level.transform @ Affine.translation(area.col_off, area.row_off)
        with rasterio.env.env_ctx_if_needed():  # one GDAL environment per tile: each start searches the disk
            for r0 in range(r_first, bottom, ch):
                for c0 in range(c_first, right, cw):
                    h, w = min(ch, self.height - r0), min(cw, self.width - c0)
                    chunk = np.full((self.count, h, w), self.fill_value, dtype=self.dtype)
                    _reproject(
                        pixels,
                        chunk,
                        src_transform=src_transform,
                        src_crs=level.crs,
                        src_nodata=level.nodata,
                        dst_transform=self.transform @ Affine.translation(c0, r0),
                        dst_crs=self.crs,
                        dst_nodata=self.nodata,
                        resampling=self.resampling,
                        SRC_FILL_RATIO_HEURISTICS="NO",  # one chunk, as the VRT warps it: never split
                    )
                    ra, rb, ca, cb = max(r0, top), min(r0 + h, bottom), max(c0, left), min(c0 + w, right)
                    out[:, ra - top : rb - top, ca - left : cb - left] = chunk[:, ra - r0 : rb - r0, ca - c0 : cb - c0]
        return out

    def _overview(self, area: Window, max_size: int) -> tuple[np.ndarray, Affine]:
        """The parent's overview of the pixels under ``area``, warped onto ``area`` shrunk to ``max_size``."""
        out_h, out_w = overview_shape(area, max_size)
        out = np.full((self.count, out_h, out_w), self.fill_value, dtype=self.dtype)
        to_source = _to_source(area, out)
        parent = self.parent
        under = self._source_window(area, parent)
        if under is not None:
            pixels, to_parent = parent.overview(under, max_size=2 * max(out_h, out_w))
            _reproject(
                pixels,
                out,
                src_transform=parent.transform @ to_parent,
                src_crs=parent.crs,
                src_nodata=parent.nodata,
                dst_transform=self.transform @ to_source,
                dst_crs=self.crs,
                dst_nodata=self.nodata,
                resampling=self.resampling,
            )
        return out, to_source

    def data_footprint(self) -> shapely.Geometry | None:
        """The parent's :meth:`~lazytiles.TileSource.data_footprint` (its whole raster if it cannot tell)
        on this grid, grown by the kernel's reach (scaled when upsampling) and a pixel; None if the CRSs cannot."""
        parent, t, back = self.parent, self.parent.transform, ~self.transform
        inside = parent.data_footprint()
        inside = shapely.box(0, 0, parent.width, parent.height) if inside is None else inside
        geo = shapely.affinity.affine_transform(inside, [t.a, t.b, t.d, t.e, t.c, t.f])
        if not geo.is_empty and self.crs is not None and parent.crs is not None and self.crs != parent.crs:
            dense_geo = shapely.segmentize(geo, max(parent.width, parent.height) * abs(t.a) / 64)
            dense = shapely.geometry.mapping(dense_geo)
            try:
                carried = shapely.geometry.shape(rasterio.warp.transform_geom(parent.crs, self.crs, dense))
                there = shapely.get_coordinates(carried)
                xs, ys = rasterio.warp.transform(self.crs, parent.crs, there[:, 0], there[:, 1])
            except Exception:  # rasterio's or GDAL's errors: a footprint outside the target CRS's domain
                return None
            start = shapely.get_coordinates(dense_geo)  # outside a CRS's domain an outline folds or does not come back
            if not carried.is_valid or start.shape != there.shape or not np.allclose((xs, ys), start.T, atol=abs(t.a)):
                return None
            geo = carried
        pixels = shapely.affinity.affine_transform(geo, [back.a, back.b, back.d, back.e, back.c, back.f])
        return shapely.buffer(pixels, (KERNEL_MARGIN + 1) * max(1.0, 1.0 / self.ratio) + 1, join_style="mitre")

    # -- reporting and pickling --------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(warped_from=self.parent.token, resampling=self.resampling.name, level=self.level_index)
        return info

    def __reduce__(self) -> tuple[Any, ...]:  # the recipe: the parent's recipe and the grid
        grid = (self.crs, self.transform, self.width, self.height, self.resampling.name)
        return (functools.partial(WarpedSource, tile_shape=self.tile_shape, cache=self.cache), (self.parent, *grid))

    def __repr__(self) -> str:
        crs = None if self.crs is None else self.crs.to_string()
        return (
            f"WarpedSource({self.parent!r}, crs={crs!r}, res={(self.transform.a, -self.transform.e)!r}, "
            f"{self.width}x{self.height} px, resampling={self.resampling.name!r})"
        )


__all__ = ["WarpedSource", "choose_level", "footprint", "resampling_of", "target_grid"]
