"""Detections: objects found in a source, in its pixel grid: boxes, optional outlines, scores, labels, windows."""

from __future__ import annotations

import html
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window as PixelWindow

from .errors import CRSError, FrozenError, InvalidArgumentError, MissingDependencyError
from .geometry import check_shapes, to_map, write_geojson, write_gpkg
from .windowing.index import select

if TYPE_CHECKING:
    from PIL import Image as PILImage

#: Rows shown by ``Detections._repr_html_``.
HTML_ROWS = 10
#: The per-box arrays of a Detections, named like its constructor's parameters.
COLUMNS = ("boxes", "scores", "labels", "window_index", "partial", "shapes")


def as_boxes(boxes: Any, what: str = "boxes") -> npt.NDArray[np.float64]:
    """``boxes`` as a float64 ``(N, 4)`` array, checked."""
    if hasattr(boxes, "detach"):  # a torch tensor, maybe on a GPU
        boxes = boxes.detach().cpu().numpy()
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise InvalidArgumentError(f"{what} must be (N, 4) x0, y0, x1, y1, got shape {arr.shape}")
    return arr


def _window_tuple(window: Any, what: str) -> tuple[float, float, float, float]:
    if isinstance(window, PixelWindow):
        return float(window.col_off), float(window.row_off), float(window.width), float(window.height)
    try:
        col_off, row_off, width, height = (float(v) for v in window)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"{what} must be a rasterio Window or (col_off, row_off, width, height), got {window!r}"
        ) from None
    return col_off, row_off, width, height


def partial_flags(boxes: Any, window: Any, area: Any, margin: float = 1.0) -> np.ndarray:
    """Which boxes of one window may be cut by its edge: within ``margin`` px of an *inner* edge.

    An inner edge is an edge of ``window`` that is not on the boundary of ``area``, so another window
    continues beyond it. Boxes cut by the edge of the whole area are complete: nothing lies beyond.

    Parameters
    ----------
    boxes
        ``(K, 4)`` x0, y0, x1, y1 in the window's pixels (0, 0 is its upper-left corner).
    window
        The window in the source's pixels: a rasterio ``Window`` or (col_off, row_off, width, height).
    area
        The area all windows cover (``WindowSequence.area``), same kinds as ``window``.
    margin
        Distance in pixels from an inner edge within which a box counts as touching it.

    Returns
    -------
    numpy.ndarray
        ``(K,)`` bool.

    Examples
    --------
    >>> from rasterio.windows import Window
    >>> boxes = [[0, 10, 20, 30], [100, 10, 128, 30], [50, 50, 60, 60]]
    >>> partial_flags(boxes, Window(128, 0, 128, 128), Window(0, 0, 256, 256))
    array([ True, False, False])
    """
    b = as_boxes(boxes)
    c0, r0, w, h = _window_tuple(window, "window")
    ac0, ar0, aw, ah = _window_tuple(area, "area")
    return (
        ((c0 > ac0) & (b[:, 0] <= margin))
        | ((c0 + w < ac0 + aw) & (b[:, 2] >= w - margin))
        | ((r0 > ar0) & (b[:, 1] <= margin))
        | ((r0 + h < ar0 + ah) & (b[:, 3] >= h - margin))
    )


def _frozen(value: Any, dtype: Any) -> np.ndarray:
    """``value`` as a read-only array of ``dtype``: a read-only one as it is, the caller's memory copied first."""
    arr = np.asarray(value, dtype=dtype)
    if arr.flags.writeable:
        if arr is value or arr.base is not None:  # the caller's array, or a view of its memory
            arr = arr.copy()
        arr.flags.writeable = False
    return arr


def _sealed(arr: np.ndarray) -> np.ndarray:
    """A new array nobody else holds, made read-only in place, so that Detections keeps it without a copy."""
    arr.flags.writeable = False
    return arr


class Detections:
    """Objects found in a source: an immutable value (read-only arrays, no attribute assignment).

    Equal when every array, the transform and the CRS are; unhashable, as it defines ``==`` only.

    Attributes
    ----------
    boxes
        ``(N, 4)`` float64, ``x0, y0, x1, y1`` in the source's pixel grid (x = column, y = row;
        ``x1``/``y1`` exclusive, like a pixel window's right and bottom edges).
    scores
        ``(N,)`` float32 confidences.
    labels
        ``(N,)`` int64 class ids.
    window_index
        ``(N,)`` int64: the index of the window each box was found in (-1 when not from a window).
    partial
        ``(N,)`` bool: the box touches an edge of its window that is inside the area processed, so
        the object may continue in a neighbouring window.
    shapes
        ``(N,)`` object array: each object's outline as a shapely Polygon or MultiPolygon in the
        source's pixel grid (like ``boxes``), or None where only its box is known (a box detector).
        Set by mask models, ``lt.polygons`` and merges of them; :meth:`polygons` maps them to a CRS.
    transform, crs
        The source's georeferencing: ``transform * (x, y)`` is a map coordinate in ``crs``.
    """

    __slots__ = (*COLUMNS, "transform", "crs")
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    window_index: np.ndarray
    partial: np.ndarray
    shapes: np.ndarray
    transform: Affine
    crs: CRS | None

    def __init__(
        self,
        boxes: Any,
        scores: Any,
        labels: Any,
        window_index: Any = None,
        *,
        partial: Any = None,
        shapes: Any = None,
        transform: Affine | None = None,
        crs: CRS | str | None = None,
    ) -> None:
        boxes = _frozen(boxes, np.float64)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise InvalidArgumentError(f"boxes must be (N, 4) x0, y0, x1, y1, got shape {boxes.shape}")
        n = len(boxes)

        def column(value: Any, dtype: Any, default: Any, name: str) -> np.ndarray:
            if value is None:
                arr = np.full(n, default, dtype=dtype)
                arr.flags.writeable = False
            else:
                arr = _frozen(value, dtype).reshape(-1)
            if arr.shape != (n,):
                raise InvalidArgumentError(f"{name} must have one value per box ({n}), got shape {arr.shape}")
            return arr

        init = object.__setattr__  # the only assignments a Detections ever gets
        init(self, "boxes", boxes)
        init(self, "scores", column(scores, np.float32, 1.0, "scores"))
        init(self, "labels", column(labels, np.int64, 0, "labels"))
        init(self, "window_index", column(window_index, np.int64, -1, "window_index"))
        init(self, "partial", column(partial, bool, False, "partial"))
        init(self, "shapes", check_shapes(shapes, n))
        init(self, "transform", Affine.identity() if transform is None else transform)
        init(self, "crs", CRS.from_user_input(crs) if isinstance(crs, str) else crs)

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenError(
            f"lt.Detections is immutable: cannot set {name!r}; make a new one, e.g. lt.Detections(d.boxes, "
            "d.scores, d.labels, d.window_index, partial=d.partial, shapes=d.shapes, transform=d.transform, crs=d.crs)"
        )

    def __delattr__(self, name: str) -> None:
        raise FrozenError(f"lt.Detections is immutable: cannot delete {name!r}")

    # -- a sequence of boxes -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, key: Any) -> Detections:
        """Boxes selected by an int, slice, integer array or boolean mask: ``dets[dets.scores > 0.5]``."""
        picked = select(range(len(self)), key, what="detection")
        idx = np.array([picked]) if isinstance(picked, int) else np.asarray(picked, dtype=np.int64)
        return self._take(idx)

    def _take(self, idx: np.ndarray) -> Detections:
        columns = {name: _sealed(getattr(self, name)[idx]) for name in COLUMNS}
        return Detections(**columns, transform=self.transform, crs=self.crs)

    @classmethod
    def empty(cls, *, transform: Affine | None = None, crs: CRS | None = None) -> Detections:
        """No boxes, with the given georeferencing."""
        return cls(np.zeros((0, 4)), [], [], [], transform=transform, crs=crs)

    @classmethod
    def concat(cls, items: Iterable[Detections]) -> Detections:
        """All boxes of ``items`` in one :class:`Detections` (georeferencing from the first)."""
        items = list(items)
        if not items:
            return cls.empty()
        for d in items:
            if not isinstance(d, Detections):
                raise InvalidArgumentError(f"can only concatenate Detections, got {type(d).__name__}")
        columns = {name: _sealed(np.concatenate([getattr(d, name) for d in items])) for name in COLUMNS}
        return cls(**columns, transform=items[0].transform, crs=items[0].crs)

    # -- georeferencing --------------------------------------------------------------------------------

    def _crs_for(self, crs: CRS | str | int | None, what: str) -> CRS | None:
        from .grid import to_crs

        target = to_crs(crs, "crs")
        if target is not None and self.crs is None:
            raise CRSError(
                f"{what} needs the detections' CRS, but they have none; detect on a source with a CRS, or "
                "give lt.Detections(..., crs=...)"
            )
        return target

    def outlines(self, crs: CRS | str | int | None = None, *, densify: int = 0) -> np.ndarray:
        """``(N, P, 2)`` map coordinates of each box's outline, clockwise in pixels from (x0, y0).

        ``P = 4 * (densify + 1)``: the 4 corners, plus ``densify`` points along each edge (useful when
        reprojecting large boxes to a CRS in which straight edges bend). In the source CRS without
        ``crs``, otherwise reprojected to it. No ring closure point.
        """
        if isinstance(densify, bool) or not isinstance(densify, int) or densify < 0:
            raise InvalidArgumentError(f"densify must be an integer >= 0 (points per edge), got {densify!r}")
        target = self._crs_for(crs, "outlines(crs=...)")
        b = self.boxes
        t = np.linspace(0.0, 1.0, densify + 2)[:-1]  # along an edge, excluding its end corner
        x0, y0, x1, y1 = (b[:, k : k + 1] for k in range(4))
        one = np.ones_like(t)  # x * one: x repeated along an edge, exactly
        xs = np.concatenate([x0 + (x1 - x0) * t, x1 * one, x1 - (x1 - x0) * t, x0 * one], axis=1)
        ys = np.concatenate([y0 * one, y0 + (y1 - y0) * t, y1 * one, y1 - (y1 - y0) * t], axis=1)
        a = self.transform
        mx, my = a.a * xs + a.b * ys + a.c, a.d * xs + a.e * ys + a.f
        if target is not None and target != self.crs and len(b):
            import rasterio.warp

            wx, wy = rasterio.warp.transform(self.crs, target, mx.ravel(), my.ravel())
            mx, my = np.asarray(wx).reshape(mx.shape), np.asarray(wy).reshape(my.shape)
        return np.stack([mx, my], axis=-1)

    def geo_boxes(self, crs: CRS | str | int | None = None, *, densify: int = 0) -> np.ndarray:
        """``(N, 4)`` (left, bottom, right, top) of each box in map coordinates; no I/O.

        In the source CRS by default; with ``crs`` (e.g. ``"EPSG:4326"``, lon/lat) the box's corners
        (and ``densify`` points per edge) are reprojected and the result is their bounding box.

        Examples
        --------
        >>> from affine import Affine
        >>> import lazytiles as lt
        >>> utm = Affine(10, 0, 500_000, 0, -10, 6_000_000)
        >>> d = lt.Detections([[0, 0, 10, 20]], [0.9], [1], transform=utm, crs="EPSG:32633")
        >>> d.geo_boxes()
        array([[ 500000., 5999800.,  500100., 6000000.]])
        >>> d.geo_boxes("EPSG:4326").round(4)
        array([[15.    , 54.1463, 15.0015, 54.1481]])
        """
        ring = self.outlines(crs, densify=densify)
        if not len(ring):
            return np.zeros((0, 4))
        return np.stack([ring[..., 0].min(1), ring[..., 1].min(1), ring[..., 0].max(1), ring[..., 1].max(1)], axis=1)

    def polygons(self, crs: CRS | str | int | None = None, *, densify: int = 0) -> np.ndarray:
        """Each object as a shapely geometry in map coordinates (source CRS, or ``crs``); an object array.

        An object's outline (:attr:`shapes`) where it has one, its box otherwise (``densify`` points
        added along each box edge, as in :meth:`outlines`).
        """
        import shapely

        ring = self.outlines(crs, densify=densify)
        if not len(ring):
            return np.empty(0, dtype=object)
        polygons: np.ndarray = shapely.polygons(np.concatenate([ring, ring[:, :1]], axis=1))
        shaped = np.flatnonzero(self.shapes != None)  # noqa: E711 -- elementwise, on an object array
        if len(shaped):
            target = self._crs_for(crs, "polygons(crs=...)")
            polygons[shaped] = to_map(self.shapes[shaped], self.transform, self.crs, target)
        return polygons

    def _columns(self) -> dict[str, np.ndarray]:
        return {
            "score": self.scores.astype(np.float64),
            "label": self.labels,
            "window_index": self.window_index,
            "partial": self.partial,
        }

    # -- writers -----------------------------------------------------------------------------------

    def to_geojson(self, path: str | os.PathLike[str], *, densify: int = 0) -> str:
        """Write an RFC 7946 GeoJSON FeatureCollection: one Feature per object (outline, else box), in lon/lat.

        Coordinates are EPSG:4326 longitude, latitude (as RFC 7946 requires, whatever the source CRS),
        rings counter-clockwise; properties ``score``, ``label``, ``window_index``, ``partial``.
        Returns the path written.

        Raises
        ------
        CRSError
            The detections have no CRS, so lon/lat cannot be known.
        """
        if self.crs is None:
            raise CRSError(
                "to_geojson writes lon/lat (RFC 7946) and needs the detections' CRS, but they have none; "
                "detect on a georeferenced source, or use to_gpkg for pixel coordinates"
            )
        return write_geojson(path, self.polygons("EPSG:4326", densify=densify), self._columns())

    def to_gpkg(self, path: str | os.PathLike[str], layer: str = "detections", *, append: bool = False) -> str:
        """Write a GeoPackage layer of the objects' :meth:`polygons` in the source CRS (via pyogrio / GDAL).

        Polygons, or MultiPolygons when some outline is one. Fields ``score``, ``label``,
        ``window_index``, ``partial``. ``append=True`` adds to an existing layer; otherwise the layer is
        replaced. Returns the path written.
        """
        crs = None if self.crs is None else self.crs.to_wkt()
        return write_gpkg(path, self.polygons(), self._columns(), layer=layer, crs=crs, append=append)

    def to_geodataframe(self) -> Any:
        """A ``geopandas.GeoDataFrame`` of the objects' polygons (:meth:`polygons`) in the source CRS, one row each.

        Raises
        ------
        MissingDependencyError
            geopandas is not installed (``pip install geopandas``).
        """
        try:
            import geopandas
        except ImportError as err:
            raise MissingDependencyError(
                f"to_geodataframe needs geopandas, which cannot be imported ({err}); run `pip install geopandas`, "
                "or use to_gpkg / to_geojson, which need no extra package"
            ) from err
        return geopandas.GeoDataFrame(self._columns(), geometry=list(self.polygons()), crs=self.crs)

    # -- display -----------------------------------------------------------------------------------

    def _repr_html_(self) -> str:
        labels, counts = np.unique(self.labels, return_counts=True)
        crs = "none" if self.crs is None else html.escape(self.crs.to_string())
        head = "".join(f"<th>{h}</th>" for h in ("", "x0", "y0", "x1", "y1", "score", "label", "window", "partial"))
        rows = []
        for i in range(min(len(self), HTML_ROWS)):
            cells = [f"{v:.1f}" for v in self.boxes[i]]
            cells += [f"{self.scores[i]:.3f}", str(self.labels[i]), str(self.window_index[i])]
            cells.append(str(bool(self.partial[i])))
            rows.append(f"<tr><th>{i}</th>{''.join(f'<td>{c}</td>' for c in cells)}</tr>")
        if len(self) > HTML_ROWS:
            rows.append(f"<tr><td colspan='9'>... {len(self) - HTML_ROWS} more</td></tr>")
        by_label = ", ".join(f"{int(lab)}: {int(c)}" for lab, c in zip(labels, counts)) or "none"
        return (
            f"<div><b>lt.Detections</b>: {len(self)} boxes, {int(self.partial.sum())} partial; CRS {crs}<br>"
            f"by label: {by_label}<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        )

    def show(self, background: Any = None, *, max_size: int = 1024) -> PILImage.Image:
        """A picture (PIL) of the boxes, drawn in colours by label.

        ``background`` is an ``lt.Window`` (its pixels; boxes placed by georeferencing), an
        ``lt.WindowSequence`` or a source (an overview of its region), a ``(bands, rows, cols)`` array
        whose pixel (0, 0) is the source's, or None: a white canvas over the boxes' extent.

        Examples
        --------
        >>> import lazytiles as lt
        >>> lt.Detections([[10, 10, 30, 20]], [0.9], [2]).show().size
        (26, 16)
        """
        from .display.jupyter import show
        from .display.picture import draw_boxes, shrink, to_image

        if background is None or isinstance(background, np.ndarray):
            if background is None:
                margin = 3  # outlines are drawn just outside the boxes
                lo = np.floor(self.boxes[:, :2].min(0)) - margin if len(self) else np.zeros(2)
                hi = np.ceil(self.boxes[:, 2:].max(0)) + margin if len(self) else np.full(2, 16.0)
                from PIL import Image

                image = Image.new("RGB", (int(hi[0] - lo[0]), int(hi[1] - lo[1])), (255, 255, 255))
            else:
                image, lo = to_image(background), np.zeros(2)
            boxes = self.boxes - np.tile(lo, 2)
            scale = min(1.0, max_size / max(image.size))
            image = shrink(image, max_size)
            return draw_boxes(image, boxes * scale, self.labels, self.scores)
        return show(background, self, max_size=max_size)

    # -- combining ---------------------------------------------------------------------------------

    def __add__(self, other: Detections) -> Detections:
        if not isinstance(other, Detections):
            return NotImplemented
        return Detections.concat([self, other])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Detections):
            return NotImplemented
        same = all(np.array_equal(getattr(self, name), getattr(other, name)) for name in COLUMNS)
        return same and self.transform == other.transform and self.crs == other.crs

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            if isinstance(value, np.ndarray):
                value.flags.writeable = False  # unpickled arrays are new: freezing them copies nothing
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        labels, counts = np.unique(self.labels, return_counts=True)
        by_label = ", ".join(f"{int(lab)}: {int(c)}" for lab, c in zip(labels[:8], counts[:8]))
        crs = None if self.crs is None else self.crs.to_string()
        shaped = int((self.shapes != None).sum())  # noqa: E711 -- elementwise, on an object array
        outlines = f", {shaped} with outlines" if shaped else ""
        return f"<Detections: {len(self)} boxes{outlines} (by label {{{by_label}}}), crs={crs}>"
