"""Where a source holds data, for ``lt.windows(..., skip_empty=True)``: a raster's from a coarse mask, a
local tile layer's from the tile files present.

A coarse mask (an overview's, ``True`` where any band has data) becomes a geometry in the raster's
pixel coordinates, grown by one coarse pixel on every side: a coarse pixel that shows no data next to
one that does may still hide data at full resolution (resampling, a mask smaller than a coarse
pixel), so only coarse pixels with no data anywhere around them count as empty.
"""

from __future__ import annotations

import glob
import re

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


#: Most tile files :func:`tile_files_footprint` lists (more: the coverage is unknown).
COVERAGE_MAX_FILES = 1_000_000


def tile_files_footprint(parts: list[str], zoom: int, tile_size: int) -> shapely.Geometry | None:
    """The tiles of a local XYZ template present at ``zoom``, in the layer's pixels; None for a quadkey
    template or more than :data:`COVERAGE_MAX_FILES` files. ``parts`` is the template split into
    literal text (even positions, local paths) and field names (odd positions)."""
    fields = parts[1::2]
    if "q" in fields or "x" not in fields:
        return None
    values = {"z": str(zoom), "x": "*", "y": "*", "-y": "*", "s": "*"}
    groups = {"z": re.escape(str(zoom)), "x": r"(?P<x>\d+)", "y": r"(?P<y>\d+)", "-y": r"(?P<ty>\d+)"}
    pattern = "".join(glob.escape(p) if i % 2 == 0 else values[p] for i, p in enumerate(parts))
    regex = re.compile("".join(re.escape(p) if i % 2 == 0 else groups.get(p, "[^/]*") for i, p in enumerate(parts)))
    found = set()
    for n, path in enumerate(glob.iglob(pattern)):
        if n >= COVERAGE_MAX_FILES:
            return None
        m = regex.fullmatch(path)
        if m is not None:
            found.add((int(m["x"]), int(m["y"]) if "y" in fields else 2**zoom - 1 - int(m["ty"])))
    if not found:
        return shapely.Polygon()
    x, y = np.array(sorted(found), dtype=np.float64).T * tile_size
    return shapely.coverage_union_all(shapely.box(x, y, x + tile_size, y + tile_size))
