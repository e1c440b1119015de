"""Tile images: the bytes of a PNG, JPEG or WebP tile as ``(bands, rows, cols)`` uint8 pixels.

Sizes are checked before anything is decoded (from a PNG's header, then from Pillow's), so a
decompression bomb is refused unread. Bytes that are not a complete image raise
:class:`~lazytiles.sources.http.BodyError`: the body may have been damaged in transit, and the
HTTP client fetches it again. The band layouts are :mod:`lazytiles.sources.xyz`'s.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import TileFetchError
from .http import BodyError, redact

#: Pillow modes of the band layouts, by number of bands.
MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
#: Image formats tiles may come in.
FORMATS = ("PNG", "JPEG", "WEBP")
#: What Pillow raises on bytes that are not a complete image: the body may be damaged in transit.
UNDECODABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Largest image the tile-size probe decodes (4096 x 4096); anything larger is refused unread.
MAX_PROBE_PIXELS = 4096 * 4096


def _check_size(size: tuple[int, int], url: str, expected: int | None) -> None:
    """Refuse a tile of the wrong size, or (while probing, ``expected`` None) a huge one, undecoded."""
    w, h = size
    if expected is None:
        if w * h > MAX_PROBE_PIXELS:
            raise TileFetchError(f"{redact(url)} is a {w}x{h} px image: a decompression bomb, not a tile")
    elif (w, h) != (expected, expected):
        fix = f"open the source with tile_size={w}" if w == h else "tiles must be square"
        raise TileFetchError(f"{redact(url)} is a {w}x{h} px image but this source has {expected} px tiles; {fix}")


def _open_image(body: bytes, url: str, expected: int | None) -> Image.Image:
    """The image in ``body``, its size checked against ``expected`` (None: only not huge)."""
    if not body:
        raise BodyError("empty body")
    if body[:8] == PNG_SIGNATURE and body[12:16] == b"IHDR":  # the size, before Pillow sees it
        _check_size(struct.unpack(">II", body[16:24]), url, expected)
    try:
        img = Image.open(io.BytesIO(body), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # warning: under -W error
        raise TileFetchError(f"{redact(url)} is a decompression bomb, not a tile: {err}") from err
    except UNDECODABLE:
        raise BodyError(f"not a PNG, JPEG or WebP image ({len(body)} bytes)") from None
    _check_size(img.size, url, expected)
    return img


def decode_tile(body: bytes, url: str, size: int, bands: int) -> np.ndarray:
    """The ``size`` x ``size`` tile in ``body`` as ``(bands, size, size)`` uint8, in the layout of
    ``bands`` (:data:`MODES`); ``url`` names it in errors."""
    img = _open_image(body, url, size)
    mode = MODES[bands]
    try:
        img.load()
        if img.mode != mode:
            img = img.convert(mode)
        pixels = np.asarray(img)
    except UNDECODABLE as err:
        raise BodyError(f"damaged {img.format} image ({type(err).__name__}: {err})") from err
    if pixels.ndim == 2:
        return pixels[np.newaxis]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def image_size(body: bytes, url: str) -> tuple[int, int]:
    """(width, height) of the image in ``body``, which must decode in full and be at most
    :data:`MAX_PROBE_PIXELS`."""
    img = _open_image(body, url, None)
    try:
        img.load()  # the whole image must decode, not only its header
    except UNDECODABLE as err:
        raise BodyError(f"damaged {img.format} image ({type(err).__name__}: {err})") from err
    return img.size
