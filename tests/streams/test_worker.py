"""``lazytiles worker``: real worker processes, a real broker, real kills.

Each worker is ``python -m lazytiles worker ...`` in a subprocess that imports its models from
tests/streams/models_for_tests.py. Results are checked against the scene's rectangles clipped to each
window by hand (:func:`models_for_tests.expected_boxes`), not against lazytiles' own output.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
import rasterio.warp

import lazytiles as lt

from .conftest import GROUP, ck
from .models_for_tests import RECTS, expected_boxes

pytestmark = pytest.mark.timeout(120)

HERE = Path(__file__).parent
REPO = HERE.parent.parent


def start_worker(broker, streams, workdir: Path, log: Path, *extra: str, **env: str) -> subprocess.Popen:
    """``python -m lazytiles worker`` in a subprocess, with fast group timeouts; output to ``log``.

    Unless ``extra`` says otherwise, the worker allows the test models and reads the temporary directory.
    """
    if "--allow-model" not in extra:
        for name in ("blobs", "gated_blobs", "broken_factory"):
            extra += ("--allow-model", f"models_for_tests:{name}")
    if "--allow-source" not in extra:
        extra += ("--allow-source", tempfile.gettempdir())
    args = [
        sys.executable,
        "-m",
        "lazytiles",
        "worker",
        "--bootstrap",
        broker.bootstrap,
        "--jobs",
        streams.jobs,
        "--results",
        streams.results,
        "--dead-letter",
        streams.dlq,
        "--group",
        streams.group,
        "--workdir",
        str(workdir),
        "--workers",
        "1",
        "--timeout",
        "20",
        *extra,
    ]
    for key, value in GROUP.items():
        args += ["--consumer-config", f"{key}={value}"]
    path = os.pathsep.join([str(HERE), str(HERE.parent), str(REPO), os.environ.get("PYTHONPATH", "")])
    out = open(log, "ab")
    try:
        return subprocess.Popen(
            args, env={**os.environ, "PYTHONPATH": path, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    finally:
        out.close()


def stop(proc: subprocess.Popen, log: Path, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError(
            f"worker did not exit within {timeout} s after {sig!r}; its log:\n{log.read_text()}"
        ) from None


def job(job_id: str, tif: Path, **fields) -> bytes:
    return json.dumps(
        {
            "id": job_id,
            "source": str(tif),
            "model": "models_for_tests:blobs",
            "size": 64,
            "overlap": 0,
            "batch_size": 4,
            **fields,
        }
    ).encode()


def windows_of(tif: Path, **fields) -> list[tuple[int, int, int, int]]:
    """The pixel windows (col_off, row_off, width, height) a job's window parameters give, by index."""
    wins = lt.windows(
        lt.open(str(tif)),
        fields.get("size", 64),
        overlap=fields.get("overlap", 0),
        bounds=fields.get("bounds"),
        bounds_crs=fields.get("bounds_crs"),
        region=fields.get("region"),
        region_crs="EPSG:4326" if "region" in fields else None,
    )
    return [tuple(int(v) for v in w) for w in wins.pixel_windows()]


def lonlat_square(c0: int, r0: int, c1: int, r1: int) -> dict:
    """A GeoJSON polygon (lon/lat) around pixels c0..c1, r0..r1 of the scene's 10 m UTM grid."""
    xs = [500_000 + 10 * c for c in (c0, c1, c1, c0, c0)]
    ys = [6_000_000 - 10 * r for r in (r1, r1, r0, r0, r1)]
    lons, lats = rasterio.warp.transform("EPSG:32633", "EPSG:4326", xs, ys)
    return {"type": "Polygon", "coordinates": [[[lon, lat] for lon, lat in zip(lons, lats)]]}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


def group_messages(messages) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = defaultdict(list)
    for m in messages:
        out[m.key().decode()].append(m.value())
    return out


def check_job(got: dict[str, list[bytes]], job_id: str, windows: list[tuple[int, int, int, int]]) -> None:
    """Every window of the job once per key (duplicates identical), each with exactly its expected boxes."""
    keys = {k for k in got if k.startswith(f"{job_id}:") and ":merged:" not in k}
    assert keys == {f"{job_id}:{i}" for i in range(len(windows))} | {f"{job_id}:done"}
    for key in keys:
        assert len(set(got[key])) == 1, f"{key}: a retry sent different bytes"
    for i, window in enumerate(windows):
        doc = json.loads(got[f"{job_id}:{i}"][0])
        assert doc["lazytiles"]["window"] == list(window)
        boxes = sorted((*f["properties"]["box"], f["properties"]["label"]) for f in doc["features"])
        assert boxes == expected_boxes(window), f"window {i} {window}"
    done = json.loads(got[f"{job_id}:done"][0])["lazytiles"]
    assert done["windows"] == len(windows) and done["failed"] == {}


def committed(broker, streams) -> int:
    """The group's committed offset on the jobs topic (-1001 when none)."""
    c = ck.Consumer({"bootstrap.servers": broker.bootstrap, "group.id": streams.group, "enable.auto.commit": False})
    try:
        (tp,) = c.committed([ck.TopicPartition(streams.jobs, 0)], timeout=10)
        return tp.offset
    finally:
        c.close()


def test_a_worker_runs_good_jobs_and_dead_letters_bad_ones(broker, streams, tif, tmp_path):
    bounds = [500_000 + 640, 6_000_000 - 2560, 500_000 + 2560, 6_000_000 - 640]  # pixels 64..256, in metres
    port = closed_port()
    messages = [
        b"{this is not json",
        job("job-a", tif),
        job("bad-model", tif, model="no_such_module:factory"),
        job("bad-source", tif, source=str(tmp_path / "missing.tif")),
        job("job-b", tif, size=128, overlap=0.5, bounds=bounds, bounds_crs="EPSG:32633", batch_size=2),
        json.dumps({"id": "no-model", "source": str(tif)}).encode(),
        job("broken", tif, model="models_for_tests:broken_factory"),
        job("unreachable", tif, source=f"http://127.0.0.1:{port}/{{z}}/{{x}}/{{y}}.png", zoom=3),
        job("job-c", tif, region=lonlat_square(96, 96, 160, 160)),
        job("job-a", tif, size=128),  # the same id again with other windows: its run store refuses
    ]
    broker.produce(streams.jobs, *messages)
    log = tmp_path / "worker.log"
    allow = ("--allow-source", tempfile.gettempdir(), "--allow-source", f"http://127.0.0.1:{port}/")
    proc = start_worker(broker, streams, tmp_path / "work", log, "--merged", *allow)
    try:
        got = group_messages(broker.read_keys(streams.results, ["job-a:done", "job-b:done", "job-c:done"], timeout=60))
        dead = broker.read(streams.dlq, lambda ms: len(ms) >= 7, timeout=60)
    finally:
        code = stop(proc, log)
    assert code == 0, log.read_text()  # SIGTERM while idle: a clean exit

    check_job(got, "job-a", windows_of(tif))
    assert len(windows_of(tif)) == 16
    # --merged: one message per object, the pieces cut by seams put back together: the scene's rectangles
    merged = sorted(tuple(lt.kafka.decode(got[f"job-a:merged:{k}"][0]).boxes[0]) for k in range(len(RECTS)))
    assert merged == sorted((float(x0), float(y0), float(x1), float(y1)) for x0, y0, x1, y1, _ in RECTS)
    assert f"job-a:merged:{len(RECTS)}" not in got
    assert json.loads(got["job-a:done"][0])["lazytiles"]["objects"] == len(RECTS)
    b_windows = windows_of(tif, size=128, overlap=0.5, bounds=bounds, bounds_crs="EPSG:32633")
    assert len(b_windows) == 4  # 64..256 in steps of 64, by hand: offsets 64 and 128 on each axis
    check_job(got, "job-b", b_windows)
    # a region (lon/lat) around pixels 96..160: its 64 x 64 px area takes 2 x 2 windows, each overlapping it
    c_windows = windows_of(tif, region=lonlat_square(96, 96, 160, 160))
    assert len(c_windows) == 4
    assert all(c < 160 < c + w + 64 and r < 160 < r + h + 64 and c + w > 96 and r + h > 96 for c, r, w, h in c_windows)
    check_job(got, "job-c", c_windows)
    assert all(len(v) == 1 for v in got.values())  # one worker, no crash: no duplicates at all

    reasons = {}
    for m in dead:
        doc = json.loads(m.value())
        reasons[doc["original"]["offset"]] = doc
    assert sorted(reasons) == [0, 2, 3, 5, 6, 7, 9]
    assert "not valid JSON" in reasons[0]["reason"] and reasons[0]["original"]["value"] == "{this is not json"
    assert "no_such_module" in reasons[2]["reason"] and reasons[2]["error"] == "JobRefused"
    assert "missing.tif" in reasons[3]["reason"] and reasons[3]["error"] == "SourceNotFoundError"
    assert "has no 'model' field" in reasons[5]["reason"] and reasons[5]["error"] == "JobError"
    assert "this factory always fails" in reasons[6]["reason"]
    assert "could not read tile" in reasons[7]["reason"] and reasons[7]["error"] == "SourceOpenError"
    assert "different recipe" in reasons[9]["reason"] and reasons[9]["error"] == "RecipeMismatchError"
    assert json.loads(reasons[2]["original"]["value"])["id"] == "bad-model"  # the message, as it was sent

    assert committed(broker, streams) == len(messages)  # every job settled: done or dead-lettered
    stores = sorted((tmp_path / "work").glob("*.gpkg"))
    assert [p.name.split("-")[0] for p in stores] == ["job", "job", "job"]
    for path in stores:
        run = lt.open_run(path)
        assert run.complete and run.failed == {}
        run.close()


@pytest.mark.slow
def test_a_killed_worker_leaves_its_job_to_another_that_finishes_it(broker, streams, tif, tmp_path):
    broker.produce(streams.jobs, job("big", tif, model="models_for_tests:gated_blobs", batch_size=2))
    workdir, log = tmp_path / "work", tmp_path / "worker.log"
    first = start_worker(broker, streams, workdir, log, LT_TEST_HANG_AFTER="3")  # hangs in its 4th batch
    try:
        broker.read(streams.results, lambda ms: len({m.key() for m in ms}) >= 6, timeout=60)
    finally:
        stop(first, log, signal.SIGKILL)
    assert committed(broker, streams) < 0  # the job is not done: its offset is not committed

    second = start_worker(broker, streams, workdir, log)
    try:
        messages = broker.read_keys(streams.results, ["big:done"], timeout=60)
    finally:
        assert stop(second, log) == 0
    got = group_messages(messages)
    check_job(got, "big", windows_of(tif))
    # the second worker resumed the store: at most the batch in flight at the kill was sent twice
    assert len(messages) <= 16 + 2 + 1
    assert committed(broker, streams) == 1
    (path,) = workdir.glob("*.gpkg")
    with lt.open_run(path) as run:
        summary = run.summary()
    assert summary["complete"] and summary["sessions"] == 2 and not summary["running"]  # the killed one, the last


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["2", "2:after"])
def test_a_worker_killed_around_a_store_commit_loses_nothing(broker, streams, tif, tmp_path, kill_at):
    """Killed inside its 2nd store commit ("2": before COMMIT; "2:after": right after it), by the hook
    models_for_tests installs: every window recorded as done was delivered first, and the next worker's
    retries of delivered windows carry the same bytes."""
    broker.produce(streams.jobs, job("hooked", tif, batch_size=2))
    workdir, log = tmp_path / "work", tmp_path / "worker.log"
    first = start_worker(broker, streams, workdir, log, LT_TEST_KILL_AT_COMMIT=kill_at)
    try:
        assert first.wait(60) == -signal.SIGKILL, log.read_text()
    finally:
        stop(first, log, signal.SIGKILL)
    (path,) = workdir.glob("*.gpkg")
    with lt.open_run(path) as run:
        done = set(run.done.tolist())
    assert len(done) == (4 if kill_at == "2:after" else 2)
    delivered = {int(m.key().decode().split(":")[1]) for m in broker.read(streams.results, lambda ms: len(ms) >= 4)}
    assert done <= delivered and len(delivered) == 4  # both batches were confirmed before their commits

    second = start_worker(broker, streams, workdir, log)
    try:
        messages = broker.read_keys(streams.results, ["hooked:done"], timeout=60)
    finally:
        assert stop(second, log) == 0
    got = group_messages(messages)
    check_job(got, "hooked", windows_of(tif))
    assert sum(len(v) == 2 for v in got.values()) == (0 if kill_at == "2:after" else 2)


@pytest.mark.slow
def test_a_worker_elsewhere_sends_duplicates_with_identical_bytes(broker, streams, tif, tmp_path):
    broker.produce(streams.jobs, job("twice", tif, model="models_for_tests:gated_blobs", batch_size=2))
    log = tmp_path / "worker.log"
    first = start_worker(broker, streams, tmp_path / "host-1", log, LT_TEST_HANG_AFTER="2")
    try:
        broker.read(streams.results, lambda ms: len(ms) >= 4, timeout=60)
    finally:
        stop(first, log, signal.SIGKILL)
    second = start_worker(broker, streams, tmp_path / "host-2", log)  # no shared store: redoes every window
    try:
        messages = broker.read_keys(streams.results, ["twice:done"], timeout=60)
    finally:
        assert stop(second, log) == 0
    got = group_messages(messages)
    check_job(got, "twice", windows_of(tif))  # dedupe by key: each window once, duplicates identical
    assert sum(len(v) > 1 for v in got.values()) >= 4


def test_sigterm_mid_job_exits_cleanly_and_the_job_stays_for_the_next_worker(broker, streams, tif, tmp_path):
    broker.produce(streams.jobs, job("slow", tif, model="models_for_tests:gated_blobs", batch_size=2))
    workdir, log, gate = tmp_path / "work", tmp_path / "worker.log", tmp_path / "gate"
    os.mkfifo(gate)
    first = start_worker(broker, streams, workdir, log, LT_TEST_HANG_AFTER="2", LT_TEST_GATE=str(gate))
    try:
        broker.read(streams.results, lambda ms: len(ms) >= 4, timeout=60)  # two batches; the third waits
        first.send_signal(signal.SIGTERM)
        with open(gate, "wb"):  # let the batch in flight finish: it is published, then the worker stops
            pass
    finally:
        code = stop(first, log)
    assert code == 0, log.read_text()
    assert committed(broker, streams) < 0  # unfinished: not committed, so the group hands it on

    (path,) = workdir.glob("*.gpkg")
    with lt.open_run(path) as run:
        done = set(run.done.tolist())
    assert len(done) == 6  # the two batches before the signal, and the one in flight
    published = broker.read(streams.results, lambda ms: len(ms) >= 6)
    assert {int(m.key().decode().split(":")[1]) for m in published} == done  # done = delivered, no more
    # a run published part-way says how many windows are still missing
    (partial,) = broker.topics("partial")
    assert lt.kafka.publish(path, topic=partial, bootstrap=broker.bootstrap, run_id="p").messages == 7
    (last,) = [m for m in broker.read_keys(partial, ["p:done"]) if m.key() == b"p:done"]
    assert json.loads(last.value())["lazytiles"]["missing"] == 10

    second = start_worker(broker, streams, workdir, log)
    try:
        messages = broker.read_keys(streams.results, ["slow:done"], timeout=60)
    finally:
        assert stop(second, log) == 0
    got = group_messages(messages)
    check_job(got, "slow", windows_of(tif))
    assert all(len(v) == 1 for v in got.values())  # resumed from the store: nothing sent twice
    assert committed(broker, streams) == 1
