"""Jobs with ``res`` and ``crs``: parsed and checked without I/O; a worker reads the source on that grid."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

import lazytiles as lt
from lazytiles.detection.models import BlobDetector
from lazytiles.streams.messages import JobError, parse_job

from .test_worker import committed, group_messages, job, start_worker, stop

BASE = {"id": "g1", "source": "scene.tif", "model": "pkg.mod:make"}


def test_res_and_crs_are_parsed_and_recorded() -> None:
    assert parse_job(BASE).res is None
    grid = parse_job({**BASE, "res": 20, "crs": "EPSG:3857"})
    assert grid.res == (20.0, 20.0) and grid.crs == "EPSG:3857"
    assert grid.to_dict()["res"] == [20.0, 20.0] and grid.to_dict()["crs"] == "EPSG:3857"
    assert parse_job({**BASE, "res": [0.5, 2]}).res == (0.5, 2.0)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"res": 0}, "'res' must be a positive pixel size"),
        ({"res": -2.5}, "'res' must be"),
        ({"res": [1, 2, 3]}, "'res' must be"),
        ({"res": "20"}, "'res' must be"),
        ({"res": True}, "'res' must be"),
        ({"res": 1e400}, "not valid JSON|'res' must be"),
        ({"crs": "EPSG:3857"}, "'crs' must come with 'res'"),
        ({"res": 2, "crs": "x" * 5000}, "at most 2000 characters, got 'xxx"),
        ({"res": 2, "crs": 4326}, "'crs' must be"),
    ],
)
def test_bad_grids_are_job_errors(fields: dict, message: str) -> None:
    text = json.dumps({**BASE, **fields}).replace("Infinity", "1e400")
    with pytest.raises(JobError, match=message) as info:
        parse_job(text)
    assert len(str(info.value)) < 600


@pytest.mark.timeout(120)
def test_a_worker_runs_a_job_on_the_grid_and_dead_letters_a_bad_crs(broker, streams, tif, tmp_path):
    broker.produce(
        streams.jobs,
        job("coarse", tif, res=20),  # the 10 m scene at 20 m: 128 x 128 px, 4 windows of 64
        job("nowhere", tif, res=20, crs="EPSG:99999"),
    )
    log = tmp_path / "worker.log"
    proc = start_worker(broker, streams, tmp_path / "work", log, "--allow-source", tempfile.gettempdir())
    try:
        got = group_messages(broker.read_keys(streams.results, ["coarse:done"], timeout=60))
        dead = broker.read(streams.dlq, lambda ms: len(ms) >= 1, timeout=60)
    finally:
        code = stop(proc, log)
    assert code == 0, log.read_text()
    wins = lt.windows(lt.open(str(tif)).at(res=20), 64, overlap=0)
    assert len(wins) == 4 and json.loads(got["coarse:done"][0])["lazytiles"]["windows"] == 4
    expected = list(lt.detect(BlobDetector(threshold=0.5), wins, progress=False))
    for i, dets in enumerate(expected):
        sent = lt.kafka.decode(got[f"coarse:{i}"][0])
        assert sent == dets and sent.transform == wins.source.transform  # the 20 m grid's georeferencing
    recipe = json.loads(got["coarse:0"][0])["lazytiles"]["recipe"]
    assert recipe["job"]["res"] == [20.0, 20.0] and recipe["source.transform"] == list(wins.source.transform)[:6]
    (letter,) = dead
    doc = json.loads(letter.value())
    assert doc["error"] == "CRSError" and "EPSG:99999" in doc["reason"]
    assert committed(broker, streams) == 2
    assert sorted(p.name.split("-")[0] for p in Path(tmp_path / "work").glob("*.gpkg")) == ["coarse"]
