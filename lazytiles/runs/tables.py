"""The tables of a run store: the SQL that makes them, and how windows and detections become rows and back.

:mod:`lazytiles.runs.store` says what each table holds and owns every connection and transaction; this module only
makes the empty tables inside the caller's transaction, builds the rows the store inserts, and turns the
rows it selects back into numpy columns.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import sqlite3
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import shapely
from affine import Affine
from rasterio.crs import CRS

from ..detections import Detections
from ..errors import LazyTilesError
from ..merging.rule import MergeRule
from ..merging.window_table import WindowTable
from .gpkg import create_geopackage, polygon_blobs, register_table

#: Version of the tables' layout; a store with a higher one was made by a newer lazytiles.
STORE_SCHEMA = 1
#: Layer names in the GeoPackage.
MERGED_LAYER = "detections"
RAW_LAYER = "raw_detections"

RAW_FIELDS = ("window_index", "rank", "x0", "y0", "x1", "y1", "score", "label", "partial", "outline")
MERGED_FIELDS = ("score", "label", "window_index", "partial", "x0", "y0", "x1", "y1", "outline")
#: ``outline`` is the object's outline (``Detections.shapes``) as WKB in source pixels, NULL for none.
FIELD_TYPES = {
    "outline": np.object_,
    "window_index": np.int64,
    "rank": np.int64,
    "label": np.int64,
    "partial": np.bool_,
    "x0": np.float64,
    "y0": np.float64,
    "x1": np.float64,
    "y1": np.float64,
    "score": np.float32,
}
#: Statements that insert the rows of :func:`raw_rows` and :func:`merged_rows`.
INSERT_RAW = f"INSERT INTO {RAW_LAYER} (geom, {', '.join(RAW_FIELDS)}) VALUES ({','.join('?' * (len(RAW_FIELDS) + 1))})"
INSERT_MERGED = (
    f"INSERT INTO {MERGED_LAYER} (fid, geom, {', '.join(MERGED_FIELDS)}) VALUES "
    f"({','.join('?' * (len(MERGED_FIELDS) + 2))})"
)
_SCHEMA = """
CREATE TABLE lazytiles_run (key TEXT PRIMARY KEY NOT NULL, value TEXT);
CREATE TABLE lazytiles_windows (
    window_index INTEGER PRIMARY KEY NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    boxes INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 1,
    error TEXT,
    col_off INTEGER, row_off INTEGER, width INTEGER, height INTEGER,
    session INTEGER NOT NULL,
    finished TEXT NOT NULL
);
CREATE TABLE lazytiles_sessions (
    session INTEGER PRIMARY KEY NOT NULL,
    started TEXT NOT NULL, ended TEXT, status TEXT NOT NULL,
    pid INTEGER, host TEXT, lazytiles_version TEXT, options TEXT,
    windows_done INTEGER NOT NULL DEFAULT 0, windows_failed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX lazytiles_raw_by_window ON raw_detections (window_index, rank);
"""


def now() -> str:
    """The time now, UTC, to the second, as the store writes it: ``2024-05-01T12:00:00+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class StoreHeader:
    """What a new run store is made with: the run's recipe, its windows, the georeferencing of its
    layers (the source's ``transform`` and ``crs``) and when it was made."""

    recipe: dict[str, Any]
    windows: WindowTable
    transform: Affine
    crs: CRS | None
    created: str = field(default_factory=now)


def create_tables(con: sqlite3.Connection, header: StoreHeader) -> None:
    """Make the empty database behind ``con`` a new run store for ``header``, inside the caller's
    transaction: the GeoPackage layers, the lazytiles tables, and the ``lazytiles_run`` rows (layout
    version, recipe, creation time, georeferencing, windows)."""
    transform, crs = header.transform, header.crs
    srs_id = create_geopackage(
        con,
        crs,
        {
            MERGED_LAYER: ({f: FIELD_TYPES[f] for f in MERGED_FIELDS}, "lazytiles: merged detections"),
            RAW_LAYER: ({f: FIELD_TYPES[f] for f in RAW_FIELDS}, "lazytiles: raw detections per window"),
        },
    )
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            con.execute(statement)
    for table, what in (
        ("lazytiles_run", "the run's recipe and state"),
        ("lazytiles_windows", "each recorded window: done, or failed and why"),
        ("lazytiles_sessions", "each process that worked on the run"),
    ):
        register_table(con, table, f"lazytiles: {what}")
    georef = {"transform": list(transform)[:6], "crs": None if crs is None else crs.to_wkt(), "srs_id": srs_id}
    rows = {
        "schema": json.dumps(STORE_SCHEMA),
        "recipe": json.dumps(header.recipe, sort_keys=True),
        "created": json.dumps(header.created),
        "georef": json.dumps(georef),
        "windows": pack(header.windows.indices),
        "pixel_windows": pack(header.windows.rects),
    }
    con.executemany("INSERT INTO lazytiles_run (key, value) VALUES (?, ?)", rows.items())


# -- reading the run's rows back ---------------------------------------------------------------------------

#: The columns each table must have (a store may have more, written by a newer lazytiles).
TABLE_COLUMNS = {
    "lazytiles_run": ("key", "value"),
    "lazytiles_windows": (
        "window_index",
        "status",
        "boxes",
        "attempts",
        "error",
        "col_off",
        "row_off",
        "width",
        "height",
        "session",
        "finished",
    ),
    "lazytiles_sessions": (
        "session",
        "started",
        "ended",
        "status",
        "pid",
        "host",
        "lazytiles_version",
        "options",
        "windows_done",
        "windows_failed",
    ),
    RAW_LAYER: ("fid", "geom", *RAW_FIELDS),
    MERGED_LAYER: ("fid", "geom", *MERGED_FIELDS),
}


class StoreFormatError(ValueError):
    """A run store's tables or ``lazytiles_run`` rows are not what lazytiles wrote (internal: the store
    raises :class:`~lazytiles.RunStoreError` naming the file)."""


@dataclass(frozen=True)
class RunRows:
    """The ``lazytiles_run`` rows of a store, read back and type-checked."""

    header: StoreHeader
    srs_id: int
    merge_rule: MergeRule | None
    merged_info: dict[str, Any] | None


def check_tables(con: sqlite3.Connection) -> None:
    """Raise :class:`StoreFormatError` naming the first table, or columns, of :data:`TABLE_COLUMNS` missing."""
    for table, wanted in TABLE_COLUMNS.items():
        have = {row[1] for row in con.execute(f'PRAGMA table_info("{table}")')}
        if not have:
            raise StoreFormatError(f"its table {table} is missing")
        lacking = [c for c in wanted if c not in have]
        if lacking:
            raise StoreFormatError(f"its table {table} lacks the column{'s' * (len(lacking) > 1)} {', '.join(lacking)}")


def read_run_rows(values: dict[str, Any]) -> RunRows:
    """The rows :func:`create_tables` and the merge wrote to ``lazytiles_run`` (``{key: value}``, the
    layout version checked by the caller), each parsed and type-checked; :class:`StoreFormatError`
    names the first row that is missing or wrong."""
    recipe = _json(values, "recipe", dict)
    if not all(isinstance(k, str) for k in recipe):
        raise StoreFormatError("the row 'recipe' has keys that are not strings")
    georef = _json(values, "georef", dict)
    transform = georef.get("transform")
    if not (isinstance(transform, list) and len(transform) == 6 and all(_finite(v) for v in transform)):
        raise StoreFormatError(f"the row 'georef' has transform {_shown(transform)}, not 6 finite numbers")
    crs_wkt, srs_id = georef.get("crs"), georef.get("srs_id")
    if crs_wkt is not None and not isinstance(crs_wkt, str):
        raise StoreFormatError(f"the row 'georef' has crs {_shown(crs_wkt)}, not WKT text or null")
    if not _integer(srs_id):
        raise StoreFormatError(f"the row 'georef' has srs_id {_shown(srs_id)}, not an integer")
    try:
        crs = None if crs_wkt is None else CRS.from_wkt(crs_wkt)
    except Exception as err:  # rasterio's CRSError, or GDAL's own
        raise StoreFormatError(f"the row 'georef' has a crs GDAL cannot read ({err})") from None
    indices, rects = _packed(values, "windows"), _packed(values, "pixel_windows")
    if len(rects) != 4 * len(indices):
        raise StoreFormatError(
            f"the rows 'windows' and 'pixel_windows' hold {len(indices)} windows but {len(rects)} numbers"
        )
    header = StoreHeader(recipe, WindowTable(indices, rects), Affine(*transform), crs, _json(values, "created", str))
    merge = _json(values, "merge", dict, optional=True)
    try:
        rule = None if merge is None else MergeRule(**merge)
    except (TypeError, LazyTilesError) as err:
        raise StoreFormatError(f"the row 'merge' is not a merge rule ({err})") from None
    merged = _json(values, "merged", dict, optional=True)
    if merged is not None and not (isinstance(merged.get("params"), dict) and _integer(merged.get("count"))):
        raise StoreFormatError("the row 'merged' lacks the merge's params and count")
    return RunRows(header, int(srs_id), rule, merged)


def read_schema(values: dict[str, Any]) -> int:
    """The layout version of a store's ``lazytiles_run`` rows; :class:`StoreFormatError` if it is not one."""
    schema = _json(values, "schema", int)
    if not _integer(schema) or schema < 1:
        raise StoreFormatError(f"the row 'schema' is {_shown(schema)}, not a layout version")
    return int(schema)


def _json(values: dict[str, Any], key: str, kind: type, *, optional: bool = False) -> Any:
    """The JSON value of row ``key``, of type ``kind`` (None allowed when ``optional``)."""
    if key not in values:
        if optional:
            return None
        raise StoreFormatError(f"the row {key!r} is missing from its table lazytiles_run")
    text = values[key]
    if not isinstance(text, str):
        raise StoreFormatError(f"the row {key!r} holds {type(text).__name__} {_shown(text)}, not JSON text")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise StoreFormatError(f"the row {key!r} is not valid JSON ({err})") from None
    if (value is None and optional) or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    shown = f"{type(value).__name__} {_shown(value)}"
    raise StoreFormatError(f"the row {key!r} holds {shown} where a {kind.__name__} belongs")


def _packed(values: dict[str, Any], key: str) -> np.ndarray:
    text = values.get(key)
    if not isinstance(text, str):
        raise StoreFormatError(f"the row {key!r} is missing from its table lazytiles_run, or not text")
    try:
        return unpack(text)
    except (binascii.Error, zlib.error, ValueError) as err:
        raise StoreFormatError(f"the row {key!r} is not a packed array ({err})") from None


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pack(array: np.ndarray) -> str:
    """An integer array as text for ``lazytiles_run``: little-endian int64, zlib, base64.

    >>> unpack(pack(np.array([[0, 256, 256, 256]])))
    array([  0, 256, 256, 256])
    """
    return base64.b64encode(zlib.compress(np.ascontiguousarray(array, dtype="<i8").tobytes())).decode()


def unpack(text: str) -> np.ndarray:
    """The flat int64 array :func:`pack` wrote (reshape it yourself)."""
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype="<i8").astype(np.int64)


def raw_rows(found: Detections, transform: Affine, srs_id: int) -> list[tuple[Any, ...]]:
    """The rows of :data:`INSERT_RAW` for one window's detections, ranked in their order."""
    n = len(found)
    if not n:
        return []
    blobs = polygon_blobs(found.boxes, transform, srs_id)
    b = found.boxes.tolist()
    w, s, lab, p = found.window_index, found.scores, found.labels, found.partial
    o = _wkb(found)
    return [(blobs[k], int(w[k]), k, *b[k], float(s[k]), int(lab[k]), bool(p[k]), o[k]) for k in range(n)]


def merged_rows(found: Detections, transform: Affine, srs_id: int) -> list[tuple[Any, ...]]:
    """The rows of :data:`INSERT_MERGED` for merged detections, ``fid`` counting from 1."""
    if not len(found):
        return []
    blobs = polygon_blobs(found.boxes, transform, srs_id)
    b = found.boxes.tolist()
    s, lab, w = found.scores.tolist(), found.labels.tolist(), found.window_index.tolist()
    p, o = found.partial.tolist(), _wkb(found)
    return [(k + 1, blobs[k], s[k], lab[k], w[k], p[k], *b[k], o[k]) for k in range(len(found))]


def _wkb(found: Detections) -> list[bytes | None]:
    """Each object's outline as WKB (None without one)."""
    return list(shapely.to_wkb(found.shapes))


def outlines(blobs: np.ndarray) -> np.ndarray:
    """The ``outline`` column read back: shapely geometries (None where NULL); :class:`StoreFormatError`
    when a value is not WKB."""
    if not len(blobs):
        return np.empty(0, dtype=object)
    if not all(v is None or isinstance(v, bytes) for v in blobs):
        raise StoreFormatError("its column outline holds values that are not WKB blobs")
    try:
        shapes: np.ndarray = shapely.from_wkb(blobs)
    except shapely.errors.GEOSException as err:
        raise StoreFormatError(f"its column outline holds a blob that is not WKB ({err})") from None
    return shapes


def columns(rows: list[tuple[Any, ...]], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Selected ``rows`` of the fields ``names`` as one typed numpy array per field (``outline``: shapely
    geometries or None); :class:`StoreFormatError` when an outline is not WKB."""
    if not rows:
        return {name: np.empty(0, dtype=FIELD_TYPES[name]) for name in names}
    cols = list(zip(*rows))
    out = {}
    for name, col in zip(names, cols):
        if name == "outline":
            blobs = np.empty(len(col), dtype=object)
            blobs[:] = col
            out[name] = outlines(blobs)
        else:
            kind = FIELD_TYPES[name]
            out[name] = np.array(col, dtype=np.float64 if name == "score" else kind).astype(kind)
    return out


__all__ = [
    "FIELD_TYPES",
    "INSERT_MERGED",
    "INSERT_RAW",
    "MERGED_FIELDS",
    "MERGED_LAYER",
    "RAW_FIELDS",
    "RAW_LAYER",
    "STORE_SCHEMA",
    "TABLE_COLUMNS",
    "RunRows",
    "StoreFormatError",
    "StoreHeader",
    "check_tables",
    "columns",
    "create_tables",
    "merged_rows",
    "now",
    "outlines",
    "pack",
    "raw_rows",
    "read_run_rows",
    "read_schema",
    "unpack",
]
