"""The messages of lazytiles streams: region jobs in, detections out; pure JSON, no I/O.

**Jobs** are what a ``lazytiles worker`` takes from a topic. A job names a source, the model to run
and the window parameters, in the words of the ``lazytiles detect`` command::

    {"id": "field-7", "source": "https://host/{z}/{x}/{y}.png", "zoom": 17,
     "bounds": [13.40, 52.50, 13.42, 52.52], "bounds_crs": "EPSG:4326",
     "size": 512, "overlap": 0.25, "model": "mypkg.models:detector", "batch_size": 8}

Only ``id``, ``source`` and ``model`` are required. ``region`` is a GeoJSON geometry in lon/lat
(RFC 7946). ``res`` (and ``crs``) read the source on that grid, as ``src.at(res, crs)`` does.
Parsing opens and loads nothing, so a bad message is rejected before any work starts: whatever the
bytes (not JSON, huge numbers, deep nesting), :func:`parse_job` raises :class:`JobError` and nothing
else. An ``id`` is at most 200 printable characters without ``:`` (keys are built from it).

**Results** are GeoJSON FeatureCollections (RFC 7946: lon/lat), one per window, keyed
``"{run_id}:{window_index}"``. Each Feature is one box with ``score``, ``label``, ``window_index``,
``partial`` and ``box`` (x0, y0, x1, y1 in the source's pixel grid) as properties; the collection's
``lazytiles`` member says which run, window, source and recipe it belongs to, with the source's
``crs`` and ``transform`` so :func:`decode` rebuilds the exact :class:`~lazytiles.Detections`. The
text is canonical (sorted keys, no spaces): a window published twice gives the same bytes, so a
consumer deduplicates by key.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio.warp
from affine import Affine
from rasterio.crs import CRS

from ..detections import Detections
from ..errors import InvalidArgumentError

__all__ = [
    "Job",
    "JobError",
    "decode",
    "done_message",
    "object_messages",
    "parse_job",
    "window_message",
]

LONLAT = CRS.from_epsg(4326)

#: The fields a job may carry, with what each must be (for error messages).
FIELDS: dict[str, str] = {
    "id": "a non-empty string of at most 200 printable characters without ':' (results are keyed by it)",
    "source": "a path or URL lt.open accepts (a raster, or an XYZ template with {z}/{x}/{y})",
    "model": "'pkg.module:factory' or the path of a TorchScript file",
    "zoom": "an integer zoom level (XYZ sources)",
    "bounds": "[left, bottom, right, top]",
    "bounds_crs": "a CRS string such as 'EPSG:4326'",
    "region": "a GeoJSON geometry in lon/lat (RFC 7946)",
    "size": "window size in pixels: an integer or [rows, cols]",
    "overlap": "a fraction in [0, 1)",
    "batch_size": "a positive integer",
    "res": "a positive pixel size, or [x, y], in the units of 'crs' (the source read on that grid, src.at)",
    "crs": "with 'res': the grid's CRS, such as 'EPSG:32631' (default: the source's)",
}
REQUIRED = ("id", "source", "model")


class JobError(InvalidArgumentError):
    """A job message cannot be run as it is: not JSON, a missing or bad field, or an unknown key."""


@dataclass(frozen=True)
class Job:
    """One region job, checked. Make it with :func:`parse_job`.

    ``region`` stays the GeoJSON mapping it arrived as (frozen as canonical JSON text in
    ``region_json``), so a job is hashable and its recipe is exactly what was sent.
    """

    id: str
    source: str
    model: str
    zoom: int | None = None
    bounds: tuple[float, float, float, float] | None = None
    bounds_crs: str | None = None
    region_json: str | None = None
    size: int | tuple[int, int] = 512
    overlap: float = 0.25
    batch_size: int = 8
    res: tuple[float, float] | None = None
    crs: str | None = None

    @property
    def region(self) -> dict[str, Any] | None:
        """The region as a GeoJSON geometry mapping (lon/lat), or None."""
        return None if self.region_json is None else json.loads(self.region_json)

    @property
    def slug(self) -> str:
        """A file-name-safe name for this job's run store: readable part of the id plus a hash of it."""
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", self.id).strip("._")[:60] or "job"
        return f"{readable}-{hashlib.sha1(self.id.encode()).hexdigest()[:10]}"

    @property
    def region_sha256(self) -> str | None:
        """A hash of the region (its canonical JSON): what result messages carry instead of the region."""
        return None if self.region_json is None else hashlib.sha256(self.region_json.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-ready fields, defaults filled in (what the run recipe records)."""
        return {
            "id": self.id,
            "source": self.source,
            "model": self.model,
            "zoom": self.zoom,
            "bounds": None if self.bounds is None else list(self.bounds),
            "bounds_crs": self.bounds_crs,
            "region": self.region,
            "size": self.size if isinstance(self.size, int) else list(self.size),
            "overlap": self.overlap,
            "batch_size": self.batch_size,
            "res": None if self.res is None else list(self.res),
            "crs": self.crs,
        }


def parse_job(message: bytes | str | dict[str, Any]) -> Job:
    """Parse and check one job message; no I/O.

    Parameters
    ----------
    message
        The message value: JSON bytes or text, or an already decoded mapping.

    Returns
    -------
    Job

    Raises
    ------
    JobError
        The message is not a JSON object, a required field is missing, a field has the wrong type or
        value, or a field is unknown (a typo would otherwise be ignored silently). Also a ``ValueError``.

    Examples
    --------
    >>> job = parse_job(b'{"id": "a1", "source": "scene.tif", "model": "pkg.mod:make", "size": 256}')
    >>> job.size, job.overlap, job.batch_size
    (256, 0.25, 8)
    >>> parse_job('{"id": "a1", "source": "scene.tif"}')
    Traceback (most recent call last):
    ...
    lazytiles.streams.messages.JobError: job 'a1' has no 'model' field; give 'pkg.module:factory' or ...
    """
    if isinstance(message, bytes | bytearray | memoryview):
        try:
            message = bytes(message).decode("utf-8")
        except UnicodeDecodeError as err:
            raise JobError(f"job message is not UTF-8 text ({err}); send a JSON object") from err
    if isinstance(message, str):
        try:
            fields = json.loads(message)
        except json.JSONDecodeError as err:
            raise JobError(
                f"job message is not valid JSON ({err.msg} at character {err.pos}); send a JSON object"
            ) from None
        except (ValueError, RecursionError) as err:  # a number of thousands of digits, deep nesting
            kind = "nested too deeply" if isinstance(err, RecursionError) else "not valid JSON"
            raise JobError(f"job message is {kind} ({type(err).__name__}); send a plain JSON object") from None
    else:
        fields = message
    if not isinstance(fields, dict):
        raise JobError(f"a job must be a JSON object with 'id', 'source' and 'model', got {type(fields).__name__}")

    job_id = fields.get("id")
    if (
        not isinstance(job_id, str)
        or not job_id.strip()
        or len(job_id) > 200
        or ":" in job_id
        or not job_id.isprintable()
    ):
        raise JobError(f"job 'id' must be {FIELDS['id']}, got {_shown(job_id)}")
    where = f"job {job_id!r}"
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        names = ", ".join(_shown(name, 40) for name in unknown[:5]) + more
        raise JobError(f"{where} has unknown field(s) {names}; known fields: {', '.join(FIELDS)}")
    for name in REQUIRED[1:]:
        if name not in fields or fields[name] is None:
            raise JobError(f"{where} has no {name!r} field; give {FIELDS[name]}")

    def text(name: str) -> str:
        value = fields.get(name)
        if not isinstance(value, str) or not value.strip():
            raise JobError(f"{where}: {name!r} must be {FIELDS[name]}, got {_shown(value)}")
        return value

    def integer(name: str, low: int) -> int | None:  # None: absent or null, so the default
        value = fields.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise JobError(f"{where}: {name!r} must be {FIELDS[name]} (>= {low}), got {_shown(value)}")
        return value

    size: int | tuple[int, int]
    pair = fields.get("size")
    if isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        size = (pair[0], pair[1])
        if min(size) < 1:
            raise JobError(f"{where}: 'size' must be {FIELDS['size']}, got {_shown(pair)}")
    else:
        size = integer("size", 1) or 512

    overlap = fields.get("overlap", 0.25)
    if isinstance(overlap, bool) or not isinstance(overlap, int | float) or not 0 <= overlap < 1:
        raise JobError(f"{where}: 'overlap' must be {FIELDS['overlap']}, got {_shown(overlap)}")

    bounds: tuple[float, float, float, float] | None = None
    given = fields.get("bounds")
    if given is not None:
        ok = isinstance(given, list) and len(given) == 4
        ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in given)
        if not ok or not (given[0] < given[2] and given[1] < given[3]):
            raise JobError(
                f"{where}: 'bounds' must be {FIELDS['bounds']} with left < right and bottom < top, got {_shown(given)}"
            )
        bounds = (float(given[0]), float(given[1]), float(given[2]), float(given[3]))

    res, grid_crs = fields.get("res"), fields.get("crs")
    if res is not None:
        res = [res] * 2 if isinstance(res, int | float) else res
        ok = isinstance(res, list) and len(res) == 2
        if not ok or not all(isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < math.inf for v in res):
            raise JobError(f"{where}: 'res' must be {FIELDS['res']}, got {_shown(fields['res'])}")
    if grid_crs is not None and (res is None or len(text("crs")) > 2000):
        raise JobError(f"{where}: 'crs' must come with 'res' and be at most 2000 characters, got {_shown(grid_crs)}")

    region = fields.get("region")
    region_json = None
    if region is not None:
        if not isinstance(region, dict) or not isinstance(region.get("type"), str):
            raise JobError(f"{where}: 'region' must be {FIELDS['region']}, got a {type(region).__name__}")
        region_json = json.dumps(region, sort_keys=True, separators=(",", ":"))

    return Job(
        id=job_id,
        source=text("source"),
        model=text("model"),
        zoom=integer("zoom", 0),
        bounds=bounds,
        bounds_crs=None if fields.get("bounds_crs") is None else text("bounds_crs"),
        region_json=region_json,
        size=size,
        overlap=float(overlap),
        batch_size=integer("batch_size", 1) or 8,
        res=None if res is None else (float(res[0]), float(res[1])),
        crs=grid_crs,
    )


def _shown(value: Any, limit: int = 80) -> str:
    """``value`` for an error message: its repr cut to ``limit`` characters (a job can be megabytes)."""
    text = repr(value) if isinstance(value, str | int | float | bool | type(None)) else f"a {type(value).__name__}"
    if isinstance(value, list | tuple) and len(repr(value)) <= limit:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- results ---------------------------------------------------------------------------------------


def _dumps(value: Any) -> bytes:
    """Canonical JSON: the same value always gives the same bytes (duplicates compare equal)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def features(dets: Detections) -> list[dict[str, Any]]:
    """One GeoJSON Feature per box: a lon/lat polygon (counter-clockwise, RFC 7946) and properties.

    The polygon is the box's four corners carried to EPSG:4326; without a CRS the geometry is null
    (the pixel ``box`` property is always there).
    """
    n = len(dets)
    if n == 0:
        return []
    x0, y0, x1, y1 = dets.boxes.T
    # corners in pixels, counter-clockwise on a north-up map: lower-left, lower-right, upper-right, upper-left
    px = np.stack([x0, x1, x1, x0], axis=1).ravel()
    py = np.stack([y1, y1, y0, y0], axis=1).ravel()
    t = dets.transform
    mx, my = t.a * px + t.b * py + t.c, t.d * px + t.e * py + t.f
    rings: list[Any] = [None] * n
    if dets.crs is not None:
        if dets.crs != LONLAT:
            mx, my = (np.asarray(v) for v in rasterio.warp.transform(dets.crs, LONLAT, mx, my))
        lon, lat = mx.reshape(n, 4), my.reshape(n, 4)
        area = np.sum(lon * np.roll(lat, -1, axis=1) - np.roll(lon, -1, axis=1) * lat, axis=1)
        for i in range(n):
            ring = [[float(a), float(b)] for a, b in zip(lon[i], lat[i])]
            if area[i] < 0:  # a south-up or mirrored grid turns the ring around
                ring.reverse()
            rings[i] = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
    return [
        {
            "type": "Feature",
            "geometry": rings[i],
            "properties": {
                "score": float(dets.scores[i]),
                "label": int(dets.labels[i]),
                "window_index": int(dets.window_index[i]),
                "partial": bool(dets.partial[i]),
                "box": [float(v) for v in dets.boxes[i]],
            },
        }
        for i in range(n)
    ]


def _collection(dets: Detections, meta: dict[str, Any]) -> bytes:
    t = dets.transform
    crs = None if dets.crs is None else dets.crs.to_string()
    meta = {**meta, "crs": crs, "transform": [t.a, t.b, t.c, t.d, t.e, t.f]}
    return _dumps({"type": "FeatureCollection", "features": features(dets), "lazytiles": meta})


def window_message(
    dets: Detections,
    *,
    run_id: str,
    window_index: int,
    source: str,
    recipe: Mapping[str, Any],
    window: tuple[int, int, int, int] | None = None,
) -> tuple[bytes, bytes]:
    """``(key, value)`` of one window's result: key ``"{run_id}:{window_index}"``, value a GeoJSON
    FeatureCollection of its boxes (see the module docstring). An empty window is an empty collection,
    so a consumer can tell "nothing found" from "not processed yet".

    Examples
    --------
    >>> import lazytiles as lt
    >>> from affine import Affine
    >>> dets = lt.Detections([[10, 20, 30, 40]], [0.9], [2], [7], transform=Affine(1e-4, 0, 13.4, 0, -1e-4, 52.5),
    ...                      crs="EPSG:4326")
    >>> key, value = window_message(dets, run_id="job-1", window_index=7, source="scene.tif", recipe={})
    >>> key
    b'job-1:7'
    >>> decode(value) == dets
    True
    """
    meta = {
        "kind": "window",
        "run_id": run_id,
        "window_index": int(window_index),
        "window": None if window is None else [int(v) for v in window],
        "source": source,
        "recipe": dict(recipe),
    }
    return f"{run_id}:{int(window_index)}".encode(), _collection(dets, meta)


def object_messages(
    merged: Detections, *, run_id: str, source: str, recipe: Mapping[str, Any]
) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` per merged object: key ``"{run_id}:merged:{k}"``, value a FeatureCollection
    holding that one object, with ``objects`` (how many the run has) so a consumer knows when it has
    all of them. Objects are numbered in the order the merge returned them."""
    n = len(merged)
    out = []
    for k in range(n):
        meta = dict(kind="object", run_id=run_id, object_index=k, objects=n, source=source, recipe=dict(recipe))
        out.append((f"{run_id}:merged:{k}".encode(), _collection(merged[k], meta)))
    return out


def done_message(
    run_id: str, *, windows: int, failed: Mapping[int, str], missing: int = 0, objects: int | None = None
) -> tuple[bytes, bytes]:
    """``(key, value)`` saying a run's messages are all sent: key ``"{run_id}:done"``, an empty
    FeatureCollection whose ``lazytiles`` member counts the run's ``windows``, lists the ``failed``
    ones with their reasons, counts those ``missing`` (not run yet: a run published part-way) and,
    for merged publishing, the ``objects`` sent."""
    reasons = {str(k): str(v) for k, v in sorted(failed.items())}
    meta = dict(kind="done", run_id=run_id, windows=int(windows), failed=reasons, missing=int(missing), objects=objects)
    return f"{run_id}:done".encode(), _dumps({"type": "FeatureCollection", "features": [], "lazytiles": meta})


def decode(value: bytes | str | Mapping[str, Any]) -> Detections:
    """The :class:`~lazytiles.Detections` a result message holds, exactly as published (pixel boxes,
    scores, labels, window indices, georeferencing): feed many to ``lt.merge`` to merge on the consumer side.

    Raises
    ------
    InvalidArgumentError
        The value is not a lazytiles result message.
    """
    doc = json.loads(value) if isinstance(value, bytes | str) else value
    meta = doc.get("lazytiles") if isinstance(doc, Mapping) else None
    if not isinstance(meta, Mapping) or doc.get("type") != "FeatureCollection":
        raise InvalidArgumentError(
            "not a lazytiles result message (a GeoJSON FeatureCollection with a 'lazytiles' member)"
        )
    props = [f["properties"] for f in doc["features"]]
    t = meta.get("transform")
    return Detections(
        [p["box"] for p in props],
        [p["score"] for p in props],
        [p["label"] for p in props],
        [p["window_index"] for p in props],
        partial=[p["partial"] for p in props],
        transform=None if t is None else Affine(*t),
        crs=meta.get("crs"),
    )
