"""The Beam job on a source at another resolution and CRS: it travels as its recipe and gives the local result."""

from __future__ import annotations

import pytest
from conftest import assert_same

import lazytiles as lt
from lazytiles.detection.models import BlobDetector
from lazytiles.testing.sample import make_sample

lb = pytest.importorskip("lazytiles.beam")


def test_a_beam_job_on_a_warped_source_equals_the_local_run(tmp_path):
    sample = make_sample(tmp_path / "data", size=512, objects=20, seed=3, tiles=False)
    src = lt.open(sample.cog)
    wins = lt.windows(src.at(res=1.5 * src.transform.a, crs="EPSG:3857"), size=96, overlap=0.25)
    expected = lt.merge(lt.detect(BlobDetector(), wins, progress=False), progress=False)
    assert len(expected) >= 15 and expected.crs == wins.source.crs
    found = lb.detect_region(BlobDetector(), wins, tmp_path / "run.gpkg", shard_size=8,
                             pipeline_options=["--runner=DirectRunner"])  # fmt: skip
    assert_same(found, expected)
    with lt.open_run(tmp_path / "run.gpkg") as run:
        assert run.recipe["source"].startswith("at:res=") and run.summary()["complete"]
