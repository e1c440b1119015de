"""The ``lazytiles`` command, through a real subprocess where exit codes and stderr matter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import UTM_10M, write_tif
from PIL import Image

from lazytiles.cli import COMMANDS, RUNNERS, main

ROOT = Path(__file__).resolve().parents[1]


def lazytiles(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m lazytiles ARGS`` in ``cwd`` with this checkout importable."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run(
        [sys.executable, "-m", "lazytiles", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def tif(tmp_path: Path) -> Path:
    """A 3-band uint8 1024 x 1024 GeoTIFF in 256-px blocks over UTM_10M, with overviews 2 and 4."""
    data = np.random.default_rng(0).integers(0, 255, (3, 1024, 1024), dtype=np.uint8)
    return write_tif(tmp_path / "scene.tif", data, overviews=(2, 4))


# -- exit codes and one-line errors (subprocess) -----------------------------------------------------------


def test_info_prints_what_rasterio_says(tif):
    done = lazytiles("info", str(tif), cwd=tif.parent)
    assert done.returncode == 0, done.stderr
    with rasterio.open(tif) as ds:
        expected = ["EPSG:32633", f"{ds.width} x {ds.height} px", "3 band(s) uint8", "4 x 4 of 256 x 256 px", "2, 4"]
        left, bottom, right, top = ds.bounds
    for text in expected + [f"{left:.2f}", f"{top:.2f}"]:
        assert text in done.stdout
    assert done.stderr == ""


def test_a_bad_argument_exits_2_with_one_line(tif):
    done = lazytiles("windows", str(tif), "--overlap", "1.5", cwd=tif.parent)
    assert done.returncode == 2
    assert done.stdout == "" and done.stderr.count("\n") == 1
    assert done.stderr.startswith("lazytiles: error: argument --overlap: overlap must be in [0, 1), got 1.5")


def test_an_unknown_command_exits_2_with_one_line(tmp_path):
    done = lazytiles("frobnicate", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "invalid choice: 'frobnicate'" in done.stderr


def test_a_missing_file_exits_1_naming_the_path(tmp_path):
    done = lazytiles("info", "no/such/scene.tif", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("lazytiles: error: no such file: 'no/such/scene.tif'")


def test_debug_shows_the_traceback(tmp_path):
    done = lazytiles("info", "no/such/scene.tif", "--debug", cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "SourceNotFoundError" in done.stderr


# -- commands in process (fast) ---------------------------------------------------------------------------


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_every_command_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as stop:
            main([name, "--help"])
        assert stop.value.code == 0
        assert f"usage: lazytiles {name}" in capsys.readouterr().out


def test_info_json_has_the_raster_metadata(tif, capsys):
    assert main(["info", str(tif), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    with rasterio.open(tif) as ds:
        assert (info["width"], info["height"], info["count"], info["crs"]) == (ds.width, ds.height, 3, "EPSG:32633")
        assert info["bounds"] == pytest.approx(list(ds.bounds))
        assert info["overviews"] == ds.overviews(1)


def rows(text: str) -> dict[str, str]:
    return {line.split("  ", 1)[0]: line.split("  ", 1)[1].strip() for line in text.splitlines()}


@pytest.mark.parametrize(
    "options, count",
    [
        ([], 9),  # 1024 px, 512-px windows, stride 384: offsets 0, 384, 512 (shifted) -> 3 x 3
        (["--size", "256", "--overlap", "0.5"], 49),  # offsets 0, 128, ..., 768 -> 7 x 7
        (["--size", "256", "--stride", "256"], 16),
        (["--size", "256,512", "--stride", "256,512"], 8),  # 4 rows x 2 cols
        (["--size", "256", "--stride", "300", "--edge", "drop"], 9),  # 0, 300, 600 (900 would overrun)
    ],
)
def test_windows_counts_match_a_hand_count(tif, capsys, options, count):
    assert main(["windows", str(tif), *options]) == 0
    assert rows(capsys.readouterr().out)["windows"] == str(count)


def test_windows_with_bounds_in_lon_lat_and_a_preview(tif, tmp_path, capsys):
    # the upper-left 300 x 300 px, as lon/lat bounds slightly inside it
    west, north = rasterio.warp.transform("EPSG:32633", "EPSG:4326", [UTM_10M.c + 10], [UTM_10M.f - 10])
    east, south = rasterio.warp.transform("EPSG:32633", "EPSG:4326", [UTM_10M.c + 2990], [UTM_10M.f - 2990])
    out = tmp_path / "grid.png"
    argv = [
        "windows",
        str(tif),
        "--size",
        "128",
        "--stride",
        "128",
        "--bounds",
        *map(str, (west[0], south[0], east[0], north[0])),
        "--bounds-crs",
        "EPSG:4326",
        "--preview",
        str(out),
    ]
    assert main(argv) == 0
    report = rows(capsys.readouterr().out)
    assert report["windows"] == "9"  # 300 px -> windows at 0, 128, and 172 (shifted): 3 x 3
    area = dict(kv.split("=") for kv in report["area"].removesuffix(" px").split(", "))
    assert 290 <= int(area["width"]) <= 300 and 290 <= int(area["height"]) <= 300  # lon/lat lines bend in UTM
    with Image.open(out) as image:  # the whole area: smaller than --max-size
        assert image.size == (int(area["width"]), int(area["height"]))
    assert report["preview"] == f"{out} ({image.width} x {image.height} px)"


def test_windows_in_a_region_file(tif, tmp_path, capsys):
    # the triangle col + row < 600 px: its bounds make 256-px windows at offsets 0, 256, 344 (shifted);
    # those whose upper-left corner has col + row < 600 overlap it: 3 + 2 + 1 (others only touch it)
    x0, y0 = UTM_10M.c, UTM_10M.f
    triangle = [[x0, y0], [x0 + 6000, y0], [x0, y0 - 6000], [x0, y0]]
    region = tmp_path / "area.geojson"
    region.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
                "features": [
                    {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [triangle]}}
                ],
            }
        )
    )
    assert main(["windows", str(tif), "--size", "256", "--stride", "256", "--region", str(region)]) == 0
    assert rows(capsys.readouterr().out)["windows"].startswith("6 (of a 3 x 3 grid")


def test_region_and_bounds_errors_are_one_line_usage_errors(tif, tmp_path, capsys):
    assert main(["windows", str(tif), "--region", str(tmp_path / "nope.geojson")]) == 1
    assert "no such region file:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["windows", str(tif), "--bounds", "1", "2", "3"])
    assert stop.value.code == 2
    assert "argument --bounds: expected 4 arguments" in capsys.readouterr().err
    assert main(["windows", str(tif), "--bounds", "0", "0", "1", "1", "--bounds-crs", "EPSG:4326"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lazytiles: error: bounds=") and "do not intersect the raster" in err


def test_the_tables_of_commands_and_runners():
    assert set(COMMANDS) >= {"demo", "info", "windows", "detect"} and "local" in RUNNERS


# -- detect and demo ---------------------------------------------------------------------------------------


@pytest.fixture
def sample_cog(tmp_path: Path):
    from lazytiles.testing.sample import make_sample

    return make_sample(tmp_path / "data", size=512, objects=6, seed=2, tiles=False)


def test_detect_writes_a_run_and_geojson_and_refuses_to_overwrite(sample_cog, tmp_path, capsys):
    pytest.importorskip("torch")
    out, geojson = tmp_path / "run.gpkg", tmp_path / "found.geojson"
    argv = [
        "detect",
        str(sample_cog.cog),
        "--model",
        "lazytiles.detection.models:blob_detector",
        "--out",
        str(out),
        "--size",
        "256",
        "--overlap",
        "0.25",
        "--no-progress",
    ]
    assert main([*argv, "--geojson", str(geojson)]) == 0
    report = rows(capsys.readouterr().out)
    assert report["objects"].startswith("6 (")
    features = json.loads(geojson.read_text())["features"]
    assert len(features) == 6 and out.exists()
    assert main(argv) == 1  # the run exists: nothing is changed without --resume or --force-new
    err = capsys.readouterr().err
    assert err.startswith("lazytiles: error:") and "already exists" in err and "--resume" in err
    assert main([*argv, "--resume"]) == 0
    assert rows(capsys.readouterr().out)["objects"].startswith("6 (")


def test_detect_with_a_bad_model_is_a_usage_error(sample_cog, tmp_path, capsys):
    pytest.importorskip("torch")
    argv = ["detect", str(sample_cog.cog), "--model", "no_such_module:factory", "--out", str(tmp_path / "r.gpkg")]
    assert main(argv) == 2
    assert "no_such_module" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_finds_every_object_once(tmp_path):
    done = lazytiles("demo", "--out", "demo", "--no-progress", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every object found once, nothing extra, every pixel's class right, every outline true" in done.stdout
    assert "pixel accuracy 100.00%" in done.stdout
    assert "polygons: 64 objects traced into polygons.gpkg" in done.stdout
    assert "recall 100.00%, precision 100.00%" in done.stdout
    names = ("detections.geojson", "detections.gpkg", "prediction.tif", "polygons.gpkg", "preview.png", "sample.tif")
    for name in names:
        assert (tmp_path / "demo" / name).stat().st_size > 0
    features = json.loads((tmp_path / "demo" / "detections.geojson").read_text())["features"]
    assert len(features) == 64
    from pyogrio.raw import read

    meta, _, geoms, fields = read(tmp_path / "demo" / "polygons.gpkg", layer="polygons")
    assert len(geoms) == 64 and sorted(set(fields[meta["fields"].tolist().index("label")])) == [1, 2, 3]


def test_the_demo_fails_unless_every_pixel_and_every_outline_is_right(tmp_path):
    from lazytiles.demo import DemoReport, Score

    good = (Score("COG", 25, 1.0, 6.6, found=64, expected=64, extra=0, min_iou=1.0),)
    assert DemoReport(tmp_path, good, (), 1.0, 23, pixel_accuracy=1.0, recall=1.0, precision=1.0).ok
    for accuracy, recall, precision in [(0.999, 1.0, 1.0), (1.0, 63 / 64, 1.0), (1.0, 1.0, 64 / 65)]:
        report = DemoReport(tmp_path, good, (), 1.0, 23, accuracy, recall, precision)
        assert not report.ok, (accuracy, recall, precision)
