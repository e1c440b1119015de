"""``lt.polygons``: a label raster as polygons, traced block by block and joined across block seams.

The raster is read one row of blocks at a time. Each block is traced with ``rasterio.features.shapes``
(4-connected pixels of one value make one polygon). A piece that touches no inner block edge is a
whole object and is emitted at once; pieces that touch one are joined with the pieces of the same
value they share an edge with (a seam segment of positive length, exactly the 4-connectivity of a
whole-raster trace), and a joined object is held only while it touches the bottom of the row, where
the next row may continue it. Memory: one row of blocks plus the objects touching its bottom edge.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.windows import Window as PixelWindow

from ..detections import Detections
from ..errors import InvalidArgumentError, SourceNotFoundError, SourceOpenError, is_int, is_real

#: Value types ``rasterio.features.shapes`` traces; other integer rasters are traced as int32.
TRACEABLE = ("uint8", "int16", "uint16", "int32", "float32")
#: Pixels per side a read block grows to (whole internal blocks), unless ``block=`` is given.
READ_BLOCK = 512


@contextmanager
def _opened(raster: Any) -> Iterator[Any]:
    if isinstance(raster, (str, os.PathLike)):
        try:
            ds = rasterio.open(raster)
        except rasterio.errors.RasterioIOError as err:
            if not os.path.exists(raster):
                raise SourceNotFoundError(f"label raster {os.fspath(raster)!r} does not exist") from err
            raise SourceOpenError(f"cannot open label raster {os.fspath(raster)!r}: {err}") from err
        with ds:
            yield ds
    elif hasattr(raster, "read") and hasattr(raster, "block_shapes"):
        yield raster  # the caller's open dataset: theirs to close
    else:
        raise InvalidArgumentError(
            f"raster must be a path or an open rasterio dataset, got {type(raster).__name__}; "
            "e.g. lt.polygons('pred.tif')"
        )


def _block_shape(ds: Any, block: Any) -> tuple[int, int]:
    if block is None:
        bh, bw = ds.block_shapes[0]
        return min(ds.height, bh * math.ceil(READ_BLOCK / bh)), min(ds.width, bw * math.ceil(READ_BLOCK / bw))
    pair = (block, block) if is_int(block) else tuple(block)
    if len(pair) != 2 or not all(is_int(v) and v > 0 for v in pair):
        raise InvalidArgumentError(f"block must be a positive number of pixels or (rows, cols), got {block!r}")
    return int(pair[0]), int(pair[1])


def _trace(data: np.ndarray, valid: np.ndarray, col_off: int, row_off: int) -> tuple[list[Any], list[float]]:
    from rasterio.features import shapes

    geoms, values = [], []
    for g, v in shapes(data, mask=valid, transform=Affine.translation(col_off, row_off)):
        geoms.append(shapely.geometry.shape(g))
        values.append(v)
    return geoms, values


def _join(geoms: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union the pieces of one value that share an edge (transitively); returns one geometry per object."""
    n = len(geoms)
    if n < 2:
        return geoms, values
    tree = shapely.STRtree(geoms)
    i, j = tree.query(geoms, predicate="touches")
    keep = (i < j) & (values[i] == values[j])
    i, j = i[keep], j[keep]
    shared = shapely.length(shapely.intersection(geoms[i], geoms[j])) > 0  # an edge, not a corner
    parent = np.arange(n)

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = int(parent[k])
        return k

    for a, b in zip(i[shared].tolist(), j[shared].tolist()):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(k) for k in range(n)])
    order = np.argsort(roots, kind="stable")
    starts = np.flatnonzero(np.r_[True, roots[order][1:] != roots[order][:-1]])
    groups = np.split(order, starts[1:])
    joined = np.empty(len(groups), dtype=object)
    # simplify(0) drops the vertices the seams left on straight edges
    joined[:] = [geoms[g[0]] if len(g) == 1 else shapely.simplify(shapely.union_all(geoms[g]), 0) for g in groups]
    return joined, values[[g[0] for g in groups]]


def polygons(
    raster: Any,
    classes: Sequence[int] | None = None,
    min_area: float = 0,
    *,
    block: int | tuple[int, int] | None = None,
    band: int = 1,
) -> Detections:
    """Vectorise a label raster into one polygon per object, block by block, joined across block seams.

    An object is a 4-connected area of pixels with one value: exactly what one
    ``rasterio.features.shapes`` over the whole raster gives, without holding the whole raster (one
    row of blocks and the objects touching its lower edge; GDAL's block cache, ``GDAL_CACHEMAX``,
    may keep blocks already read).

    Parameters
    ----------
    raster
        A path (any GDAL raster, e.g. what ``lt.write_raster`` wrote; opened for this call, so calls
        from many threads are safe) or an open rasterio dataset (left open; no other thread may read
        it meanwhile, as for any rasterio dataset).
    classes
        The values to vectorise; None: every value. Pixels that are nodata (the raster's mask) are
        never vectorised, so give the background a nodata value or leave it out of ``classes``.
    min_area
        Drop objects smaller than this many pixels (whole objects: after joining across seams).
    block
        Pixels per side (or ``(rows, cols)``) read and traced at a time; default: whole internal
        blocks, about 512 px.
    band
        The band holding the labels.

    Returns
    -------
    Detections
        One row per object: ``shapes`` its outline (a Polygon, with holes where other values or
        nodata are inside it) in the raster's pixels, ``boxes`` its bounds, ``labels`` its value, score
        1; the raster's transform and CRS. Ordered by top, left, then label.

    Examples
    --------
    >>> import numpy as np, lazytiles as lt
    >>> from affine import Affine
    >>> from rasterio.io import MemoryFile
    >>> labels = np.zeros((64, 64), np.uint8); labels[5:40, 10:50] = 1; labels[20:25, 20:25] = 0
    >>> profile = dict(driver="GTiff", width=64, height=64, count=1, dtype="uint8", nodata=0,
    ...                transform=Affine(10, 0, 500_000, 0, -10, 6_000_000), crs="EPSG:32633")
    >>> with MemoryFile() as mem, mem.open(**profile) as ds:
    ...     ds.write(labels, 1)
    ...     found = lt.polygons(ds, block=16)
    >>> found.boxes, found.labels, found.shapes[0].area, len(found.shapes[0].interiors)
    (array([[10.,  5., 50., 40.]]), array([1]), 1375.0, 1)
    """
    if not is_real(min_area) or not 0 <= min_area < math.inf:
        raise InvalidArgumentError(f"min_area must be a number of pixels >= 0, got {min_area!r}")
    keep_values = None if classes is None else np.asarray(list(classes))
    with _opened(raster) as ds:
        if not is_int(band) or not 1 <= band <= ds.count:
            raise InvalidArgumentError(f"band must be one of the raster's bands 1..{ds.count}, got {band!r}")
        dtype = np.dtype(ds.dtypes[band - 1])
        if dtype.kind not in "iub":
            raise InvalidArgumentError(
                f"lt.polygons traces a label raster (integer classes), but band {band} is {dtype}; write labels "
                "(lt.write_raster(..., output='labels')) or round the values first"
            )
        bh, bw = _block_shape(ds, block)
        height, width = ds.height, ds.width
        done: list[tuple[np.ndarray, np.ndarray]] = []
        held_g, held_v = np.empty(0, dtype=object), np.empty(0)
        for r0 in range(0, height, bh):
            r1 = min(r0 + bh, height)
            geoms, values = [], []
            for c0 in range(0, width, bw):
                win = PixelWindow(c0, r0, min(bw, width - c0), r1 - r0)
                data = ds.read(band, window=win)
                valid = ds.read_masks(band, window=win) > 0
                if keep_values is not None:
                    valid &= np.isin(data, keep_values)
                if data.dtype.name not in TRACEABLE:
                    data = data.astype(np.int32)  # labels beyond int32 are not classes anyone draws
                g, v = _trace(data, valid, c0, r0)
                geoms += g
                values += v
            g_arr = np.empty(len(geoms), dtype=object)
            g_arr[:] = geoms
            v_arr = np.asarray(values, dtype=np.float64)
            b = shapely.bounds(g_arr).reshape(-1, 4)
            # touching a block edge inside the raster: left/right within this row, the top (held), the bottom
            inner = ((b[:, 0] % bw == 0) & (b[:, 0] > 0)) | ((b[:, 2] % bw == 0) & (b[:, 2] < width))
            inner |= ((b[:, 1] == r0) & (r0 > 0)) | ((b[:, 3] == r1) & (r1 < height))
            done.append((g_arr[~inner], v_arr[~inner]))
            joined, jv = _join(np.concatenate([held_g, g_arr[inner]]), np.concatenate([held_v, v_arr[inner]]))
            below = (shapely.bounds(joined).reshape(-1, 4)[:, 3] == r1) & (r1 < height)
            done.append((joined[~below], jv[~below]))
            held_g, held_v = joined[below], jv[below]
        transform, crs = ds.transform, ds.crs
    shapes = np.concatenate([g for g, _ in done]) if done else np.empty(0, dtype=object)
    labels = np.concatenate([v for _, v in done]) if done else np.empty(0)
    if min_area:
        big = shapely.area(shapes) >= min_area
        shapes, labels = shapes[big], labels[big]
    boxes = shapely.bounds(shapes).reshape(-1, 4)
    order = np.lexsort((labels, boxes[:, 0], boxes[:, 1]))
    return Detections(
        boxes[order],
        np.ones(len(order), np.float32),
        labels[order].astype(np.int64),
        shapes=shapes[order],
        transform=transform,
        crs=crs,
    )


__all__ = ["polygons"]
