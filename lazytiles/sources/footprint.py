"""Where a raster holds data, from a coarse mask: for ``lt.windows(..., skip_empty=True)``.

A coarse mask (an overview's, ``True`` where any band has data) becomes a geometry in the raster's
pixel coordinates, grown by one coarse pixel on every side: a coarse pixel that shows no data next to
one that does may still hide data at full resolution (resampling, a mask smaller than a coarse
pixel), so only coarse pixels with no data anywhere around them count as empty.
"""

from __future__ import annotations

import numpy as np
import rasterio.features
import shapely
import shapely.geometry
from affine import Affine


def grow(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every pixel next to a ``True`` one (8 neighbours) set too."""
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:-1, :] |= mask[1:, :]
    wide = out.copy()
    out[:, 1:] |= wide[:, :-1]
    out[:, :-1] |= wide[:, 1:]
    return out


def mask_footprint(mask: np.ndarray, height: int, width: int) -> shapely.Geometry:
    """The ``True`` part of a coarse ``(rows, cols)`` mask of a ``height`` x ``width`` raster, grown by
    one coarse pixel, as a geometry in the raster's pixels (column, row)."""
    rows, cols = mask.shape
    grown = grow(mask.astype(bool)).astype(np.uint8)
    to_pixels = Affine.scale(width / cols, height / rows)
    shapes = [shapely.geometry.shape(g) for g, v in rasterio.features.shapes(grown, transform=to_pixels) if v]
    return shapely.union_all(shapes) if shapes else shapely.Polygon()
