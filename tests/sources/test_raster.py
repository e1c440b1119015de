"""RasterSource: real GeoTIFFs and VRTs through rasterio, per-thread handles, recipes, GDAL's cache."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import ramp, write_tif
from numpy.testing import assert_array_equal
from rasterio.windows import Window

import lazytiles as lt
from lazytiles.sources.raster import GDAL_BLOCK_CACHE_BYTES

TIMEOUT = 60


def test_metadata_is_rasterios(ramp_tif):
    src = lt.open(ramp_tif)
    assert isinstance(src, lt.RasterSource) and isinstance(src, lt.TileSource)
    with rasterio.open(ramp_tif) as ds:
        assert (src.crs, src.transform, src.count, src.height, src.width) == (
            ds.crs,
            ds.transform,
            ds.count,
            ds.height,
            ds.width,
        )
        assert src.dtype == np.dtype(ds.dtypes[0]) and src.nodata == ds.nodata
        assert src.bounds == tuple(ds.bounds)
    assert src.tile_shape == (256, 256) and src.grid.rows == src.grid.cols == 4
    assert src.cache is lt.cache.default_cache()
    assert repr(src) == (f"RasterSource({str(ramp_tif)!r})  # 3x1024x1024 uint16, crs=EPSG:32633, tiles 256x256")
    info = src.describe()
    assert info["tiles"] == 16 and info["resolution"] == (10.0, 10.0) and info["path"] == str(ramp_tif)


def test_reads_equal_rasterio_and_count_tiles(ramp_tif):
    src = lt.open(ramp_tif, cache=lt.TileCache(2**24))
    w = Window(200, 300, 400, 100)
    with rasterio.open(ramp_tif) as ds:
        assert_array_equal(src.read(w), ds.read(window=w))
    assert src.stats()["tiles_read"] == 3 and src.stats()["bytes_decoded"] == 3 * 3 * 256 * 256 * 2  # rows 300..400
    assert src.stats()["read_seconds"] >= 0


def test_bands_nodata_and_tile_shape_can_be_chosen(tmp_path):
    arr = ramp(4, 300, 500, "uint16")
    path = write_tif(tmp_path / "rgbn.tif", arr, block=(128, 256), nodata=9)
    src = lt.open(path, bands=(3, 1), nodata=1, tile_shape=(100, 200), cache=lt.TileCache(2**24))
    assert src.count == 2 and src.nodata == 1 and src.tile_shape == (100, 200)
    w = Window(-10, 250, 100, 100)
    expected = np.full((2, 100, 100), 1, np.uint16)
    expected[:, :50, 10:] = arr[[2, 0], 250:300, 0:90]
    assert_array_equal(src.read(w), expected)
    assert lt.open(path).nodata == 9
    with pytest.raises(
        lt.InvalidArgumentError,
        match=r"bands=\(0, 1\) are not all bands of .*which has bands \(1, 2, 3, 4\); band indexes start at 1",
    ):
        lt.open(path, bands=(0, 1))
    with pytest.raises(ValueError, match=r"bands=\(\) are not all bands"):
        lt.open(path, bands=())


@pytest.mark.parametrize(
    ("block", "shape", "tile"),
    [
        ((256, 128), (600, 700), (256, 128)),  # good blocks are the tiles
        (None, (1000, 700), (510, 512)),  # 5-row strips: 102 of them (510 rows), 512 px wide
        ((16, 16), (2000, 1000), (512, 512)),  # tiny blocks: whole numbers of them
        ((16, 16), (300, 200), (300, 200)),  # ... never more than the raster
    ],
)
def test_striped_and_oddly_blocked_files_get_sensible_tiles(tmp_path, block, shape, tile):
    arr = ramp(1, *shape, "uint16")
    path = write_tif(tmp_path / "odd.tif", arr, block=block)
    src = lt.open(path, cache=lt.TileCache(2**24))
    assert src.tile_shape == tile
    w = Window(shape[1] // 3, shape[0] // 3, shape[1] // 2, shape[0] // 2)
    assert_array_equal(src.read(w), arr[:, w.toslices()[0], w.toslices()[1]])


def test_a_vrt_opens_like_any_raster(tmp_path, ramp_tif):
    vrt = tmp_path / "ramp.vrt"
    with rasterio.open(ramp_tif) as ds:
        blocks = "".join(
            textwrap.dedent(f"""
            <VRTRasterBand dataType="UInt16" band="{b}" blockXSize="512" blockYSize="512">
              <SimpleSource>
                <SourceFilename relativeToVRT="1">{ramp_tif.name}</SourceFilename>
                <SourceBand>{b}</SourceBand>
                <SrcRect xOff="0" yOff="0" xSize="1024" ySize="1024"/>
                <DstRect xOff="1024" yOff="0" xSize="1024" ySize="1024"/>
              </SimpleSource>
            </VRTRasterBand>""")
            for b in (1, 2, 3)
        )
        vrt.write_text(
            f'<VRTDataset rasterXSize="2048" rasterYSize="1024"><SRS>{ds.crs.to_wkt()}</SRS>'
            f"<GeoTransform>{', '.join(map(str, ds.transform.to_gdal()))}</GeoTransform>{blocks}</VRTDataset>"
        )
    src = lt.open(vrt, cache=lt.TileCache(2**25))
    assert (src.width, src.height, src.tile_shape) == (2048, 1024, (512, 512))
    wins = lt.windows(src, 512, stride=256)
    w = wins[3]  # cols 768..1280: the empty left half and the ramp
    expected = np.zeros((3, 512, 512), np.uint16)
    expected[:, :, 256:] = ramp(3, 1024, 1024, "uint16")[:, 0:512, 0:256]
    assert_array_equal(w.data, expected)


# -- handles, threads, processes -------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_sixteen_threads_read_with_their_own_handles_and_match_serial_reads(tmp_path):
    arr = ramp(3, 900, 1100, "uint16")
    path = write_tif(tmp_path / "t.tif", arr, block=(128, 128))
    src = lt.open(path, cache=lt.TileCache(2**26))
    wins = lt.windows(src, 200, overlap=0.5, edge="pad")
    rng = np.random.default_rng(0)
    picks = [rng.integers(0, len(wins), 30) for _ in range(16)]
    serial = {i: lt.open(path, cache=lt.TileCache(2**26)).read(wins.pixel_window(i)) for i in range(len(wins))}
    barrier = threading.Barrier(16, timeout=TIMEOUT)
    handles, errors, got = {}, [], {}

    def work(t):
        try:
            barrier.wait()
            got[t] = [wins[int(i)] for i in picks[t]]
            handles[t] = src._dataset()
        except BaseException as err:  # handed to the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads) and not errors
    for t in range(16):
        for i, w in zip(picks[t], got[t]):
            assert_array_equal(w.data, serial[int(i)])
    assert len({id(h) for h in handles.values()} | {id(src._dataset())}) == 17  # one handle per thread
    touched = {k for t in range(16) for w in got[t] for k in w.tiles}
    assert src.stats()["tiles_read"] == len(touched)  # single flight: each tile read once


def test_a_source_and_its_sequences_pickle_as_a_few_hundred_bytes(ramp_tif):
    src = lt.open(ramp_tif)
    wins = lt.windows(src, 256, overlap=0.5)
    first = wins[0].data  # opens a handle and fills the cache: neither may travel
    assert len(pickle.dumps(src)) < 400
    assert len(pickle.dumps(wins)) < 700
    copy = pickle.loads(pickle.dumps(wins))
    assert copy.source.path == src.path and copy.source.cache is src.cache  # the default travels as the default
    assert len(copy) == len(wins) and copy.pixel_windows().tolist() == wins.pixel_windows().tolist()
    assert_array_equal(copy[0].data, first)
    sub = wins[[7, 3, 3]]
    assert len(pickle.dumps(sub)) < 800 and [w.index for w in pickle.loads(pickle.dumps(sub))] == [7, 3, 3]
    chosen = lt.open(ramp_tif, bands=(2,), nodata=5, tile_shape=128, cache=lt.TileCache(2**25))
    back = pickle.loads(pickle.dumps(chosen))
    assert (back.bands, back.nodata, back.tile_shape, back.cache.max_bytes) == ((2,), 5, (128, 128), 2**25)
    assert back.token == chosen.token and len(back.cache) == 0


def test_a_region_filtered_sequence_of_a_raster_stays_small(ramp_tif):
    import shapely

    src = lt.open(ramp_tif)
    region = shapely.Point(505_000, 5_995_000).buffer(3000)
    wins = lt.windows(src, 16, region=region)
    assert 1000 < len(wins) < 1024**2 // 16**2
    wins[0]
    blob = pickle.dumps(wins)
    assert len(blob) < 1500
    assert pickle.loads(blob).pixel_windows().tolist() == wins.pixel_windows().tolist()


@pytest.mark.timeout(120)
def test_a_source_reopens_in_a_child_process(ramp_tif):
    src = lt.open(ramp_tif)
    wins = lt.windows(src, 256)
    wins[5]
    code = (
        "import pickle, sys, numpy as np; wins = pickle.loads(sys.stdin.buffer.read()); "
        "w = wins[5]; print(int(w.data.astype(np.int64).sum()), w.window.col_off, w.window.row_off)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(wins), capture_output=True, timeout=TIMEOUT, check=True
    )
    assert out.stdout.split() == [str(int(wins[5].data.astype(np.int64).sum())).encode(), b"256", b"256"]


# -- GDAL's block cache ----------------------------------------------------------------------------


def _gdal_cache_max_script(gdal_cache_bytes: str) -> str:
    """Opens a raster in a fresh process and prints GDAL's block cache size before and after."""
    return textwrap.dedent(f"""
        import ctypes, glob, os, sys
        import rasterio
        libs = glob.glob(os.path.join(os.path.dirname(rasterio.__file__), os.pardir, "rasterio.libs", "libgdal*"))
        gdal = ctypes.CDLL(libs[0]) if libs else ctypes.CDLL("libgdal.so")
        gdal.GDALGetCacheMax64.restype = ctypes.c_int64
        import lazytiles as lt
        before = gdal.GDALGetCacheMax64()
        src = lt.open(sys.argv[1], gdal_cache_bytes={gdal_cache_bytes})
        src.read(rasterio.windows.Window(0, 0, 10, 10))
        print(before, gdal.GDALGetCacheMax64())
    """)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("env", "arg", "expected"),
    [
        (None, "GDAL_BLOCK_CACHE_BYTES", GDAL_BLOCK_CACHE_BYTES),  # capped: lazytiles caches the tiles
        ("100000000", "GDAL_BLOCK_CACHE_BYTES", 100_000_000),  # the user's GDAL_CACHEMAX wins
        (None, "None", None),  # gdal_cache_bytes=None leaves GDAL alone
    ],
)
def test_gdal_s_block_cache_is_capped_on_first_open_unless_the_user_chose(ramp_tif, env, arg, expected):
    script = _gdal_cache_max_script(arg).replace("gdal_cache_bytes=GDAL", "gdal_cache_bytes=lt.sources.raster.GDAL")
    environ = {k: v for k, v in os.environ.items() if k != "GDAL_CACHEMAX"}
    if env is not None:
        environ["GDAL_CACHEMAX"] = env
    out = subprocess.run(
        [sys.executable, "-c", script, str(ramp_tif)], capture_output=True, timeout=TIMEOUT, env=environ, text=True
    )
    assert out.returncode == 0, out.stderr
    before, after = (int(v) for v in out.stdout.split())
    if expected is None:
        assert after == before
    elif env is None:  # only ever lowered: GDAL's default is 5 % of RAM, more than 32 MiB almost anywhere
        assert after == min(before, expected)
    else:
        assert before == after == expected


# -- errors ----------------------------------------------------------------------------------------


def test_a_missing_path_is_a_file_not_found_error(tmp_path):
    missing = tmp_path / "nope.tif"
    with pytest.raises(FileNotFoundError, match=rf"no such file: {str(missing)!r}; check the path") as info:
        lt.open(missing)
    assert isinstance(info.value, lt.SourceNotFoundError) and isinstance(info.value, lt.LazyTilesError)
    with pytest.raises(lt.SourceNotFoundError):
        lt.windows(str(missing), 256)


def test_a_file_that_is_not_a_raster_is_an_os_error_naming_it(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a raster\n")
    with pytest.raises(
        OSError, match=rf"rasterio could not open {str(text)!r} as a raster: .*; check that it is a GeoTIFF"
    ) as info:
        lt.open(text)
    assert isinstance(info.value, lt.SourceOpenError)
    with pytest.raises(lt.SourceOpenError, match="could not open"):
        lt.open(tmp_path)  # a directory is unreadable as a raster


def test_a_truncated_file_fails_where_its_tile_is_read_naming_window_tile_and_path(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (1, 512, 512), dtype=np.uint8)  # incompressible
    path = write_tif(tmp_path / "cut.tif", arr, block=(256, 256))
    src = lt.open(path, cache=lt.TileCache(2**22))
    wins = lt.windows(src, 256)
    wins[0]  # the first block is fine
    size = path.stat().st_size
    with open(path, "r+b") as f:  # lose the last blocks
        f.truncate(size - 70_000)
    with pytest.raises(
        OSError,
        match=r"window 3 Window\(col_off=256, row_off=256.*could not be read: tile TileKey\(.*row=1, col=1\) .* of .*cut\.tif.* could not be read",
    ) as info:
        wins[3]
    assert isinstance(info.value, lt.TileFetchError)
    assert src.stats()["failures"] == 1
    assert pickle.loads(pickle.dumps(info.value)).args == info.value.args
    import seqtools  # noqa: F401  # installs tblib's pickling of exception chains, for every exception

    assert pickle.loads(pickle.dumps(info.value)).args == info.value.args  # GDAL's inner errors do not unpickle


def test_gdal_options_apply_while_reading(ramp_tif):
    src = lt.open(ramp_tif, gdal_options={"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}, cache=lt.TileCache(2**24))
    assert_array_equal(src.read(Window(0, 0, 8, 8)), ramp(3, 8, 8, "uint16"))
    back = pickle.loads(pickle.dumps(src))
    assert back._gdal_options == {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


def test_path_types(tmp_path, ramp_tif):
    assert lt.open(str(ramp_tif)).path == lt.open(Path(ramp_tif)).path == str(ramp_tif)
    with pytest.raises(lt.InvalidArgumentError, match=r"path must be a file path, URL or tile-URL template, got int 5"):
        lt.open(5)
    with pytest.raises(lt.InvalidArgumentError, match=r"zoom=3 only applies to tile-URL templates"):
        lt.open(ramp_tif, zoom=3)
    assert lt.open(lt.open(ramp_tif)).path == str(ramp_tif)  # a source passes through


def test_overview_comes_from_the_file_s_overviews(tmp_path):
    # overviews of zeros, then full resolution overwritten with 255: an overview of 0s read the overviews
    path = write_tif(tmp_path / "ov.tif", np.zeros((1, 1024, 1024), np.uint8), overviews=(2, 4))
    with rasterio.open(path, "r+") as ds:
        ds.write(np.full((1, 1024, 1024), 255, np.uint8))
    src = lt.open(path)
    pixels, to_source = src.overview(max_size=256)
    assert pixels.shape == (1, 256, 256) and (pixels == 0).all()
    assert to_source == Affine.scale(4)
    assert src.stats()["tiles_read"] == 0
    full, _ = src.overview(max_size=2048)
    assert (full == 255).all()
    part, to_source = src.overview(Window(512, 256, 512, 256), max_size=128)  # an area: its own level
    assert part.shape == (1, 64, 128) and to_source == Affine.translation(512, 256) @ Affine.scale(4)
