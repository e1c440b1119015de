"""Every error the foundation raises on purpose: its class, its built-in, its text, and its pickle."""

from __future__ import annotations

import inspect
import pickle

import numpy as np
import pytest
import shapely
from conftest import UTM_10M, write_tif

import lazytiles as lt
import lazytiles.errors as errors


def raised(call, *args, **kwargs) -> BaseException:
    with pytest.raises(lt.LazyTilesError) as info:
        call(*args, **kwargs)
    return info.value


@pytest.fixture
def src():
    return lt.ArraySource(np.zeros((3, 1000, 800), np.uint8), transform=UTM_10M, crs="EPSG:32633", tile_shape=256)


@pytest.fixture
def tif(tmp_path):
    return write_tif(tmp_path / "small.tif", np.zeros((1, 300, 200), np.uint8))


def case_missing_path(tmp_path, src):
    return raised(lt.open, tmp_path / "missing.tif")


def case_not_a_raster(tmp_path, src):
    path = tmp_path / "readme.txt"
    path.write_text("plain text, not an image")
    return raised(lt.open, path)


def case_unreadable_path(tmp_path, src):
    path = tmp_path / "empty.tif"
    path.write_bytes(b"")
    return raised(lt.open, path)


# (case, expected class, the built-in it must also be, message regex)
CASES = [
    (case_missing_path, lt.SourceNotFoundError, FileNotFoundError, r"no such file: '.*missing\.tif'; check the path"),
    (
        case_not_a_raster,
        lt.SourceOpenError,
        OSError,
        r"rasterio could not open '.*readme\.txt' as a raster: .*; check that it is a GeoTIFF, COG, VRT",
    ),
    (case_unreadable_path, lt.SourceOpenError, OSError, r"rasterio could not open '.*empty\.tif' as a raster"),
    (
        lambda t, s: raised(lt.windows, s, 0),
        lt.InvalidArgumentError,
        ValueError,
        r"size must be a positive int or \(rows, cols\) in pixels, got 0",
    ),
    (
        lambda t, s: raised(lt.windows, s, (256, -1)),
        lt.InvalidArgumentError,
        ValueError,
        r"size must be a positive int or \(rows, cols\) in pixels, got \(256, -1\)",
    ),
    (
        lambda t, s: raised(lt.windows, s, 512.0),
        lt.InvalidArgumentError,
        ValueError,
        r"size must be a positive int or \(rows, cols\) in pixels, got 512\.0",
    ),
    (
        lambda t, s: raised(lt.windows, s, 1001, edge="drop"),
        lt.InvalidArgumentError,
        ValueError,
        r"size=1001 px is larger than the area's 1000 px height with edge='drop', so no window fits; use a smaller size",
    ),
    (
        lambda t, s: raised(lt.windows, s, (10, 900), edge="drop"),
        lt.InvalidArgumentError,
        ValueError,
        r"size=900 px is larger than the area's 800 px width with edge='drop'",
    ),
    (
        lambda t, s: raised(lt.windows, s, 256, overlap=1.5),
        lt.InvalidArgumentError,
        ValueError,
        r"overlap must be in \[0, 1\), got 1\.5; for a step in pixels pass stride= instead",
    ),
    (
        lambda t, s: raised(lt.windows, s, 256, overlap=-0.1),
        lt.InvalidArgumentError,
        ValueError,
        r"overlap must be in \[0, 1\), got -0\.1",
    ),
    (
        lambda t, s: raised(lt.windows, s, 256, overlap=1),
        lt.InvalidArgumentError,
        ValueError,
        r"overlap must be in \[0, 1\), got 1;",
    ),
    (
        lambda t, s: raised(lt.windows, s, 256, stride=0),
        lt.InvalidArgumentError,
        ValueError,
        r"stride must be a positive int or \(rows, cols\) in pixels, got 0",
    ),
    (
        lambda t, s: raised(lt.windows, s, 256, stride=(10, -5)),
        lt.InvalidArgumentError,
        ValueError,
        r"stride must be a positive int or \(rows, cols\) in pixels, got \(10, -5\)",
    ),
    (
        lambda t, s: raised(lt.windows, s, 256, overlap=0.5, stride=128),
        lt.InvalidArgumentError,
        ValueError,
        r"overlap=0\.5 and stride=128 were both given; pass one of them \(stride is in pixels, overlap is a fraction of size\)",
    ),
    (
        lambda t, s: raised(lt.windows, s, 256, bounds=(0, 0, 10, 10)),
        lt.BoundsError,
        ValueError,
        r"bounds=\(0\.0, 0\.0, 10\.0, 10\.0\) do not intersect the raster, whose bounds are \(500000\.0, 5990000\.0, 508000\.0, 6000000\.0\) in EPSG:32633; check the order",
    ),
    (
        lambda t, s: raised(lt.windows, s, 256, bounds=(-10, 40, -9, 41), bounds_crs="EPSG:4326"),
        lt.BoundsError,
        ValueError,
        r"bounds=\(-10\.0, 40\.0, -9\.0, 41\.0\) \(EPSG:4326\) do not intersect the raster",
    ),
    (
        lambda t, s: raised(lt.windows, s, 256, bounds=(508_000, 5_990_000, 500_000, 6_000_000)),
        lt.InvalidArgumentError,
        ValueError,
        r"bounds=\(508000, 5990000, 500000, 6000000\) is not \(left, bottom, right, top\) with left < right",
    ),
    (
        lambda t, s: raised(lt.windows, s, 256, bounds=(1, 2, 3)),
        lt.InvalidArgumentError,
        ValueError,
        r"bounds must be \(left, bottom, right, top\), got \(1, 2, 3\)",
    ),
    (
        lambda t, s: raised(lt.windows, s, 256, bounds=(0, 0, 1, 1), bounds_crs="EPSG:999999"),
        lt.CRSError,
        ValueError,
        r"bounds_crs='EPSG:999999' is not a CRS rasterio knows \(.*\); pass e\.g\. 'EPSG:4326', an EPSG integer",
    ),
    (
        lambda t, s: raised(lt.windows, s, 256, region=shapely.Point(0, 0), region_crs="nonsense"),
        lt.CRSError,
        ValueError,
        r"region_crs='nonsense' is not a CRS rasterio knows",
    ),
    (
        lambda t, s: raised(lt.windows, lt.ArraySource(np.zeros((1, 9, 9))), 3, bounds=(0, 0, 1, 1), bounds_crs=4326),
        lt.CRSError,
        ValueError,
        r"bounds_crs=4326 needs the source's CRS, but ArraySource\(.*\) has none; give the source crs=\.\.\.",
    ),
    (
        lambda t, s: raised(lt.windows, s, 256, region=42),
        lt.InvalidArgumentError,
        ValueError,
        r"region must be a shapely geometry, a GeoJSON geometry mapping, or a callable on a window's bounds, got int",
    ),
    (
        lambda t, s: raised(lt.windows, s, 256, region={"type": "Polygon", "coordinates": "x"}),
        lt.InvalidArgumentError,
        ValueError,
        r"region \{'type': 'Polygon', 'coordinates': 'x'\} is not a valid GeoJSON geometry",
    ),
    (
        lambda t, s: raised(lt.windows, s, 256, region=shapely.Polygon()),
        lt.BoundsError,
        ValueError,
        r"region is an empty geometry; pass a geometry that covers the area to process",
    ),
    (
        lambda t, s: raised(lt.windows, s, 256, region=shapely.box(0, 0, 1, 1)),
        lt.BoundsError,
        ValueError,
        r"region \(bounds .* in pixels\) does not intersect the area to process \(rows 0\.\.1000, cols 0\.\.800\); check region_crs",
    ),
    (
        lambda t, s: raised(lt.windows, s, 256, region=lambda bounds: False),
        lt.BoundsError,
        ValueError,
        r"no window overlaps the region; check the region and region_crs",
    ),
    (
        lambda t, s: raised(lt.windows, s, 256, edge="wrap"),
        lt.InvalidArgumentError,
        ValueError,
        r"edge must be one of 'shift', 'pad', 'drop', got 'wrap'",
    ),
    (
        lambda t, s: raised(lt.windows, [1, 2, 3], 256),
        lt.InvalidArgumentError,
        ValueError,
        r"src must be a lazytiles source \(lt.open\(path\), lt.ArraySource\(array\)\) or a path, got list",
    ),
    (
        lambda t, s: raised(lt.windows(s, 256).__getitem__, 16),
        lt.WindowIndexError,
        IndexError,
        r"window index 16 is out of range for 16 windows",
    ),
    (
        lambda t, s: raised(lt.windows(s, 256).__getitem__, -17),
        lt.WindowIndexError,
        IndexError,
        r"window index -17 is out of range for 16 windows",
    ),
    (
        lambda t, s: raised(lt.windows(s, 256).__getitem__, "3"),
        lt.IndexTypeError,
        TypeError,
        r"window indices must be integers, slices or 1-d integer/boolean arrays, not str",
    ),
    (
        lambda t, s: raised(lt.windows(s, 256).__getitem__, 2.0),
        lt.IndexTypeError,
        TypeError,
        r"window indices must be integers, slices or 1-d integer/boolean arrays, not float",
    ),
    (
        lambda t, s: raised(lt.TileCache, 0),
        lt.InvalidArgumentError,
        ValueError,
        r"max_bytes must be a positive number of bytes, got 0; for example TileCache\(max_bytes=512 \* 2\*\*20\)",
    ),
    (
        lambda t, s: raised(lt.ArraySource, np.zeros((3, 600, 600), np.uint8), cache=lt.TileCache(2**18)),
        lt.CacheTooSmallError,
        ValueError,
        r"cache max_bytes=262144 is smaller than one 512x512 tile of 3 uint8 bands \(786432 bytes\); use lt.TileCache\(max_bytes=50331648\) or more",
    ),
]


@pytest.mark.parametrize(
    ("case", "cls", "builtin", "message"), CASES, ids=[f"{c[1].__name__}-{i}" for i, c in enumerate(CASES)]
)
def test_each_error_has_its_class_its_builtin_its_text_and_pickles(tmp_path, src, case, cls, builtin, message):
    err = case(tmp_path, src)
    assert type(err) is cls
    assert isinstance(err, builtin) and isinstance(err, lt.LazyTilesError)
    assert len(err.args) == 1  # one message string: OSError reads two as (errno, strerror)
    assert pytest.raises(builtin, _raise, err).match(message)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls and str(back) == str(err) and back.args == err.args


def _raise(err: BaseException) -> None:
    raise err


def test_a_cache_too_small_for_a_raster_s_tiles_is_refused_at_open(tif):
    err = raised(lt.open, tif, cache=lt.TileCache(1000))
    assert isinstance(err, lt.CacheTooSmallError) and isinstance(err, ValueError)
    assert "cache max_bytes=1000 is smaller than one 256x256 tile of 1 uint8 bands (65536 bytes)" in str(err)


ERROR_CLASSES = [obj for _, obj in inspect.getmembers(errors, inspect.isclass) if issubclass(obj, lt.LazyTilesError)]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_is_exported_under_the_root_and_pickles_with_one_message(cls):
    assert getattr(lt, cls.__name__) is cls
    err = cls("window 3 could not be read: tile 'x' failed")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls and str(back) == str(err) == "window 3 could not be read: tile 'x' failed"
    builtins = [b for b in cls.__mro__ if b.__module__ == "builtins" and b not in (object, BaseException, Exception)]
    assert cls is lt.LazyTilesError or builtins, f"{cls.__name__} should also be a built-in error"


def test_warnings_have_their_own_root():
    assert issubclass(lt.LazyTilesWarning, UserWarning) and not issubclass(lt.LazyTilesWarning, lt.LazyTilesError)
