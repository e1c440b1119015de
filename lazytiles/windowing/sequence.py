"""Window, WindowSequence and ``lt.windows``: a tiled image as a lazy list of sliding windows.

The display hooks (``_repr_png_``, ``_repr_html_``, ``preview``) import :mod:`lazytiles.display` when called.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import rasterio.warp
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window as PixelWindow

from ..assembly import ReadInfo, assemble
from ..cache import TileKey
from ..errors import BoundsError, InvalidArgumentError, TileFetchError
from ..grid import Bounds, as_bounds, pixel_window, to_crs, window_bounds, window_transform
from ..sources import open as open_source
from ..sources.base import TileSource
from .index import Positions, select
from .plan import EDGES, AxisPlan, Edge, WindowPlan, intersect, plan_axis, size_and_stride, strip_width
from .readahead import ReadAhead
from .regions import filter_by_callable, filter_by_geometry, keep_with_data, region_in_pixels, to_geometry

Region: TypeAlias = shapely.Geometry | Callable[[Bounds], bool]


@dataclass(frozen=True, eq=False)
class Window:
    """One window of a source: its pixels and where they are.

    ``data`` is ``(bands, rows, cols)``; ``np.asarray(w)`` gives it too. ``window`` is the pixel
    area in the source's grid, ``transform`` the affine transform of its upper-left corner, ``index``
    its position in the sequence ``lt.windows`` made, ``tiles`` the tile keys it was assembled from.
    """

    index: int
    window: PixelWindow
    transform: Affine
    crs: CRS | None
    data: np.ndarray = field(repr=False)
    tiles: tuple[TileKey, ...] = field(default=(), repr=False)
    read_info: ReadInfo | None = field(default=None, repr=False, compare=False)
    nodata: float | None = field(default=None, repr=False, compare=False)

    @property
    def bounds(self) -> Bounds:
        """(left, bottom, right, top) in ``crs``."""
        return window_bounds(PixelWindow(0, 0, self.window.width, self.window.height), self.transform)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of ``data``: (bands, rows, cols)."""
        return tuple(self.data.shape)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if dtype is not None and np.dtype(dtype) != self.data.dtype:
            return self.data.astype(dtype)
        return self.data.copy() if copy else self.data

    def _repr_png_(self) -> bytes:
        from ..display.jupyter import window_png

        return window_png(self)

    def _repr_html_(self) -> str:
        from ..display.jupyter import window_html

        return window_html(self)


def windows(
    src: TileSource | str | os.PathLike[str],
    size: int | tuple[int, int],
    *,
    overlap: float = 0.0,
    stride: int | tuple[int, int] | None = None,
    bounds: Bounds | None = None,
    bounds_crs: CRS | str | int | None = None,
    region: Region | None = None,
    region_crs: CRS | str | int | None = None,
    edge: Edge = "shift",
    readahead: int | None = None,
    skip_empty: bool = False,
) -> WindowSequence:
    """Cut a source into sliding windows, lazily; no pixels are read here.

    Parameters
    ----------
    src
        A source (``lt.open(...)``, ``lt.ArraySource(...)``), or a path that ``lt.open`` opens.
    size
        Window size in pixels: an int, or (rows, cols).
    overlap
        Fraction of ``size`` shared by neighbouring windows, in [0, 1): 0.25 with size 512 steps 384 px.
    stride
        Step between windows in pixels (int or (rows, cols)); instead of ``overlap``.
    bounds
        Area of interest (left, bottom, right, top) in ``bounds_crs`` (default: the source's CRS). It
        becomes pixels by rounding outward to whole pixels, then is clipped to the raster.
    bounds_crs
        CRS of ``bounds`` and the default CRS of ``region``, e.g. ``"EPSG:4326"``.
    region
        Keep only windows that overlap it: a shapely geometry (or GeoJSON mapping) in ``region_crs``,
        or a callable taking a window's (left, bottom, right, top) in the source CRS and returning
        True to keep it. A geometry without ``bounds`` also sets the area of interest to its bounds.
    region_crs
        CRS of a ``region`` geometry (default: ``bounds_crs``, else the source's CRS).
    edge
        What happens where windows do not divide the area evenly. ``"shift"`` (default): the last row
        and column move inward, so every window is full size and inside the raster. ``"pad"``: windows
        run past the edge; pixels outside the raster are nodata. ``"drop"``: only complete windows.
    readahead
        Windows ahead whose tiles iterating, or indexing that moves forward, fetches in the background
        on the source's fetch threads, within loads of an eighth of the tile cache (default: one row
        of windows, 0 for an in-memory array; see :mod:`lazytiles.windowing.readahead`). 0 turns it off: each
        window is read on the consuming thread, except that a remote source still fetches a window's
        tiles together.
    skip_empty
        Leave out windows the source knows hold no data, from its metadata (``src.data_footprint()``):
        outside every scene of a mosaic, masked out per a raster's coarsest overview (grown by one
        overview pixel), over no tile file of a local tile layer. Costs one read of that overview (or
        one listing of the tile files) at most; a window in doubt stays.

    Returns
    -------
    WindowSequence
        A lazy, random-access sequence of :class:`Window`. Its order is cache-aware (see
        :mod:`lazytiles.windowing.plan`): row-major in strips as wide as the tile cache allows.

    Raises
    ------
    InvalidArgumentError
        A bad size, overlap, stride, edge, bounds or region (also a ``ValueError``).
    BoundsError
        The bounds or region miss the raster, or a tile service was given neither.

    Examples
    --------
    >>> import numpy as np, lazytiles as lt
    >>> src = lt.ArraySource(np.zeros((3, 1024, 1024), np.uint8), tile_shape=256)
    >>> wins = lt.windows(src, size=256)     # plans 16 windows; reads nothing
    >>> len(wins)
    16
    >>> wins[5].data.shape                   # reads the tiles under window 5, no others
    (3, 256, 256)
    """
    if isinstance(src, str | os.PathLike):
        src = open_source(src)
    if not isinstance(src, TileSource):
        raise InvalidArgumentError(
            f"src must be a lazytiles source (lt.open(path), lt.ArraySource(array)) or a path, got {type(src).__name__}"
        )
    size_hw, stride_hw = size_and_stride(size, overlap, stride)
    if edge not in EDGES:
        raise InvalidArgumentError(f"edge must be one of {', '.join(map(repr, EDGES))}, got {edge!r}")
    if readahead is not None and (isinstance(readahead, bool) or not isinstance(readahead, int) or readahead < 0):
        raise InvalidArgumentError(f"readahead must be a number of windows >= 0 (None: the default), got {readahead!r}")
    if src.needs_area and bounds is None and region is None:
        raise BoundsError(
            f"{src!r} covers the whole world at its zoom; give bounds=(west, south, east, north) with "
            "bounds_crs='EPSG:4326', or region=..., to choose the area to cut into windows"
        )

    b_crs = to_crs(bounds_crs, "bounds_crs")
    r_crs = to_crs(region_crs, "region_crs") or b_crs
    aoi = (0, 0, src.height, src.width)
    raster = aoi
    if bounds is not None:
        bounds = as_bounds(bounds)
        aoi_bounds = bounds
        if b_crs is not None and b_crs != src.crs:
            crs = src._require_crs(f"bounds_crs={bounds_crs!r}")
            aoi_bounds = rasterio.warp.transform_bounds(b_crs, crs, *bounds, densify_pts=21)
        w = pixel_window(aoi_bounds, src.transform)
        hit = intersect(aoi, (int(w.row_off), int(w.col_off), int(w.height), int(w.width)))
        if hit is None:
            raise BoundsError(
                f"bounds={bounds!r}{'' if b_crs is None else f' ({b_crs.to_string()})'} do not intersect "
                f"the raster, whose bounds are {src.bounds!r} in {src.crs}; check the order "
                "(left, bottom, right, top) and bounds_crs"
            )
        aoi = hit

    geometry = None
    keep_fn: Callable[[Bounds], bool] | None = None
    if region is not None:
        geometry = to_geometry(region)
        if geometry is None:
            if not callable(region):
                raise InvalidArgumentError(
                    f"region must be a shapely geometry, a GeoJSON geometry mapping, or a callable on a "
                    f"window's bounds, got {type(region).__name__}"
                )
            keep_fn = region
        else:
            if r_crs is not None and r_crs != src.crs:
                src._require_crs(f"region_crs={region_crs!r}")
            geometry = region_in_pixels(geometry, r_crs, src)
            c0, r0, c1, r1 = geometry.bounds
            pw = (math.floor(r0), math.floor(c0), math.ceil(r1) - math.floor(r0), math.ceil(c1) - math.floor(c0))
            hit = intersect(aoi, (pw[0], pw[1], max(pw[2], 1), max(pw[3], 1)))
            if hit is None:
                raise BoundsError(
                    f"region (bounds {geometry.bounds} in pixels) does not intersect the area to process "
                    f"(rows {aoi[0]}..{aoi[0] + aoi[2]}, cols {aoi[1]}..{aoi[1] + aoi[3]}); check region_crs"
                )
            if bounds is None:  # explicit bounds keep their grid; the region only filters it
                aoi = hit

    rows = plan_axis(aoi[0], aoi[2], raster[2], size_hw[0], stride_hw[0], edge, "height")
    cols = plan_axis(aoi[1], aoi[3], raster[3], size_hw[1], stride_hw[1], edge, "width")
    tile_bytes = src.count * src.tile_shape[0] * src.tile_shape[1] * np.dtype(src.dtype).itemsize
    strip = strip_width(rows, cols, size_hw, src.tile_shape, (src.height, src.width), tile_bytes, src.cache.max_bytes)
    plan = WindowPlan(rows, cols, size_hw, strip)

    keep = None
    if geometry is not None:
        keep = filter_by_geometry(plan, geometry)
    elif keep_fn is not None:
        keep = filter_by_callable(plan, keep_fn, src.transform)
    if keep is not None and len(keep) == 0:
        raise BoundsError("no window overlaps the region; check the region and region_crs")
    if skip_empty:
        keep = keep_with_data(plan, keep, src.data_footprint())
    return WindowSequence(src, plan, keep, range(len(plan) if keep is None else len(keep)), readahead)


class WindowSequence(Sequence[Window]):
    """The windows of a source, as a lazy list. Made by :func:`lazytiles.windows`.

    ``len()`` costs nothing; ``wins[i]`` reads just the tiles under window ``i`` and returns a
    :class:`Window`; slices and integer arrays give lazy sub-sequences whose windows keep their
    original ``index``. It is a map-style ``torch.utils.data.Dataset`` (use ``collate_fn=lt.collate``)
    and pickles as a recipe: the source's path and the plan, never pixels or handles.
    """

    def __init__(
        self, src: TileSource, plan: WindowPlan, keep: np.ndarray | None, positions: Positions, readahead: int | None
    ) -> None:
        self._src = src
        self._plan = plan
        self._keep = keep  # candidate ids kept by a region filter, or None for all
        self._positions = positions
        self._readahead = readahead  # as given to lt.windows: None for the source's default
        self._ahead = ReadAhead(src, plan, keep, positions, readahead)

    # -- what it is --------------------------------------------------------------------------------

    @property
    def source(self) -> TileSource:
        """The source the windows are read from."""
        return self._src

    @property
    def plan(self) -> WindowPlan:
        """The window grid and its order (see :mod:`lazytiles.windowing.plan`)."""
        return self._plan

    @property
    def size(self) -> tuple[int, int]:
        """(rows, cols) of every window."""
        return self._plan.size

    @property
    def stride(self) -> tuple[int, int]:
        """(rows, cols) step between neighbouring windows."""
        return self._plan.rows.stride, self._plan.cols.stride

    @property
    def readahead(self) -> int:
        """Windows ahead whose tiles are fetched in the background (see :mod:`lazytiles.windowing.readahead`)."""
        return self._ahead.depth

    @property
    def indices(self) -> Positions:
        """The ``index`` of each window in this sequence (positions in the sequence ``lt.windows`` made)."""
        return self._positions

    def __len__(self) -> int:
        return len(self._positions)

    def _candidate(self, index: int) -> int:
        return index if self._keep is None else int(self._keep[index])

    # -- geometry without I/O ----------------------------------------------------------------------

    def pixel_window(self, i: int) -> PixelWindow:
        """The pixel area of item ``i``, without reading it."""
        index = select(self._positions, i)
        return self._plan.window(self._candidate(index))

    def pixel_windows(self) -> np.ndarray:
        """``(len, 4)`` int64 array of (col_off, row_off, width, height) of every item; no I/O."""
        pos = np.asarray(self._positions, dtype=np.int64)
        cand = pos if self._keep is None else self._keep[pos]
        r, c = self._plan.offsets(cand)
        h, w = self._plan.size
        return np.stack([c, r, np.full_like(c, w), np.full_like(r, h)], axis=1)

    def tiles(self, i: int) -> list[TileKey]:
        """Tile keys under item ``i``; no I/O."""
        return self._src.tiles_under(self.pixel_window(i))

    @property
    def area(self) -> PixelWindow:
        """The smallest pixel rectangle holding every window of this sequence (or view of it).

        Windows of ``edge='pad'`` may reach past the raster. An empty view covers nothing: its width and
        height are 0. O(1) for a whole grid; a view or a region's windows cost one pass over their offsets.
        """
        whole = self._keep is None and isinstance(self._positions, range)
        if whole and self._positions == range(len(self._plan)):
            return self._grid_area()
        px = self.pixel_windows()
        if not len(px):
            return PixelWindow(self._plan.cols.offset(0), self._plan.rows.offset(0), 0, 0)
        c0, r0 = px[:, 0].min(), px[:, 1].min()
        c1, r1 = (px[:, 0] + px[:, 2]).max(), (px[:, 1] + px[:, 3]).max()
        return PixelWindow(int(c0), int(r0), int(c1 - c0), int(r1 - r0))

    def _grid_area(self) -> PixelWindow:
        """The area of the whole window grid, for every view of it: where a window's edge is inner."""
        rows, cols = self._plan.rows, self._plan.cols
        r0, c0 = rows.offset(0), cols.offset(0)
        r1 = rows.offset(len(rows) - 1) + self._plan.size[0]
        c1 = cols.offset(len(cols) - 1) + self._plan.size[1]
        return PixelWindow(c0, r0, c1 - c0, r1 - r0)

    @property
    def bounds(self) -> Bounds:
        """(left, bottom, right, top) of :attr:`area` in the source's CRS."""
        return window_bounds(self.area, self._src.transform)

    # -- reading -----------------------------------------------------------------------------------

    def _read(self, index: int, walked: bool = False) -> Window:
        win = self._plan.window(self._candidate(index))
        keys = self._src.tiles_under(win)
        self._ahead.window(keys, walked)
        try:
            data, info = assemble(self._src, win, keys)
        except TileFetchError as err:
            bounds = window_bounds(win, self._src.transform)
            raise TileFetchError(f"window {index} {win!r} (bounds {bounds}) could not be read: {err}") from err
        return Window(
            index=index,
            window=win,
            transform=window_transform(win, self._src.transform),
            crs=self._src.crs,
            data=data,
            tiles=info.tiles,
            read_info=info,
            nodata=self._src.nodata,
        )

    def __getitem__(self, key: Any) -> Any:
        picked = select(self._positions, key)
        if isinstance(picked, int):
            self._ahead.indexed(picked)  # indexing forward reads ahead, and releases behind, as iterating does
            try:
                return self._read(picked)
            finally:
                self._ahead.done(picked)
        return WindowSequence(self._src, self._plan, self._keep, picked, self._readahead)

    def __iter__(self) -> Iterator[Window]:
        """The windows in order. A pass in the plan's order (the root, slices with a positive step,
        region filters) frees each tile from the cache right after the last window that uses it, so
        it holds about one row of tiles, not the cache's ``max_bytes``; the tiles of the next
        :attr:`readahead` windows load in the background meanwhile."""
        yield from self._ahead.walk(self._positions, lambda i: self._read(i, True))

    def outcomes(
        self, *, tolerate: tuple[type[BaseException], ...] = ()
    ) -> Iterator[tuple[int, Window | None, BaseException | None]]:
        """Like iterating, as ``(index, window, None)``; a window raising one of ``tolerate`` gives
        ``(index, None, error)`` and the pass goes on (other errors end it)."""

        def read(index: int) -> tuple[int, Window | None, BaseException | None]:
            try:
                return index, self._read(index, True), None
            except tolerate as err:
                return index, None, err

        return self._ahead.walk(self._positions, read)

    # -- pickling and display ----------------------------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        keep = None
        if self._keep is not None:  # a region's mask packs to a few bytes per run of windows
            mask = np.zeros(len(self._plan), dtype=bool)
            mask[self._keep] = True
            keep = zlib.compress(np.packbits(mask).tobytes())
        positions: Positions | bytes = self._positions
        if isinstance(positions, np.ndarray):
            positions = zlib.compress(positions.astype(np.int64).tobytes())
        return (_restore_sequence, (self._src, self._plan, keep, positions, self._readahead))

    def __repr__(self) -> str:
        h, w = self._plan.size
        sh, sw = self.stride
        return f"<WindowSequence: {len(self)} windows of {h}x{w} px, stride {sh}x{sw} px, over {self._src!r}>"

    def _repr_html_(self) -> str:
        from ..display.jupyter import sequence_html

        return sequence_html(self)

    def preview(self, max_size: int = 1024, *, grid: bool = True) -> Any:
        """An overview image (PIL) of the region with the window grid drawn; see :mod:`lazytiles.display.jupyter`."""
        from ..display.jupyter import sequence_preview

        return sequence_preview(self, max_size=max_size, grid=grid)


def _restore_sequence(
    src: TileSource, plan: WindowPlan, keep: bytes | None, positions: Any, readahead: int | None
) -> WindowSequence:
    keep_ids = None
    if keep is not None:
        bits = np.frombuffer(zlib.decompress(keep), dtype=np.uint8)
        keep_ids = np.flatnonzero(np.unpackbits(bits, count=len(plan)))
    if isinstance(positions, bytes):
        positions = np.frombuffer(zlib.decompress(positions), dtype=np.int64).copy()
    return WindowSequence(src, plan, keep_ids, positions, readahead)


def collate(batch: Sequence[Window]) -> tuple[Any, Any]:
    """Stack windows for ``torch.utils.data.DataLoader(wins, collate_fn=lt.collate)``.

    Returns ``(images, indices)``: a ``(N, bands, rows, cols)`` tensor of the source's dtype (no
    conversion; do it on the device) and a ``(N,)`` int64 tensor of window indices.
    """
    import torch

    images = torch.from_numpy(np.stack([np.asarray(w.data) for w in batch]))
    return images, torch.tensor([w.index for w in batch], dtype=torch.int64)


__all__ = ["AxisPlan", "Window", "WindowSequence", "collate", "windows"]
