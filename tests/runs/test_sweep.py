"""Run.sweep: merges replayed from a stored run, one row per setting, equal to fresh merges and evaluations."""

from __future__ import annotations

import pytest

import lazytiles as lt
from lazytiles.detection.models import BlobDetector
from lazytiles.testing.sample import make_sample


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("sweep")
    sample = make_sample(tmp, size=512, objects=40, tiles=False)
    wins = lt.windows(lt.open(sample.cog, cache=lt.TileCache()), size=128, overlap=0.25)
    lt.detect_region(BlobDetector(), wins, out=tmp / "run.gpkg", progress=False)
    return tmp / "run.gpkg", wins, sample


def test_a_sweep_replays_each_setting_like_a_fresh_merge(finished):
    path, wins, sample = finished
    truth = sample.truth()
    with lt.open_run(path) as run:
        table = run.sweep(iou=[0.3, 0.9], method=["union", "nms"], metric="iou", truth=truth)
    assert [(r["iou"], r["method"], r["metric"]) for r in table] == [
        (0.3, "union", "iou"), (0.3, "nms", "iou"), (0.9, "union", "iou"), (0.9, "nms", "iou"),
    ]  # fmt: skip
    per_window = list(lt.detect(BlobDetector(), wins, progress=False))
    for row in table:
        found = lt.merge(per_window, windows=wins, iou=row["iou"], method=row["method"], metric="iou", progress=False)
        result = lt.evaluate(found, truth, windows=wins)
        assert row["objects"] == len(found)
        assert (row["precision"], row["recall"], row["f1"], row["ap"]) == (
            result.precision, result.recall, result.f1, result.ap
        )  # fmt: skip
        assert row["seam_recall"] == result.seams[-1]["recall"]
    assert table[0]["recall"] == 1.0  # the built-in sample's blobs are all found
    assert "seam_recall" in repr(table).splitlines()[0]


def test_a_sweep_without_truth_counts_objects_and_checks_settings_first(finished):
    path, _, _ = finished
    with lt.open_run(path) as run:
        table = run.sweep()
        assert table == [{"iou": 0.5, "method": "union", "metric": "ios", "objects": len(run.result())}]
        with pytest.raises(lt.InvalidArgumentError, match=r"iou must be a threshold in \(0, 1\], got 2"):
            run.sweep(iou=[0.5, 2])
