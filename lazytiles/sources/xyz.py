"""XYZSource: slippy-map tiles (``{z}/{x}/{y}``) over HTTP(S) or from a directory, as a tiled source.

The pixel grid is web mercator (EPSG:3857) at one zoom: the whole world, ``tile_size * 2**zoom``
pixels a side, so windows need an area (``bounds=`` or ``region=`` in :func:`lazytiles.windows`).
Tile (row, col) of the grid is XYZ tile ``x=col, y=row``; its cache key's ``level`` is the zoom.

Band layout (``bands=``), whatever the image mode of the tiles (palette, grey, grey+alpha, RGB,
RGBA; PNG, JPEG or WebP), as Pillow converts them, uint8:

====== ============================ ==================================================
bands  layout                       notes
====== ============================ ==================================================
1      grey (L)                     colour tiles become luma, 0.299 R + 0.587 G + 0.114 B
2      grey, alpha (LA)
3      red, green, blue (RGB)       default; grey tiles repeat in all three bands
4      red, green, blue, alpha      alpha is 255 for tiles without transparency
====== ============================ ==================================================

Absent tiles (HTTP 404/204, or no file) are ``nodata`` (0 unless set) in every band, so with
``bands=4`` their alpha is 0; each is listed in :meth:`XYZSource.stats`.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import re
import struct
import threading
import zlib
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from rasterio.crs import CRS

from ..cache import TileCache, TileKey
from .diskcache import DiskCache
from ..errors import InvalidArgumentError, SourceOpenError, TileFetchError, TileMissingError
from ..grid import mercator_transform, quadkey
from .http import BodyError, HttpClient, redact
from ..windowing.readahead import Readahead
from .base import TileSource

log = logging.getLogger(__name__)

OnMissing = Literal["nodata", "raise"]
#: Deepest zoom accepted: 2**30 tiles a side (sub-centimetre pixels).
MAX_ZOOM = 30
#: Tile size assumed when it is not given and the probe tile is absent.
DEFAULT_TILE_SIZE = 256
#: Pillow modes of the band layouts, by number of bands.
MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
#: Image formats tiles may come in.
FORMATS = ("PNG", "JPEG", "WEBP")
#: What Pillow raises on bytes that are not a complete image: the body may be damaged in transit.
UNDECODABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Largest image the tile-size probe decodes (4096 x 4096); anything larger is refused unread.
MAX_PROBE_PIXELS = 4096 * 4096

_FIELD = re.compile(r"\{([^{}]*)\}")
_KNOWN_FIELDS = ("z", "x", "y", "-y", "q", "s")


def _check_size(size: tuple[int, int], url: str, expected: int | None) -> None:
    """Refuse a tile of the wrong size, or (while probing, ``expected`` None) a huge one, undecoded."""
    w, h = size
    if expected is None:
        if w * h > MAX_PROBE_PIXELS:
            raise TileFetchError(f"{redact(url)} is a {w}x{h} px image: a decompression bomb, not a tile")
    elif (w, h) != (expected, expected):
        fix = f"open the source with tile_size={w}" if w == h else "tiles must be square"
        raise TileFetchError(f"{redact(url)} is a {w}x{h} px image but this source has {expected} px tiles; {fix}")


def _check_zoom(zoom: Any) -> int:
    if isinstance(zoom, bool) or not isinstance(zoom, int | np.integer) or not 0 <= zoom <= MAX_ZOOM:
        raise InvalidArgumentError(f"zoom must be an integer from 0 to {MAX_ZOOM}, got {zoom!r}")
    return int(zoom)


def _parse_template(template: Any) -> list[str]:
    """The template split into literal text (even positions) and field names (odd positions)."""
    if not isinstance(template, str):
        raise InvalidArgumentError(
            f"template must be a URL or path with {{z}}, {{x}} and {{y}}, got {type(template).__name__} {template!r}"
        )
    parts = _FIELD.split(template)
    fields = set(parts[1::2])
    shown = redact(template)
    unknown = sorted(fields - set(_KNOWN_FIELDS))
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


class XYZSource(TileSource):
    """Slippy-map tiles from a URL or path template at one zoom, as a lazily read web-mercator raster.

    Opening reads nothing but, when ``tile_size`` is not given, one probe tile (0/0/0, or any tile
    file of a local template) to learn the tile size. Tiles are fetched when a window needs them,
    through the tile cache; an in-order pass requests the tiles of the next ``readahead`` windows in
    the background, so up to ``max_connections`` requests stay in flight even with one consumer.

    Parameters
    ----------
    template
        ``https://host/{z}/{x}/{y}.png``-style URL, or a local path template. Fields: ``{z}``,
        ``{x}``, ``{y}``; ``{-y}`` for TMS rows (counted from the south); ``{q}`` a Bing quadkey;
        ``{s}`` a subdomain from ``subdomains``.
    zoom
        Zoom level, 0 to 30.
    bands
        Band layout, 1 to 4 (see the module docs): 3 = RGB (default), 4 = RGBA (alpha kept).
    tile_size
        Tile width in pixels, e.g. 256 or 512 (retina). Default: read from the probe tile, or 256
        when it is absent. A tile of another size fails to read, with a message saying which size.
    nodata
        Value for pixels of absent tiles and outside the world (default: none, filled with 0).
    on_missing
        ``"nodata"`` (default): an absent tile (HTTP 404/204, no file) reads as ``nodata`` and is
        listed in :meth:`stats`; ``"raise"``: reading it raises :class:`~lazytiles.TileMissingError`.
    subdomains
        Values of ``{s}``, picked per tile from ``(x + y) % len(subdomains)``; default ``"abc"``.
    http
        The :class:`~lazytiles.sources.http.HttpClient` to use: connections, timeouts, retries, headers and
        API keys, rate limit. Default: ``HttpClient()`` (16 connections).
    cache_dir
        Keep the raw bytes of every tile fetched over HTTP (and a note of absent ones) in this
        directory; later reads, in any process, come from disk, also offline (see
        :class:`~lazytiles.sources.diskcache.DiskCache`). Default: no disk cache. Local templates ignore it.
    readahead
        Windows ahead whose tiles an in-order pass, or indexing that moves forward, requests early
        (default: ``2 * max_connections`` for URLs, 4 for local files; 0 turns it off).
    cache
        The :class:`~lazytiles.TileCache` of decoded tiles (default: the process-wide one).

    Raises
    ------
    InvalidArgumentError
        A bad template (unknown field, no ``{x}``/``{y}``, another scheme), zoom, bands, tile size
        or option.
    SourceOpenError
        The probe tile could not be fetched or decoded (only when ``tile_size`` is not given).

    Examples
    --------
    >>> import tempfile, numpy as np, lazytiles as lt
    >>> from lazytiles.testing.xyztiles import write_xyz_tiles
    >>> tiles = tempfile.mkdtemp()
    >>> image = np.random.default_rng(0).integers(0, 255, (3, 512, 768), dtype=np.uint8)
    >>> cover = write_xyz_tiles(image, tiles, zoom=12, top_left_tile=(2200, 1343))
    >>> src = lt.open(tiles + "/{z}/{x}/{y}.png", zoom=12)     # probes one tile file for its size
    >>> wins = lt.windows(src, size=256, bounds=cover.bounds)  # bounds in EPSG:3857, like the source
    >>> len(wins), wins[0].crs.to_epsg()
    (6, 3857)
    >>> bool((wins[4].data == image[:, 256:, 256:512]).all())
    True
    """

    needs_area = True

    def __init__(
        self,
        template: str,
        *,
        zoom: int,
        bands: int = 3,
        tile_size: int | None = None,
        nodata: float | None = None,
        on_missing: OnMissing = "nodata",
        subdomains: str | Sequence[str] = "abc",
        http: HttpClient | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        readahead: int | None = None,
        cache: TileCache | None = None,
    ) -> None:
        self._parts = _parse_template(template)
        self.template = template
        self.zoom = _check_zoom(zoom)
        if isinstance(bands, bool) or not isinstance(bands, int | np.integer) or int(bands) not in MODES:
            raise InvalidArgumentError(
                f"bands must be 1 (grey), 2 (grey, alpha), 3 (RGB) or 4 (RGBA), got {bands!r}"
            )
        if on_missing not in ("nodata", "raise"):
            raise InvalidArgumentError(f"on_missing must be 'nodata' or 'raise', got {on_missing!r}")
        if isinstance(subdomains, str):
            subdomains = tuple(subdomains)
        if not subdomains or not all(isinstance(s, str) and s for s in subdomains):
            raise InvalidArgumentError(
                f"subdomains must be a non-empty string (one letter each, e.g. 'abc') or a sequence of "
                f"non-empty strings, got {subdomains!r}"
            )
        if tile_size is not None and (
            isinstance(tile_size, bool) or not isinstance(tile_size, int | np.integer) or not 16 <= tile_size <= 4096
        ):
            raise InvalidArgumentError(f"tile_size must be an integer number of pixels from 16 to 4096, got {tile_size!r}")
        if http is not None and not isinstance(http, HttpClient):
            raise InvalidArgumentError(
                f"http must be a lazytiles.sources.http.HttpClient, got {type(http).__name__}; e.g. "
                "http=HttpClient(max_connections=8, headers={'Authorization': '...'})"
            )
        if readahead is not None and (isinstance(readahead, bool) or not isinstance(readahead, int) or readahead < 0):
            raise InvalidArgumentError(f"readahead must be a number of windows >= 0, got {readahead!r}")

        self.bands = int(bands)
        self.subdomains = tuple(subdomains)
        self.on_missing = on_missing
        self.nodata = nodata
        self.remote = template.lower().startswith(("http://", "https://"))
        self.http = (http or HttpClient()) if self.remote else http
        self.cache_dir = None if cache_dir is None else os.fspath(cache_dir)
        self._disk = DiskCache(cache_dir) if cache_dir is not None and self.remote else None
        self._explicit_readahead = readahead
        if readahead is None:
            readahead = 2 * self.http.max_connections if self.http is not None else 4
        self.readahead = readahead
        workers = self.http.max_connections if self.http is not None else min(8, os.cpu_count() or 1)
        self._readahead = Readahead(workers, "lazytiles-xyz")
        self._lock = threading.Lock()
        self._missing: set[tuple[int, int, int]] = set()
        self._failed: set[tuple[int, int, int]] = set()

        self._stats_lock, self._counts = threading.Lock(), Counter()  # for the probe; kept below
        self.tile_size = int(tile_size) if tile_size is not None else self._probe_tile_size()
        probe_counts = self._counts
        self.crs = CRS.from_epsg(3857)
        self.transform = mercator_transform(self.zoom, self.tile_size)
        self.height = self.width = self.tile_size * 2**self.zoom
        self.count = self.bands
        self.dtype = np.dtype("uint8")
        self.tile_shape = (self.tile_size, self.tile_size)
        recipe = json.dumps(
            [template, self.zoom, self.tile_size, self.bands, nodata, list(self.subdomains)], default=str
        )
        digest = hashlib.sha256(recipe.encode()).hexdigest()[:16]
        self._token = f"xyz:{redact(template)}|z={self.zoom}|{self.tile_size}px|bands={self.bands}|{digest}"
        self._init_tiles(cache)
        self._counts.update(probe_counts)

    # -- URLs --------------------------------------------------------------------------------------

    @property
    def token(self) -> str:
        return self._token

    def tile_key(self, row: int, col: int) -> TileKey:
        """The cache key of XYZ tile ``x=col, y=row`` at this source's zoom."""
        return TileKey(self._token, self.zoom, row, col)

    def tile_url(self, x: int, y: int, zoom: int | None = None) -> str:
        """The URL (or path) of XYZ tile ``zoom/x/y`` (default: this source's zoom); no I/O."""
        z = self.zoom if zoom is None else zoom
        values = {
            "z": str(z),
            "x": str(x),
            "y": str(y),
            "-y": str(2**z - 1 - y),
            "q": quadkey(z, y, x),
            "s": self.subdomains[(x + y) % len(self.subdomains)],
        }
        parts = self._parts
        return "".join(p if i % 2 == 0 else values[p] for i, p in enumerate(parts))

    def _local_path(self, url: str) -> str:
        path = url[len("file://") :] if url.lower().startswith("file://") else url
        return os.path.expanduser(path)

    # -- fetching and decoding ---------------------------------------------------------------------

    def _fetch(self, url: str, decode: Any) -> Any:
        """``decode(body)`` of the tile at ``url``, or None when it is absent; TileFetchError on failure."""
        if not self.remote:
            self._count("requests")
            path = self._local_path(url)
            try:
                body = Path(path).read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as err:
                raise TileFetchError(f"could not read tile file {path!r}: {err}") from err
            try:
                return decode(body)
            except BodyError as err:
                raise TileFetchError(f"{path!r} is not a PNG, JPEG or WebP image: {err}") from err
        disk = self._disk
        if disk is not None:
            body = disk.get(url)
            if body is not None:
                if not body:
                    self._count("disk_hits")
                    return None
                try:
                    value = decode(body)
                except BodyError:
                    disk.discard(url)  # damaged on disk: fetch it again
                else:
                    self._count("disk_hits")
                    return value
        http: HttpClient = self.http  # type: ignore[assignment]  # remote sources always have one
        got = http.get(url, decode=lambda body: (decode(body), body))
        if disk is not None:
            try:
                disk.put(url, b"" if got is None else got[1])
            except OSError as err:  # a full or read-only disk must not fail the read itself
                log.warning("could not write %s to the disk cache %s: %s", redact(url), disk.directory, err)
        return None if got is None else got[0]

    def _open_image(self, body: bytes, url: str, expected: int | None) -> Image.Image:
        """The image in ``body``, its size checked against ``expected`` (None: only not huge)."""
        if not body:
            raise BodyError("empty body")
        if body[:8] == PNG_SIGNATURE and body[12:16] == b"IHDR":  # the size, before Pillow sees it
            _check_size(struct.unpack(">II", body[16:24]), url, expected)
        try:
            img = Image.open(io.BytesIO(body), formats=FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # warning: under -W error
            raise TileFetchError(f"{redact(url)} is a decompression bomb, not a tile: {err}") from err
        except UNDECODABLE as err:
            head = body[:16]
            raise BodyError(f"not a PNG, JPEG or WebP image ({len(body)} bytes starting {head!r})") from err
        _check_size(img.size, url, expected)
        return img

    def _decode(self, body: bytes, url: str) -> np.ndarray:
        img = self._open_image(body, url, self.tile_size)
        mode = MODES[self.bands]
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

    def _probe_tile_size(self) -> int:
        """The tile size, from the first tile found: 0/0/0 (1/0/0 for quadkeys), or any local tile file."""
        if self.remote:
            z = 1 if "q" in self._parts[1::2] else 0
            url = self.tile_url(0, 0, z)
        else:
            url = self._find_local_tile()
        try:
            size = self._fetch(url, partial(self._image_size, url=url))
        except TileFetchError as err:
            raise SourceOpenError(
                f"could not read tile {redact(url)} to learn the tile size: {err}; check the template, or "
                "pass tile_size=256 (or 512) to open without reading a tile"
            ) from err
        if size is None:
            return DEFAULT_TILE_SIZE
        w, h = size
        if w != h or not 16 <= w <= 4096:
            raise SourceOpenError(
                f"tile {redact(url)} is {w}x{h} px; XYZ tiles are square (256 or 512 px): check the template"
            )
        return int(w)

    def _image_size(self, body: bytes, url: str) -> tuple[int, int]:
        img = self._open_image(body, url, None)
        try:
            img.load()  # the whole image must decode, not only its header
        except UNDECODABLE as err:
            raise BodyError(f"damaged {img.format} image ({type(err).__name__}: {err})") from err
        return img.size

    def _find_local_tile(self) -> str:
        values = {"z": str(self.zoom), "x": "*", "y": "*", "-y": "*", "q": "[0-3]" * self.zoom, "s": "*"}
        pattern = "".join(
            glob.escape(p) if i % 2 == 0 else values[p] for i, p in enumerate(self._parts)
        )
        pattern = self._local_path(pattern)
        found = next(glob.iglob(pattern), None)
        if found is None:
            raise SourceOpenError(
                f"no tile file matches {pattern!r} at zoom {self.zoom}; check the template and the zoom "
                "(or pass tile_size= to open it anyway, with every tile absent)"
            )
        return found

    def _read_tile(self, key: TileKey) -> np.ndarray:
        x, y, z = key.col, key.row, key.level
        url = self.tile_url(x, y, z)
        try:
            tile = self._fetch(url, partial(self._decode, url=url))
        except TileFetchError as err:
            with self._lock:
                self._failed.add((z, x, y))
            self._count("failures")
            raise TileFetchError(f"tile z={z} x={x} y={y}: {err}") from err
        with self._lock:
            self._failed.discard((z, x, y))
        if tile is not None:
            return tile
        with self._lock:
            self._missing.add((z, x, y))
        if self.on_missing == "raise":
            raise TileMissingError(
                f"tile z={z} x={x} y={y} is absent ({redact(url)} {'answered 404/204' if self.remote else 'does not exist'}); "
                "the source was opened with on_missing='raise'; use on_missing='nodata' to read it as nodata"
            )
        return np.full((self.count, self.tile_size, self.tile_size), self.fill_value, dtype=self.dtype)

    # -- read-ahead --------------------------------------------------------------------------------

    # -- reporting ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters and tile lists of this source.

        ``requests`` (HTTP requests or file reads), ``retries``, ``failures`` (tiles given up on),
        ``missing`` (absent tiles), ``missing_tiles`` and ``failed_tiles`` as sorted ``(z, x, y)``
        lists (a failed tile leaves the list when a later read succeeds), ``disk_hits``, ``bytes``,
        and the ``tiles_read``, ``bytes_decoded`` and ``read_seconds`` of every source. HTTP counters
        are those of :attr:`http`, shared by the sources that share one client.
        """
        counts = super().stats()
        if self.http is not None:
            net = self.http.stats()
            for name in ("requests", "retries", "bytes"):
                counts[name] = net[name]
        with self._lock:
            counts["missing_tiles"] = sorted(self._missing)
            counts["failed_tiles"] = sorted(self._failed)
        counts["missing"] = len(counts["missing_tiles"])
        for name in ("requests", "retries", "failures", "disk_hits", "bytes"):
            counts.setdefault(name, 0)
        return counts

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(template=redact(self.template), zoom=self.zoom, tile_size=self.tile_size)
        return info

    def __reduce__(self) -> tuple[Any, ...]:  # the recipe: no pool, connection or tile
        return (
            partial(
                XYZSource,
                zoom=self.zoom,
                bands=self.bands,
                tile_size=self.tile_size,
                nodata=self.nodata,
                on_missing=self.on_missing,
                subdomains=self.subdomains,
                http=self.http,
                cache_dir=self.cache_dir,
                readahead=self._explicit_readahead,
                cache=self.cache,
            ),
            (self.template,),
        )

    def __repr__(self) -> str:
        return f"XYZSource({redact(self.template)!r}, zoom={self.zoom}, tile_size={self.tile_size}, bands={self.bands})"


__all__ = ["MAX_ZOOM", "MODES", "XYZSource"]
