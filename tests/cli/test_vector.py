"""lazytiles polygons and lazytiles evaluate, run through main() on real files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from conftest import write_tif
from pyogrio.raw import read

import lazytiles as lt
from lazytiles.cli import main
from lazytiles.detection.models import BlobDetector
from lazytiles.testing.sample import make_sample


def test_polygons_writes_what_lt_polygons_finds(tmp_path, capsys):
    labels = np.zeros((40, 60), np.uint8)
    labels[3:30, 5:20] = 1
    labels[10:35, 30:58] = 2
    labels[20:22, 40:42] = 0
    tif = write_tif(tmp_path / "pred.tif", labels[None], block=(16, 16), nodata=0)
    out = tmp_path / "parcels.gpkg"
    assert main(["polygons", str(tif), "--out", str(out), "--min-area", "10"]) == 0
    assert capsys.readouterr().out.strip() == f"2 polygons (by class {{1: 1, 2: 1}}) -> {out}"
    meta, _, geometry, fields = read(out, layer="polygons")
    want = lt.polygons(tif, min_area=10)
    assert [g.equals(w) for g, w in zip(shapely.from_wkb(geometry), want.polygons())] == [True, True]
    np.testing.assert_array_equal(fields[list(meta["fields"]).index("label")], [1, 2])
    assert main(["polygons", str(tif), "--out", str(tmp_path / "p.geojson"), "--classes", "2"]) == 0
    doc = json.loads((tmp_path / "p.geojson").read_text(encoding="utf-8"))
    assert [f["properties"]["label"] for f in doc["features"]] == [2]
    assert len(doc["features"][0]["geometry"]["coordinates"]) == 2  # the outline and its hole


@pytest.fixture(scope="module")
def run_and_truth(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli-evaluate")
    sample = make_sample(tmp, size=512, objects=30, tiles=False)
    wins = lt.windows(lt.open(sample.cog, cache=lt.TileCache()), size=128, overlap=0.25)
    found = lt.detect_region(BlobDetector(), wins, out=tmp / "run.gpkg", progress=False)
    truth = sample.truth()
    path = truth.to_gpkg(tmp / "truth.gpkg")  # its classes are in the "label" column
    return tmp, found, truth, path, wins


def test_evaluate_a_run_against_a_truth_file(run_and_truth, capsys):
    tmp, found, truth, path, wins = run_and_truth
    assert main(["evaluate", str(tmp / "run.gpkg"), path, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    want = lt.evaluate(found, truth, windows=wins)
    assert doc["classes"][-1]["recall"] == want.recall == 1.0 and doc["classes"][-1]["precision"] == want.precision
    assert doc["seams"][-1]["truth"] == want.seams[-1]["truth"] > 0
    assert main(["evaluate", str(tmp / "run.gpkg"), path, "--iou", "0.9", "--match", "polygon"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("<Evaluation: polygon IoU >= 0.9") and "objects on window seams" in text


def test_evaluate_a_vector_file_and_bad_input(run_and_truth, capsys):
    tmp, found, truth, path, _ = run_and_truth
    found.to_gpkg(tmp / "found.gpkg")
    assert main(["evaluate", str(tmp / "found.gpkg"), path, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["classes"][-1]["recall"] == 1.0 and doc["seams"] is None
    assert main(["evaluate", str(tmp / "found.gpkg"), path, "--label-column", "nope"]) == 2
    assert "has no column 'nope'" in capsys.readouterr().err
    assert main(["evaluate", str(tmp / "found.gpkg"), str(tmp / "missing.gpkg")]) == 1
