"""The built-in sample: deterministic, truthful boxes, a real COG on the XYZ grid, tiles equal to the COG."""

from __future__ import annotations

import mercantile
import numpy as np
import pytest
import rasterio
from numpy.testing import assert_array_equal

import lazytiles as lt
from lazytiles.testing.sample import COLOURS, ORIGIN_TILE, SEAM, ZOOM, make_sample, sample_classes, sample_scene

BRIGHT = 160  # objects have a band above this; the ground never does


@pytest.fixture(scope="module")
def small():
    return sample_scene(512, objects=12, seed=3)


def test_the_same_seed_gives_the_same_scene_and_another_seed_another(small):
    pixels, boxes, labels = sample_scene(512, objects=12, seed=3)
    assert_array_equal(pixels, small[0])
    assert_array_equal(boxes, small[1])
    assert_array_equal(labels, small[2])
    assert not np.array_equal(sample_scene(512, objects=12, seed=4)[0], pixels)


def test_every_bright_pixel_is_inside_a_box_and_every_box_is_tight(small):
    pixels, boxes, labels = small
    bright = pixels.max(axis=0) > BRIGHT
    covered = np.zeros_like(bright)
    for x0, y0, x1, y1 in boxes.astype(int):
        inside = bright[y0:y1, x0:x1]
        # tight: the first and last row and column of the box hold object pixels
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        covered[y0:y1, x0:x1] = True
    assert not (bright & ~covered).any()  # nothing bright outside the boxes
    assert pixels.max(axis=0)[~covered].max() < 128  # the ground stays below the detector's threshold


def test_labels_name_the_dominant_band(small):
    pixels, boxes, labels = small
    for (x0, y0, x1, y1), label in zip(boxes.astype(int), labels):
        patch = pixels[:, y0:y1, x0:x1].reshape(3, -1)
        obj = patch[:, patch.max(axis=0) > BRIGHT]
        assert obj.mean(axis=1).argmax() == label
        assert tuple(np.round(obj.mean(axis=1), -1)) == pytest.approx(COLOURS[label], abs=15)


def test_a_third_of_the_objects_straddle_a_seam():
    _, boxes, _ = sample_scene(2048, seed=0)
    seams = np.arange(SEAM, 2048, SEAM)
    cut = [(x0 < s < x1) or (y0 < s < y1) for x0, y0, x1, y1 in boxes for s in seams]
    assert len(boxes) == 64
    assert sum(np.asarray(cut).reshape(len(boxes), -1).any(axis=1)) >= len(boxes) // 3


def test_bad_sizes_and_crowding_are_clear_errors():
    with pytest.raises(lt.InvalidArgumentError, match="size must be an int of at least 64 pixels, got 10"):
        sample_scene(10)
    with pytest.raises(ValueError, match="cannot place 40 objects apart in a 128 x 128 scene"):
        sample_scene(128, objects=40)


def test_segments_are_the_exact_outlines_of_the_true_classes(tmp_path):
    from rasterio.features import rasterize

    sample = make_sample(tmp_path, size=512, objects=12, seed=3, tiles=False)
    classes = sample_classes(512, objects=12, seed=3)
    truth = sample.segments(classes)
    assert_array_equal(truth.boxes, sample.boxes)
    assert_array_equal(truth.labels, sample.labels + 1)
    assert truth.transform == sample.transform and truth.crs == sample.crs
    assert all(shape.geom_type == "Polygon" and shape.is_valid for shape in truth.shapes)
    assert sum(shape.area for shape in truth.shapes) == np.count_nonzero(classes)
    drawn = rasterize(zip(truth.shapes, truth.labels.tolist()), out_shape=classes.shape, dtype="uint8")
    assert_array_equal(drawn, classes)
    with pytest.raises(lt.InvalidArgumentError, match=r"classes must be the sample's 512 x 512 class raster"):
        sample.segments(classes[:256])


def test_the_cog_is_a_cog_on_the_xyz_grid_with_the_scene_pixels(tmp_path):
    sample = make_sample(tmp_path, size=512, objects=6, seed=1)
    pixels, boxes, labels = sample_scene(512, objects=6, seed=1)
    assert_array_equal(sample.boxes, boxes)
    assert_array_equal(sample.labels, labels)
    with rasterio.open(sample.cog) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.block_shapes[0] == (256, 256) and ds.overviews(1) == [2]
        assert ds.crs.to_epsg() == 3857
        assert_array_equal(ds.read(), pixels)
        ul = mercantile.xy_bounds(mercantile.Tile(*ORIGIN_TILE, ZOOM))  # independent tile math
        assert ds.transform.c == pytest.approx(ul.left, abs=1e-6)
        assert ds.transform.f == pytest.approx(ul.top, abs=1e-6)
        assert ds.transform.a == pytest.approx((ul.right - ul.left) / 256)
    west, south, east, north = sample.lonlat_bounds
    lower_right = mercantile.Tile(ORIGIN_TILE[0] + 1, ORIGIN_TILE[1] + 1, ZOOM)
    assert (west, north) == pytest.approx(tuple(mercantile.ul(*ORIGIN_TILE, ZOOM)))
    assert (east, south) == pytest.approx(tuple(mercantile.ul(lower_right.x + 1, lower_right.y + 1, ZOOM)))
    truth = sample.truth()
    assert len(truth) == 6 and truth.crs == sample.crs


def test_the_tiles_hold_the_cog_pixels_and_lower_zooms_exist(tmp_path):
    sample = make_sample(tmp_path, size=512, objects=6, seed=1)
    pixels = rasterio.open(sample.cog).read()
    x0, y0 = ORIGIN_TILE
    assert sorted(p.name for p in (sample.tiles_dir / str(ZOOM)).iterdir()) == [str(x0), str(x0 + 1)]
    assert (sample.tiles_dir / str(ZOOM - 1) / str(x0 // 2) / f"{y0 // 2}.png").exists()
    src = lt.open(sample.tile_template, zoom=ZOOM)
    wins = lt.windows(src, size=512, bounds=sample.bounds, bounds_crs="EPSG:3857")
    assert len(wins) == 1
    assert_array_equal(wins[0].data, pixels)


def test_the_built_in_detector_finds_exactly_the_true_boxes(small):
    torch = pytest.importorskip("torch")
    from lazytiles.detection.models import BlobDetector

    pixels, boxes, labels = small
    out = BlobDetector()(torch.from_numpy(pixels[None].astype(np.float32) / 255))[0]
    found = sorted(zip(map(tuple, out["boxes"].tolist()), out["labels"].tolist()))
    assert found == sorted(zip(map(tuple, boxes.tolist()), labels.tolist()))
