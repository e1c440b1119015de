"""A job's source: one path or URL, or a list of them read as one mosaic (:func:`lazytiles.mosaic`).

Every source of a list must pass the worker's ``--allow-source`` prefixes, like a single one. A job
cannot name a STAC file: its asset hrefs would be read without passing the allow-list; send the
assets' paths or URLs as a list instead.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgumentError
from ..sources import open as open_source
from ..sources.base import TileSource
from ..sources.http import redact
from ..sources.scenes import mosaic

#: Most sources one job may list.
MAX_SOURCES = 256

#: What a job's ``source`` must be (for error messages).
DESCRIBED = (
    "a path or URL lt.open accepts (a raster, or an XYZ template with {z}/{x}/{y}), or a list of "
    f"at most {MAX_SOURCES} rasters read as one mosaic (the first on top)"
)


def parse_source(value: Any, where: str, error: type[InvalidArgumentError]) -> str | tuple[str, ...]:
    """A job's ``source`` field checked: a non-empty string, or a non-empty list of them; else ``error``."""
    if isinstance(value, list) and 0 < len(value) <= MAX_SOURCES and all(_text(v) for v in value):
        return tuple(value) if len(value) > 1 else value[0]
    if _text(value):
        return str(value)
    shown = f"a list of {len(value)}" if isinstance(value, list) else f"a value of type {type(value).__name__}"
    raise error(f"{where}: 'source' must be {DESCRIBED}, got {shown}")


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def each_source(source: str | tuple[str, ...]) -> tuple[str, ...]:
    """The paths or URLs of a job's source, one or several."""
    return (source,) if isinstance(source, str) else source


def source_text(source: str | tuple[str, ...]) -> str:
    """A job's source for messages and recipes, credentials masked: the paths or URLs joined by ', '."""
    return ", ".join(redact(s) for s in each_source(source))


def open_job_source(source: str | tuple[str, ...], zoom: int | None) -> TileSource:
    """The source a job names: ``lt.open`` of it, or the mosaic of several."""
    if isinstance(source, str):
        return open_source(source, zoom=zoom)
    return mosaic([open_source(s, zoom=zoom) for s in source])
