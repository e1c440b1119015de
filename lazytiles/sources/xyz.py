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
import json
import logging
import math
import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal, TypeVar

import numpy as np
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from ..assembly import assemble
from ..cache import TileCache, TileKey
from ..errors import InvalidArgumentError, SourceOpenError, TileFetchError, TileMissingError
from ..grid import mercator_transform, quadkey
from .base import FetchPool, TileSource
from .diskcache import DiskCache
from .footprint import tile_files_footprint
from .http import BodyError, HttpClient, redact
from .templates import LOCAL_MAX_BYTES, check_zoom, parse_template, read_file
from .tileimage import MODES, decode_tile, image_size

log = logging.getLogger(__name__)

T = TypeVar("T")

OnMissing = Literal["nodata", "raise"]
#: Tile size assumed when it is not given and the probe tile is absent.
DEFAULT_TILE_SIZE = 256


class XYZSource(TileSource):
    """Slippy-map tiles from a URL or path template at one zoom, as a lazily read web-mercator raster.

    Opening reads nothing but, when ``tile_size`` is not given, one probe tile (0/0/0, or any tile
    file of a local template) to learn the tile size. Tiles are fetched when a window needs them,
    through the tile cache; window sequences have the tiles of the next windows fetched in the
    background (see :mod:`lazytiles.windowing.readahead`), so up to ``max_connections`` requests
    stay in flight even with one consumer.

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
    cache_dir_max_bytes
        Most bytes the disk cache keeps; the least recently used tiles go first. Default: no limit.
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
        cache_dir_max_bytes: int | None = None,
        cache: TileCache | None = None,
    ) -> None:
        self._parts = parse_template(template)
        self.template = template
        self.zoom = check_zoom(zoom)
        if isinstance(bands, bool) or not isinstance(bands, int | np.integer) or int(bands) not in MODES:
            raise InvalidArgumentError(f"bands must be 1 (grey), 2 (grey, alpha), 3 (RGB) or 4 (RGBA), got {bands!r}")
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
            raise InvalidArgumentError(
                f"tile_size must be an integer number of pixels from 16 to 4096, got {tile_size!r}"
            )
        if http is not None and not isinstance(http, HttpClient):
            raise InvalidArgumentError(
                f"http must be a lazytiles.sources.http.HttpClient, got {type(http).__name__}; e.g. "
                "http=HttpClient(max_connections=8, headers={'Authorization': '...'})"
            )

        self.bands = int(bands)
        self.subdomains = tuple(subdomains)
        self.on_missing = on_missing
        self.nodata = nodata
        self.remote = template.lower().startswith(("http://", "https://"))
        self.http = (http or HttpClient()) if self.remote else http
        self.cache_dir = None if cache_dir is None else os.fspath(cache_dir)
        self.cache_dir_max_bytes = cache_dir_max_bytes
        self._disk = (
            DiskCache(cache_dir, max_bytes=cache_dir_max_bytes) if cache_dir is not None and self.remote else None
        )
        workers = self.http.max_connections if self.http is not None else min(8, os.cpu_count() or 1)
        self._pool = FetchPool(workers, "xyz")
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

    def _fetch(self, url: str, decode: Callable[[bytes], T]) -> T | None:
        """``decode(body)`` of the tile at ``url``, or None when it is absent; TileFetchError on failure."""
        if not self.remote:
            self._count("requests")
            path = self._local_path(url)
            try:
                body = read_file(path, self.http.max_body_bytes if self.http is not None else LOCAL_MAX_BYTES)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as err:
                raise TileFetchError(f"could not read tile file {path!r}: {err.strerror or err}") from None
            try:
                return decode(body)
            except BodyError as err:
                raise TileFetchError(f"{path!r} is not a PNG, JPEG or WebP image: {err}") from err
        disk = self._disk
        if disk is not None:
            cached = disk.get(url)
            if cached is not None:
                if not cached:
                    self._count("disk_hits")
                    return None
                try:
                    value = decode(cached)
                except BodyError:
                    disk.discard(url)  # damaged on disk: fetch it again
                else:
                    self._count("disk_hits")
                    return value
        http = self.http
        assert http is not None  # remote sources always have one
        got = http.get(url, decode=lambda body: (decode(body), body))
        if disk is not None:
            try:
                disk.put(url, b"" if got is None else got[1])
            except OSError as err:  # a full or read-only disk must not fail the read itself
                log.warning("could not write %s to the disk cache %s: %s", redact(url), disk.directory, err)
        return None if got is None else got[0]

    def _probe_tile_size(self) -> int:
        """The tile size, from the first tile found: 0/0/0 (1/0/0 for quadkeys), or any local tile file."""
        if self.remote:
            z = 1 if "q" in self._parts[1::2] else 0
            url = self.tile_url(0, 0, z)
        else:
            url = self._find_local_tile()
        try:
            size = self._fetch(url, partial(image_size, url=url))
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

    def _find_local_tile(self) -> str:
        values = {"z": str(self.zoom), "x": "*", "y": "*", "-y": "*", "q": "[0-3]" * self.zoom, "s": "*"}
        pattern = "".join(glob.escape(p) if i % 2 == 0 else values[p] for i, p in enumerate(self._parts))
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
            tile = self._fetch(url, partial(decode_tile, url=url, size=self.tile_size, bands=self.bands))
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
            why = "answered 404/204" if self.remote else "does not exist"
            raise TileMissingError(
                f"tile z={z} x={x} y={y} is absent ({redact(url)} {why}); the source was opened with "
                "on_missing='raise'; use on_missing='nodata' to read it as nodata"
            )
        return np.full((self.count, self.tile_size, self.tile_size), self.fill_value, dtype=self.dtype)

    def data_footprint(self) -> shapely.Geometry | None:
        """For a local template, the tiles present at this zoom (an absent one reads as nodata), in
        pixels; None for a tile service or a quadkey template, whose coverage is not known."""
        if self.remote:
            return None
        parts = [self._local_path(p) if i == 0 else p for i, p in enumerate(self._parts)]
        return tile_files_footprint(parts, self.zoom, self.tile_size)

    # -- overviews ---------------------------------------------------------------------------------

    def levels(self) -> tuple[float, ...]:
        """``2**k`` for each zoom ``zoom - k`` from this one up to zoom 0."""
        return tuple(float(2**k) for k in range(self.zoom + 1))

    def level(self, index: int) -> TileSource:
        """This tile service ``index`` zooms up (each halves the pixels), sharing client, disk and tile
        cache; absent tiles there read as nodata."""
        if index == 0:
            return self
        if isinstance(index, bool) or not isinstance(index, int) or not 0 < index <= self.zoom:
            return super().level(index)
        return type(self)(
            self.template,
            zoom=self.zoom - index,
            bands=self.bands,
            tile_size=self.tile_size,
            nodata=self.nodata,
            subdomains=self.subdomains,
            http=self.http,
            cache_dir=self.cache_dir,
            cache_dir_max_bytes=self.cache_dir_max_bytes,
            cache=self.cache,
        )

    def _overview(self, area: Window, max_size: int) -> tuple[np.ndarray, Affine]:
        """Read ``area`` from the zoom level ``k`` levels up where it is at most ``max_size`` pixels a
        side (each level up halves the pixels), its tiles fetched together; a level whose tiles are
        all absent is skipped."""
        longest = max(area.height, area.width)
        k = min(self.zoom, max(0, math.ceil(math.log2(longest / max_size)))) if longest > max_size else 0
        if k:
            low = self.level(k)
            f = 2**k
            c0, r0 = int(area.col_off) // f, int(area.row_off) // f
            c1 = -(-int(area.col_off + area.width) // f)
            r1 = -(-int(area.row_off + area.height) // f)
            window = Window(c0, r0, c1 - c0, r1 - r0)
            keys = low.tiles_under(window)
            low.warm(keys)
            data, _ = assemble(low, window, keys)
            if low.stats()["missing"] < len(keys):
                return data, Affine.translation(c0 * f, r0 * f) @ Affine.scale(f)
        return self._read_small(area, max_size, "has no lower zoom levels")

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
                cache_dir_max_bytes=self.cache_dir_max_bytes,
                cache=self.cache,
            ),
            (self.template,),
        )

    def __repr__(self) -> str:
        return f"XYZSource({redact(self.template)!r}, zoom={self.zoom}, tile_size={self.tile_size}, bands={self.bands})"


__all__ = ["XYZSource"]
