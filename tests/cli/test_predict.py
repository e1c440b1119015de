"""``lazytiles predict``: a perfect model's raster from the command line; resuming and refusing."""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio
from numpy.testing import assert_array_equal

from lazytiles.cli import main
from lazytiles.testing.sample import make_sample, sample_classes

pytestmark = pytest.mark.timeout(120)


def test_predict_writes_the_truth_and_refuses_to_overwrite(tmp_path: Path, capsys):
    sample = make_sample(tmp_path / "data", size=512, objects=6, seed=2, tiles=False)
    out = tmp_path / "pred.tif"
    argv = ["predict", str(sample.cog), "--model", "lazytiles.detection.models:colour_segmenter", "--out", str(out)]
    argv += ["--size", "256", "--overlap", "0.25", "--no-progress"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[0].startswith("windows  9 in")
        and lines[1] == f"wrote    {out} (512 x 512 px, 1 band(s) uint8, EPSG:3857)"
    )
    with rasterio.open(out) as ds:
        assert_array_equal(ds.read(1), sample_classes(size=512, objects=6, seed=2))
        assert ds.crs == sample.crs and ds.transform == sample.transform
    assert main(argv) == 1  # it exists: nothing is changed without --resume or --force-new
    err = capsys.readouterr().err
    assert err.startswith("lazytiles: error:") and "already exists" in err and "--resume" in err
    assert main([*argv, "--resume"]) == 0
    assert main([*argv, "--blend", "mean", "--resume"]) == 2  # another recipe
    assert "raster.blend" in capsys.readouterr().err
    assert main([*argv, "--blend", "mean", "--force-new", "--output", "scores", "--no-overviews"]) == 0
    with rasterio.open(out) as ds:
        assert ds.count == 4 and ds.dtypes[0] == "float32" and ds.overviews(1) == []
