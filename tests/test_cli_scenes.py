"""The ``lazytiles`` command over many scenes: several SRC arguments (a mosaic), a STAC file, --skip-empty."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from conftest import UTM_10M, write_tif

from lazytiles.cli import main


def rows(text: str) -> dict[str, str]:
    return {line.split("  ", 1)[0]: line.split("  ", 1)[1].strip() for line in text.splitlines()}


@pytest.fixture
def two(tmp_path: Path) -> list[Path]:
    """Two 256 x 256 scenes side by side with 512 px of nothing between them."""
    data = np.full((1, 256, 256), 7, np.uint8)
    a = write_tif(tmp_path / "a.tif", data, nodata=0)
    b = write_tif(tmp_path / "b.tif", data, nodata=0, transform=UTM_10M @ Affine.translation(768, 0))
    return [a, b]


def test_windows_of_several_rasters_are_a_mosaic_and_skip_empty_leaves_the_gap_out(two, capsys):
    assert main(["windows", *map(str, two), "--size", "256", "--stride", "256"]) == 0
    assert rows(capsys.readouterr().out)["windows"] == "4"
    assert main(["windows", *map(str, two), "--size", "256", "--stride", "256", "--skip-empty"]) == 0
    assert rows(capsys.readouterr().out)["windows"] == "2 (of a 1 x 4 grid, kept by --region or --skip-empty)"


def test_info_and_detect_read_a_stac_file(two, tmp_path, capsys):
    items = [
        {"type": "Feature", "id": f"item-{p.stem}", "properties": {}, "assets": {"image": {"href": p.name}}}
        for p in two
    ]
    stac = tmp_path / "items.json"
    stac.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    assert main(["info", str(stac), "--asset", "image"]) == 0
    report = rows(capsys.readouterr().out)
    assert report["size"].startswith("1024 x 256 px") and report["scenes"] == "['item-a', 'item-b']"
    out = tmp_path / "run.gpkg"
    argv = ["detect", str(stac), "--asset", "image", "--model", "lazytiles.detection.models:blob_detector"]
    assert main([*argv, "--out", str(out), "--size", "256", "--stride", "256", "--skip-empty", "--no-progress"]) == 0
    assert rows(capsys.readouterr().out)["windows"].startswith("2")
    assert main(["info", str(stac)]) == 2  # the default asset 'visual' is not there: a usage error
    assert "no asset 'visual'" in capsys.readouterr().err
