"""src.at(res=..., crs=...): warped tiles equal GDAL's warped VRT, read from the right level, once."""

from __future__ import annotations

import pickle
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from conftest import write_tif
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

import lazytiles as lt
from lazytiles.cache import TileKey
from lazytiles.sources.warped import WarpedSource, choose_level

#: 0.6 m pixels in web mercator, somewhere in the Netherlands (EPSG:3857 -> EPSG:32631 is a real warp).
MERC = Affine(0.6, 0.0, 560_000.0, 0.0, -0.6, 6_850_000.0)
UTM31 = Affine(0.6, 0.0, 600_000.0, 0.0, -0.6, 5_800_000.0)


def noise(size: int = 1024, seed: int = 0) -> np.ndarray:
    """Random uint8 (3, size, size): the hardest image to warp alike (every pixel differs)."""
    return np.random.default_rng(seed).integers(0, 256, (3, size, size), dtype=np.uint8)


@pytest.fixture(scope="module")
def merc_tif(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("warp") / "merc.tif"
    return write_tif(path, noise(), transform=MERC, crs="EPSG:3857", block=(256, 256), overviews=(2, 4, 8))


@pytest.fixture(scope="module")
def utm_tif(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("warp") / "utm.tif"
    image = noise(seed=1)
    image[:, :100, :300] = 0  # a nodata corner
    return write_tif(path, image, transform=UTM31, crs="EPSG:32631", block=(256, 256), overviews=(2, 4), nodata=0)


def vrt_read(path: Path, warped: WarpedSource, window: Window) -> np.ndarray:
    """What GDAL's warped VRT over the level warped reads for ``window``."""
    level = warped.level_index
    with rasterio.open(path, **({} if level == 0 else {"overview_level": level - 1})) as ds:
        with WarpedVRT(
            ds,
            crs=warped.crs,
            transform=warped.transform,
            width=warped.width,
            height=warped.height,
            resampling=Resampling[warped.resampling.name],
        ) as vrt:
            return vrt.read(window=window)


def seam_windows(warped: WarpedSource) -> list[Window]:
    """Windows across the warped tiles' seams (and the raster's edge), inside the raster."""
    w, h = warped.width, warped.height
    out = [Window(0, 0, min(w, 300), min(h, 200)), Window(max(0, w - 170), max(0, h - 90), min(w, 170), min(h, 90))]
    if w > 600 and h > 600:
        out += [Window(400, 450, 200, 120), Window(300, 500, 300, 30)]
    return out


CASES = [  # (file, res, crs, level GDAL's rule picks)
    ("utm", 1.2, None, 1),  # 2x coarser, same CRS: the first overview
    ("utm", 2.4, None, 2),  # 4x: the second
    ("utm", 1.5, None, 1),  # 2.5x: the first (coarsest still finer)
    ("utm", 0.5, None, 0),  # finer than the file: full resolution
    ("merc", 0.5, "EPSG:32631", 0),  # another CRS
    ("merc", 1.3, "EPSG:32631", 1),  # another CRS, 2.1x: the first overview
]


@pytest.mark.parametrize("name, res, crs, level", CASES)
@pytest.mark.parametrize("resampling", ["nearest", "bilinear", "cubic", "average"])
def test_pixels_equal_gdal_warped_vrt_reads(request, name, res, crs, level, resampling) -> None:
    path = request.getfixturevalue(f"{name}_tif")
    warped = lt.open(path, cache=lt.TileCache(64 * 2**20)).at(res=res, crs=crs, resampling=resampling)
    assert isinstance(warped, WarpedSource) and warped.level_index == level
    assert warped.crs == (rasterio.crs.CRS.from_user_input(crs) if crs else warped.parent.crs)
    for window in seam_windows(warped):
        mine, gdal = warped.read(window), vrt_read(path, warped, window)
        if resampling == "nearest":
            np.testing.assert_array_equal(mine, gdal)
        else:
            assert np.abs(mine.astype(int) - gdal).max() <= 1, window


def test_a_window_outside_the_footprint_is_filled_without_reading(utm_tif: Path) -> None:
    warped = lt.open(utm_tif, cache=lt.TileCache(64 * 2**20)).at(res=2.4)
    data = warped.read(Window(warped.width + 10, 0, 50, 50))
    assert data.shape == (3, 50, 50) and not data.any()
    assert warped.level_source.stats()["tiles_read"] == 0


def test_the_grid_covers_the_footprint(merc_tif: Path) -> None:
    src = lt.open(merc_tif)
    same = src.at(res=(1.2, 2.4))
    assert (same.width, same.height) == (512, 256) and same.bounds == pytest.approx(src.bounds)
    other = src.at(res=1.0, crs=32631)
    left, bottom, right, top = rasterio.warp.transform_bounds(src.crs, other.crs, *src.bounds, densify_pts=21)
    assert other.transform.c == left and other.transform.f == top
    assert right <= other.bounds[2] < right + 1.0 and bottom - 1.0 < other.bounds[1] <= bottom


def test_level_choice_follows_gdal(utm_tif: Path) -> None:
    src = lt.open(utm_tif)
    assert src.levels() == (1.0, 2.0, 4.0)
    # gdalwarp -ovr AUTO: the first level from the finest with f[i] < t < f[i+1], or |f[i] - t| < 0.1
    factors = (1.0, 2.0, 4.0)
    picks = {t: choose_level(t, factors) for t in (0.3, 1.0, 1.05, 1.95, 1.99, 2.0, 2.05, 3.5, 3.99, 4.0, 4.05, 9.0)}
    assert picks == {
        0.3: 0,
        1.0: 0,
        1.05: 0,
        1.95: 0,
        1.99: 0,
        2.0: 1,
        2.05: 1,
        3.5: 1,
        3.99: 1,
        4.0: 2,
        4.05: 2,
        9.0: 2,
    }
    for t, level in picks.items():
        assert src.at(res=0.6 * t).level_index == level


class CountingRaster(lt.RasterSource):
    """A RasterSource that counts its tile reads; its overview levels are CountingRasters too."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reads: Counter[TileKey] = Counter()
        self._reads_lock = threading.Lock()

    def load_tile(self, key: TileKey) -> np.ndarray:
        with self._reads_lock:
            self.reads[key] += 1
        return super().load_tile(key)


def test_a_4x_coarser_pass_reads_the_overview_tiles_once_each(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "big.tif", noise(2048), transform=UTM31, crs="EPSG:32631", block=(128, 128),
                     overviews=(2, 4))  # fmt: skip
    full = CountingRaster(path, cache=lt.TileCache(256 * 2**20))
    coarse = full.at(res=2.4)
    wins = lt.windows(coarse, size=128, overlap=0.25)
    for w in wins:
        assert w.data.shape == (3, 128, 128)
    level = coarse.level_source
    assert isinstance(level, CountingRaster) and level.overview_level == 1 and coarse.level_index == 2
    assert not full.reads  # nothing at full resolution
    assert set(level.reads.values()) == {1}  # every overview tile once, though windows and warped tiles overlap
    assert len(level.reads) == level.grid.rows * level.grid.cols == full.grid.rows * full.grid.cols // 16
    assert coarse.stats()["tiles_read"] == coarse.grid.rows * coarse.grid.cols  # each warped tile warped once


def test_an_array_warps_from_itself_and_xyz_from_a_lower_zoom(tmp_path: Path) -> None:
    from lazytiles.testing.xyztiles import write_xyz_tiles

    image = noise(512)
    src = lt.ArraySource(image, transform=UTM31, crs="EPSG:32631", tile_shape=128)
    half = src.at(res=1.2, resampling="average")
    assert src.levels() == (1.0,) and half.level_source is src
    expected = image.reshape(3, 256, 2, 256, 2).astype(float).mean(axis=(2, 4))
    assert np.abs(half.read(Window(0, 0, 256, 256)) - expected).max() <= 1
    cover = write_xyz_tiles(image, tmp_path, zoom=12, top_left_tile=(2100, 1400))
    low = np.zeros((3, 256, 256), np.uint8)  # zoom 10: the image fills the upper-left quarter of one tile
    low[:, :128, :128] = image.reshape(3, 128, 4, 128, 4).mean(axis=(2, 4)).astype(np.uint8)
    write_xyz_tiles(low, tmp_path, zoom=10, top_left_tile=(525, 350))
    xyz = lt.open(str(tmp_path) + "/{z}/{x}/{y}.png", zoom=12)
    coarse = xyz.at(res=4 * xyz.transform.a, resampling="nearest")  # the zoom-10 grid itself
    assert coarse.level_index == 2 and coarse.level_source.zoom == 10 and coarse.needs_area
    assert coarse.transform == xyz.level(2).transform
    wins = lt.windows(coarse, size=64, bounds=cover.bounds)
    assert len(wins) == 4
    np.testing.assert_array_equal(np.concatenate([np.concatenate([wins[0].data, wins[1].data], 2),
                                                  np.concatenate([wins[2].data, wins[3].data], 2)], 1),
                                  low[:, :128, :128])  # fmt: skip
    assert xyz.stats()["tiles_read"] == 0  # nothing at zoom 12


def test_pickles_as_a_recipe_and_reads_the_same(utm_tif: Path) -> None:
    warped = lt.open(utm_tif).at(res=2.5, crs="EPSG:3857", resampling="cubic")
    back = pickle.loads(pickle.dumps(warped))
    assert back.token == warped.token and back.token.startswith("at:res=2.5,2.5|crs=EPSG:3857|cubic|")
    assert warped.parent.token in back.token and len(pickle.dumps(warped)) < 2000
    window = Window(100, 120, 300, 200)
    np.testing.assert_array_equal(back.read(window), warped.read(window))
    assert warped.describe()["warped_from"] == warped.parent.token and warped.describe()["level"] == 1


def test_bad_arguments_name_the_value_and_the_fix(utm_tif: Path) -> None:
    src = lt.open(utm_tif)
    for res in (0, -1.0, float("nan"), (1.0,), "2", True):
        with pytest.raises(lt.InvalidArgumentError, match="res="):
            src.at(res=res)
    with pytest.raises(lt.InvalidArgumentError, match="resampling='bicubic' .* use one of nearest, bilinear"):
        src.at(res=2.0, resampling="bicubic")
    with pytest.raises(lt.CRSError, match="crs='EPSG:99999'"):
        src.at(res=2.0, crs="EPSG:99999")
    with pytest.raises(lt.CRSError, match="has none"):
        lt.ArraySource(np.zeros((1, 8, 8), np.uint8)).at(res=2.0, crs="EPSG:4326")
    with pytest.raises(lt.InvalidArgumentError, match="north-up"):
        WarpedSource(src, src.crs, Affine(1, 0, 0, 0, 1, 0), 10, 10)
    with pytest.raises(lt.InvalidArgumentError, match="choose a coarser res"):
        src.at(res=1e-6)


def test_an_overview_is_warped_from_the_parents_overview(utm_tif: Path) -> None:
    parent = lt.open(utm_tif, cache=lt.TileCache(64 * 2**20))
    warped = parent.at(res=0.3, crs="EPSG:3857")  # 2x finer than the file, reprojected: ~3400 px a side
    pixels, to_source = warped.overview(max_size=200)
    assert pixels.shape[0] == 3 and max(pixels.shape[1:]) == 200
    assert warped.stats()["tiles_read"] == 0  # no warped tile: the file's overview, warped once
    # where each overview pixel's centre lies in the file: data, the nodata corner, or outside
    rows, cols = np.mgrid[0 : pixels.shape[1], 0 : pixels.shape[2]] + 0.5
    t = warped.transform @ to_source
    x, y = rasterio.warp.transform(warped.crs, parent.crs, t.c + t.a * cols.ravel(), t.f + t.e * rows.ravel())
    f = parent.transform
    col, row = np.reshape((np.array(x) - f.c) / f.a, rows.shape), np.reshape((np.array(y) - f.f) / f.e, rows.shape)
    margin = 20  # file pixels: an overview pixel is ~17 of them
    data = (col > margin) & (col < 1024 - margin) & (row > margin) & (row < 1024 - margin)
    data &= (row > 100 + margin) | (col > 300 + margin)
    empty = (col < -margin) | (col > 1024 + margin) | (row < -margin) | (row > 1024 + margin)
    empty |= (col > margin) & (col < 300 - margin) & (row > margin) & (row < 100 - margin)
    assert data.sum() > 20_000 and empty.sum() > 300
    assert pixels.any(axis=0)[data].all() and not pixels.any(axis=0)[empty].any()


def test_threads_reading_at_once_get_the_serial_pixels_and_warp_each_tile_once(merc_tif: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def fresh() -> WarpedSource:
        src = lt.open(merc_tif, cache=lt.TileCache(256 * 2**20))
        return src.at(res=0.8, crs="EPSG:32631", tile_shape=128)

    serial = fresh()
    windows = [
        Window(c, r, 150, 150) for r in range(0, serial.height - 150, 90) for c in range(0, serial.width - 150, 90)
    ]
    expected = [serial.read(w) for w in windows]
    shared = fresh()
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(shared.read, windows * 2))
    assert all(np.array_equal(a, b) for a, b in zip(got, expected * 2))
    tiles = {k for w in windows for k in shared.tiles_under(w)}
    assert shared.stats()["tiles_read"] == len(tiles)  # single flight: no tile warped twice


def test_at_of_a_warped_source_warps_the_parent_once(utm_tif: Path) -> None:
    src = lt.open(utm_tif)
    once = src.at(res=2.0, crs="EPSG:3857").at(res=2.4, resampling="nearest")
    assert once.parent is src and once.crs == rasterio.crs.CRS.from_epsg(3857) and once.transform.a == 2.4


def test_windows_over_bounds_in_another_crs_cover_them(merc_tif: Path) -> None:
    warped = lt.open(merc_tif).at(res=1.0, crs="EPSG:32631")
    left, bottom, right, top = warped.bounds
    inner = (left + 100, bottom + 150, left + 300, bottom + 330)  # UTM metres, as lon/lat below
    lonlat = rasterio.warp.transform_bounds(warped.crs, "EPSG:4326", *inner, densify_pts=21)
    wins = lt.windows(warped, size=64, bounds=lonlat, bounds_crs="EPSG:4326")
    covered = wins.bounds
    assert covered[0] <= inner[0] and covered[1] <= inner[1] and covered[2] >= inner[2] and covered[3] >= inner[3]
    assert covered[2] - covered[0] < 200 + 2 * 64 and wins[0].crs == warped.crs
    assert wins[0].transform == warped.transform @ Affine.translation(wins[0].window.col_off, wins[0].window.row_off)


def test_an_in_order_pass_holds_a_few_rows_of_level_tiles_and_reads_each_once(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "tall.tif", noise(512)[:, :, :256].repeat(8, axis=1)[:, :4096], transform=UTM31,
                     crs="EPSG:32631", block=(128, 128), overviews=(2,))  # fmt: skip
    src = CountingRaster(path, cache=lt.TileCache(256 * 2**20))
    coarse = src.at(res=1.2, tile_shape=128)  # the first overview: 2048 x 128 px, 16 x 1 tiles of 128
    level = coarse.level_source
    assert isinstance(level, CountingRaster) and (level.grid.rows, level.grid.cols) == (16, 1)
    held = []
    for w in lt.windows(coarse, size=128, overlap=0.25):
        assert w.data.shape == (3, 128, 128)
        held.append(sum(level.tile_key(r, 0) in level.cache for r in range(16)))
    assert max(held) <= 8 and held[-1] == 0  # a few rows at a time (read-ahead included), not all 16
    assert set(level.reads.values()) == {1} and len(level.reads) == 16  # each read once all the same
    assert not src.reads


@pytest.mark.parametrize(
    ("res", "crs", "overviews", "resampling"),
    [
        (1.3, "EPSG:32631", (2, 4), "bilinear"),  # another CRS, from an overview, the parent's footprint
        (0.3, "EPSG:32631", (2, 4), "lanczos"),  # finer: the kernel reaches further in target pixels
        (2.4, None, (), "cubic"),  # the parent cannot tell: its whole raster, which the grid covers
        (1.0, "EPSG:32633", (), "nearest"),  # the parent cannot tell: its outline, tilted 8 degrees in UTM 33
    ],
)
def test_skip_empty_over_a_warped_source_drops_windows_without_data_and_never_one_with_data(
    tmp_path: Path, res: float, crs: str | None, overviews: tuple[int, ...], resampling: str
) -> None:
    image = noise(512, seed=3)
    image[image == 0] = 1
    image[:, :, 300:] = 0  # data on the left only
    image[:, 400:, :150] = 0
    image[:, 480, 100] = 9  # ... and one lone pixel in the empty corner
    path = write_tif(tmp_path / "part.tif", image, transform=MERC, crs="EPSG:3857", block=(128, 128),
                     overviews=overviews, nodata=0)  # fmt: skip
    warped = lt.open(path).at(res=res, crs=crs, resampling=resampling)
    size = max(8, round(16 * 0.6 / res))
    every = lt.windows(warped, size=size)
    kept = lt.windows(warped, size=size, skip_empty=True)
    kept_corners = {(int(c), int(r)) for c, r, _, _ in kept.pixel_windows()}
    empty = set()
    for c, r, w, h in every.pixel_windows():
        if warped.read(Window(c, r, w, h)).any():
            assert (int(c), int(r)) in kept_corners  # a window with data always stays
        else:
            empty.add((int(c), int(r)))
    if overviews:
        assert len(every) - len(kept) >= 0.5 * len(empty) > 0  # and most windows without data go
    elif crs is None:
        assert len(kept) == len(every)  # the parent's whole raster covers the grid: every window stays
    else:
        assert len(every) - len(kept) >= 4  # the grid's corners outside the tilted outline go


def test_a_warped_footprint_that_leaves_the_target_crs_drops_nothing() -> None:
    globe = lt.ArraySource(np.ones((1, 360, 720), np.uint8), transform=Affine(0.5, 0, -180, 0, -0.5, 90), crs=4326)
    warped = WarpedSource(globe, "EPSG:32631", Affine(1000, 0, 0, 0, -1000, 6_000_000), 600, 600)
    assert warped.read(Window(0, 0, 600, 600)).all()  # data everywhere on the grid
    footprint = warped.data_footprint()  # the globe's outline folds in UTM: "cannot tell", not a wrong shape
    assert footprint is None or footprint.contains(shapely.box(0, 0, 600, 600))
    assert len(lt.windows(warped, size=100, skip_empty=True)) == 36
