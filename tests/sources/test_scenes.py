"""lt.mosaic: many scenes as one source, against the one scene they were cut from."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import rasterio
import rasterio.warp
import torch
from affine import Affine
from rasterio.windows import Window

import lazytiles as lt
from lazytiles.detection.models import BlobDetector
from lazytiles.grid import window_bounds
from lazytiles.testing.sample import sample_scene

#: A UTM grid far from zero, so pixel and map coordinates cannot be confused.
ORIGIN = Affine(0.5, 0.0, 612_345.0, 0.0, -0.5, 5_123_456.0)
SIZE = 1024
#: (row0, row1, col0, col1) of each file: TL and TR overlap in cols 512..600; rows 512..832 of the
#: right half are in no file (the gap).
PARTS = {"tl": (0, 512, 0, 600), "tr": (0, 512, 512, 1024), "bl": (512, 1024, 0, 512), "br": (832, 1024, 512, 1024)}


def write(path, pixels, transform, crs="EPSG:32632", nodata=0, **options):
    profile = dict(driver="GTiff", height=pixels.shape[1], width=pixels.shape[2], count=pixels.shape[0])
    profile.update(dtype=pixels.dtype, crs=crs, transform=transform, nodata=nodata)
    profile.update(options or dict(tiled=True, blockxsize=256, blockysize=256))
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(pixels)
    return str(path)


@pytest.fixture(scope="module")
def scene():
    pixels, boxes, labels = sample_scene(SIZE, objects=40, seed=3)
    pixels[pixels == 0] = 1  # 0 is the files' nodata
    return pixels, boxes, labels


@pytest.fixture(scope="module")
def quadrants(scene, tmp_path_factory):
    """The scene cut into four GeoTIFFs, and the scene as the mosaic should give it back (gap = 0)."""
    pixels = scene[0]
    folder = tmp_path_factory.mktemp("quadrants")
    paths, expected = [], np.zeros_like(pixels)
    for name, (r0, r1, c0, c1) in PARTS.items():
        part = np.ascontiguousarray(pixels[:, r0:r1, c0:c1])
        paths.append(write(folder / f"{name}.tif", part, ORIGIN @ Affine.translation(c0, r0)))
        expected[:, r0:r1, c0:c1] = part
    return paths, expected


def test_quadrants_give_the_scene_back_bit_for_bit_and_skip_empty_drops_exactly_the_gap(quadrants):
    paths, expected = quadrants
    scenes = lt.mosaic(paths, tile_shape=256)
    assert (scenes.width, scenes.height, scenes.transform) == (SIZE, SIZE, ORIGIN)
    every = lt.windows(scenes, size=256, overlap=0.25)
    kept = lt.windows(scenes, size=256, overlap=0.25, skip_empty=True)
    empty = []
    for w in every:
        r, c = int(w.window.row_off), int(w.window.col_off)
        np.testing.assert_array_equal(w.data, expected[:, r : r + 256, c : c + 256])
        if not w.data.any():
            empty.append((c, r))
    assert len(empty) == 2  # the gap holds two whole windows
    dropped = {tuple(p) for p in every.pixel_windows()[:, :2].tolist()} - {
        tuple(p) for p in kept.pixel_windows()[:, :2].tolist()
    }
    assert len(kept) == len(every) - 2 and sorted(dropped) == sorted(empty)
    for w in kept[::3]:  # the kept windows are the same windows, read the same
        r, c = int(w.window.row_off), int(w.window.col_off)
        np.testing.assert_array_equal(w.data, expected[:, r : r + 256, c : c + 256])


def test_a_tile_reads_only_the_scenes_under_it(quadrants):
    paths, _ = quadrants
    scenes = lt.mosaic(paths, tile_shape=256, cache=lt.TileCache(64 * 2**20))
    assert [scenes.labels[i] for i in scenes.scenes_under(Window(0, 0, 256, 256))] == ["tl.tif"]
    assert scenes.scenes_under(Window(512, 0, 88, 10)) == [0, 1]  # the overlap: both, the first first
    assert scenes.scenes_under(Window(600, 520, 256, 256)) == []  # the gap
    scenes.read(Window(0, 0, 256, 256))
    assert [s.stats()["tiles_read"] for s in scenes.scenes] == [1, 0, 0, 0]
    assert scenes.stats()["scene_reads"] == 1
    scenes.read(Window(700, 600, 100, 100))  # in the gap: no scene is read
    assert [s.stats()["tiles_read"] for s in scenes.scenes] == [1, 0, 0, 0]


def test_order_picks_pixels_where_scenes_overlap_and_nodata_lets_the_next_show(tmp_path):
    t = Affine(1, 0, 100, 0, -1, 200)
    ones = np.full((1, 8, 8), 1, np.uint8)
    ones[0, :4, :4] = 0  # a hole of nodata in the top-left quarter
    twos = np.full((1, 8, 8), 2, np.uint8)
    a = write(tmp_path / "a.tif", ones, t, tiled=False)
    b = write(tmp_path / "b.tif", twos, t, tiled=False)
    first = lt.mosaic([a, b]).read(Window(0, 0, 8, 8))[0]
    assert (first[:4, :4] == 2).all() and (first[4:] == 1).all() and (first[:4, 4:] == 1).all()
    assert (lt.mosaic([a, b], order="last").read(Window(0, 0, 8, 8)) == 2).all()
    assert (lt.mosaic([a, b], order=[0.7, 0.1]).read(Window(0, 0, 8, 8)) == 2).all()  # least cloud first
    by_name = lt.mosaic([b, a], order=lambda s: 0 if s.path.endswith("a.tif") else 1).read(Window(0, 0, 8, 8))
    np.testing.assert_array_equal(by_name[0], first)
    with pytest.raises(lt.InvalidArgumentError, match="one number per scene"):
        lt.mosaic([a, b], order=[1])
    with pytest.raises(lt.InvalidArgumentError, match="'first', 'last'"):
        lt.mosaic([a, b], order="best")


def test_mosaic_pickles_as_its_recipe_and_reads_the_same(quadrants):
    paths, expected = quadrants
    scenes = lt.mosaic(paths, order="last", tile_shape=256)
    copy = pickle.loads(pickle.dumps(scenes))
    assert copy.token == scenes.token and copy.priority == scenes.priority == [3, 2, 1, 0]
    assert "tl.tif" in scenes.token  # the recipe names its scenes
    wins = lt.windows(copy, size=300, skip_empty=True)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(wins))[0].data, expected[:, :300, :300])


def test_scenes_of_another_grid_are_warped_onto_the_mosaic(scene, tmp_path):
    pixels = scene[0]
    base = write(tmp_path / "base.tif", pixels[:, :, :512], ORIGIN)
    # the right half at twice the pixel size (every second pixel): same ground, a coarser scene
    coarse = np.ascontiguousarray(pixels[:, ::2, 512::2])
    half = write(tmp_path / "coarse.tif", coarse, ORIGIN @ Affine.translation(512, 0) @ Affine.scale(2))
    scenes = lt.mosaic([base, half])
    assert (scenes.width, scenes.height, scenes.transform.a) == (SIZE, SIZE, 0.5)  # the finest resolution
    data = scenes.read(Window(0, 0, SIZE, SIZE))
    np.testing.assert_array_equal(data[:, :, :512], pixels[:, :, :512])
    np.testing.assert_array_equal(data[:, :, 512:], np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2))
    # the same right half in another CRS (UTM 33N): warped in, nearest, lands on the same ground
    with warnings.catch_warnings():  # rasterio multiplies affines with *
        warnings.filterwarnings("ignore", "Use `@` matmul", PendingDeprecationWarning)
        t33, w, h = rasterio.warp.calculate_default_transform(
            "EPSG:32632", "EPSG:32633", 512, SIZE, *window_bounds(Window(512, 0, 512, SIZE), ORIGIN)
        )
    right = np.zeros((3, h, w), np.uint8)
    rasterio.warp.reproject(
        pixels[:, :, 512:],
        right,
        src_transform=ORIGIN @ Affine.translation(512, 0),
        src_crs="EPSG:32632",
        dst_transform=t33,
        dst_crs="EPSG:32633",
        dst_nodata=0,
    )
    other = write(tmp_path / "utm33.tif", right, t33, crs="EPSG:32633")
    mixed = lt.mosaic([base, other], res=0.5)
    assert mixed.crs.to_epsg() == 32632 and isinstance(mixed._placed[1][0], lt.WarpedSource)
    r0 = round((mixed.transform.f - ORIGIN.f) / 0.5)  # the tilted scene reaches above the base: rows above it
    assert mixed.transform.c == ORIGIN.c and r0 > 0 and mixed.height > SIZE
    back = mixed.read(Window(0, r0, SIZE, SIZE))
    direct = np.zeros((3, SIZE, 512), np.uint8)  # GDAL's warp of the whole scene back onto the base grid
    rasterio.warp.reproject(
        right,
        direct,
        src_transform=t33,
        src_crs="EPSG:32633",
        src_nodata=0,
        dst_transform=ORIGIN @ Affine.translation(512, 0),
        dst_crs="EPSG:32632",
        dst_nodata=0,
    )
    np.testing.assert_array_equal(back[:, :, :512], pixels[:, :, :512])
    assert (back[:, :, 512:] == direct).mean() > 0.999  # tile by tile as whole: all but a few edge pixels
    assert (back[:, :, 512:] == pixels[:, :, 512:]).all(axis=0).mean() > 0.95  # twice nearest: on the ground
    again = pickle.loads(pickle.dumps(mixed)).read(Window(600, r0 + 100, 64, 64))
    np.testing.assert_array_equal(again, back[:, 100:164, 600:664])


def test_detections_from_a_mosaic_land_where_the_truth_is_on_the_ground(scene, quadrants):
    _, truth, _ = scene
    paths, expected = quadrants
    torch.set_num_threads(1)
    wins = lt.windows(lt.mosaic(paths), size=256, overlap=0.25, skip_empty=True)
    found = lt.merge(lt.detect(BlobDetector(), wins, batch_size=8, progress=False), progress=False)
    inside = np.array([expected[:, int(y0) : int(y1), int(x0) : int(x1)].all() for x0, y0, x1, y1 in truth])
    geo_truth = np.array([[*(ORIGIN @ (x0, y1)), *(ORIGIN @ (x1, y0))] for x0, y0, x1, y1 in truth[inside]])
    geo_found = found.geo_boxes()
    assert inside.sum() >= 25 and len(found) >= inside.sum()
    for box in geo_truth:  # each object in the scenes is found where it is on the ground
        assert np.abs(geo_found - box).max(axis=1).min() <= 0.25  # half a pixel


def test_bad_mosaics_say_what_to_do(tmp_path):
    t = Affine(1, 0, 0, 0, -1, 8)
    a = write(tmp_path / "a.tif", np.ones((1, 8, 8), np.uint8), t, tiled=False)
    b = write(tmp_path / "b.tif", np.ones((2, 8, 8), np.uint8), t, tiled=False)
    with pytest.raises(lt.InvalidArgumentError, match=r"scene 1 .* 2 uint8 bands .* bands=\.\.\."):
        lt.mosaic([a, b])
    with pytest.raises(lt.InvalidArgumentError, match="list of sources or paths"):
        lt.mosaic(a)
    with pytest.raises(lt.InvalidArgumentError, match="res must be"):
        lt.mosaic([a], res=-1)


def test_a_pass_reads_each_scene_tile_once_and_frees_it_when_no_mosaic_tile_needs_it(quadrants):
    paths, _ = quadrants
    cache = lt.TileCache(256 * 2**20)
    scenes = lt.mosaic(paths, tile_shape=200, cache=cache)  # mosaic tiles cut across the scenes' 256-px blocks
    keys = [s.tile_key(r, c) for s in scenes.scenes for r in range(s.grid.rows) for c in range(s.grid.cols)]
    peak = 0
    for _ in lt.windows(scenes, size=256, overlap=0.25):
        peak = max(peak, sum(k in cache for k in keys))
    blocks = [s.grid.rows * s.grid.cols for s in scenes.scenes]
    assert [s.stats()["tiles_read"] for s in scenes.scenes] == blocks  # every block once
    assert cache.stats()["tiles"] == 0  # nothing left behind
    assert peak <= 8, peak  # about a row of blocks at a time, never most of them


def test_an_overview_of_a_mosaic_comes_from_the_scenes_overviews_without_making_tiles(quadrants):
    paths, expected = quadrants
    scenes = lt.mosaic(paths, tile_shape=256, cache=lt.TileCache(64 * 2**20))
    pixels, to_source = scenes.overview(max_size=256)
    assert pixels.shape == (3, 256, 256) and to_source.a == 4
    assert (pixels == expected[:, 2::4, 2::4]).all(axis=0).mean() > 0.99  # GDAL's decimation: the centres
    assert not pixels[:, 130:208, 130:].any()  # the gap stays empty
    assert scenes.stats()["tiles_read"] == 0 and scenes.cache.stats()["misses"] == 0


def test_threads_reading_a_mosaic_get_the_serial_pixels(quadrants):
    from concurrent.futures import ThreadPoolExecutor

    paths, expected = quadrants
    scenes = lt.mosaic(paths, tile_shape=128, cache=lt.TileCache(16 * 2**20))  # small: tiles are evicted
    wins = lt.windows(scenes, size=200, overlap=0.5)
    order = np.random.default_rng(0).permutation(len(wins))
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: wins[int(i)], order))
    for w in got:
        r, c = int(w.window.row_off), int(w.window.col_off)
        np.testing.assert_array_equal(w.data, expected[:, r : r + 200, c : c + 200])


@pytest.mark.parametrize("resampling", ["nearest", "bilinear", "lanczos"])
def test_outside_a_warped_scene_without_nodata_the_next_scene_shows_through(tmp_path, resampling):
    # no nodata in either file: the warped scene's fill (0) outside its tilted outline must not read as dark data
    dark_t = Affine(0.7, 0, 149_920.0, 0, -0.7, 5_132_410.0)  # inside the bright scene's ground, in UTM 33N
    dark = write(tmp_path / "dark.tif", np.full((1, 400, 400), 7, np.uint8), dark_t, crs="EPSG:32633", nodata=None)
    bright = write(tmp_path / "bright.tif", np.full((1, SIZE, SIZE), 200, np.uint8), ORIGIN, nodata=None)
    scenes = lt.mosaic([bright, dark], order="last", resampling=resampling)  # the warped dark scene wins
    assert isinstance(scenes._placed[1][0], lt.WarpedSource) and (scenes.width, scenes.height) == (SIZE, SIZE)
    data = scenes.read(Window(0, 0, SIZE, SIZE))[0]
    assert set(np.unique(data)) == {7, 200}  # no hole: every pixel is the dark scene's or the bright one's
    outline = scenes.footprints[1]
    assert abs((data == 7).sum() - outline.area) < outline.length  # dark exactly within its outline, edges aside
    coarse, _ = scenes.overview(max_size=256)
    assert set(np.unique(coarse)) == {7, 200}  # the overview path too
