"""``--res``, ``--crs`` and ``--resampling`` of ``lazytiles info``, ``windows`` and ``detect``: the source
read on another grid (``src.at``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tif
from test_cli import rows

import lazytiles as lt
from lazytiles.cli import main


@pytest.fixture
def tif(tmp_path: Path) -> Path:
    """A 3-band uint8 1024 x 1024 GeoTIFF of 10 m pixels in UTM 33N, with overviews 2 and 4."""
    data = np.random.default_rng(0).integers(0, 255, (3, 1024, 1024), dtype=np.uint8)
    return write_tif(tmp_path / "scene.tif", data, overviews=(2, 4))


def test_info_describes_the_source_on_the_grid(tif, capsys):
    assert main(["info", str(tif), "--res", "40", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["width"], info["height"], info["resolution"]) == (256, 256, [40.0, 40.0])
    assert info["kind"] == "WarpedSource" and info["level"] == 2 and info["resampling"] == "bilinear"
    assert main(["info", str(tif), "--res", "20,25", "--crs", "EPSG:3857", "--resampling", "nearest"]) == 0
    shown = rows(capsys.readouterr().out)
    assert shown["crs"] == "EPSG:3857" and "20 x 25" in shown["resolution"] and shown["resampling"] == "nearest"


@pytest.mark.parametrize(
    "options, count",
    [
        (["--res", "20"], 1),  # 512 px: one 512-px window
        (["--res", "20", "--size", "256", "--stride", "256"], 4),
        (["--res", "5", "--size", "512", "--stride", "512"], 16),  # finer than the file: 2048 px
    ],
)
def test_windows_count_on_the_grid(tif, capsys, options, count):
    assert main(["windows", str(tif), *options]) == 0
    assert rows(capsys.readouterr().out)["windows"] == str(count)


def test_bad_grid_options_are_one_line_errors(tif, capsys):
    assert main(["windows", str(tif), "--crs", "EPSG:3857"]) == 2
    assert "--crs EPSG:3857 needs --res too" in capsys.readouterr().err
    assert main(["windows", str(tif), "--res", "20", "--resampling", "bicubic"]) == 2
    assert "resampling='bicubic'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["windows", str(tif), "--res", "-3"])
    assert exit_info.value.code == 2 and "is not a pixel size" in capsys.readouterr().err


def test_detect_at_another_resolution_records_it(tmp_path, capsys):
    pytest.importorskip("torch")
    from lazytiles.testing.sample import make_sample

    sample = make_sample(tmp_path / "data", size=512, objects=6, seed=2, tiles=False)
    res = 2 * lt.open(sample.cog).transform.a
    out = tmp_path / "run.gpkg"
    argv = ["detect", str(sample.cog), "--model", "lazytiles.detection.models:blob_detector", "--out", str(out)]
    argv += ["--size", "128", "--res", str(res), "--no-progress"]
    assert main(argv) == 0
    assert rows(capsys.readouterr().out)["objects"].startswith("6 (")
    assert lt.open_run(out).recipe["source"].startswith(f"at:res={res!r},{res!r}|")
