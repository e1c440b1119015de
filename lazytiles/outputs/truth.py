"""Reading ground truth for ``lt.evaluate``: any vector file pyogrio reads, as Detections in a grid's pixels.

Polygons (and MultiPolygons) are reprojected from the file's CRS to the found objects' CRS, then mapped
into their pixel grid through the inverse of their transform; each becomes an object whose outline is
the polygon and whose box is its bounds. The class comes from an integer column: ``label_column`` when
given, else the first of :data:`LABEL_COLUMNS` the layer has, else every object is class 0.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import shapely
from affine import Affine
from rasterio.crs import CRS

from ..detections import Detections
from ..errors import CRSError, InvalidArgumentError, SourceNotFoundError, SourceOpenError
from ..geometry import OUTLINE_TYPES, to_map

#: Columns looked for, in order, to give each truth object its class.
LABEL_COLUMNS = ("label", "class")
#: Most features read from one truth file (a hostile or mistaken file must not exhaust memory).
MAX_FEATURES = 5_000_000


def read_truth(
    path: str | os.PathLike[str],
    transform: Affine | None,
    crs: CRS | None,
    *,
    label_column: str | None = None,
    layer: str | int | None = None,
) -> Detections:
    """The polygons of a vector file as :class:`~lazytiles.Detections` in the pixels of ``transform``
    (None: in the file's own coordinates, an identity transform in its CRS); scores from a ``score``
    column when there is one."""
    from pyogrio.errors import DataSourceError
    from pyogrio.raw import read

    name = os.fspath(path)
    if not os.path.exists(name):
        raise SourceNotFoundError(f"truth file {name!r} does not exist")
    try:
        meta, _, wkb, fields = read(name, layer=layer, max_features=MAX_FEATURES + 1)
    except DataSourceError as err:
        raise SourceOpenError(f"cannot read truth file {name!r} as vector data (any format GDAL reads): {err}") from err
    if len(wkb) > MAX_FEATURES:
        raise InvalidArgumentError(f"truth file {name!r} has more than {MAX_FEATURES} features; split it by area")
    columns = [str(c) for c in meta["fields"]]
    wanted = [label_column] if label_column is not None else [c for c in LABEL_COLUMNS if c in columns][:1]
    if label_column is not None and label_column not in columns:
        raise InvalidArgumentError(
            f"truth file {name!r} has no column {label_column!r}; its columns are {columns[:20]}"
        )
    labels = np.zeros(len(wkb), np.int64)
    if wanted:
        values = np.asarray(fields[columns.index(wanted[0])])
        if values.dtype.kind not in "iub" and not (values.dtype.kind == "f" and np.all(values == np.round(values))):
            raise InvalidArgumentError(
                f"the class column {wanted[0]!r} of truth file {name!r} holds {values.dtype} values, not integer "
                "class ids; give label_column= an integer column"
            )
        labels = values.astype(np.int64)
    geoms = shapely.from_wkb(wkb)
    kinds = shapely.get_type_id(geoms)
    bad = ~np.isin(kinds, OUTLINE_TYPES)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        kind = "an empty geometry" if geoms[first] is None else f"a {geoms[first].geom_type}"
        raise InvalidArgumentError(
            f"truth file {name!r} holds {kind} at feature {first}; evaluation compares polygons (or multipolygons)"
        )
    file_crs = CRS.from_user_input(meta["crs"]) if meta["crs"] else None
    scores = None
    if "score" in columns:
        scores = np.asarray(fields[columns.index("score")])
        if scores.dtype.kind not in "iuf":
            raise InvalidArgumentError(f"the column 'score' of {name!r} holds {scores.dtype} values, not numbers")
    if transform is None:
        boxes = np.asarray(shapely.bounds(geoms), dtype=np.float64).reshape(-1, 4)
        return Detections(boxes, scores, labels, shapes=geoms, crs=file_crs)
    if (file_crs is None) != (crs is None):
        raise CRSError(
            f"truth file {name!r} has {'no CRS' if file_crs is None else 'a CRS'} but the found objects have "
            f"{'none' if crs is None else 'one'}; both must be georeferenced (or both in pixels)"
        )
    pixels = to_map(to_map(geoms, Affine.identity(), file_crs, crs), ~transform, None, None)
    boxes = np.asarray(shapely.bounds(pixels), dtype=np.float64).reshape(-1, 4)
    return Detections(boxes, scores, labels, shapes=pixels, transform=transform, crs=crs)


def as_truth(truth: Any, found: Detections, label_column: str | None) -> Detections:
    """``truth`` (Detections, or a vector file) in ``found``'s pixel grid."""
    if isinstance(truth, Detections):
        if truth.crs != found.crs or truth.transform != found.transform:
            raise CRSError(
                "truth Detections must share the found objects' pixel grid (transform and CRS); give the truth "
                "as a vector file to have it reprojected"
            )
        return truth
    if isinstance(truth, (str, os.PathLike)):
        return read_truth(truth, found.transform, found.crs, label_column=label_column)
    raise InvalidArgumentError(
        f"truth must be lt.Detections or the path of a vector file (GeoPackage, GeoJSON, Shapefile ...), "
        f"got {type(truth).__name__}"
    )


__all__ = ["LABEL_COLUMNS", "MAX_FEATURES", "as_truth", "read_truth"]
