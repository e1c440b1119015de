"""Many scenes as one source: :func:`lazytiles.mosaic` and :class:`MosaicSource`.

The mosaic has one pixel grid: the first scene's CRS (or ``crs=``), the finest resolution of the
scenes in that CRS (of all scenes when none is; or ``res=``), over the union of their footprints,
aligned to the pixels of the first scene at that resolution. A scene already on that grid (same CRS
and pixel size, whole-pixel offset) is read as it is; any other is first put on the grid by a warp
(:class:`~lazytiles.sources.warped.WarpedSource`, from the scene's coarsest sufficient overview).

A mosaic tile asks a spatial index (a shapely ``STRtree`` of the footprints) which scenes lie under
it, and reads only those, in the order ``order`` gives, through the shared tile cache: each pixel comes
from the first scene in that order that has data there. A scene's nodata, and pixels outside its
footprint, let the next scene show through; a pixel is nodata when every band is. A scene tile is
released from the cache once every mosaic tile over it has been made, so a pass over the mosaic holds
about a row of tiles; the mosaic's own fetch threads make the tiles of the next windows meanwhile.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import rasterio.warp
import shapely
import shapely.affinity
import shapely.geometry
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from ..cache import TileCache, TileKey
from ..errors import CRSError, InvalidArgumentError, is_real
from ..grid import PIXEL_SNAP, snap, to_crs
from .base import FetchPool, TileSource, _to_source, overview_shape
from .warped import WarpedSource, resampling_of

#: Scenes a mosaic's token names (its digest covers them all).
NAMED = 100

#: What ``order`` may be: ``"first"``, ``"last"``, one sort key per scene, or a key function of a scene.
Order = str | Sequence[float] | Callable[[Any], Any]


def mosaic(
    sources_or_paths: Sequence[TileSource | str | os.PathLike[str]],
    crs: CRS | str | int | None = None,
    res: float | tuple[float, float] | None = None,
    order: Order = "first",
    *,
    resampling: str = "nearest",
    tile_shape: int | tuple[int, int] = 512,
    cache: TileCache | None = None,
) -> MosaicSource:
    """Several scenes as one source; reads metadata only.

    Parameters
    ----------
    sources_or_paths
        Sources (``lt.open(...)``) or paths ``lt.open`` opens; all with the same band count and dtype.
    crs
        The mosaic's CRS (default: the first scene's).
    res
        Pixel size in ``crs`` units, one number or ``(x, y)`` (default: the finest of the scenes
        in ``crs``; of all scenes when none is in it).
    order
        Which scene's pixels win where scenes overlap: ``"first"`` (default: the earliest in the list),
        ``"last"``, a list of one number per scene (the smallest wins, e.g. cloud cover), or a function
        of a scene giving that number. Nodata lets the next scene in this order show through.
    resampling
        How scenes off the mosaic's grid are warped onto it (a ``rasterio.enums.Resampling`` name).
    tile_shape
        Tile size of the mosaic's grid (default 512).
    cache
        The :class:`~lazytiles.TileCache` for the mosaic's tiles and the scenes opened from paths.

    Examples
    --------
    >>> import numpy as np, lazytiles as lt
    >>> from affine import Affine
    >>> left = lt.ArraySource(np.full((1, 4, 4), 1, np.uint8), transform=Affine(1, 0, 0, 0, -1, 4), crs=3857)
    >>> right = lt.ArraySource(np.full((1, 4, 4), 2, np.uint8), transform=Affine(1, 0, 2, 0, -1, 4), crs=3857)
    >>> both = lt.mosaic([left, right])
    >>> both.width, both.height
    (6, 4)
    >>> both.read(Window(0, 0, 6, 1))
    array([[[1, 1, 1, 1, 2, 2]]], dtype=uint8)
    """
    from . import open as open_source

    if isinstance(sources_or_paths, str | os.PathLike | TileSource) or not isinstance(sources_or_paths, Sequence):
        raise InvalidArgumentError(
            f"sources_or_paths must be a list of sources or paths, got {type(sources_or_paths).__name__}; "
            "for one scene use lt.open(path)"
        )
    scenes = [s if isinstance(s, TileSource) else open_source(s, cache=cache) for s in sources_or_paths]
    return MosaicSource(
        scenes, crs=crs, res=res, order=order, resampling=resampling, tile_shape=tile_shape, cache=cache
    )


def priority(scenes: Sequence[Any], order: Order) -> list[int]:
    """Scene indices, the one whose pixels win first; ``scenes`` are what a key function is given."""
    n = len(scenes)
    if isinstance(order, str):
        if order not in ("first", "last"):
            raise InvalidArgumentError(
                f"order={order!r} is not 'first', 'last', a list of one number per scene or a key function"
            )
        return list(range(n)) if order == "first" else list(range(n))[::-1]
    keys = [order(s) for s in scenes] if callable(order) else list(order)
    if len(keys) != n or not all(is_real(k) and not math.isnan(k) for k in keys):
        raise InvalidArgumentError(f"order must give one number per scene ({n}), the smallest first, got {keys!r:.200}")
    return sorted(range(n), key=lambda i: keys[i])


class MosaicSource(TileSource):
    """Scenes with different footprints, resolutions and CRSs as one source. Made by :func:`mosaic`.

    ``scenes`` lists the scenes as given; ``labels`` names them (paths, or STAC item ids). Pickles as
    its recipe: the scenes' recipes, the grid and the order.
    """

    def __init__(
        self,
        scenes: Sequence[TileSource],
        *,
        crs: CRS | str | int | None = None,
        res: float | tuple[float, float] | None = None,
        order: Order = "first",
        resampling: str = "nearest",
        tile_shape: int | tuple[int, int] = 512,
        cache: TileCache | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        from .array import _tile_shape

        scenes = list(scenes)
        if not scenes or not all(isinstance(s, TileSource) for s in scenes):
            raise InvalidArgumentError("a mosaic needs at least one scene, each a lazytiles source or a path")
        first = scenes[0]
        for i, s in enumerate(scenes):
            if s.count != first.count or np.dtype(s.dtype) != np.dtype(first.dtype):
                raise InvalidArgumentError(
                    f"scene {i} ({s!r}) has {s.count} {np.dtype(s.dtype).name} bands but scene 0 has "
                    f"{first.count} {np.dtype(first.dtype).name}; open the scenes with the same bands=..."
                )
        self.scenes = scenes
        self.labels = [str(v) for v in labels] if labels is not None else [_label(s) for s in scenes]
        self.priority = priority(scenes, order)
        self.resampling = resampling_of(resampling).name
        self.crs = to_crs(crs) or first.crs
        if self.crs is None and any(s.crs is not None for s in scenes):
            raise CRSError(f"scene 0 ({first!r}) has no CRS, so the mosaic has none; pass crs=...")
        self.count, self.dtype, self.nodata = first.count, np.dtype(first.dtype), first.nodata
        self.tile_shape = _tile_shape(tile_shape)
        rx, ry = _resolution(res, scenes, self.crs)
        outlines = [_outline(s, self.crs) for s in scenes]
        self.transform, self.width, self.height = _grid(scenes, outlines, self.crs, rx, ry)
        self._res = (rx, ry)
        self._placed = [self._place(s) for s in scenes]
        inverse = ~self.transform
        coefficients = [inverse.a, inverse.b, inverse.d, inverse.e, inverse.c, inverse.f]
        self.footprints = [shapely.affinity.affine_transform(o, coefficients) for o in outlines]
        self._index = shapely.STRtree(self.footprints)
        self._rank = {scene: rank for rank, scene in enumerate(self.priority)}
        self._placed_by_token = {p.token: i for i, (p, _, _) in enumerate(self._placed)}
        self._uses: dict[TileKey, int] = {}  # scene tiles read: how many mosaic tiles still need each
        self._uses_lock = threading.Lock()
        self.remote = any(s.remote for s in scenes)
        self.needs_area = any(s.needs_area for s in scenes)  # a tile service's world
        self._pool = FetchPool(min(4, os.cpu_count() or 1), "mosaic")
        recipe = "\n".join(
            [json_grid(self.crs, self.transform, self.width, self.height), self.resampling, repr(self.tile_shape)]
            + [f"{self.labels[i]}|{scenes[i].token}" for i in self.priority]
        )
        digest = hashlib.sha256(recipe.encode()).hexdigest()[:16]
        named = [self.labels[i] for i in self.priority[:NAMED]]
        more = f",+{len(scenes) - NAMED} more" if len(scenes) > NAMED else ""
        self._token = f"mosaic:{digest}|{','.join(named)}{more}"
        self._init_tiles(cache)

    def _place(self, scene: TileSource) -> tuple[TileSource, int, int]:
        """The scene on the mosaic's grid, and its (row, col) offset there."""
        t, m = scene.transform, self.transform
        if scene.crs == self.crs and t.b == t.d == 0 and _close(t.a, m.a) and _close(t.e, m.e):
            col, row = snap((t.c - m.c) / m.a), snap((t.f - m.f) / m.e)
            if col == int(col) and row == int(row):
                return scene, int(row), int(col)
        outline = _outline(scene, self.crs)
        inverse = ~self.transform
        x0, y0, x1, y1 = outline.bounds
        cols, rows = zip(*(inverse @ (x, y) for x in (x0, x1) for y in (y0, y1)))
        c0, r0 = math.floor(snap(min(cols))), math.floor(snap(min(rows)))
        c1, r1 = math.ceil(snap(max(cols))), math.ceil(snap(max(rows)))
        transform = self.transform @ Affine.translation(c0, r0)
        warped = WarpedSource(scene, self.crs, transform, c1 - c0, r1 - r0, self.resampling, tile_shape=self.tile_shape)
        return warped, r0, c0

    @property
    def token(self) -> str:
        return self._token

    def scenes_under(self, window: Window) -> list[int]:
        """Indices of the scenes with pixels in ``window`` (mosaic pixels), the winning one first; no I/O."""
        c0, r0 = float(window.col_off), float(window.row_off)
        box = shapely.box(c0, r0, c0 + float(window.width), r0 + float(window.height))
        hits = self._index.query(box, predicate="intersects")
        inside = [int(i) for i in hits if not shapely.touches(self.footprints[int(i)], box)]
        return sorted(inside, key=self._rank.__getitem__)

    def _read_tile(self, key: TileKey) -> np.ndarray:
        win = self.grid.tile_window(key.row, key.col)
        r0, c0, h, w = int(win.row_off), int(win.col_off), int(win.height), int(win.width)
        out = np.full((self.count, h, w), self.fill_value, dtype=self.dtype)
        empty = np.ones((h, w), dtype=bool)
        read = 0
        for i in self.scenes_under(win):
            scene, dr, dc = self._placed[i]
            ra, rb = max(r0, dr), min(r0 + h, dr + scene.height)
            ca, cb = max(c0, dc), min(c0 + w, dc + scene.width)
            if ra >= rb or ca >= cb:
                continue
            area = Window(ca - dc, ra - dr, cb - ca, rb - ra)
            hole = empty[ra - r0 : rb - r0, ca - c0 : cb - c0]
            if hole.any():
                data = scene.read(area)
                read += 1
                centres = np.arange(ra, rb) + 0.5, np.arange(ca, cb) + 0.5
                take = hole & self._has_data(i, data, *centres)
                np.copyto(out[:, ra - r0 : rb - r0, ca - c0 : cb - c0], data, where=take)
                hole &= ~take
            self._used(scene, scene.tiles_under(area))
        self._count("scene_reads", read)
        return out

    def _used(self, scene: TileSource, keys: list[TileKey]) -> None:
        """A mosaic tile has been made from the scene tiles ``keys``: release those that no other mosaic
        tile needs, so a pass holds about a row of tiles, not every scene tile it read."""
        done = []
        with self._uses_lock:
            for k in keys:
                left = self._uses.get(k)
                if left is None:  # first use: how many mosaic tiles lie over this scene tile
                    _, dr, dc = self._placed[self._placed_by_token[k.source]]
                    t = scene.grid.tile_window(k.row, k.col)
                    rows, cols = self.grid.tiles_under(Window(t.col_off + dc, t.row_off + dr, t.width, t.height))
                    left = len(rows) * len(cols)
                if left <= 1:
                    self._uses.pop(k, None)
                    done.append(k)
                else:
                    self._uses[k] = left - 1
        if done:
            scene.release(done)

    def _has_data(self, i: int, data: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Where scene ``i``'s pixels ``data``, centred on mosaic rows ``ys`` and columns ``xs``, hold
        data: any band not nodata and, for a warped scene without nodata, inside its footprint."""
        nodata = self.scenes[i].nodata
        scene = self._placed[i][0]
        valid: np.ndarray
        if nodata is not None:
            valid = ~(np.isnan(data) if math.isnan(nodata) else data == nodata).all(axis=0)
        elif scene is self.scenes[i]:
            valid = np.ones(data.shape[1:], dtype=bool)
        else:
            valid = shapely.contains_xy(self.footprints[i], xs[None, :], ys[:, None])
        return valid

    def _overview(self, area: Window, max_size: int) -> tuple[np.ndarray, Affine]:
        """The scenes' own overviews (a raster's overview levels...) under ``area``, sampled at the
        centres of the shrunk pixels, the winning scene first: no tile of the mosaic is made."""
        oh, ow = overview_shape(area, max_size)
        out = np.full((self.count, oh, ow), self.fill_value, dtype=self.dtype)
        empty = np.ones((oh, ow), dtype=bool)
        fy, fx = float(area.height) / oh, float(area.width) / ow
        ys = float(area.row_off) + (np.arange(oh) + 0.5) * fy  # centres of the shrunk pixels, in mosaic pixels
        xs = float(area.col_off) + (np.arange(ow) + 0.5) * fx
        for i in self.scenes_under(area):
            scene, dr, dc = self._placed[i]
            rows = np.flatnonzero((ys >= dr) & (ys < dr + scene.height))
            cols = np.flatnonzero((xs >= dc) & (xs < dc + scene.width))
            if not len(rows) or not len(cols) or not empty[np.ix_(rows, cols)].any():
                continue
            # the scene's pixels under those shrunk pixels, shrunk as much: their centres line up
            r0 = max(0, math.floor(area.row_off + rows[0] * fy) - dr)
            r1 = min(scene.height, math.ceil(area.row_off + (rows[-1] + 1) * fy) - dr)
            c0 = max(0, math.floor(area.col_off + cols[0] * fx) - dc)
            c1 = min(scene.width, math.ceil(area.col_off + (cols[-1] + 1) * fx) - dc)
            size = max(1, round(max((r1 - r0) / fy, (c1 - c0) / fx)))
            pixels, to_scene = scene.overview(Window(c0, r0, c1 - c0, r1 - r0), size)
            back = ~to_scene
            pr = np.clip(((ys[rows] - dr) * back.e + back.f).astype(int), 0, pixels.shape[1] - 1)
            pc = np.clip(((xs[cols] - dc) * back.a + back.c).astype(int), 0, pixels.shape[2] - 1)
            data = pixels[:, pr[:, None], pc[None, :]]
            hole = empty[np.ix_(rows, cols)]
            # data where the pixel sampled holds it: its own centre, not the shrunk pixel's, is inside the outline
            centres = dr + to_scene.e * (pr + 0.5) + to_scene.f, dc + to_scene.a * (pc + 0.5) + to_scene.c
            take = hole & self._has_data(i, data, *centres)
            patch = out[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            np.copyto(patch, data, where=take)
            empty[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = hole & ~take
        return out, _to_source(area, out)

    def data_footprint(self) -> shapely.Geometry:
        """Where the mosaic may hold data, in its pixels: the union of the scenes' footprints."""
        return shapely.union_all(self.footprints)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["scenes"] = [self.labels[i] for i in self.priority]
        return info

    def __reduce__(self) -> tuple[Any, ...]:  # the recipe: scenes, grid, order
        rank = [self._rank[i] for i in range(len(self.scenes))]
        return (
            _restore,
            (self.scenes, self.crs, self._res, rank, self.resampling, self.tile_shape, self.cache, self.labels),
        )

    def __repr__(self) -> str:
        crs = None if self.crs is None else self.crs.to_string()
        return (
            f"MosaicSource(<{len(self.scenes)} scenes>)  # {self.count}x{self.height}x{self.width} "
            f"{self.dtype.name}, crs={crs}"
        )


def _restore(
    scenes: list[TileSource],
    crs: CRS | None,
    res: tuple[float, float],
    rank: list[int],
    resampling: str,
    tile_shape: tuple[int, int],
    cache: TileCache,
    labels: list[str],
) -> MosaicSource:
    return MosaicSource(
        scenes, crs=crs, res=res, order=rank, resampling=resampling, tile_shape=tile_shape, cache=cache, labels=labels
    )


def json_grid(crs: CRS | None, transform: Affine, width: int, height: int) -> str:
    """A grid as stable text, for tokens: equal in every process."""
    wkt = "" if crs is None else crs.to_wkt()
    return f"{wkt}|{','.join(repr(float(v)) for v in tuple(transform)[:6])}|{width}x{height}"


def _label(src: TileSource) -> str:
    path = getattr(src, "path", None)
    return os.path.basename(path) if isinstance(path, str) else src.token


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= PIXEL_SNAP * abs(b)


def _outline(src: TileSource, crs: CRS | None) -> shapely.Geometry:
    """The scene's footprint as a polygon in ``crs`` (edges densified when it is another CRS)."""
    corners = [src.transform @ xy for xy in ((0, 0), (src.width, 0), (src.width, src.height), (0, src.height))]
    outline = shapely.Polygon(corners)
    if src.crs is None or crs is None or src.crs == crs:
        return outline
    dense = shapely.segmentize(outline, max(src.width, src.height) * abs(src.transform.a) / 64)
    return shapely.geometry.shape(rasterio.warp.transform_geom(src.crs, crs, shapely.geometry.mapping(dense)))


def _resolution(res: Any, scenes: Sequence[TileSource], crs: CRS | None) -> tuple[float, float]:
    if res is not None:
        pair = (res, res) if is_real(res) else tuple(res) if isinstance(res, Sequence) else ()
        if len(pair) != 2 or not all(is_real(v) and 0 < v < math.inf for v in pair):
            raise InvalidArgumentError(f"res must be a positive pixel size or (x, y) in the CRS's units, got {res!r}")
        return float(pair[0]), float(pair[1])
    same = [s for s in scenes if s.crs == crs or s.crs is None or crs is None]
    if same:  # a resolution estimated across CRSs would put every scene off the grid by a hair
        sizes = [(math.hypot(s.transform.a, s.transform.d), math.hypot(s.transform.b, s.transform.e)) for s in same]
    else:
        sides = [math.sqrt(_outline(s, crs).area / (s.width * s.height)) for s in scenes]  # square, same area
        sizes = [(side, side) for side in sides]
    return min(x for x, _ in sizes), min(y for _, y in sizes)


def _grid(
    scenes: Sequence[TileSource], outlines: Sequence[shapely.Geometry], crs: CRS | None, rx: float, ry: float
) -> tuple[Affine, int, int]:
    """The mosaic's transform, width and height: the union of ``outlines``, on the pixels of the first
    scene in ``crs`` at the resolution (else on the union's corner)."""
    x0, y0, x1, y1 = shapely.union_all(list(outlines)).bounds
    ox, oy = x0, y1
    for s in scenes:
        t = s.transform
        if s.crs == crs and t.b == t.d == 0 and _close(t.a, rx) and _close(-t.e, ry):
            ox, oy = t.c, t.f
            break
    left = ox + math.floor(snap((x0 - ox) / rx)) * rx
    top = oy - math.floor(snap((oy - y1) / ry)) * ry
    width = math.ceil(snap((x1 - left) / rx))
    height = math.ceil(snap((top - y0) / ry))
    return Affine(rx, 0, left, 0, -ry, top), width, height


__all__ = ["MosaicSource", "Order", "mosaic", "priority"]
