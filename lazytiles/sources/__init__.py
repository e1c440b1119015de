"""Sources: where tiles come from. ``lt.open`` picks the kind from the path."""

from __future__ import annotations

import os
import re
from typing import Any

from ..cache import TileCache
from ..errors import InvalidArgumentError
from .array import ArraySource
from .base import TileSource
from .raster import RasterSource
from .xyz import XYZSource

_XYZ_FIELDS = re.compile(r"\{(z|x|y|-y|q|s)\}")


def open(  # lt.open mirrors rasterio.open
    path: str | os.PathLike[str],
    *,
    zoom: int | None = None,
    cache: TileCache | None = None,
    **options: Any,
) -> TileSource:
    """Open a raster or a tile service as a tiled source; reads metadata only, no pixels.

    Parameters
    ----------
    path
        A raster rasterio opens (GeoTIFF, COG, VRT, ``/vsicurl/...``) gives a :class:`RasterSource`;
        a URL or path template with ``{z}``, ``{x}``, ``{y}`` (or ``{-y}``, ``{q}``, ``{s}``) gives
        an :class:`~lazytiles.XYZSource` and needs ``zoom``.
    zoom
        Zoom level of a tile service.
    cache
        The :class:`~lazytiles.TileCache` to read through (default: the process-wide one).
    **options
        Keyword options of the source class: see :class:`RasterSource` and :class:`XYZSource`.

    Examples
    --------
    >>> import lazytiles as lt
    >>> lt.open("no/such/scene.tif")
    Traceback (most recent call last):
    ...
    lazytiles.errors.SourceNotFoundError: no such file: 'no/such/scene.tif'; ...
    """
    if isinstance(path, TileSource):
        return path
    if not isinstance(path, str | os.PathLike):
        raise InvalidArgumentError(
            f"path must be a file path, URL or tile-URL template, got {type(path).__name__} {path!r}"
        )
    text = os.fspath(path)
    if _XYZ_FIELDS.search(text):
        if zoom is None:
            raise InvalidArgumentError(
                f"{text!r} is a tile-URL template; give its zoom level, e.g. lt.open(url, zoom=16)"
            )
        return XYZSource(text, zoom=zoom, cache=cache, **options)
    if zoom is not None:
        raise InvalidArgumentError(
            f"zoom={zoom!r} only applies to tile-URL templates with {{z}}/{{x}}/{{y}}, and {text!r} has none; "
            "leave zoom out to open it as a raster (rasterio picks an overview with its own options)"
        )
    return RasterSource(text, cache=cache, **options)


__all__ = ["ArraySource", "RasterSource", "TileSource", "XYZSource", "open"]
