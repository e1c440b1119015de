"""XYZ tile templates: parsing and checking them, and reading local tile files safely. No network."""

from __future__ import annotations

import os
import re
import stat
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from .http import redact

#: Deepest zoom accepted: 2**30 tiles a side (sub-centimetre pixels).
MAX_ZOOM = 30
FIELD = re.compile(r"\{([^{}]*)\}")
KNOWN_FIELDS = ("z", "x", "y", "-y", "q", "s")


def check_zoom(zoom: Any) -> int:
    """``zoom`` as an int, or an error naming the accepted range."""
    if isinstance(zoom, bool) or not isinstance(zoom, int | np.integer) or not 0 <= zoom <= MAX_ZOOM:
        raise InvalidArgumentError(f"zoom must be an integer from 0 to {MAX_ZOOM}, got {zoom!r}")
    return int(zoom)


#: Most bytes one local tile file may have (remote tiles: ``HttpClient.max_body_bytes``).
LOCAL_MAX_BYTES = 32 * 2**20


def read_file(path: str, limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them (else an OSError): a template
    naming a device, a FIFO or a huge file cannot make a read last forever."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
    with open(fd, "rb", buffering=0) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file")
        body = f.read(limit + 1)
    if len(body) > limit:
        raise OSError(0, f"over {limit} bytes (max_body_bytes)")
    return body


def parse_template(template: Any) -> list[str]:
    """The template split into literal text (even positions) and field names (odd positions)."""
    if not isinstance(template, str):
        raise InvalidArgumentError(
            f"template must be a URL or path with {{z}}, {{x}} and {{y}}, got {type(template).__name__} {template!r}"
        )
    parts = FIELD.split(template)
    fields = set(parts[1::2])
    shown = redact(template)
    unknown = sorted(fields - set(KNOWN_FIELDS))
    if unknown:
        raise InvalidArgumentError(
            f"template {shown!r} has unknown field{'s' * (len(unknown) > 1)} "
            f"{', '.join('{' + f + '}' for f in unknown)}; tile templates use {{z}}, {{x}}, {{y}}, "
            "{-y} (TMS rows), {q} (quadkey) and {s} (subdomain)"
        )
    xy = "x" in fields and ("y" in fields or "-y" in fields)
    if not (xy or "q" in fields) or (xy and "z" not in fields):
        raise InvalidArgumentError(
            f"template {shown!r} must hold {{z}}, {{x}} and {{y}} (or {{-y}}), or a {{q}} quadkey, "
            "e.g. 'https://tile.example.org/{z}/{x}/{y}.png'"
        )
    if "{" in "".join(parts[0::2]) or "}" in "".join(parts[0::2]):
        raise InvalidArgumentError(f"template {shown!r} has an unmatched '{{' or '}}'; fields look like {{z}}")
    scheme = template.split("://", 1)[0].lower() if "://" in template else ""
    if scheme not in ("", "http", "https", "file"):
        raise InvalidArgumentError(
            f"template {shown!r} uses {scheme}://; XYZ tiles are read over http://, https:// or from local "
            "paths (for s3:// or gs:// rasters use lt.open on the raster itself)"
        )
    return parts
