"""The built-in sample: a small georeferenced scene with known objects, as a COG and as XYZ tiles.

The scene lies in web mercator (EPSG:3857) exactly on the XYZ tile grid of its zoom, so the COG's
pixels and the tiles' pixels are the same pixels. Coloured rectangles and ellipses on a muted, textured
ground are the objects; the built-in detector (``lazytiles.detection.models.blob_detector``) finds them, and their
true boxes come with the sample, so a run can be checked. Several objects sit on window and tile seams
(multiples of 128 px), where a detector sees them cut in two. Everything is made from a seeded random
generator: the same arguments give the same bytes.

Examples
--------
>>> from lazytiles.testing.sample import sample_scene
>>> pixels, boxes, labels = sample_scene(size=512, objects=8)
>>> pixels.shape, pixels.dtype, boxes.shape
((3, 512, 512), dtype('uint8'), (8, 4))
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from affine import Affine
from rasterio.crs import CRS

from ..errors import InvalidArgumentError
from ..grid import Bounds, mercator_bounds, mercator_to_lnglat

if TYPE_CHECKING:
    from ..detections import Detections

#: Zoom level of the sample's pixels.
ZOOM = 16
#: XYZ tile (x, y) at :data:`ZOOM` of the scene's upper-left corner (near 46.0 N, 7.7 E); both are
#: multiples of 8, so the scene starts on a tile corner at zoom levels down to ``ZOOM - 3`` too.
ORIGIN_TILE = (34168, 23440)
#: Colour of each label's objects: the built-in detector labels a blob by its strongest band.
COLOURS = {0: (230, 40, 40), 1: (40, 220, 60), 2: (40, 90, 235)}
#: Seams objects are put on: multiples of this many pixels (tile and window edges of the demo).
SEAM = 128


@dataclass(frozen=True)
class Sample:
    """Where :func:`make_sample` wrote the sample, and what is in it.

    ``boxes`` are x0, y0, x1, y1 in the COG's pixel grid (x1, y1 exclusive), ``labels`` the class of
    each object (see :data:`COLOURS`). ``tile_template`` is the local path template of the XYZ tiles
    (``lt.open(sample.tile_template, zoom=sample.zoom)``); ``url_template(base)`` is the same on a
    tile server serving ``tiles_dir``.
    """

    directory: Path
    cog: Path
    tiles_dir: Path | None
    zoom: int
    transform: Affine
    crs: CRS
    width: int
    height: int
    boxes: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)

    @property
    def bounds(self) -> Bounds:
        """(left, bottom, right, top) in EPSG:3857."""
        left, top = self.transform.c, self.transform.f
        return (left, top + self.transform.e * self.height, left + self.transform.a * self.width, top)

    @property
    def lonlat_bounds(self) -> Bounds:
        """(west, south, east, north) in degrees."""
        left, bottom, right, top = self.bounds
        return (*mercator_to_lnglat(left, bottom), *mercator_to_lnglat(right, top))

    @property
    def tile_template(self) -> str:
        """``.../tiles/{z}/{x}/{y}.png``: the XYZ tiles as a local path template."""
        if self.tiles_dir is None:
            raise InvalidArgumentError("this sample was made with tiles=False; make it with tiles=True")
        return os.path.join(os.fspath(self.tiles_dir), "{z}", "{x}", "{y}.png")

    def url_template(self, base_url: str) -> str:
        """The tiles' URL template on a server whose root is :attr:`tiles_dir`, e.g. ``http://127.0.0.1:8000``."""
        return base_url.rstrip("/") + "/{z}/{x}/{y}.png"

    def truth(self) -> Detections:
        """The true objects as ``lt.Detections`` (score 1) in the COG's pixel grid."""
        from ..detections import Detections

        return Detections(self.boxes, np.ones(len(self.boxes)), self.labels, transform=self.transform, crs=self.crs)

    def segments(self, classes: np.ndarray) -> Detections:
        """The true objects as a perfect segmentation model finds them: each one's exact outline (the union
        of its pixels' squares) and its class in ``classes``, the label + 1 (``classes`` is
        :func:`sample_classes` of the arguments this sample was made with); score 1, in the COG's pixel grid.
        """
        from ..detections import Detections

        if np.shape(classes) != (self.height, self.width):
            raise InvalidArgumentError(
                f"classes must be the sample's {self.height} x {self.width} class raster (sample_classes with "
                f"its size, objects and seed), got shape {np.shape(classes)}"
            )
        return Detections(
            self.boxes,
            np.ones(len(self.boxes)),
            self.labels + 1,
            shapes=object_outlines(classes, self.boxes),
            transform=self.transform,
            crs=self.crs,
        )


def _ground(size: int, rng: np.random.Generator) -> np.ndarray:
    """A muted, smoothly varying green-brown ground with fine grain, (3, size, size) uint8."""
    from PIL import Image

    coarse = rng.uniform(0, 1, (max(2, size // 96), max(2, size // 96))).astype(np.float32)
    smooth: np.ndarray = np.asarray(
        Image.fromarray(coarse, mode="F").resize((size, size), resample=Image.Resampling.BICUBIC),
        dtype=np.float32,
    )
    grain = rng.normal(0, 4, (size, size)).astype(np.float32)
    # olive, towards dry brown where smooth is high; no band above ~110, so only objects are bright
    base = np.array([66, 78, 54], np.float32)[:, None, None]
    tint = np.array([16, 12, 6], np.float32)[:, None, None]
    pixels = base + tint * (smooth[None] - 0.5) * 2 + grain[None]
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _place(size: int, count: int, rng: np.random.Generator) -> list[tuple[int, int, int, int, int, int]]:
    """(x0, y0, w, h, label, shape) of ``count`` objects, apart from each other and from the border;
    every third one centred on a seam (a multiple of :data:`SEAM` px) along x or y."""
    placed: list[tuple[int, int, int, int, int, int]] = []
    seams = np.arange(SEAM, size - SEAM + 1, SEAM)
    gap, margin = 14, 8
    for _ in range(200 * count):
        if len(placed) == count:
            return placed
        w, h = (int(v) for v in rng.integers(14, 48, 2))
        cx = int(rng.integers(margin + w // 2, size - margin - w + w // 2))
        cy = int(rng.integers(margin + h // 2, size - margin - h + h // 2))
        if len(placed) % 3 == 0 and len(seams):
            if rng.integers(2):
                cx = int(rng.choice(seams))
            else:
                cy = int(rng.choice(seams))
        x0, y0 = cx - w // 2, cy - h // 2
        if all(
            x0 >= px + pw + gap or px >= x0 + w + gap or y0 >= py + ph + gap or py >= y0 + h + gap
            for px, py, pw, ph, _, _ in placed
        ):
            placed.append((x0, y0, w, h, int(rng.integers(len(COLOURS))), int(rng.integers(2))))
    if len(placed) == count:
        return placed
    raise InvalidArgumentError(
        f"cannot place {count} objects apart in a {size} x {size} scene; use fewer objects or a larger size"
    )


def sample_scene(
    size: int = 2048, *, objects: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sample's pixels and its true objects, made in memory (no files).

    Parameters
    ----------
    size
        Width and height in pixels (a multiple of 256 keeps it on whole XYZ tiles).
    objects
        How many objects (default: one per 256 x 256 px).
    seed
        Seed of the random generator; the same arguments always give the same scene.

    Returns
    -------
    pixels, boxes, labels
        ``(3, size, size)`` uint8 RGB; ``(N, 4)`` float64 x0, y0, x1, y1 (x1, y1 exclusive) of each
        object's pixels; ``(N,)`` int64 labels 0 (red), 1 (green), 2 (blue) (see :data:`COLOURS`).
    """
    pixels, boxes, labels, _ = _draw(size, objects, seed)
    return pixels, boxes, labels


def sample_classes(size: int = 2048, *, objects: int | None = None, seed: int = 0) -> np.ndarray:
    """The true class of each pixel of :func:`sample_scene` with the same arguments: ``(size, size)`` uint8,
    0 for the ground and ``label + 1`` on each object's pixels (what a perfect segmentation model gives,
    e.g. :class:`lazytiles.detection.models.ColourSegmenter`)."""
    return _draw(size, objects, seed)[3]


def object_outlines(classes: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The exact outline of each object of ``classes`` (:func:`sample_classes`): the union of the squares
    of the non-ground pixels inside its box (objects lie apart, so a box holds one object), as shapely
    polygons in pixels; an object array."""
    shapes = np.empty(len(boxes), dtype=object)
    for k, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, np.int64).reshape(-1, 4)):
        inside = np.pad(classes[y0:y1, x0:x1] != 0, ((0, 0), (1, 1))).astype(np.int8)
        step = np.diff(inside, axis=1)  # +1 where a run of object pixels starts, -1 just after it ends
        rows, starts = np.nonzero(step == 1)
        _, ends = np.nonzero(step == -1)
        shapes[k] = shapely.union_all(shapely.box(x0 + starts, y0 + rows, x0 + ends, y0 + rows + 1))
    return shapes


def _draw(size: int, objects: int | None, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(size, bool) or not isinstance(size, int) or size < 64:
        raise InvalidArgumentError(f"size must be an int of at least 64 pixels, got {size!r}")
    if objects is None:
        objects = max(1, (size // 256) ** 2)
    rng = np.random.default_rng(seed)
    pixels = _ground(size, rng)
    boxes, labels = [], []
    classes = np.zeros((size, size), np.uint8)
    for x0, y0, w, h, label, shape in _place(size, objects, rng):
        yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w]
        if shape:  # an ellipse through the box's pixel centres
            rx, ry = w / 2, h / 2
            mask = ((xx + 0.5 - (x0 + rx)) / rx) ** 2 + ((yy + 0.5 - (y0 + ry)) / ry) ** 2 <= 1
        else:
            mask = np.ones((h, w), dtype=bool)
        rows, cols = np.nonzero(mask)
        colour = np.array(COLOURS[label], np.int16)[:, None]
        shade = rng.integers(-12, 13, (1, len(rows)))
        pixels[:, y0 + rows, x0 + cols] = np.clip(colour + shade, 0, 255).astype(np.uint8)
        classes[y0 + rows, x0 + cols] = label + 1
        boxes.append((x0 + cols.min(), y0 + rows.min(), x0 + cols.max() + 1, y0 + rows.max() + 1))
        labels.append(label)
    boxes_array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return pixels, boxes_array, np.asarray(labels, dtype=np.int64), classes


def sample_transform(zoom: int = ZOOM, origin_tile: tuple[int, int] = ORIGIN_TILE) -> Affine:
    """Transform (EPSG:3857) of a scene whose upper-left corner is XYZ tile ``origin_tile`` (x, y)."""
    left, _, right, top = mercator_bounds(zoom, origin_tile[1], origin_tile[0])
    res = (right - left) / 256
    return Affine(res, 0.0, left, 0.0, -res, top)


def write_cog(path: str | os.PathLike[str], pixels: np.ndarray, transform: Affine, crs: Any = "EPSG:3857") -> Path:
    """Write ``(bands, rows, cols)`` uint8 pixels as a Cloud-Optimized GeoTIFF: 256-px blocks, deflate,
    internal overviews (averaged) down to below 256 px."""
    import rasterio
    import rasterio.shutil
    from rasterio.io import MemoryFile

    path = Path(path)
    bands, height, width = pixels.shape
    profile = dict(
        driver="GTiff", height=height, width=width, count=bands, dtype=pixels.dtype, crs=crs, transform=transform
    )
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(pixels)
        with mem.open() as ds:
            rasterio.shutil.copy(
                ds, path, driver="COG", blocksize=256, compress="DEFLATE", overview_resampling="AVERAGE"
            )
    return path


def _halve(pixels: np.ndarray) -> np.ndarray:
    """Half the size: the mean of each 2 x 2 block (an odd last row or column is repeated)."""
    _, h, w = pixels.shape
    padded = np.pad(pixels, ((0, 0), (0, h % 2), (0, w % 2)), mode="edge").astype(np.uint16)
    total = padded[:, 0::2, 0::2] + padded[:, 1::2, 0::2] + padded[:, 0::2, 1::2] + padded[:, 1::2, 1::2]
    return ((total + 2) // 4).astype(np.uint8)


def write_tiles(
    directory: str | os.PathLike[str],
    pixels: np.ndarray,
    zoom: int = ZOOM,
    origin_tile: tuple[int, int] = ORIGIN_TILE,
    *,
    min_zoom: int | None = None,
) -> Path:
    """Write uint8 ``pixels`` whose upper-left corner is XYZ tile ``origin_tile`` (x, y) at ``zoom``
    as ``{z}/{x}/{y}.png`` tiles, with averaged lower zoom levels down to ``min_zoom`` (default: the
    level where the scene fits in one tile) for quick overviews. Lower levels are padded with black
    to whole tiles; ``origin_tile`` must lie on a tile corner of each of them."""
    from .xyztiles import write_xyz_tiles

    directory = Path(directory)
    _, height, width = pixels.shape
    if height % 256 or width % 256:
        raise InvalidArgumentError(f"pixels must be whole 256-px tiles to write XYZ tiles, got {height} x {width}")
    if min_zoom is None:
        min_zoom = max(0, zoom - math.ceil(math.log2(max(height, width) / 256)))
    level = pixels
    for z in range(zoom, min_zoom - 1, -1):
        f = 2 ** (zoom - z)
        if origin_tile[0] % f or origin_tile[1] % f:
            raise InvalidArgumentError(
                f"origin_tile={origin_tile} is not on a tile corner at zoom {z}; use min_zoom={z + 1} or more"
            )
        if z < zoom:
            level = _halve(level)
        _, h, w = level.shape
        whole = np.pad(level, ((0, 0), (0, -h % 256), (0, -w % 256)))
        # fast, lossless PNG: the sample is written on every demo run
        write_xyz_tiles(
            whole, directory, zoom=z, top_left_tile=(origin_tile[0] // f, origin_tile[1] // f), compress_level=1
        )
    return directory


def make_sample(
    directory: str | os.PathLike[str],
    *,
    size: int = 2048,
    objects: int | None = None,
    seed: int = 0,
    tiles: bool = True,
) -> Sample:
    """Write the built-in sample into ``directory``: ``sample.tif`` (a COG) and ``tiles/{z}/{x}/{y}.png``.

    Parameters
    ----------
    directory
        Where to write (made if missing; existing sample files are replaced).
    size, objects, seed
        As in :func:`sample_scene`.
    tiles
        Also write the XYZ tiles (with lower zoom levels, for previews).

    Returns
    -------
    Sample
        Paths, georeferencing and the true objects.

    Examples
    --------
    >>> import tempfile, lazytiles as lt
    >>> from lazytiles.testing.sample import make_sample
    >>> tmp = tempfile.TemporaryDirectory()
    >>> sample = make_sample(tmp.name, size=512, tiles=False)
    >>> src = lt.open(sample.cog)
    >>> src.crs.to_string(), src.width, len(sample.boxes)
    ('EPSG:3857', 512, 4)
    >>> tmp.cleanup()
    """
    directory = Path(directory)
    if tiles and (isinstance(size, int) and size % 256):
        raise InvalidArgumentError(
            f"size must be a multiple of 256 to write XYZ tiles, got {size!r}; or pass tiles=False"
        )
    directory.mkdir(parents=True, exist_ok=True)
    pixels, boxes, labels = sample_scene(size, objects=objects, seed=seed)
    transform = sample_transform()
    cog = write_cog(directory / "sample.tif", pixels, transform)
    tiles_dir = write_tiles(directory / "tiles", pixels, ZOOM, ORIGIN_TILE) if tiles else None
    return Sample(
        directory=directory,
        cog=cog,
        tiles_dir=tiles_dir,
        zoom=ZOOM,
        transform=transform,
        crs=CRS.from_epsg(3857),
        width=size,
        height=size,
        boxes=boxes,
        labels=labels,
    )


__all__ = [
    "COLOURS",
    "ORIGIN_TILE",
    "ZOOM",
    "Sample",
    "make_sample",
    "object_outlines",
    "sample_classes",
    "sample_scene",
    "sample_transform",
    "write_cog",
    "write_tiles",
]
