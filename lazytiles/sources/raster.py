"""RasterSource: anything rasterio opens (GeoTIFF, COG, VRT, /vsicurl/ URLs), tiled by its own blocks."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from ..cache import TileCache, TileKey
from ..errors import InvalidArgumentError, SourceNotFoundError, SourceOpenError, TileFetchError
from .array import _tile_shape
from .base import FetchPool, TileSource, _to_source, overview_shape
from .footprint import mask_footprint
from .http import redact

#: Tile shape used when a file's blocks make poor tiles (strips, tiny or huge blocks).
FALLBACK_TILE = 512
#: GDAL's process-wide block cache is capped at this many bytes on first open (see RasterSource).
GDAL_BLOCK_CACHE_BYTES = 32 * 2**20

_gdal_cache_lock = threading.Lock()
_gdal_cache_set = False


def _cap_gdal_block_cache(nbytes: int | None) -> None:
    # lazytiles keeps decoded blocks in its own cache; GDAL's block cache (5% of RAM by default)
    # would hold a second copy of the same pixels. GDAL's cache is process-wide, so this is set once,
    # and never when the user has chosen a size themselves.
    global _gdal_cache_set
    if nbytes is None:
        return
    with _gdal_cache_lock:
        if _gdal_cache_set or "GDAL_CACHEMAX" in os.environ:
            return
        if rasterio.env.hasenv() and "GDAL_CACHEMAX" in rasterio.env.getenv():
            return  # chosen in an enclosing rasterio.Env(GDAL_CACHEMAX=...)
        # rasterio reports GDAL's effective size (never None), so only ever lower it
        current = rasterio.env.get_gdal_config("GDAL_CACHEMAX")
        if not isinstance(current, int) or current > nbytes:
            rasterio.env.set_gdal_config("GDAL_CACHEMAX", int(nbytes))
        _gdal_cache_set = True


def _drop_gdal_chain(err: BaseException) -> None:
    # rasterio chains GDAL's CPLE_* errors, which do not unpickle where tblib's pickling support is
    # installed (seqtools installs it): our errors must cross processes. Their text is in err's.
    err.__cause__ = err.__context__ = None


def _is_remote(path: str) -> bool:
    return path.startswith(("/vsi", "http://", "https://", "s3://", "gs://", "az://")) or "://" in path


#: GDAL options lazytiles applies to network rasters (``/vsicurl/``, ``http(s)://``, ``s3://``...)
#: unless the user has set them (environment variable, enclosing ``rasterio.Env`` or ``gdal_options``).
#: They go through ``rasterio.Env`` around each open and tile read, like ``gdal_options``; rasterio
#: makes those thread-local in every thread but the main one, so read-ahead threads never race.
REMOTE_GDAL_DEFAULTS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing or sidecar probes per open
    "GDAL_HTTP_MULTIPLEX": "YES",  # HTTP/2: concurrent range requests share one connection
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",  # adjacent byte ranges in one request
    "GDAL_HTTP_MAX_RETRY": "4",  # ride out HTTP 429 and 5xx answers...
    "GDAL_HTTP_RETRY_DELAY": "0.5",  # ...with GDAL's backoff, starting at half a second
}


def _is_network(path: str) -> bool:
    return "/vsicurl" in path or path.startswith(
        (
            "http://",
            "https://",
            "ftp://",
            "s3://",
            "gs://",
            "az://",
            "/vsis3",
            "/vsigs",
            "/vsiaz",
            "/vsiadls",
            "/vsioss",
            "/vsiswift",
        )
    )


def _network_defaults(user: dict[str, Any]) -> dict[str, str]:
    """The :data:`REMOTE_GDAL_DEFAULTS` the user has not set in any way."""
    return {
        key: value
        for key, value in REMOTE_GDAL_DEFAULTS.items()
        if key not in user and key not in os.environ and rasterio.env.get_gdal_config(key) is None
    }


def _tile_shape_for(block_shape: tuple[int, int], height: int, width: int) -> tuple[int, int]:
    """The file's block shape when it makes a good tile; else about 512x512, in whole blocks."""
    bh, bw = block_shape
    if 64 <= bh <= 4096 and 64 <= bw <= 4096:
        return bh, bw

    def fit(block: int) -> int:  # short blocks (strips): a whole number of them; long ones: 512
        return max(block, FALLBACK_TILE // block * block) if block < FALLBACK_TILE else FALLBACK_TILE

    return min(fit(bh), height), min(fit(bw), width)


class RasterSource(TileSource):
    """A raster file or URL read through rasterio, one internal block per tile.

    Each thread (and each process) opens its own dataset handle on first use, because GDAL handles are
    not thread-safe; the source itself pickles as its recipe (path and options), never as a handle.

    Parameters
    ----------
    path
        Anything ``rasterio.open`` accepts: a file, a VRT, ``/vsicurl/https://...``, ``s3://...``.
    bands
        1-based band indexes to read, e.g. ``(1, 2, 3)`` for the RGB of an RGBN image (default: all).
    nodata
        Overrides the file's nodata value; also what fills pixels outside the raster.
    tile_shape
        Overrides the tile shape (default: the file's block shape, or 512x512 for striped files).
    cache
        The :class:`~lazytiles.TileCache` to use (default: the process-wide one).
    gdal_options
        GDAL configuration options applied while opening and reading (``rasterio.Env`` keywords),
        e.g. ``{"GDAL_HTTP_MULTIPLEX": "YES"}``.
    gdal_cache_bytes
        On the first open in a process, GDAL's process-wide block cache is capped at this many bytes
        (default 32 MiB) unless ``GDAL_CACHEMAX`` is already set; lazytiles keeps decoded blocks in
        its own cache, so a large GDAL cache would only hold a second copy. ``None`` leaves GDAL alone.
    max_connections
        Threads that fetch blocks in the background, each with its own GDAL handle (and so, for a
        network raster, its own HTTP connection); default 16 for network rasters, the number of
        CPUs (at most 4) for local files. Window sequences tell them which blocks to read ahead
        (see :mod:`lazytiles.windowing.readahead`); decoding releases the GIL, so on a local file
        this spreads decompression over the cores while the consuming thread assembles windows.
        Network rasters get :data:`REMOTE_GDAL_DEFAULTS` (directory listing off, merged ranges,
        HTTP/2 multiplexing, retries) where not set already.
    overview_level
        Read this overview of the file instead of its full resolution (0: the first overview), as
        ``rasterio.open(path, overview_level=...)`` does; :meth:`level` makes these for you.

    Raises
    ------
    SourceNotFoundError
        The local path does not exist.
    SourceOpenError
        rasterio cannot open it as a raster.

    Examples
    --------
    >>> import lazytiles as lt
    >>> src = lt.open(sample_cog)            # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        bands: Sequence[int] | None = None,
        nodata: float | None = None,
        tile_shape: int | tuple[int, int] | None = None,
        cache: TileCache | None = None,
        gdal_options: dict[str, Any] | None = None,
        gdal_cache_bytes: int | None = GDAL_BLOCK_CACHE_BYTES,
        max_connections: int | None = None,
        overview_level: int | None = None,
    ) -> None:
        if not isinstance(path, str | os.PathLike):
            raise InvalidArgumentError(f"path must be a string or os.PathLike, got {type(path).__name__} {path!r}")
        self.path = os.fspath(path)
        if overview_level is not None and (
            isinstance(overview_level, bool) or not isinstance(overview_level, int) or overview_level < 0
        ):
            raise InvalidArgumentError(f"overview_level must be None or an int >= 0, got {overview_level!r}")
        self.overview_level = overview_level
        self._user_gdal_options = dict(gdal_options or {})
        network = _is_network(self.path)
        defaults = _network_defaults(self._user_gdal_options) if network else {}
        self._gdal_options = {**defaults, **self._user_gdal_options}
        if max_connections is not None and (
            isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1
        ):
            raise InvalidArgumentError(f"max_connections must be a positive int, got {max_connections!r}")
        self._max_connections = max_connections
        self.remote = network
        self._pool = FetchPool(max_connections or (16 if network else min(4, os.cpu_count() or 1)), "raster")
        self._gdal_cache_bytes = gdal_cache_bytes
        self._local = threading.local()  # one GDAL handle per thread
        _cap_gdal_block_cache(gdal_cache_bytes)
        if not _is_remote(self.path) and not Path(self.path).exists():
            raise SourceNotFoundError(
                f"no such file: {redact(self.path)!r}; check the path (relative paths are from {os.getcwd()!r})"
            )
        ds = self._dataset()
        self.crs = ds.crs
        self.transform = ds.transform
        self.height, self.width = ds.height, ds.width
        all_bands = tuple(range(1, ds.count + 1))
        if bands is None:
            bands = all_bands
        bands = tuple(int(b) for b in bands)
        if not bands or any(b not in all_bands for b in bands):
            raise InvalidArgumentError(
                f"bands={bands!r} are not all bands of {redact(self.path)!r}, which has bands {all_bands}; "
                "band indexes start at 1 as in rasterio"
            )
        self.bands = bands
        self.count = len(bands)
        dtypes = {ds.dtypes[b - 1] for b in bands}
        if len(dtypes) > 1:
            raise SourceOpenError(
                f"{redact(self.path)!r} has bands of several dtypes {sorted(dtypes)}; "
                "pick bands of one dtype with bands=..."
            )
        self.dtype = np.dtype(dtypes.pop())
        self.nodata = ds.nodata if nodata is None else nodata
        if tile_shape is None:
            self.tile_shape = _tile_shape_for(ds.block_shapes[bands[0] - 1], self.height, self.width)
        else:
            self.tile_shape = _tile_shape(tile_shape)
        self.overviews = tuple(ds.overviews(bands[0]))
        self._explicit_tile_shape = tile_shape
        self._explicit_nodata = nodata
        self._levels: dict[int, RasterSource] = {}
        self._levels_lock = threading.Lock()
        bands_text = ",".join(map(str, self.bands))
        level = "" if self.overview_level is None else f"|overview={self.overview_level}"
        tile = f"{self.tile_shape[0]}x{self.tile_shape[1]}"
        self._token = f"raster:{redact(self.path)}|bands={bands_text}|tile={tile}{level}"
        self._init_tiles(cache)

    # -- handles -----------------------------------------------------------------------------------

    def _dataset(self) -> rasterio.io.DatasetReader:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # first use here, or a forked child
            try:
                with rasterio.Env(**self._gdal_options):
                    level = {} if self.overview_level is None else {"overview_level": self.overview_level}
                    local.ds = rasterio.open(self.path, **level)
            except RasterioIOError as err:
                _drop_gdal_chain(err)
                raise SourceOpenError(
                    f"rasterio could not open {redact(self.path)!r} as a raster: {redact(str(err))}; check that "
                    "it is a GeoTIFF, COG, VRT or another format GDAL reads, and that any URL is reachable"
                ) from err
            local.pid = os.getpid()
        return local.ds

    @property
    def token(self) -> str:
        return self._token

    def _read(self, window: Window, **options: Any) -> np.ndarray:
        """The source's bands in ``window`` of this thread's handle, with the source's GDAL options."""
        ds = self._dataset()
        data: np.ndarray
        if self._gdal_options:
            with rasterio.Env(**self._gdal_options):
                data = ds.read(self.bands, window=window, **options)
        else:
            data = ds.read(self.bands, window=window, **options)
        return data

    def _read_tile(self, key: TileKey) -> np.ndarray:
        w = self.grid.tile_window(key.row, key.col)
        try:
            return self._read(w)
        except (RasterioIOError, OSError) as err:
            self._count("failures")
            _drop_gdal_chain(err)
            raise TileFetchError(
                f"tile {key} ({w!r}) of {redact(self.path)!r} could not be read: {redact(str(err))}"
            ) from err

    def _overview(self, area: Window, max_size: int) -> tuple[np.ndarray, Affine]:
        """GDAL reads ``area`` from the file's overview level that fits; no tile cache involved."""
        data = self._read(area, out_shape=(self.count, *overview_shape(area, max_size)))
        return data, _to_source(area, data)

    def data_footprint(self) -> shapely.Geometry | None:
        """Where the raster holds data per the mask of its coarsest overview (grown by one overview
        pixel: see :mod:`lazytiles.sources.footprint`); None without overviews, or when every pixel is
        valid (no nodata, mask or alpha)."""
        ds = self._dataset()
        if self.overview_level is not None or not self.overviews:
            return None
        if all(ds.mask_flag_enums[b - 1] == [MaskFlags.all_valid] for b in self.bands):
            return None
        factor = self.overviews[-1]
        shape = (self.count, math.ceil(self.height / factor), math.ceil(self.width / factor))
        if self._gdal_options:
            with rasterio.Env(**self._gdal_options):
                masks = ds.read_masks(self.bands, out_shape=shape)
        else:
            masks = ds.read_masks(self.bands, out_shape=shape)
        return mask_footprint(masks.any(axis=0), self.height, self.width)

    def levels(self) -> tuple[float, ...]:
        """1.0 and, per overview of the file, its width over the full width (opens each overview once)."""
        if self.overview_level is not None:
            return (1.0,)
        return (1.0, *(self.width / self.level(i).width for i in range(1, len(self.overviews) + 1)))

    def level(self, index: int) -> TileSource:
        """This raster at its overview ``index - 1`` (0: itself): a :class:`RasterSource` of the same
        path, bands and cache with ``overview_level=index - 1``, tiled by the overview's blocks."""
        if index == 0:
            return self
        if self.overview_level is not None or not 0 < index <= len(self.overviews):
            return super().level(index)
        with self._levels_lock:
            if index not in self._levels:
                self._levels[index] = type(self)(
                    self.path,
                    bands=self.bands,
                    nodata=self._explicit_nodata,
                    cache=self.cache,
                    gdal_options=self._user_gdal_options or None,
                    gdal_cache_bytes=self._gdal_cache_bytes,
                    max_connections=self._max_connections,
                    overview_level=index - 1,
                )
            return self._levels[index]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["path"] = self.path
        info["overviews"] = self.overviews
        return info

    def __reduce__(self) -> tuple[Any, ...]:  # the recipe: no handle, lock or tiles
        return (
            partial(
                RasterSource,
                bands=self.bands,
                nodata=self._explicit_nodata,
                tile_shape=self._explicit_tile_shape,
                cache=self.cache,
                gdal_options=self._user_gdal_options or None,
                gdal_cache_bytes=self._gdal_cache_bytes,
                max_connections=self._max_connections,
                overview_level=self.overview_level,
            ),
            (self.path,),
        )

    def __repr__(self) -> str:
        crs = None if self.crs is None else self.crs.to_string()
        return (
            f"RasterSource({redact(self.path)!r})  # {self.count}x{self.height}x{self.width} {self.dtype.name}, "
            f"crs={crs}, tiles {self.tile_shape[0]}x{self.tile_shape[1]}"
        )
