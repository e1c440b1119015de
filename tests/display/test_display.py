"""Pictures of windows, regions and detections: valid PNG/HTML for every band/dtype, boxes where they belong."""

from __future__ import annotations

import io

import numpy as np
import pytest
import rasterio
from conftest import UTM_10M, CountingSource
from numpy.testing import assert_array_equal
from PIL import Image

import lazytiles as lt
from lazytiles.display.jupyter import sequence_preview
from lazytiles.display.picture import PALETTE, label_colour, to_rgba

BANDS = (1, 2, 3, 4)
DTYPES = ("uint8", "uint16", "float32")


def scene(bands: int, dtype: str, size: int = 64) -> np.ndarray:
    """A ramp per band, with a 4 x 4 block of nodata (value 7) in the top-left corner of every band."""
    rng = np.random.default_rng(bands)
    if dtype == "uint8":
        data = rng.integers(10, 250, (bands, size, size)).astype(dtype)
    elif dtype == "uint16":
        data = rng.integers(100, 4000, (bands, size, size)).astype(dtype)
    else:
        data = rng.normal(0.3, 0.1, (bands, size, size)).astype(dtype)
    data[:, :4, :4] = 7
    return data


def png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


@pytest.mark.parametrize("nodata", [None, 7])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bands", BANDS)
def test_window_reprs_are_valid_png_and_html_for_every_band_and_dtype(bands, dtype, nodata):
    src = lt.ArraySource(scene(bands, dtype), transform=UTM_10M, crs="EPSG:32633", nodata=nodata, tile_shape=32)
    wins = lt.windows(src, size=48, stride=16)
    w = wins[0]  # the upper-left window, with the nodata corner
    image = png(w._repr_png_())
    assert image.size == (48, 48) and image.mode in ("RGB", "RGBA")
    rgba = np.asarray(image.convert("RGBA"))
    if nodata is not None:
        assert (rgba[:4, :4, 3] == 0).all() and (rgba[4:, 4:, 3] == 255).all()
    else:
        assert (rgba[..., 3] == 255).all()
    assert (np.asarray(png(wins[3]._repr_png_()).convert("RGBA"))[..., 3] == 255).all()  # no nodata there
    page = wins[3]._repr_html_()
    assert page.count("<img src='data:image/png;base64,") == 1
    for text in (
        "window</th><td style='text-align:left'>3<",
        "EPSG:32633",
        "bounds (lon/lat)",
        "tiles used",
        "cache hits / misses",
        "read time",
        f"{bands} x 48 x 48 {dtype}",
    ):
        assert text in page


def test_a_nodata_corner_is_transparent_and_the_rest_opaque():
    src = lt.ArraySource(scene(3, "uint16"), nodata=7, tile_shape=32)
    w = lt.windows(src, size=64)[0]
    rgba = np.asarray(png(w._repr_png_()))
    assert rgba.shape == (64, 64, 4)
    assert (rgba[:4, :4, 3] == 0).all()
    assert rgba[..., 3].sum() == 255 * (64 * 64 - 16)


def test_uint8_rgb_pixels_are_shown_as_they_are():
    data = scene(3, "uint8")
    w = lt.windows(lt.ArraySource(data), size=64)[0]
    assert_array_equal(np.asarray(png(w._repr_png_())), data.transpose(1, 2, 0))


def test_one_band_is_grey():
    data = scene(1, "uint8")
    rgba = to_rgba(data)
    for k in range(3):
        assert_array_equal(rgba[..., k], data[0])


def test_other_dtypes_are_stretched_monotonically_to_the_full_range():
    values = np.arange(1000, 2000, dtype=np.uint16).reshape(1, 10, 100)
    out = to_rgba(values)[..., 0].ravel()
    assert out[0] == 0 and out[-1] == 255
    assert (np.diff(out.astype(int)) >= 0).all()  # the input is increasing
    # the 2nd..98th percentiles span 0..255: the lowest and highest 2% are clipped
    assert (out[:20] == 0).all() and (out[-20:] == 255).all() and 0 < out[500] < 255


def test_float_nan_is_transparent_and_a_flat_band_does_not_fail():
    data = np.full((1, 8, 8), 0.5, np.float32)
    data[0, 0, 0] = np.nan
    rgba = to_rgba(data)
    assert rgba[0, 0, 3] == 0 and (rgba[..., 3].ravel()[1:] == 255).all()


def test_a_uint8_mask_as_last_band_is_alpha_and_other_fourth_bands_are_ignored():
    rgb = scene(3, "uint8")
    mask = np.zeros((1, 64, 64), np.uint8)
    mask[:, 10:20] = 255
    rgba = to_rgba(np.concatenate([rgb, mask]))
    assert_array_equal(rgba[..., 3], mask[0])
    assert_array_equal(rgba[..., :3], rgb.transpose(1, 2, 0))
    nir = np.full((1, 64, 64), 90, np.uint8)  # not a 0/255 mask: RGB + near-infrared
    rgba = to_rgba(np.concatenate([rgb, nir]))
    assert (rgba[..., 3] == 255).all()
    assert_array_equal(rgba[..., :3], rgb.transpose(1, 2, 0))


def test_bad_pixels_raise_a_clear_error():
    with pytest.raises(lt.InvalidArgumentError, match=r"\(bands, rows, cols\).*shape \(0, 4, 4\)"):
        to_rgba(np.zeros((0, 4, 4)))
    with pytest.raises(ValueError, match="dtype <U1"):
        to_rgba(np.array([[["a"]]]))


# -- detections drawn -----------------------------------------------------------------------------------


def test_detections_are_drawn_where_they_are_in_the_window():
    data = np.zeros((3, 256, 256), np.uint8)
    src = lt.ArraySource(data, transform=UTM_10M, crs="EPSG:32633", tile_shape=64)
    wins = lt.windows(src, size=128)
    w = wins[3]  # the lower-right window: col_off 128, row_off 128
    assert (w.window.col_off, w.window.row_off) == (128, 128)
    dets = lt.Detections([[150, 140, 170, 160]], [0.9], [2], transform=src.transform, crs=src.crs)
    image = np.asarray(lt.show(w, dets, scores=False).convert("RGB"))
    colour = label_colour(2)
    # in window pixels the box is x 22..42, y 12..32 (right/bottom exclusive); the outline is the
    # 2 px just outside it: columns 20, 21 and 42, 43; rows 10, 11 and 32, 33
    outline = (image == colour).all(axis=2)
    outline[:10] = False  # the label is written above the box
    ys, xs = np.nonzero(outline)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (20, 43, 10, 33)
    assert (image[12:32, 22:42] == 0).all()  # the box itself: untouched
    assert tuple(image[20, 21]) == colour and tuple(image[20, 42]) == colour
    assert tuple(image[11, 30]) == colour and tuple(image[32, 30]) == colour


def test_detections_in_another_crs_are_reprojected_onto_the_window():
    src = lt.ArraySource(np.zeros((3, 256, 256), np.uint8), transform=UTM_10M, crs="EPSG:32633")
    w = lt.windows(src, size=256)[0]
    x0, y0 = UTM_10M @ (100, 100)
    x1, y1 = UTM_10M @ (140, 130)
    west, north = rasterio.warp.transform("EPSG:32633", "EPSG:4326", [x0], [y0])
    east, south = rasterio.warp.transform("EPSG:32633", "EPSG:4326", [x1], [y1])
    # lon/lat degrees as the 'pixels' of an identity transform in EPSG:4326
    dets = lt.Detections([[west[0], south[0], east[0], north[0]]], [1], [0], crs="EPSG:4326")
    image = np.asarray(lt.show(w, dets, scores=False).convert("RGB"))
    outline = (image == label_colour(0)).all(axis=2)
    outline[:96] = False  # the label is written above the box
    ys, xs = np.nonzero(outline)
    assert abs(xs.min() - 98) <= 1 and abs(xs.max() - 141) <= 1  # the box, 2 px outline outside it
    assert abs(ys.min() - 98) <= 1 and abs(ys.max() - 131) <= 1


def test_show_accepts_a_list_of_detections_and_rejects_other_things():
    src = lt.ArraySource(np.zeros((1, 64, 64), np.uint8))
    w = lt.windows(src, size=64)[0]
    parts = [lt.Detections([[1, 1, 9, 9]], [1], [k]) for k in range(3)]
    assert lt.show(w, parts).size == (64, 64)
    with pytest.raises(lt.InvalidArgumentError, match="lt.Detections or a list of them, got int"):
        lt.show(w, 5)
    with pytest.raises(lt.InvalidArgumentError, match="lt.show takes an lt.Window.*got str"):
        lt.show("scene.tif")


# -- sources and sequences ---------------------------------------------------------------------------------


def test_sequence_and_source_html_read_nothing():
    src = CountingSource(np.zeros((3, 1024, 1024), np.uint8), transform=UTM_10M, crs="EPSG:32633", tile_shape=256)
    wins = lt.windows(src, size=256, overlap=0.5)
    page = wins._repr_html_()
    assert "49 (of a 7 x 7 grid)" in page and "256 x 256 px" in page and "overlap 50% x 50%" in page
    assert "EPSG:32633" in page and "tile cache" in page
    assert "4 x 4 of 256 x 256 px" in src._repr_html_()
    assert not src.reads


def test_preview_of_an_array_is_strided_and_reads_no_tile():
    data = np.zeros((3, 1024, 1024), np.uint8)
    data[0, 512:] = 200
    src = CountingSource(data, tile_shape=256)
    wins = lt.windows(src, size=256)
    image = wins.preview(max_size=256, grid=False)
    assert image.size == (256, 256) and not src.reads
    rgb = np.asarray(image.convert("RGB"))
    assert (rgb[:128, :, 0] == 0).all() and (rgb[128:, :, 0] == 200).all()


def test_preview_draws_the_window_grid():
    src = lt.ArraySource(np.zeros((3, 1024, 1024), np.uint8), tile_shape=256)
    rgb = np.asarray(lt.windows(src, size=256).preview(max_size=512).convert("RGB"))
    # window edges every 256 px are every 128 preview px; the grid colour is blended over black
    assert rgb[5, 128, 0] > 100 and rgb[5, 128, 2] == 0  # yellow-ish line at x = 128
    assert (rgb[5, 130] == 0).all()  # between lines: the black image


def test_preview_of_a_region_shows_only_its_area_and_windows():
    src = lt.ArraySource(np.zeros((3, 1024, 1024), np.uint8), tile_shape=256)
    wins = lt.windows(src, size=128, bounds=(0, 0, 512, 256))  # identity transform: pixels are map units
    assert lt.show(wins).size == (512, 256)


def test_region_preview_draws_merged_detections_in_place(tmp_path):
    src = lt.ArraySource(np.zeros((3, 1024, 1024), np.uint8), transform=UTM_10M, crs="EPSG:32633", tile_shape=256)
    wins = lt.windows(src, size=256)
    dets = lt.Detections([[400, 200, 480, 280]], [0.8], [1], transform=src.transform, crs=src.crs)
    rgb = np.asarray(sequence_preview(wins, 512, grid=False, detections=dets).convert("RGB"))
    outline = (rgb == PALETTE[1]).all(axis=2)
    outline[:97] = False  # the label is written above the box
    ys, xs = np.nonzero(outline)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (198, 241, 98, 141)  # halved, 2 px outline outside
    image = lt.show(wins, dets)
    image.save(tmp_path / "preview.png")
    with Image.open(tmp_path / "preview.png") as saved:
        assert saved.size == (1024, 1024)


# -- tile services: previews from lower zoom levels ----------------------------------------------------------


def xyz_pair(tmp_path, *, lower: bool):
    """1024 x 1024 px of value 200 as zoom-12 tiles; with ``lower``, zoom 11 tiles of value 77 over it."""
    from lazytiles.testing.xyztiles import write_xyz_tiles

    image = np.full((3, 1024, 1024), 200, np.uint8)
    cover = write_xyz_tiles(image, tmp_path, zoom=12, top_left_tile=(2200, 1344))
    if lower:
        write_xyz_tiles(np.full((3, 512, 512), 77, np.uint8), tmp_path, zoom=11, top_left_tile=(1100, 672))
    return cover


def test_an_xyz_preview_reads_the_lower_zoom_level_only(tmp_path):
    from lazytiles.testing.tileserver import TileServer

    cover = xyz_pair(tmp_path, lower=True)
    with TileServer(tmp_path) as server:
        src = lt.open(server.template(), zoom=12, tile_size=256)
        wins = lt.windows(src, size=256, bounds=cover.bounds)
        rgb = np.asarray(wins.preview(max_size=512, grid=False).convert("RGB"))
        hits = dict(server.hits)
    assert rgb.shape == (512, 512, 3) and (rgb == 77).all()
    assert sorted(hits) == [f"/11/{x}/{y}.png" for x in (1100, 1101) for y in (672, 673)]


def test_an_xyz_preview_without_lower_levels_reads_a_small_area_in_full(tmp_path):
    cover = xyz_pair(tmp_path, lower=False)
    src = lt.open(str(tmp_path / "{z}" / "{x}" / "{y}.png"), zoom=12)
    rgb = np.asarray(lt.windows(src, size=256, bounds=cover.bounds).preview(max_size=512, grid=False).convert("RGB"))
    assert rgb.shape == (512, 512, 3) and (rgb == 200).all()


def test_a_whole_world_source_asks_for_an_area(tmp_path):
    xyz_pair(tmp_path, lower=False)
    src = lt.open(str(tmp_path / "{z}" / "{x}" / "{y}.png"), zoom=12)
    with pytest.raises(lt.InvalidArgumentError, match=r"covers the whole world; preview a window sequence"):
        lt.show(src)
    assert "XYZSource" in src._repr_html_() and "4096 x 4096 of 256 x 256 px" in src._repr_html_()
