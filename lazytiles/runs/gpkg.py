"""GeoPackage tables and geometry blobs, written with plain ``sqlite3`` (no GDAL).

The run store (:mod:`lazytiles.runs.store`) writes its layers row by row inside its own transactions. GDAL links
its own SQLite library, and two copies of SQLite with one file open in one process can release each
other's POSIX locks, so the store never lets GDAL touch its file: this module makes the GeoPackage
tables GDAL would make (GeoPackage 1.2; no spatial index) and encodes polygons as GeoPackage geometry
blobs. GDAL, pyogrio and QGIS read the result as an ordinary GeoPackage.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS

# A GeoPackage geometry blob: "GP", version 0, flags (little-endian, xy envelope), srs id, envelope
# (min x, max x, min y, max y), then an ISO WKB polygon of one closed 5-point ring.
_BLOB = np.dtype(
    [
        ("magic", "S2"),
        ("version", "u1"),
        ("flags", "u1"),
        ("srs", "<i4"),
        ("env", "<f8", (4,)),
        ("order", "u1"),
        ("type", "<u4"),
        ("rings", "<u4"),
        ("points", "<u4"),
        ("xy", "<f8", (5, 2)),
    ]
)


def polygon_blobs(boxes: np.ndarray, transform: Affine, srs_id: int) -> list[bytes]:
    """GeoPackage geometry blobs of pixel boxes ``(N, 4)`` (x0, y0, x1, y1) mapped through
    ``transform``, rings counter-clockwise in map coordinates."""
    x0, y0, x1, y1 = (boxes[:, k] for k in range(4))
    det = transform.a * transform.e - transform.b * transform.d
    # (x0,y0) (x0,y1) (x1,y1) (x1,y0) turns clockwise on screen; a north-up transform (det < 0)
    # flips it to counter-clockwise on the map
    corners = [(x0, y0), (x0, y1), (x1, y1), (x1, y0)] if det < 0 else [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    px = np.stack([c[0] for c in corners] + [corners[0][0]], axis=1)
    py = np.stack([c[1] for c in corners] + [corners[0][1]], axis=1)
    mx = transform.a * px + transform.b * py + transform.c
    my = transform.d * px + transform.e * py + transform.f
    out = np.zeros(len(boxes), dtype=_BLOB)
    out["magic"], out["flags"], out["srs"] = b"GP", 0b011, srs_id
    out["env"] = np.stack([mx.min(1), mx.max(1), my.min(1), my.max(1)], axis=1)
    out["order"], out["type"], out["rings"], out["points"] = 1, 3, 1, 5
    out["xy"] = np.stack([mx, my], axis=2)
    raw = out.tobytes()
    size = _BLOB.itemsize
    return [raw[i : i + size] for i in range(0, len(raw), size)]


_TABLES = """
CREATE TABLE gpkg_spatial_ref_sys (
    srs_name TEXT NOT NULL, srs_id INTEGER NOT NULL PRIMARY KEY, organization TEXT NOT NULL,
    organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL, description TEXT
);
CREATE TABLE gpkg_contents (
    table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL, identifier TEXT UNIQUE,
    description TEXT DEFAULT '', last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
    CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id)
);
CREATE TABLE gpkg_geometry_columns (
    table_name TEXT NOT NULL, column_name TEXT NOT NULL, geometry_type_name TEXT NOT NULL,
    srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL,
    CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
    CONSTRAINT uk_gc_table_name UNIQUE (table_name),
    CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
    CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys (srs_id)
);
"""
_WGS84_WKT = (
    'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,AUTHORITY["EPSG","7030"]],'
    'AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,AUTHORITY["EPSG","8901"]],UNIT["degree",0.0174532925199433,'
    'AUTHORITY["EPSG","9122"]],AXIS["Latitude",NORTH],AXIS["Longitude",EAST],AUTHORITY["EPSG","4326"]]'
)
_SQL_TYPES = {np.int64: "INTEGER", np.bool_: "BOOLEAN", np.float64: "DOUBLE", np.float32: "FLOAT", np.object_: "BLOB"}


def create_geopackage(con: sqlite3.Connection, crs: CRS | None, layers: dict[str, tuple[dict[str, Any], str]]) -> int:
    """Make the empty database behind ``con`` a GeoPackage with empty polygon ``layers`` in ``crs``.

    ``layers`` maps a layer name to (``{field: numpy type}``, description); every layer gets an
    ``fid`` key and a ``geom`` polygon column. Returns the ``srs_id`` of ``crs`` in the GeoPackage
    (its EPSG code, 100000 for a CRS without one, -1 for none), which geometry blobs must carry.
    """
    con.execute("PRAGMA application_id = 1196444487")  # "GPKG"
    con.execute("PRAGMA user_version = 10200")
    for statement in _TABLES.split(";"):
        if statement.strip():
            con.execute(statement)
    srs: list[tuple[str, int, str, int, str, str | None]] = [
        ("Undefined Cartesian SRS", -1, "NONE", -1, "undefined", "undefined Cartesian coordinate reference system"),
        ("Undefined geographic SRS", 0, "NONE", 0, "undefined", "undefined geographic coordinate reference system"),
        ("WGS 84 geodetic", 4326, "EPSG", 4326, _WGS84_WKT, "longitude/latitude coordinates in decimal degrees"),
    ]
    srs_id = -1
    if crs is not None:
        epsg = crs.to_epsg()
        srs_id = epsg if epsg is not None else 100000
        if srs_id != 4326:
            wkt = crs.to_wkt()
            name = wkt.split('"')[1] if '"' in wkt else "source CRS"
            srs.append((name, srs_id, "EPSG" if epsg else "NONE", srs_id, wkt, None))
    con.executemany("INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)", srs)
    for layer, (fields, description) in layers.items():
        columns = ", ".join(f'"{name}" {_SQL_TYPES[kind]}' for name, kind in fields.items())
        con.execute(
            f'CREATE TABLE "{layer}" ("fid" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "geom" POLYGON, {columns})'
        )
        con.execute(
            "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, srs_id) "
            "VALUES (?, 'features', ?, ?, ?)",
            (layer, layer, description, srs_id),
        )
        con.execute("INSERT INTO gpkg_geometry_columns VALUES (?, 'geom', 'POLYGON', ?, 0, 0)", (layer, srs_id))
    return srs_id


def register_table(con: sqlite3.Connection, table: str, description: str) -> None:
    """List a plain (attributes) table in ``gpkg_contents``, as the GeoPackage standard asks."""
    con.execute(
        "INSERT INTO gpkg_contents (table_name, data_type, identifier, description) VALUES (?, 'attributes', ?, ?)",
        (table, table, description),
    )


def set_extent(con: sqlite3.Connection, layer: str, boxes: np.ndarray, transform: Affine) -> None:
    """Record the map extent of pixel boxes ``(N, 4)`` (x0, y0, x1, y1) mapped through ``transform`` as
    the extent of ``layer`` in ``gpkg_contents`` (NULL for no boxes), and stamp its ``last_change``."""
    extent: tuple[float | None, ...] = (None, None, None, None)
    if len(boxes):
        t = transform
        xs = boxes[:, [0, 2, 0, 2]]
        ys = boxes[:, [1, 1, 3, 3]]
        mx, my = t.a * xs + t.b * ys + t.c, t.d * xs + t.e * ys + t.f
        extent = (float(mx.min()), float(my.min()), float(mx.max()), float(my.max()))
    con.execute(
        "UPDATE gpkg_contents SET min_x = ?, min_y = ?, max_x = ?, max_y = ?, "
        "last_change = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE table_name = ?",
        (*extent, layer),
    )


__all__ = ["create_geopackage", "polygon_blobs", "register_table", "set_extent"]
