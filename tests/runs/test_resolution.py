"""Detections and runs on a source at another resolution and CRS (src.at): right on the ground, recorded in
the run's recipe, and refused on resume with another grid."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio.warp
import shapely
from affine import Affine
from conftest import write_tif

import lazytiles as lt
from lazytiles.detection.models import BlobDetector

#: 0.5 m pixels in web mercator, in the Netherlands: warped to 1.5 m UTM 31N pixels in the tests.
MERC = Affine(0.5, 0.0, 560_000.0, 0.0, -0.5, 6_850_000.0)
SQUARES = [(100, 120, 40), (400, 260, 30), (700, 650, 60), (250, 760, 36)]  # (row, col, size) in source pixels


@pytest.fixture
def scene_tif(tmp_path: Path) -> Path:
    image = np.full((3, 1024, 1024), 20, np.uint8)
    for k, (row, col, size) in enumerate(SQUARES):
        image[k % 3, row : row + size, col : col + size] = 230
    return write_tif(tmp_path / "scene.tif", image, transform=MERC, crs="EPSG:3857", block=(128, 128),
                     overviews=(2, 4))  # fmt: skip


def truth(crs: str) -> np.ndarray:
    """Each square's bounds on the ground, in ``crs`` (edges densified: a square in mercator is not one in UTM)."""
    out = []
    for row, col, size in SQUARES:
        left, top = MERC @ (col, row)
        right, bottom = MERC @ (col + size, row + size)
        out.append(rasterio.warp.transform_bounds("EPSG:3857", crs, left, bottom, right, top, densify_pts=21))
    return np.array(out)


def test_detections_land_on_the_ground_within_half_a_target_pixel(scene_tif: Path, tmp_path: Path) -> None:
    src = lt.open(scene_tif).at(res=1.5, crs="EPSG:32631")
    wins = lt.windows(src, size=128, overlap=0.25)
    found = lt.merge(lt.detect(BlobDetector(threshold=0.5), wins, batch_size=4, progress=False), progress=False)
    assert len(found) == len(SQUARES) and found.crs == src.crs and found.transform == src.transform
    geo = found.geo_boxes()
    expected = truth("EPSG:32631")
    order = [int(np.argmin(np.abs(expected[:, 0] - g[0]) + np.abs(expected[:, 3] - g[3]))) for g in geo]
    assert sorted(order) == list(range(len(SQUARES)))
    centres = np.c_[(geo[:, 0] + geo[:, 2]) / 2, (geo[:, 1] + geo[:, 3]) / 2]
    true_centres = np.c_[(expected[:, 0] + expected[:, 2]) / 2, (expected[:, 1] + expected[:, 3]) / 2][order]
    assert np.abs(centres - true_centres).max() <= 0.75  # half a 1.5 m pixel
    assert np.abs(geo - expected[order]).max() <= 1.5  # each edge within a pixel (bilinear blurs the edges)
    # the GeoPackage holds the same boxes, in UTM
    path = found.to_gpkg(tmp_path / "found.gpkg")
    meta, _, wkb, _ = pyogrio.raw.read(path)
    assert meta["crs"] == "EPSG:32631"
    np.testing.assert_allclose(shapely.bounds(shapely.from_wkb(wkb)), geo)


def test_a_run_records_the_grid_and_refuses_another_res(scene_tif: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.gpkg"

    def wins(res: float) -> lt.WindowSequence:
        return lt.windows(lt.open(scene_tif).at(res=res, crs="EPSG:32631"), size=128, overlap=0.25)

    first = lt.detect_region(BlobDetector(threshold=0.5), wins(1.5), out=out, progress=False)
    assert len(first) == len(SQUARES)
    recipe = lt.open_run(out).recipe
    assert recipe["source"].startswith("at:res=1.5,1.5|crs=EPSG:32631|bilinear|") and "scene.tif" in recipe["source"]
    assert recipe["source.transform"] == list(wins(1.5).source.transform)[:6]
    again = lt.detect_region(BlobDetector(threshold=0.5), wins(1.5), out=out, resume=True, progress=False)
    assert again == first  # same recipe: resumed, nothing to run
    with pytest.raises(lt.RecipeMismatchError, match=r'source is "at:res=1\.5,1\.5\|.*there but "at:res=2\.0,2\.0\|'):
        lt.detect_region(BlobDetector(threshold=0.5), wins(2.0), out=out, resume=True, progress=False)


def test_windows_pickle_and_read_alike_in_worker_processes(scene_tif: Path) -> None:
    wins = lt.windows(lt.open(scene_tif).at(res=(1.5, 2.0), crs=32631, resampling="nearest"), size=96)
    back = pickle.loads(pickle.dumps(wins))
    assert back.source.token == wins.source.token
    expected = [w.data for w in wins]
    got = [w.data for w in lt.prefetch(wins, workers=2, method="process")]
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
