"""Pictures of windows, regions and detections, for Jupyter and for files.

Everything here turns pixels into an RGB(A) picture and draws on it; nothing changes the data.
``lt.Window`` shows itself as a PNG and as an HTML card, a ``WindowSequence`` and every source as an
HTML summary (no pixels read), ``wins.preview()`` as an overview of the region with the window grid,
and :func:`show` draws :class:`~lazytiles.Detections` over any of them. All pictures are
``PIL.Image.Image`` objects, which Jupyter displays and ``.save("x.png")`` writes.

How pixels become colours (:func:`to_rgba`):

- bands: 1 is grey; 3 are red, green, blue; with 2 or 4 bands the last one is an alpha channel when it
  is a uint8 0/255 mask (PNG tiles decoded with alpha), otherwise it is ignored (RGB + near-infrared
  shows as RGB); more than 4 show the first three.
- values: uint8 as they are; every other dtype is stretched per band so its 2nd..98th percentile of
  valid pixels spans 0..255.
- nodata (the source's ``nodata`` in every band) and non-finite floats are transparent.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio.errors
import rasterio.warp
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window as PixelWindow

from ..errors import InvalidArgumentError
from ..sources.base import TileSource
from ..windowing.sequence import Window, WindowSequence
from .picture import _as_detections, boxes_to_image, draw_boxes, png_bytes, shrink, to_image

if TYPE_CHECKING:
    from PIL import Image as PILImage

#: ``_repr_png_`` shrinks windows larger than this (pixels a side) so notebooks stay small.
REPR_MAX = 1024
#: Width of the picture in a Window's HTML card, in pixels.
HTML_THUMB = 320
#: Above this many windows, a preview outlines the area instead of every window.
GRID_MAX_WINDOWS = 50_000
GRID_COLOUR = (255, 255, 0, 150)


# -- windows ----------------------------------------------------------------------------------------------


def window_image(
    w: Window, detections: Any = None, *, max_size: int | None = REPR_MAX, scores: bool = True
) -> PILImage.Image:
    """A picture of a window's pixels, shrunk to ``max_size`` a side, with ``detections`` drawn on it.

    Detections are placed by their georeferencing (``dets.transform``, ``dets.crs``), so boxes from
    ``lt.detect`` over the same source land on their objects whichever window they came from.
    """
    image = shrink(to_image(w.data, getattr(w, "nodata", None)), max_size)
    dets = _as_detections(detections)
    if dets is None:
        return image
    sx, sy = w.data.shape[2] / image.width, w.data.shape[1] / image.height
    to_px = ~(w.transform @ Affine.scale(sx, sy))
    boxes = boxes_to_image(dets, to_px, w.crs)
    return draw_boxes(image, boxes, dets.labels, dets.scores if scores else None)


def window_png(w: Window) -> bytes:
    """PNG bytes of a window (``Window._repr_png_``)."""
    return png_bytes(window_image(w))


def lonlat_bounds(bounds: Sequence[float], crs: CRS | None) -> tuple[float, float, float, float] | None:
    """(west, south, east, north) in degrees of ``bounds`` in ``crs``; None without a CRS or when
    PROJ cannot take it to lon/lat."""
    if crs is None:
        return None
    if crs == CRS.from_epsg(4326):
        west, south, east, north = bounds
        return west, south, east, north
    try:
        lonlat: tuple[float, float, float, float] = rasterio.warp.transform_bounds(
            crs, "EPSG:4326", *bounds, densify_pts=21
        )
        return lonlat
    except (rasterio.errors.RasterioError, ValueError):  # a CRS PROJ cannot take to lon/lat
        return None


def _fmt_bounds(bounds: Sequence[float] | None, digits: int = 2) -> str:
    if bounds is None:
        return "—"
    return "(" + ", ".join(f"{v:.{digits}f}" for v in bounds) + ")"


def _crs_name(crs: CRS | None) -> str:
    return "none" if crs is None else crs.to_string()


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table style='border-collapse:collapse'>{cells}</table>"


def _img_tag(image: PILImage.Image, width: int) -> str:
    data = base64.b64encode(png_bytes(image)).decode("ascii")
    return f"<img src='data:image/png;base64,{data}' width='{width}' style='image-rendering:pixelated'/>"


def window_html(w: Window) -> str:
    """An HTML card of a window (``Window._repr_html_``): its picture, where it is and how it was read."""
    pw = w.window
    bands, rows, cols = w.data.shape
    table: list[tuple[str, Any]] = [
        ("window", w.index),
        (
            "pixel window",
            f"col_off={int(pw.col_off)}, row_off={int(pw.row_off)}, width={int(pw.width)}, height={int(pw.height)}",
        ),
        ("pixels", f"{bands} x {rows} x {cols} {w.data.dtype.name}"),
        (f"bounds ({_crs_name(w.crs)})", _fmt_bounds(w.bounds)),
        ("bounds (lon/lat)", _fmt_bounds(lonlat_bounds(w.bounds, w.crs), 6)),
    ]
    info = getattr(w, "read_info", None)
    if info is not None:
        table += [
            ("tiles used", len(info.tiles)),
            ("cache hits / misses", f"{info.hits} / {info.misses}"),
            ("read time", f"{info.seconds * 1000:.1f} ms"),
        ]
    thumb = window_image(w, max_size=HTML_THUMB)
    return (
        "<div style='display:flex;gap:1em;align-items:flex-start'>"
        f"{_img_tag(thumb, min(HTML_THUMB, thumb.width * 2))}{_table(table)}</div>"
    )


# -- sources and sequences --------------------------------------------------------------------------------


def _source_rows(src: TileSource) -> list[tuple[str, Any]]:
    th, tw = src.tile_shape
    rows: list[tuple[str, Any]] = [
        ("source", repr(src)),
        ("crs", _crs_name(src.crs)),
        ("size", f"{src.count} bands x {src.height} rows x {src.width} cols, {np.dtype(src.dtype).name}"),
        ("nodata", src.nodata),
        ("tiles", f"{src.grid.rows} x {src.grid.cols} of {th} x {tw} px"),
        ("resolution", f"{abs(src.transform.a):.6g} x {abs(src.transform.e):.6g}"),
    ]
    if src.needs_area:
        rows.append(("bounds", "the whole world at this zoom: give lt.windows bounds= or region="))
    else:
        rows += [
            (f"bounds ({_crs_name(src.crs)})", _fmt_bounds(src.bounds)),
            ("bounds (lon/lat)", _fmt_bounds(lonlat_bounds(src.bounds, src.crs), 6)),
        ]
    overviews = getattr(src, "overviews", None)
    if overviews is not None:
        rows.append(("overviews", ", ".join(map(str, overviews)) or "none"))
    return rows


def _cache_row(src: TileSource) -> tuple[str, str]:
    s = src.cache.stats()
    return (
        "tile cache",
        f"{s['hits']} hits, {s['misses']} misses, {s['tiles']} tiles, "
        f"{s['nbytes'] / 2**20:.1f} of {s['max_bytes'] / 2**20:.0f} MiB",
    )


def source_html(src: TileSource) -> str:
    """An HTML summary of a source (``_repr_html_`` of every source); reads no pixels."""
    return f"<b>{html.escape(type(src).__name__)}</b>" + _table([*_source_rows(src), _cache_row(src)])


def sequence_html(seq: WindowSequence) -> str:
    """An HTML summary of a window sequence (``WindowSequence._repr_html_``); reads no pixels."""
    h, w = seq.size
    sh, sw = seq.stride
    n_rows, n_cols = seq.plan.shape
    area = seq.area
    src = seq.source
    rows: list[tuple[str, Any]] = [
        ("windows", f"{len(seq)} (of a {n_rows} x {n_cols} grid)"),
        ("window size", f"{h} x {w} px"),
        ("stride", f"{sh} x {sw} px (overlap {1 - sh / h:.0%} x {1 - sw / w:.0%})"),
        (
            "area (pixels)",
            f"col_off={int(area.col_off)}, row_off={int(area.row_off)}, "
            f"width={int(area.width)}, height={int(area.height)}",
        ),
        (f"bounds ({_crs_name(src.crs)})", _fmt_bounds(seq.bounds)),
        ("bounds (lon/lat)", _fmt_bounds(lonlat_bounds(seq.bounds, src.crs), 6)),
    ]
    rows += [r for r in _source_rows(src) if not r[0].startswith("bounds")]
    rows.append(_cache_row(src))
    return "<b>WindowSequence</b>" + _table(rows) + "<i>wins.preview() draws the region and its windows</i>"


# -- regions -----------------------------------------------------------------------------------------------


def _region_picture(
    src: TileSource,
    area: PixelWindow | None,
    max_size: int,
    windows: np.ndarray | None,
    detections: Any,
    scores: bool,
) -> PILImage.Image:
    from PIL import Image, ImageDraw

    data, to_source = src.overview(area, max_size)
    image = to_image(data, src.nodata).convert("RGBA")
    to_px = ~to_source
    if windows is not None and len(windows):
        overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        c, r, w, h = (windows[:, i].astype(np.float64) for i in range(4))
        if len(windows) > GRID_MAX_WINDOWS:  # too many to tell apart: outline the area they cover
            c, r, w, h = (np.array([v]) for v in (c.min(), r.min(), (c + w).max() - c.min(), (r + h).max() - r.min()))
        x0, y0 = to_px.a * c + to_px.c, to_px.e * r + to_px.f
        x1, y1 = to_px.a * (c + w) + to_px.c, to_px.e * (r + h) + to_px.f
        for box in zip(x0, y0, np.maximum(x0, x1 - 1), np.maximum(y0, y1 - 1)):
            draw.rectangle(box, outline=GRID_COLOUR, width=1)
        image = Image.alpha_composite(image, overlay)
    dets = _as_detections(detections)
    if dets is not None:
        to_image_px = to_px @ ~src.transform
        boxes = boxes_to_image(dets, to_image_px, src.crs)
        image = draw_boxes(image, boxes, dets.labels, dets.scores if scores else None)
    return image


def sequence_preview(
    seq: WindowSequence,
    max_size: int = 1024,
    *,
    grid: bool = True,
    detections: Any = None,
    scores: bool = False,
) -> PILImage.Image:
    """An overview picture of the region a window sequence covers (``wins.preview()``).

    Read from overviews or lower zoom levels (see :meth:`lazytiles.TileSource.overview`), never pixel by pixel; the
    outlines of the sequence's windows are drawn when ``grid`` is true, and ``detections`` (an
    ``lt.Detections`` in the source's pixel grid, e.g. from ``lt.merge``) as boxes coloured by label.
    """
    windows = seq.pixel_windows() if grid else None
    return _region_picture(seq.source, seq.area, max_size, windows, detections, scores)


def source_preview(
    src: TileSource, max_size: int = 1024, *, detections: Any = None, scores: bool = False
) -> PILImage.Image:
    """An overview picture of a whole source, with ``detections`` drawn (see :func:`sequence_preview`)."""
    return _region_picture(src, None, max_size, None, detections, scores)


def show(
    obj: Any,
    detections: Any = None,
    *,
    max_size: int = 1024,
    grid: bool | None = None,
    scores: bool | None = None,
) -> PILImage.Image:
    """A picture of a window, a window sequence's region or a source, with detections drawn on it.

    The result is a ``PIL.Image.Image``: Jupyter displays it, ``.save("preview.png")`` writes it.

    Parameters
    ----------
    obj
        An ``lt.Window`` (its pixels), an ``lt.WindowSequence`` (an overview of its region with the
        window grid) or a source (an overview of all of it).
    detections
        ``lt.Detections`` (or a list of them) to draw: boxes are placed by their georeferencing, so
        ``lt.show(wins[17], dets[17])`` and ``lt.show(wins, lt.merge(dets))`` both work.
    max_size
        Longest side of the picture, in pixels.
    grid
        Draw the window grid over a sequence's region (default: when no detections are drawn).
    scores
        Write scores beside boxes (default: for a single window).

    Examples
    --------
    >>> import numpy as np, lazytiles as lt
    >>> src = lt.ArraySource(np.zeros((3, 64, 64), np.uint8))
    >>> wins = lt.windows(src, size=32)
    >>> dets = lt.Detections([[8, 8, 24, 24]], [0.9], [1], transform=src.transform)
    >>> lt.show(wins[0], dets).size
    (32, 32)
    >>> lt.show(wins).size
    (64, 64)
    """
    if isinstance(obj, Window):
        return window_image(obj, detections, max_size=max_size, scores=True if scores is None else scores)
    if isinstance(obj, WindowSequence):
        return sequence_preview(
            obj,
            max_size,
            grid=detections is None if grid is None else grid,
            detections=detections,
            scores=bool(scores),
        )
    if isinstance(obj, TileSource):
        return source_preview(obj, max_size, detections=detections, scores=bool(scores))
    raise InvalidArgumentError(
        f"lt.show takes an lt.Window, an lt.WindowSequence or a source, got {type(obj).__name__}"
    )


__all__ = [
    "lonlat_bounds",
    "sequence_html",
    "sequence_preview",
    "show",
    "source_html",
    "source_preview",
    "window_html",
    "window_image",
    "window_png",
]
