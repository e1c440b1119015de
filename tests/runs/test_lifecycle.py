"""The run lifecycle and the run store's parts that engines use: batches, deliveries, shared writers, sub-reads.

lt.detect_region runs on it end to end in test_runs.py; here each engine's way of using it is checked on
its own: the Kafka worker's deliver-then-commit batches, the Beam job's released store written by
others, and a worker reading part of a run back.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import UTM_10M

import lazytiles as lt
from lazytiles.detection.models import BlobDetector
from lazytiles.runs.lifecycle import RunLifecycle
from lazytiles.runs.recipe import DetectOptions, run_recipe
from lazytiles.runs.store import RunStore, WindowResult


def scene_windows() -> lt.WindowSequence:
    """16 windows of 64 px over a 256 px scene with a blob in every window."""
    image = np.zeros((3, 256, 256), np.uint8)
    for r in range(4):
        for c in range(4):
            image[(r + c) % 3, 64 * r + 10 : 64 * r + 20, 64 * c + 5 : 64 * c + 25] = 255
    return lt.windows(lt.ArraySource(image, transform=UTM_10M, crs="EPSG:32633", token="lifecycle"), size=64)


def test_detect_options_travel_as_one_value_into_recipes_and_sessions():
    wins = scene_windows()
    options = DetectOptions(batch_size=4, workers=0, preprocess=lt.Preprocess(scale=1 / 128), score_threshold=0.5)
    dets = options.detect(BlobDetector(), wins)
    assert DetectOptions.of(dets) == DetectOptions(4, dets.options["device"], 0, options.preprocess, 0.5)
    assert run_recipe(dets.model, wins, DetectOptions.of(dets)) == run_recipe(BlobDetector(), wins, options)
    assert options.session() == {"batch_size": 4, "device": "cpu", "workers": 0}
    with pytest.raises(lt.InvalidArgumentError, match="batch_size must be an integer >= 1"):
        DetectOptions(batch_size=0).detect(BlobDetector(), wins)


def test_a_batch_not_delivered_is_never_committed_and_the_session_says_why(tmp_path):
    """The Kafka worker's way: a batch is delivered first, then committed; a delivery that fails stops
    the run with that batch left out, and the run resumes from the last batch delivered."""
    wins, out = scene_windows(), tmp_path / "run.gpkg"
    options = DetectOptions(batch_size=3)
    delivered: list[list[int]] = []

    def deliver(batch: list[WindowResult]) -> None:
        if len(delivered) == 2:
            raise OSError("the broker is down (test)")
        delivered.append([r.index for r in batch])

    run = RunLifecycle(wins, out, options)
    dets = options.detect(BlobDetector(), wins)
    with pytest.raises(OSError, match="broker is down"):
        with run.open(dets.model, {"worker": True}), run.recorder(batch_size=3, deliver=deliver) as record:
            for position, outcome in run.outcomes(dets):
                record.add(position, outcome)
    with lt.open_run(out) as r:
        assert r.done.tolist() == [i for batch in delivered for i in batch] == list(range(6))
        assert r.sessions[0]["status"] == "stopped: OSError: the broker is down (test)"

    run = RunLifecycle(wins, out, options)
    with run.open(dets.model, {"worker": True}):
        assert run.todo.tolist() == list(range(6, 16))
        with run.recorder(batch_size=3) as record:
            for position, outcome in run.outcomes(dets):
                record.add(position, outcome)
        found = run.merge(lt.MergeRule())
    assert found == lt.merge(lt.detect(BlobDetector(), wins, progress=False), progress=False)
    with lt.open_run(out) as r:
        statuses = [s["status"] for s in r.sessions]
        assert r.complete and statuses == ["stopped: OSError: the broker is down (test)", "finished"]
        assert [s["windows_done"] for s in r.sessions] == [6, 10]


def test_a_released_store_is_written_by_others_each_window_once_then_the_session_ends(tmp_path):
    """The Beam job's way: the store is released to workers that commit under its lock, a retried
    bundle commits nothing twice, and closing takes the lock back to end the session."""
    wins, out = scene_windows(), tmp_path / "run.gpkg"
    per_window = list(lt.detect(BlobDetector(), wins, progress=False))
    run = RunLifecycle(wins, out)
    with run.open(BlobDetector(), {"runner": "test"}):
        shared = run.release(wait=30)
        results = [WindowResult(k, d, None, run.table.rect(k)) for k, d in enumerate(per_window)]
        shared.commit(results[:10])
        shared.commit(results[5:])  # 5..9 again: a retried bundle
        shared.commit([WindowResult(3, None, "tile gone (test)", run.table.rect(3))])  # done already: left out
        with RunStore.join(out, None, wait=0) as other:  # the lock is free between writes
            assert other.done(among=[0, 9, 15, 99]).tolist() == [0, 9, 15]
        shared.write(lt.Detections.empty(transform=UTM_10M, crs="EPSG:32633"), lt.MergeRule(iou=0.3))
    with lt.open_run(out) as r:
        assert r.complete and not r.failed
        assert r.sessions[0]["status"] == "finished" and r.sessions[0]["windows_done"] == 16
        assert r.summary()["merge"]["iou"] == 0.3
        assert r.detections() == lt.Detections.concat(per_window)


def test_part_of_a_run_reads_back_as_its_windows_do(tmp_path):
    wins, out = scene_windows(), tmp_path / "run.gpkg"
    lt.detect_region(BlobDetector(), wins, out, progress=False)
    with RunStore.read(out) as store:
        whole = store.raw()
        for positions in (slice(3, 9), np.array([12, 2, 7]), slice(0, 0)):
            part = store.raw(positions)
            assert part.windows.indices.tolist() == whole.windows.indices[positions].tolist()
            assert list(part) == list(whole[positions])
        assert store.done(among=list(range(0, 16, 5))).tolist() == [0, 5, 10, 15]
