"""Shared fixtures: data whose pixels name their position, real GeoTIFFs, a read-counting source."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

import lazytiles as lt
from lazytiles.cache import TileKey

#: A 10 m UTM grid whose upper-left corner is at (500000, 6000000) in EPSG:32633.
UTM_10M = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 6_000_000.0)


def ramp(bands: int = 3, height: int = 1024, width: int = 1024, dtype: str = "uint32") -> np.ndarray:
    """Pixel (b, r, c) holds b * 10**8 + r * 10**4 + c (for uint32), so every value names its position.

    Narrower dtypes get the same formula modulo their range, which still catches flips and shifts.
    """
    b, r, c = np.indices((bands, height, width), dtype=np.uint64)
    values = b * 100_000_000 + r * 10_000 + c
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return (b * 1_000_000 + r * 1000 + c).astype(dt)  # exact in float32 up to 2**24
    if dt.itemsize < 4:
        return (b * 97 + r * 31 + c).astype(np.uint64).astype(dt)  # wraps, but differs for neighbours
    return values.astype(dt)


def write_tif(
    path: Path,
    array: np.ndarray,
    *,
    transform: Affine = UTM_10M,
    crs: str = "EPSG:32633",
    block: tuple[int, int] | None = (256, 256),
    nodata: float | None = None,
    compress: str | None = "deflate",
    overviews: tuple[int, ...] = (),
) -> Path:
    """Write ``array`` (bands, rows, cols) as a GeoTIFF; tiled with ``block`` (None: striped)."""
    profile = dict(
        driver="GTiff",
        height=array.shape[1],
        width=array.shape[2],
        count=array.shape[0],
        dtype=array.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    )
    if compress:
        profile["compress"] = compress
    if block is not None:
        profile.update(tiled=True, blockysize=block[0], blockxsize=block[1])
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(array)
        if overviews:
            ds.build_overviews(list(overviews))
    return path


@pytest.fixture
def ramp_array() -> np.ndarray:
    return ramp()


@pytest.fixture
def ramp_tif(tmp_path: Path) -> Path:
    """A 3-band uint16 1024x1024 GeoTIFF in 256-px blocks over UTM_10M."""
    return write_tif(tmp_path / "ramp.tif", ramp(3, 1024, 1024, "uint16"))


class CountingSource(lt.ArraySource):
    """An ArraySource that counts every tile it reads (from the source, not the cache)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reads: Counter[TileKey] = Counter()
        self._reads_lock = threading.Lock()

    def _read_tile(self, key: TileKey) -> np.ndarray:
        with self._reads_lock:
            self.reads[key] += 1
        return super()._read_tile(key)


def tiles_touched(window, tile: int | tuple[int, int]) -> set[tuple[int, int]]:
    """(row, col) of every tile holding a pixel of ``window``: walks every pixel row and column."""
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    rows = {r // th for r in range(int(window.row_off), int(window.row_off + window.height)) if r >= 0}
    cols = {c // tw for c in range(int(window.col_off), int(window.col_off + window.width)) if c >= 0}
    return {(r, c) for r in rows for c in cols}


def assert_same(found: lt.Detections, expected: lt.Detections) -> None:
    """Equal boxes, scores, labels, window indices and partial flags, in the same order."""
    np.testing.assert_array_equal(found.boxes, expected.boxes)
    np.testing.assert_array_equal(found.scores, expected.scores)
    np.testing.assert_array_equal(found.labels, expected.labels)
    np.testing.assert_array_equal(found.window_index, expected.window_index)
    np.testing.assert_array_equal(found.partial, expected.partial)
    assert found == expected
