"""The tables of a run store: the SQL that makes them, and how windows and detections become rows and back.

:mod:`lazytiles.runs.store` says what each table holds and owns every connection and transaction; this module only
makes the empty tables inside the caller's transaction, builds the rows the store inserts, and turns the
rows it selects back into numpy columns.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from .gpkg import create_geopackage, polygon_blobs, register_table
from ..detections import Detections
from ..merging.window_table import WindowTable

#: Version of the tables' layout; a store with a higher one was made by a newer lazytiles.
STORE_SCHEMA = 1
#: Layer names in the GeoPackage.
MERGED_LAYER = "detections"
RAW_LAYER = "raw_detections"

RAW_FIELDS = ("window_index", "rank", "x0", "y0", "x1", "y1", "score", "label", "partial")
MERGED_FIELDS = ("score", "label", "window_index", "partial", "x0", "y0", "x1", "y1")
FIELD_TYPES = {
    "window_index": np.int64, "rank": np.int64, "label": np.int64, "partial": np.bool_,
    "x0": np.float64, "y0": np.float64, "x1": np.float64, "y1": np.float64, "score": np.float32,
}  # fmt: skip
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
    return [(blobs[k], int(w[k]), k, *b[k], float(s[k]), int(lab[k]), bool(p[k])) for k in range(n)]


def merged_rows(found: Detections, transform: Affine, srs_id: int) -> list[tuple[Any, ...]]:
    """The rows of :data:`INSERT_MERGED` for merged detections, ``fid`` counting from 1."""
    if not len(found):
        return []
    blobs = polygon_blobs(found.boxes, transform, srs_id)
    b = found.boxes.tolist()
    s, lab, w = found.scores.tolist(), found.labels.tolist(), found.window_index.tolist()
    p = found.partial.tolist()
    return [(k + 1, blobs[k], s[k], lab[k], w[k], p[k], *b[k]) for k in range(len(found))]


def columns(rows: list[tuple[Any, ...]], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Selected ``rows`` of the fields ``names`` as one typed numpy array per field."""
    if not rows:
        return {name: np.empty(0, dtype=FIELD_TYPES[name]) for name in names}
    cols = list(zip(*rows))
    return {name: np.array(col, dtype=np.float64 if name == "score" else FIELD_TYPES[name]).astype(FIELD_TYPES[name])
            for name, col in zip(names, cols)}  # fmt: skip


__all__ = [
    "FIELD_TYPES", "INSERT_MERGED", "INSERT_RAW", "MERGED_FIELDS", "MERGED_LAYER", "RAW_FIELDS", "RAW_LAYER",
    "STORE_SCHEMA", "StoreHeader", "columns", "create_tables", "merged_rows", "now", "pack", "raw_rows", "unpack",
]  # fmt: skip
