"""Object outlines: shapely polygons in a source's pixels, checked, traced from masks and mapped to a CRS.

``lt.Detections.shapes`` holds one outline per object (or None where only a box is known); this module
is the geometry behind it, with no knowledge of Detections: checking what a caller passes, tracing a
binary mask into a polygon (``rasterio.features.shapes``), and mapping pixel geometries through an
affine transform and a reprojection, and writing them as GeoJSON or GeoPackage features.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import shapely
from affine import Affine
from rasterio.crs import CRS

from .errors import InvalidArgumentError

#: shapely type ids of the outlines an object may have: Polygon (3) and MultiPolygon (6).
OUTLINE_TYPES = (3, 6)


def check_shapes(value: Any, n: int) -> np.ndarray:
    """``value`` as a read-only ``(n,)`` object array of shapely (Multi)Polygons or None; None: all None."""
    if value is None:
        arr = np.full(n, None, dtype=object)
    else:
        if hasattr(value, "geom_type"):  # one geometry, not a sequence of them
            raise InvalidArgumentError(
                f"shapes must be a sequence of one outline per box, got a single {value.geom_type}; wrap it in a list"
            )
        if isinstance(value, np.ndarray) and value.dtype == object and value.ndim == 1:
            arr = value if not value.flags.writeable else value.copy()
        else:
            arr = np.empty(len(value), dtype=object)
            arr[:] = list(value)
        if arr.shape != (n,):
            raise InvalidArgumentError(f"shapes must have one outline (or None) per box ({n}), got {len(arr)}")
        try:
            kinds = shapely.get_type_id(arr)  # -1 for None
        except TypeError:
            kinds = np.array([shapely.get_type_id(g) if isinstance(g, shapely.Geometry) else -2 for g in arr])
        bad = np.flatnonzero(~np.isin(kinds, (-1, *OUTLINE_TYPES)))
        if len(bad):
            kind = getattr(arr[bad[0]], "geom_type", type(arr[bad[0]]).__name__)
            raise InvalidArgumentError(
                f"shapes must be shapely Polygons or MultiPolygons (or None for a box only), got a {kind} "
                f"at position {int(bad[0])}"
            )
    if arr.flags.writeable:
        arr.flags.writeable = False
    return arr


def boxes_of(shapes: np.ndarray) -> np.ndarray:
    """``(N, 4)`` x0, y0, x1, y1 bounds of pixel outlines (NaN for None)."""
    if not len(shapes):
        return np.zeros((0, 4))
    return np.asarray(shapely.bounds(shapes), dtype=np.float64)


def mask_outline(mask: np.ndarray, col_off: float = 0.0, row_off: float = 0.0) -> Any:
    """The outline of the true pixels of a 2-D bool ``mask``: a Polygon, a MultiPolygon, or None if empty.

    Pixel ``(r, c)`` of the mask is the square ``[c, c + 1] x [r, r + 1]`` moved by the offsets; pieces
    that touch only at a corner stay separate polygons of one MultiPolygon.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((4, 5), bool); m[1:3, 1:4] = True
    >>> mask_outline(m, 10, 20).bounds
    (11.0, 21.0, 14.0, 23.0)
    """
    from rasterio.features import shapes as traced

    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if not mask.any():
        return None
    pieces = [
        shapely.geometry.shape(g)
        for g, _ in traced(mask, mask=mask.astype(bool), transform=Affine.translation(col_off, row_off))
    ]
    return pieces[0] if len(pieces) == 1 else shapely.MultiPolygon(pieces)


def to_map(shapes: np.ndarray, transform: Affine, source_crs: CRS | None, target: CRS | None) -> np.ndarray:
    """Pixel geometries mapped through ``transform`` and, when ``target`` differs, reprojected to it."""
    a = transform

    def affine(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.stack([a.a * x + a.b * y + a.c, a.d * x + a.e * y + a.f], axis=1)

    out: np.ndarray = shapely.transform(shapes, affine)
    if target is not None and source_crs is not None and target != source_crs and len(shapes):
        import rasterio.warp

        def reproject(xy: np.ndarray) -> np.ndarray:
            if not len(xy):
                return xy
            wx, wy = rasterio.warp.transform(source_crs, target, xy[:, 0], xy[:, 1])
            return np.stack([np.asarray(wx), np.asarray(wy)], axis=1)

        out = shapely.transform(out, reproject)
    return out


def write_geojson(path: str | os.PathLike[str], geoms: np.ndarray, columns: dict[str, np.ndarray]) -> str:
    """Write lon/lat ``geoms`` with one property per column as an RFC 7946 FeatureCollection (rings
    counter-clockwise); returns the path."""
    features = []
    for i, geom in enumerate(shapely.orient_polygons(geoms, exterior_cw=False)):
        properties = {name: values[i].item() for name, values in columns.items()}
        features.append({"type": "Feature", "geometry": shapely.geometry.mapping(geom), "properties": properties})
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"type": "FeatureCollection", "features": features}, f)
    return os.fspath(path)


def write_gpkg(
    path: str | os.PathLike[str],
    geoms: np.ndarray,
    columns: dict[str, np.ndarray],
    *,
    layer: str,
    crs: str | None,
    append: bool,
) -> str:
    """Write ``geoms`` (Polygons; all as MultiPolygons when one is) and the columns as a GeoPackage layer."""
    from pyogrio.raw import write

    multi = bool(len(geoms)) and bool((shapely.get_type_id(geoms) == 6).any())
    if multi:
        geoms = np.array([g if shapely.get_type_id(g) == 6 else shapely.MultiPolygon([g]) for g in geoms])
    write(
        os.fspath(path),
        shapely.to_wkb(geoms),
        list(columns.values()),
        list(columns),
        layer=layer,
        driver="GPKG",
        geometry_type="MultiPolygon" if multi else "Polygon",
        crs=crs,
        append=append,
    )
    return os.fspath(path)


__all__ = ["OUTLINE_TYPES", "boxes_of", "check_shapes", "mask_outline", "to_map", "write_geojson", "write_gpkg"]
