"""lt.windows(..., skip_empty=True): windows with no data left out at plan time, from metadata only."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling

import lazytiles as lt

T = Affine(1.0, 0.0, 500_000.0, 0.0, -1.0, 4_000_000.0)


def write(path, pixels, *, nodata=0, overviews=(2, 4, 8), mask=None):
    profile = dict(driver="GTiff", height=pixels.shape[1], width=pixels.shape[2], count=pixels.shape[0])
    profile.update(dtype=pixels.dtype, crs="EPSG:32631", transform=T, tiled=True, blockxsize=128, blockysize=128)
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(pixels)
        if mask is not None:
            ds.write_mask(mask)
        if overviews:
            ds.build_overviews(list(overviews), Resampling.average)
    return str(path)


def brute_force_empty(wins, pixels, nodata=0):
    """Windows whose every pixel is nodata in every band, by reading the array: the plain truth."""
    out = []
    for c, r, w, h in wins.pixel_windows():
        if (pixels[:, r : r + h, c : c + w] == nodata).all():
            out.append((int(c), int(r)))
    return out


def corners(wins):
    return {(int(c), int(r)) for c, r, _, _ in wins.pixel_windows()}


def test_a_raster_drops_windows_masked_per_its_coarsest_overview_and_keeps_any_with_data(tmp_path):
    pixels = np.zeros((2, 1024, 1024), np.uint16)
    pixels[:, 100:400, 50:700] = 7  # a block of data ...
    pixels[1, 900, 1000] = 3  # ... and one lone pixel in one band
    src = lt.open(write(tmp_path / "a.tif", pixels))
    every = lt.windows(src, size=128, overlap=0.25)
    kept = lt.windows(src, size=128, overlap=0.25, skip_empty=True)
    empty = set(brute_force_empty(every, pixels))
    assert corners(kept) | empty == corners(every)  # no window with data is dropped
    assert len(every) - len(kept) >= 0.6 * len(empty)  # and most empty ones are
    assert src.stats()["tiles_read"] == 0  # the plan read no tile: one overview's mask only


def test_without_overviews_or_nodata_every_window_stays(tmp_path):
    pixels = np.zeros((1, 512, 512), np.uint8)
    no_overviews = lt.open(write(tmp_path / "b.tif", pixels, overviews=()))
    no_nodata = lt.open(write(tmp_path / "c.tif", pixels, nodata=None))
    for src in (no_overviews, no_nodata, lt.ArraySource(pixels)):
        assert src.data_footprint() is None
        assert len(lt.windows(src, size=128, skip_empty=True)) == len(lt.windows(src, size=128)) == 16


def test_a_mask_band_counts_like_nodata(tmp_path):
    pixels = np.full((3, 512, 512), 9, np.uint8)
    mask = np.zeros((512, 512), np.uint8)
    mask[:, :200] = 255
    src = lt.open(write(tmp_path / "m.tif", pixels, nodata=None, mask=mask))
    kept = lt.windows(src, size=128, skip_empty=True)
    assert sorted({c for c, _ in corners(kept)}) == [0, 128]  # data ends at column 200


def test_an_area_without_data_gives_an_empty_sequence(tmp_path):
    pixels = np.zeros((1, 512, 512), np.uint8)
    pixels[0, :10, :10] = 1
    src = lt.open(write(tmp_path / "d.tif", pixels))
    wins = lt.windows(src, size=128, bounds=(500_300, 3_999_500, 500_500, 3_999_700), skip_empty=True)
    assert len(wins) == 0 and list(wins) == [] and wins.area.width == 0
    with pytest.raises(lt.WindowIndexError):
        wins[0]


@pytest.mark.parametrize("template", ["{z}/{x}/{y}.png", "tms/{z}/{x}/{-y}.png", "t_{z}_{x}_{y}.png"])
def test_a_local_tile_layer_skips_windows_over_absent_tiles(tmp_path, template):
    from lazytiles.testing.xyztiles import write_xyz_tiles

    image = np.full((3, 512, 768), 50, np.uint8)
    cover = write_xyz_tiles(image, tmp_path / "tiles", zoom=12, top_left_tile=(2200, 1343), template=template)
    src = lt.open(str(tmp_path / "tiles" / template), zoom=12)
    left, bottom, right, top = cover.bounds
    wider = (left - (right - left), bottom, right, top)  # as much again to the west: no tile there
    every = lt.windows(src, size=256, bounds=wider)
    kept = lt.windows(src, size=256, bounds=wider, skip_empty=True)
    assert len(every) == 12 and len(kept) == 6
    assert all(w.data.any() for w in kept) and src.stats()["missing_tiles"] == []
    assert lt.open("https://tiles.example/{z}/{x}/{y}.png", zoom=3, tile_size=256).data_footprint() is None
