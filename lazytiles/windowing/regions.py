"""Regions: which windows of a plan a region keeps, the region given as a geometry or a callable.

A geometry (shapely, or a GeoJSON mapping) is taken to the source's pixels, then tested against every
window of the plan in vectorised chunks; a polygon keeps the windows it overlaps (sharing only an edge
is not overlapping), a point or line the windows whose half-open pixels hold it. A callable is asked
about each window's bounds. Used by :func:`lazytiles.windows`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import rasterio.warp
import shapely
import shapely.affinity
import shapely.geometry
from affine import Affine
from rasterio.crs import CRS

from ..errors import BoundsError, InvalidArgumentError
from ..grid import Bounds, window_bounds
from ..sources.base import TileSource
from .plan import WindowPlan


def to_geometry(region: Any) -> shapely.Geometry | None:
    if isinstance(region, shapely.Geometry):
        geometry = region
    elif isinstance(region, dict) or hasattr(region, "__geo_interface__"):
        try:
            geometry = shapely.geometry.shape(region)
        except Exception as err:  # shapely raises several kinds on bad GeoJSON
            raise InvalidArgumentError(f"region {region!r:.200} is not a valid GeoJSON geometry: {err}") from err
    else:
        return None
    if geometry.is_empty:
        raise BoundsError("region is an empty geometry; pass a geometry that covers the area to process")
    return geometry


def region_in_pixels(geometry: shapely.Geometry, region_crs: CRS | None, src: TileSource) -> shapely.Geometry:
    if region_crs is not None and src.crs is not None and region_crs != src.crs:
        minx, miny, maxx, maxy = geometry.bounds
        geometry = shapely.segmentize(geometry, max(maxx - minx, maxy - miny) / 64 or 1.0)  # curves survive
        geometry = shapely.geometry.shape(
            rasterio.warp.transform_geom(region_crs, src.crs, shapely.geometry.mapping(geometry))
        )
    inv = ~src.transform
    return shapely.affinity.affine_transform(geometry, [inv.a, inv.b, inv.d, inv.e, inv.c, inv.f])


def filter_by_geometry(plan: WindowPlan, geometry: shapely.Geometry, chunk: int = 1 << 18) -> np.ndarray:
    shapely.prepare(geometry)
    polygonal = geometry.geom_type in ("Polygon", "MultiPolygon")
    h, w = plan.size
    kept = []
    for start in range(0, len(plan), chunk):
        k = np.arange(start, min(start + chunk, len(plan)))
        r, c = plan.offsets(k)
        boxes = shapely.box(c, r, c + w, r + h)
        hit = shapely.intersects(geometry, boxes)
        if polygonal:  # sharing only an edge is not overlapping
            hit &= ~shapely.touches(geometry, boxes)
        elif hit.any():  # pixels are half-open: a point or line only on a window's right or bottom
            far = np.stack([np.stack(p, axis=-1) for p in ((c + w, r), (c + w, r + h), (c, r + h))], axis=1)
            on_far_edge = shapely.covered_by(shapely.intersection(geometry, boxes[hit]), shapely.linestrings(far[hit]))
            hit[hit] = ~on_far_edge  # edge is its neighbour's
        kept.append(k[hit])
    return np.concatenate(kept)


def filter_by_callable(plan: WindowPlan, keep: Callable[[Bounds], bool], transform: Affine) -> np.ndarray:
    return np.fromiter((k for k in range(len(plan)) if keep(window_bounds(plan.window(k), transform))), dtype=np.int64)


def keep_with_data(plan: WindowPlan, keep: np.ndarray | None, footprint: shapely.Geometry | None) -> np.ndarray | None:
    """``keep`` (candidates kept so far, None for all) less the windows outside ``footprint``, where a
    source may hold data (in its pixels; None: anywhere)."""
    if footprint is None:
        return keep
    hit = filter_by_geometry(plan, footprint) if not footprint.is_empty else np.zeros(0, dtype=np.int64)
    return hit if keep is None else np.intersect1d(keep, hit)
