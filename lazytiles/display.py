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
import io
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio.errors
import rasterio.warp
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window as PixelWindow

from .detections import Detections
from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from .sources.base import TileSource
    from .sources.xyz import XYZSource
    from .windows import Window, WindowSequence

#: Percentiles of valid pixels mapped to 0 and 255 for dtypes other than uint8.
STRETCH = (2.0, 98.0)
#: Pixels sampled per band (at most) to find the stretch: enough for stable percentiles, cheap on big windows.
STRETCH_SAMPLE = 1 << 18
#: ``_repr_png_`` shrinks windows larger than this (pixels a side) so notebooks stay small.
REPR_MAX = 1024
#: Width of the picture in a Window's HTML card, in pixels.
HTML_THUMB = 320
#: Above this many windows, a preview outlines the area instead of every window.
GRID_MAX_WINDOWS = 50_000
#: Label colours (Tableau 10), by ``label % 10``.
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip
GRID_COLOUR = (255, 255, 0, 150)


# -- pixels to colours ---------------------------------------------------------------------------------


def _is_mask(band: np.ndarray) -> bool:
    return band.dtype == np.uint8 and bool(np.isin(band, (0, 255)).all())


def _valid(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """(rows, cols) bool: pixels holding data (not nodata in every band, all bands finite)."""
    valid = np.ones(data.shape[1:], dtype=bool)
    if data.dtype.kind == "f":
        valid &= np.isfinite(data).all(axis=0)
    if nodata is not None:
        if isinstance(nodata, float) and math.isnan(nodata):
            return valid  # NaN nodata is already excluded above
        valid &= ~(data == nodata).all(axis=0)
    return valid


def _stretch(band: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """One band to uint8: its STRETCH percentiles of valid pixels become 0 and 255."""
    if band.dtype == np.uint8:
        return band
    if band.dtype == np.bool_:
        return band.astype(np.uint8) * 255
    values = band[valid]
    if values.size == 0:
        return np.zeros(band.shape, dtype=np.uint8)
    step = max(1, values.size // STRETCH_SAMPLE)
    lo, hi = np.percentile(values[::step].astype(np.float64), STRETCH)
    if not hi > lo:  # a flat band: white where it holds more than 0, else black
        return np.where((band > lo) | (lo > 0), 255, 0).astype(np.uint8)
    scaled = (band.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.nan_to_num(np.clip(scaled, 0, 255), nan=0.0).astype(np.uint8)


def to_rgba(data: Any, nodata: float | None = None) -> np.ndarray:
    """An ``(rows, cols, 4)`` uint8 RGBA picture of band-first pixels; see the module docstring.

    Parameters
    ----------
    data
        ``(bands, rows, cols)`` or ``(rows, cols)`` pixels of any numeric dtype.
    nodata
        Value that marks pixels without data (transparent when every band holds it).

    Examples
    --------
    >>> import numpy as np
    >>> to_rgba(np.array([[[0, 1000], [2000, 9]]], np.uint16), nodata=9)[..., 3]
    array([[255, 255],
           [255,   0]], dtype=uint8)
    """
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[np.newaxis]
    if data.ndim != 3 or 0 in data.shape:
        raise InvalidArgumentError(f"pixels must be (bands, rows, cols) with no empty axis, got shape {data.shape}")
    if data.dtype.kind not in "biuf":
        raise InvalidArgumentError(f"cannot draw pixels of dtype {data.dtype}; pass numeric bands")
    alpha = None
    colour = data
    if data.shape[0] in (2, 4) and _is_mask(data[-1]):
        alpha, colour = data[-1], data[:-1]
    colour = colour[:3] if colour.shape[0] >= 3 else colour[:1]
    valid = _valid(colour, nodata)
    bands = [_stretch(b, valid) for b in colour]
    if len(bands) == 1:
        bands *= 3
    rgba = np.empty(data.shape[1:] + (4,), dtype=np.uint8)
    for i, band in enumerate(bands):
        rgba[..., i] = band
    rgba[..., 3] = np.where(valid, 255 if alpha is None else alpha, 0)
    return rgba


def to_image(data: Any, nodata: float | None = None) -> PILImage.Image:
    """A PIL picture of band-first pixels: RGB, or RGBA when some pixels are transparent."""
    from PIL import Image

    rgba = to_rgba(data, nodata)
    if (rgba[..., 3] == 255).all():
        return Image.fromarray(np.ascontiguousarray(rgba[..., :3]), "RGB")
    return Image.fromarray(rgba, "RGBA")


def png_bytes(image: PILImage.Image) -> bytes:
    """``image`` encoded as PNG."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _shrink(image: PILImage.Image, max_size: int | None) -> PILImage.Image:
    if max_size is None or max(image.size) <= max_size:
        return image
    scale = max_size / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, resample=_resampling().BILINEAR)


def _resampling() -> Any:
    from PIL import Image

    return Image.Resampling


# -- drawing boxes --------------------------------------------------------------------------------------


def label_colour(label: int) -> tuple[int, int, int]:
    """The colour boxes of ``label`` are drawn in."""
    return PALETTE[int(label) % len(PALETTE)]


def draw_boxes(
    image: PILImage.Image,
    boxes: Any,
    labels: Any = None,
    scores: Any = None,
    *,
    width: int = 2,
    text: bool | None = None,
) -> PILImage.Image:
    """A copy of ``image`` with boxes drawn on it: the one drawing routine every picture uses.

    Parameters
    ----------
    image
        The picture to draw on (not modified).
    boxes
        ``(N, 4)`` x0, y0, x1, y1 in the picture's pixels (x1, y1 exclusive); each outline is drawn
        ``width`` pixels wide just outside its box, so the object inside stays visible.
    labels, scores
        Per box: the label picks the colour (:func:`label_colour`); both are written beside the box.
    width
        Line width in pixels.
    text
        Write label and score beside each box (default: when there are at most 100 boxes).

    Examples
    --------
    >>> from PIL import Image
    >>> im = draw_boxes(Image.new("RGB", (20, 20)), [[4, 4, 10, 10]], labels=[1], text=False)
    >>> im.getpixel((3, 5)) == label_colour(1), im.getpixel((4, 5)), im.getpixel((15, 15))
    (True, (0, 0, 0), (0, 0, 0))
    """
    from PIL import ImageDraw

    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    labels = np.zeros(n, np.int64) if labels is None else np.asarray(labels).reshape(-1)
    scores = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if text is None:
        text = n <= 100
    out = image.convert("RGBA") if image.mode not in ("RGB", "RGBA") else image.copy()
    draw = ImageDraw.Draw(out)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if not np.isfinite([x0, y0, x1, y1]).all():
            continue
        colour = label_colour(int(labels[i]))
        # drawn just outside the box, so the object itself stays visible; x1/y1 are exclusive
        rect = (x0 - width, y0 - width, max(x0, x1 - 1) + width, max(y0, y1 - 1) + width)
        draw.rectangle(rect, outline=colour, width=width)
        if text:
            caption = f"{int(labels[i])}" if scores is None else f"{int(labels[i])} {scores[i]:.2f}"
            left, top, right, bottom = draw.textbbox((0, 0), caption)
            y = rect[1] - (bottom - top) - 2 if rect[1] - (bottom - top) - 2 >= 0 else rect[3] + 1
            draw.text((rect[0], y - top), caption, fill=colour)
    return out


def _boxes_to_image(dets: Detections, to_image_px: Affine, image_crs: CRS | None) -> np.ndarray:
    """Boxes of ``dets`` (in their own pixel grid) as pixels of a picture whose pixel->map transform
    is ``~to_image_px``; reprojected when both CRSs are known and differ."""
    b = dets.boxes
    if len(b) == 0:
        return np.zeros((0, 4))
    xs = np.stack([b[:, 0], b[:, 2], b[:, 0], b[:, 2]], axis=1)
    ys = np.stack([b[:, 1], b[:, 1], b[:, 3], b[:, 3]], axis=1)
    t = dets.transform
    mx, my = t.a * xs + t.b * ys + t.c, t.d * xs + t.e * ys + t.f
    if dets.crs is not None and image_crs is not None and dets.crs != image_crs:
        wx, wy = rasterio.warp.transform(dets.crs, image_crs, mx.ravel().tolist(), my.ravel().tolist())
        mx, my = np.asarray(wx).reshape(mx.shape), np.asarray(wy).reshape(my.shape)
    u = to_image_px
    px, py = u.a * mx + u.b * my + u.c, u.d * mx + u.e * my + u.f
    return np.stack([px.min(axis=1), py.min(axis=1), px.max(axis=1), py.max(axis=1)], axis=1)


def _as_detections(detections: Any) -> Detections | None:
    if detections is None or isinstance(detections, Detections):
        return detections
    if isinstance(detections, Iterable) and not isinstance(detections, str | bytes):
        items = list(detections)
        if all(isinstance(d, Detections) for d in items):
            return Detections.concat(items)
    raise InvalidArgumentError(
        f"detections must be an lt.Detections or a list of them, got {type(detections).__name__}; "
        "for one window of lt.detect pass dets[i], for a region pass lt.merge(dets)"
    )


# -- windows ----------------------------------------------------------------------------------------------


def window_image(
    w: Window, detections: Any = None, *, max_size: int | None = REPR_MAX, scores: bool = True
) -> PILImage.Image:
    """A picture of a window's pixels, shrunk to ``max_size`` a side, with ``detections`` drawn on it.

    Detections are placed by their georeferencing (``dets.transform``, ``dets.crs``), so boxes from
    ``lt.detect`` over the same source land on their objects whichever window they came from.
    """
    image = _shrink(to_image(w.data, getattr(w, "nodata", None)), max_size)
    dets = _as_detections(detections)
    if dets is None:
        return image
    sx, sy = w.data.shape[2] / image.width, w.data.shape[1] / image.height
    to_px = ~(w.transform @ Affine.scale(sx, sy))
    boxes = _boxes_to_image(dets, to_px, w.crs)
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
        return tuple(bounds)  # type: ignore[return-value]
    try:
        return rasterio.warp.transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21)
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
        ("pixel window", f"col_off={int(pw.col_off)}, row_off={int(pw.row_off)}, width={int(pw.width)}, "
                         f"height={int(pw.height)}"),
        ("pixels", f"{bands} x {rows} x {cols} {w.data.dtype.name}"),
        (f"bounds ({_crs_name(w.crs)})", _fmt_bounds(w.bounds)),
        ("bounds (lon/lat)", _fmt_bounds(lonlat_bounds(w.bounds, w.crs), 6)),
    ]  # fmt: skip
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
    return f"<b>{html.escape(type(src).__name__)}</b>" + _table(_source_rows(src) + [_cache_row(src)])


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
        ("area (pixels)", f"col_off={int(area.col_off)}, row_off={int(area.row_off)}, "
                          f"width={int(area.width)}, height={int(area.height)}"),
        (f"bounds ({_crs_name(src.crs)})", _fmt_bounds(seq.bounds)),
        ("bounds (lon/lat)", _fmt_bounds(lonlat_bounds(seq.bounds, src.crs), 6)),
    ]  # fmt: skip
    rows += [r for r in _source_rows(src) if not r[0].startswith("bounds")]
    rows.append(_cache_row(src))
    return "<b>WindowSequence</b>" + _table(rows) + "<i>wins.preview() draws the region and its windows</i>"


# -- overviews ----------------------------------------------------------------------------------------------


def _clip(area: PixelWindow, src: TileSource) -> PixelWindow:
    c0, r0 = max(int(area.col_off), 0), max(int(area.row_off), 0)
    c1 = min(int(area.col_off + area.width), src.width)
    r1 = min(int(area.row_off + area.height), src.height)
    if c1 <= c0 or r1 <= r0:
        raise InvalidArgumentError(f"{area!r} does not overlap the raster ({src.height} x {src.width} px)")
    return PixelWindow(c0, r0, c1 - c0, r1 - r0)


def _out_shape(area: PixelWindow, max_size: int) -> tuple[int, int]:
    scale = max(area.height, area.width) / max_size
    if scale <= 1:
        return int(area.height), int(area.width)
    return max(1, round(area.height / scale)), max(1, round(area.width / scale))


#: A source with no overviews is read in full for a preview only up to this many pixels.
FULL_READ_MAX = 4096 * 4096


def overview(src: TileSource, area: PixelWindow | None = None, max_size: int = 1024) -> tuple[np.ndarray, Affine]:
    """Pixels of ``area`` of ``src`` (default: all of it) shrunk to at most ``max_size`` a side.

    Reads as little as the source allows: a raster's overviews (GDAL picks the level), a tile
    service's lower zoom levels, strided views of an in-memory array; other sources are read in full
    only when the area is small (at most 4096 x 4096 pixels).

    Returns
    -------
    pixels, to_source
        ``(bands, rows, cols)`` pixels, and the affine transform from their pixel grid to ``src``'s.
    """
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise InvalidArgumentError(f"max_size must be a positive number of pixels, got {max_size!r}")
    if area is None:
        if src.needs_area:
            raise InvalidArgumentError(
                f"{src!r} covers the whole world; preview a window sequence over your area instead: "
                "lt.windows(src, size, bounds=..., bounds_crs='EPSG:4326').preview()"
            )
        area = PixelWindow(0, 0, src.width, src.height)
    from .sources import ArraySource, RasterSource
    from .sources.xyz import XYZSource

    area = _clip(area, src)
    out_h, out_w = _out_shape(area, max_size)
    if isinstance(src, XYZSource):
        return _xyz_overview(src, area, max_size)
    if isinstance(src, ArraySource):
        step = math.ceil(max(area.height / out_h, area.width / out_w))
        r0, c0 = int(area.row_off), int(area.col_off)
        data = np.ascontiguousarray(
            src.array[:, r0 : r0 + int(area.height) : step, c0 : c0 + int(area.width) : step]
        )
    elif isinstance(src, RasterSource):  # GDAL reads from the overview level that fits
        data = src._dataset().read(src.bands, window=area, out_shape=(src.count, out_h, out_w))
    else:
        data = _read_small(src, area, (out_h, out_w), "has no overviews")
    to_source = Affine.translation(area.col_off, area.row_off) @ Affine.scale(
        area.width / data.shape[2], area.height / data.shape[1]
    )
    return data, to_source


def _read_small(src: TileSource, area: PixelWindow, shape: tuple[int, int], why: str) -> np.ndarray:
    if area.height * area.width > FULL_READ_MAX:
        raise InvalidArgumentError(
            f"{src!r} {why}, and {area!r} is too large to read in full for a preview; preview a smaller "
            "area (lt.windows(..., bounds=...).preview())"
        )
    step = math.ceil(max(area.height / shape[0], area.width / shape[1]))
    return src.read(area)[:, ::step, ::step]


def _xyz_overview(src: XYZSource, area: PixelWindow, max_size: int) -> tuple[np.ndarray, Affine]:
    """Read ``area`` from the zoom level ``k`` levels up where it is at most ``max_size`` pixels a
    side (each level up halves the pixels); a level whose tiles are all absent is skipped."""
    from .sources.xyz import XYZSource

    longest = max(area.height, area.width)
    k = min(src.zoom, max(0, math.ceil(math.log2(longest / max_size)))) if longest > max_size else 0
    if k:
        low = XYZSource(
            src.template, zoom=src.zoom - k, bands=src.bands, tile_size=src.tile_size, nodata=src.nodata,
            subdomains=src.subdomains, http=src.http, cache_dir=src.cache_dir, cache=src.cache,
        )  # fmt: skip
        f = 2**k
        c0, r0 = int(area.col_off) // f, int(area.row_off) // f
        c1 = -(-int(area.col_off + area.width) // f)
        r1 = -(-int(area.row_off + area.height) // f)
        window = PixelWindow(c0, r0, c1 - c0, r1 - r0)
        data = low.read(window)
        if low.stats()["missing"] < len(low.tiles_under(window)):
            return data, Affine.translation(c0 * f, r0 * f) @ Affine.scale(f)
    data = _read_small(src, area, _out_shape(area, max_size), "has no lower zoom levels")
    to_source = Affine.translation(area.col_off, area.row_off) @ Affine.scale(
        area.width / data.shape[2], area.height / data.shape[1]
    )
    return data, to_source


def _region_picture(
    src: TileSource,
    area: PixelWindow | None,
    max_size: int,
    windows: np.ndarray | None,
    detections: Any,
    scores: bool,
) -> PILImage.Image:
    from PIL import Image, ImageDraw

    data, to_source = overview(src, area, max_size)
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
        boxes = _boxes_to_image(dets, to_image_px, src.crs)
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

    Read from overviews or lower zoom levels (see :func:`overview`), never pixel by pixel; the
    outlines of the sequence's windows are drawn when ``grid`` is true, and ``detections`` (an
    ``lt.Detections`` in the source's pixel grid, e.g. from ``lt.merge``) as boxes coloured by label.
    """
    windows = seq.pixel_windows() if grid else None
    return _region_picture(seq.source, seq.area, max_size, windows, detections, scores)


def source_preview(src: TileSource, max_size: int = 1024, *, detections: Any = None, scores: bool = False) -> PILImage.Image:
    """An overview picture of a whole source, with ``detections`` drawn (see :func:`sequence_preview`)."""
    return _region_picture(src, None, max_size, None, detections, scores)


def show(obj: Any, detections: Any = None, *, max_size: int = 1024, grid: bool | None = None, scores: bool | None = None) -> PILImage.Image:
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
    from .sources.base import TileSource
    from .windows import Window, WindowSequence

    if isinstance(obj, Window):
        return window_image(obj, detections, max_size=max_size, scores=True if scores is None else scores)
    if isinstance(obj, WindowSequence):
        return sequence_preview(
            obj, max_size, grid=detections is None if grid is None else grid, detections=detections,
            scores=bool(scores),
        )
    if isinstance(obj, TileSource):
        return source_preview(obj, max_size, detections=detections, scores=bool(scores))
    raise InvalidArgumentError(
        f"lt.show takes an lt.Window, an lt.WindowSequence or a source, got {type(obj).__name__}"
    )


__all__ = [
    "draw_boxes",
    "label_colour",
    "lonlat_bounds",
    "overview",
    "sequence_html",
    "sequence_preview",
    "show",
    "source_html",
    "source_preview",
    "to_image",
    "to_rgba",
    "window_html",
    "window_image",
    "window_png",
]
