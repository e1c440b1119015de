"""Pixels to pictures: colours for band-first pixels, PIL images and PNG bytes, boxes drawn on a picture.

The drawing primitives of :mod:`lazytiles.display.jupyter` (which re-exports the public ones and documents
how pixels become colours). No I/O: everything here works on pixels and boxes already in memory.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import rasterio.warp
from affine import Affine
from rasterio.crs import CRS

from ..detections import Detections
from ..errors import InvalidArgumentError

if TYPE_CHECKING:
    from PIL import Image as PILImage

#: Percentiles of valid pixels mapped to 0 and 255 for dtypes other than uint8.
STRETCH = (2.0, 98.0)
#: Pixels sampled per band (at most) to find the stretch: enough for stable percentiles, cheap on big windows.
STRETCH_SAMPLE = 1 << 18
#: Label colours (Tableau 10), by ``label % 10``.
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


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
    clipped: npt.NDArray[np.float32] = np.clip(scaled, 0, 255)
    return np.nan_to_num(clipped, nan=0.0).astype(np.uint8)


def to_rgba(data: Any, nodata: float | None = None) -> np.ndarray:
    """An ``(rows, cols, 4)`` uint8 RGBA picture of band-first pixels; see :mod:`lazytiles.display.jupyter`.

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
    rgba = np.empty((*data.shape[1:], 4), dtype=np.uint8)
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


def shrink(image: PILImage.Image, max_size: int | None) -> PILImage.Image:
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
            _, top, _, bottom = draw.textbbox((0, 0), caption)
            y = rect[1] - (bottom - top) - 2 if rect[1] - (bottom - top) - 2 >= 0 else rect[3] + 1
            draw.text((rect[0], y - top), caption, fill=colour)
    return out


def boxes_to_image(dets: Detections, to_image_px: Affine, image_crs: CRS | None) -> np.ndarray:
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
