"""lazytiles.beam.predict_raster: the GeoTIFF of a Beam job equals lt.write_raster's, pixel for pixel."""

from __future__ import annotations

import pytest
import rasterio
from affine import Affine
from numpy.testing import assert_array_equal

import lazytiles as lt
from lazytiles.testing.sample import sample_classes, sample_scene

beam = pytest.importorskip("apache_beam")
lb = pytest.importorskip("lazytiles.beam")

pytestmark = pytest.mark.timeout(300)

MODEL = "lazytiles.detection.models:colour_segmenter"


@pytest.fixture(scope="module")
def wins():
    pixels, _, _ = sample_scene(size=384, objects=10)
    src = lt.ArraySource(pixels, transform=Affine(2, 0, 300000, 0, -2, 5000000), crs="EPSG:32631", token="beam-seg")
    return lt.windows(src, size=96, overlap=0.25, edge="pad")


@pytest.mark.parametrize(("blend", "output"), [("center", "labels"), ("mean", "labels"), ("mean", "scores")])
def test_the_job_writes_what_write_raster_writes(wins, tmp_path, blend, output):
    from lazytiles.detection.models import load_model

    local = lt.write_raster(
        lt.predict(load_model(MODEL), wins, progress=False),
        tmp_path / "local.tif",
        blend=blend,
        output=output,
        block=32,
        progress=False,
    )
    work = tmp_path / "work"
    out = lb.predict_raster(
        MODEL, wins, tmp_path / "beam.tif", blend=blend, output=output, block=32, shard_size=7, workdir=work
    )
    with rasterio.open(out) as ds, rasterio.open(local) as want:
        got, expected = dict(ds.profile), dict(want.profile)
        assert str(got.pop("nodata")) == str(expected.pop("nodata"))  # NaN for scores
        assert (got, ds.tags()) == (expected, want.tags())
        assert_array_equal(ds.read(), want.read())
        if output == "labels":
            assert_array_equal(ds.read(1), sample_classes(size=384, objects=10))
    assert work.is_dir() and not list(work.iterdir())  # the block stores are gone


def test_shards_write_their_own_blocks_and_seams_go_through_one_group(wins, tmp_path):
    with beam.Pipeline() as p:
        stores = p | lb.PredictWindows(wins, MODEL, tmp_path, block=32, shard_size=7)
        _ = stores | beam.Map(lambda path: None)
    shards = sorted(tmp_path.glob("shard-*.blocks"))
    seams = sorted(tmp_path.glob("seams-*.blocks"))
    assert len(shards) == len(lb.shard_ranges(wins, 7)) and seams
    from lazytiles.runs.blockstore import BlockStore

    keys = []
    for path in shards + seams:
        with BlockStore.open(path) as store:
            keys += store.done()
    assert len(keys) == len(set(keys)) == (384 // 32) ** 2  # every block written once, somewhere
