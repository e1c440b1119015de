"""Durable runs: lt.detect_region, lt.open_run and the run store, with real processes and real kills.

The oracle for every run is the in-memory pipeline, ``lt.merge(lt.detect(model, wins))``, on the
same windows; raw detections are compared with ``list(lt.detect(model, wins))`` window by window.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import run_child  # the child's model and windows, shared with the tests (tests/ is on sys.path)
import shapely
from conftest import UTM_10M, write_tif
from numpy.testing import assert_array_equal

import lazytiles as lt
from lazytiles.detection.models import BlobDetector
from lazytiles.runs.store import RunStore

HERE = Path(__file__).parent.parent  # tests/, where run_child.py lives

REPO = HERE.parent
SCENE = 384  # px; 25 windows of 96 px with stride 72; 36 tiles of 64 px


def scene(seed: int = 0, n: int = 40) -> np.ndarray:
    """A dark 3-band scene with ``n`` bright squares of 5..14 px, a third of them across window seams."""
    rng = np.random.default_rng(seed)
    img = np.full((3, SCENE, SCENE), 20, np.uint8)
    seams = np.arange(72, SCENE, 72)
    for k in range(n):
        size = int(rng.integers(5, 15))
        if k % 3 == 0:  # straddle a seam
            x = int(rng.choice(seams)) - size // 2
            y = int(rng.integers(0, SCENE - size))
        else:
            x, y = (int(v) for v in rng.integers(0, SCENE - size, 2))
        img[int(rng.integers(3)), y : y + size, x : x + size] = 230
    return img


@pytest.fixture
def scene_tif(tmp_path: Path) -> Path:
    return write_tif(tmp_path / "scene.tif", scene(), block=(64, 64))


def windows_of(path: Path) -> lt.WindowSequence:
    return run_child.windows(lt.RasterSource(path, cache=lt.TileCache(max_bytes=64 * 2**20)))


def reference(wins: lt.WindowSequence, **merge: object) -> tuple[lt.Detections, list[lt.Detections]]:
    """(merged, per-window raw) from the in-memory pipeline."""
    model = run_child.model()
    per_window = list(lt.detect(model, wins, batch_size=run_child.BATCH, progress=False))
    merged = lt.merge(lt.detect(model, wins, batch_size=run_child.BATCH, progress=False), progress=False, **merge)
    return merged, per_window


def run(wins: lt.WindowSequence, out: Path, **options: object) -> lt.Detections:
    options = {"batch_size": run_child.BATCH, "commit_interval": 0, "progress": False, **options}
    return lt.detect_region(run_child.model(), wins, out=out, **options)


def same(a: lt.Detections, b: lt.Detections) -> bool:
    """Equal boxes, scores, labels, windows, partial flags and georeferencing (asserted field by field)."""
    for name in ("boxes", "scores", "labels", "window_index", "partial"):
        assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.transform, a.crs) == (b.transform, b.crs)
    return True


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def child(scene_tif: Path, out: Path, *args: str, **popen: object) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, str(HERE / "run_child.py"), str(scene_tif), str(out), *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def assert_complete(out: Path, wins: lt.WindowSequence) -> None:
    """Every window recorded exactly once as done, its raw boxes exactly the in-memory ones."""
    merged, per_window = reference(wins)
    with sqlite3.connect(out) as con:
        rows = con.execute("SELECT window_index, status, boxes FROM lazytiles_windows ORDER BY window_index").fetchall()
        raw_counts = dict(con.execute("SELECT window_index, COUNT(*) FROM raw_detections GROUP BY window_index"))
    assert [r[0] for r in rows] == sorted(np.asarray(wins.indices).tolist())
    assert {r[1] for r in rows} == {"done"}
    expected = {int(w.index): len(d) for w, d in zip(wins, per_window)}
    assert {r[0]: r[2] for r in rows} == expected
    assert raw_counts == {i: n for i, n in expected.items() if n}  # no window's boxes stored twice
    with lt.open_run(out) as r:
        assert same(r.detections(), lt.Detections.concat(per_window))
        assert same(r.result(), merged)
        assert r.complete and not r.failed and len(r.missing) == 0


# -- the basic contract ----------------------------------------------------------------------------------


def test_a_run_equals_the_in_memory_pipeline_and_is_a_geopackage(scene_tif: Path, tmp_path: Path) -> None:
    wins = windows_of(scene_tif)
    out = tmp_path / "run.gpkg"
    found = run(wins, out)
    merged, per_window = reference(wins)
    assert len(merged) >= 30 and same(found, merged)
    assert_complete(out, wins)

    # QGIS / GDAL see two polygon layers in the source CRS; the geometry is each pixel box mapped by
    # the transform (checked against shapely, not our encoder)
    layers = dict(pyogrio.list_layers(out))
    assert layers["detections"] == "Polygon" and layers["raw_detections"] == "Polygon"
    info = pyogrio.read_info(out, layer="detections")
    assert info["crs"] == "EPSG:32633" and info["features"] == len(merged)
    _, _, geometry, fields = pyogrio.raw.read(out, layer="detections")
    got = shapely.from_wkb(geometry)
    t = UTM_10M
    b = merged.boxes
    want = shapely.box(t.c + b[:, 0] * t.a, t.f + b[:, 3] * t.e, t.c + b[:, 2] * t.a, t.f + b[:, 1] * t.e)
    assert all(shapely.equals(got, want))
    assert all(shapely.is_ccw(shapely.get_exterior_ring(got)))
    names = list(info["fields"])
    assert_array_equal(fields[names.index("score")], merged.scores)
    assert_array_equal(fields[names.index("label")], merged.labels)
    assert info["total_bounds"] == pytest.approx(shapely.total_bounds(want))


def test_resume_of_a_finished_run_runs_no_model_and_merges_with_new_parameters(scene_tif: Path, tmp_path: Path) -> None:
    wins = windows_of(scene_tif)
    out = tmp_path / "run.gpkg"
    run(wins, out)
    calls = []

    def counting(batch):  # a model with the same identity would be needed to resume; this one must never run
        calls.append(len(batch))
        raise AssertionError("the model ran on a finished run")

    with pytest.raises(lt.RecipeMismatchError, match="model.class"):
        lt.detect_region(counting, wins, out=out, progress=False)
    found = run(wins, out, iou=0.3, method="nms")
    assert not calls
    assert same(found, reference(wins, iou=0.3, method="nms")[0])
    with lt.open_run(out) as r:
        assert r.summary()["merge"]["method"] == "nms" and same(r.result(), found)
        assert r.summary()["sessions"] == 2


def test_replay_merge_equals_a_fresh_merge(scene_tif: Path, tmp_path: Path) -> None:
    wins = windows_of(scene_tif)
    out = tmp_path / "run.gpkg"
    run(wins, out)
    with lt.open_run(out) as r:
        for params in ({"iou": 0.3}, {"iou": 0.8, "metric": "iou"}, {"method": "nms"}, {"class_aware": False}):
            assert same(r.merge(**params), reference(wins, **params)[0]), params
        assert same(r.merge(), reference(wins)[0])  # the run's own parameters
        with pytest.raises(ValueError, match=r"iou must be a threshold in \(0, 1\], got 1.5"):
            r.merge(iou=1.5)


def test_summary_repr_pickle_geojson_and_progress(
    scene_tif: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    wins = windows_of(scene_tif)
    out = tmp_path / "run.gpkg"
    found = run(wins, out, geojson=tmp_path / "found.geojson", progress=True)
    err = capfd.readouterr().err
    assert "detect -> run.gpkg" in err and "25/25" in err
    collection = json.loads((tmp_path / "found.geojson").read_text())
    assert len(collection["features"]) == len(found)
    run(wins, out, progress=False)
    assert capfd.readouterr().err == ""
    with lt.open_run(out) as r:
        s = r.summary()
        assert (s["windows"], s["done"], s["failed"], s["missing"], s["complete"]) == (25, 25, 0, 0, True)
        assert s["merged_detections"] == len(found) and s["raw_detections"] == len(r.detections())
        assert "25 of 25 windows done" in repr(r)
        assert (
            r.recipe["windows.size"] == [96, 96]
            and r.recipe["model.class"] == "lazytiles.detection.models.BlobDetector"
        )
        again = pickle.loads(pickle.dumps(r))
        assert isinstance(again, lt.Run) and same(again.result(), found)
        again.close()


# -- kills -----------------------------------------------------------------------------------------------


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


@pytest.mark.timeout(300)
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_inside_a_commit_loses_that_batch_or_nothing_and_resume_completes(
    scene_tif: Path, tmp_path: Path, when: str
) -> None:
    out = tmp_path / "run.gpkg"
    rc, stdout, stderr = finish(child(scene_tif, out, "--kill-at-commit", f"3:{when}"))
    assert rc == -signal.SIGKILL, stderr
    with lt.open_run(out) as r:  # commits 1 and 2 are in; the third is wholly in (after) or wholly out
        assert len(r.done) == (3 if when == "after" else 2) * run_child.BATCH
        assert r.sessions[0]["status"] == "running"  # the killed session never ended...
        assert not r.summary()["running"]  # ...but its process is gone
    wins = windows_of(scene_tif)
    run(wins, out)
    assert_complete(out, wins)
    with lt.open_run(out) as r:
        statuses = [s["status"] for s in r.sessions]
    assert statuses == ["killed", "finished"]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", [1, 2])
def test_several_random_kills_then_resume_equals_an_uninterrupted_run(
    scene_tif: Path, tmp_path: Path, seed: int
) -> None:
    """Kill the run three times at seeded random points — inside a commit, on a tile read (batches in
    flight), and from outside after a tile read — then resume it to the end."""
    rng = np.random.default_rng(seed)
    out = tmp_path / "run.gpkg"
    done = [0]
    codes = []
    for kind in rng.permutation(["commit", "read", "outside"]):
        if kind == "commit":
            proc = child(scene_tif, out, "--kill-at-commit", f"{rng.integers(1, 5)}:{rng.choice(['before', 'after'])}")
        elif kind == "read":
            proc = child(scene_tif, out, "--kill-at-read", str(rng.integers(1, 37)))
        else:
            proc = child(scene_tif, out, "--signal-at-read", str(rng.integers(1, 37)))
            line = proc.stdout.readline()
            if line.startswith("READ"):
                proc.send_signal(signal.SIGKILL)
        rc, stdout, stderr = finish(proc)
        assert rc in (-signal.SIGKILL, 0), stderr  # 0: the run ended before the kill point
        codes.append(rc)
        with lt.open_run(out) as r:
            done.append(len(r.done))
            assert not r.failed
        # windows are committed two by two (the last one alone): a kill never splits a batch
        assert done[-1] % run_child.BATCH == 0 or done[-1] == 25
    assert codes[0] == -signal.SIGKILL and done[1] < 25
    assert done == sorted(done)  # a resume never loses committed windows
    rc, stdout, stderr = finish(child(scene_tif, out))
    assert rc == 0 and stdout.startswith("DONE"), stderr
    assert_complete(out, windows_of(scene_tif))


class BreaksOnce(BlobDetector):
    """The demo detector, raising on its ``calls_left``-th call while that is set (a bug, not a bad tile)."""

    calls_left: int | None = None

    def forward(self, images):
        if BreaksOnce.calls_left is not None:
            BreaksOnce.calls_left -= 1
            if BreaksOnce.calls_left == 0:
                raise RuntimeError("the model broke (test)")
        return super().forward(images)


def test_a_model_error_stops_the_run_keeps_finished_windows_and_resume_completes(
    scene_tif: Path, tmp_path: Path
) -> None:
    wins = windows_of(scene_tif)
    out = tmp_path / "run.gpkg"
    BreaksOnce.calls_left = 4
    try:
        with pytest.raises(Exception, match="the model broke"):
            # no commit by time: the windows finished before the error are committed on the way out
            lt.detect_region(BreaksOnce(), wins, out=out, batch_size=2, commit_interval=3600, progress=False)
    finally:
        BreaksOnce.calls_left = None
    with lt.open_run(out) as r:
        assert r.done.tolist() == [0, 1, 2, 3, 4, 5]  # three batches of two ran before the fourth broke
        assert r.sessions[0]["status"].startswith("stopped: ")
    found = lt.detect_region(BreaksOnce(), wins, out=out, batch_size=2, progress=False)
    assert same(found, reference(wins)[0])
    assert_complete(out, wins)


# -- unreadable windows ------------------------------------------------------------------------------------


class FlakySource(lt.ArraySource):
    """An ArraySource whose tiles in ``broken`` (row, col) raise TileFetchError, like a server after retries."""

    broken: set[tuple[int, int]] = set()

    def _read_tile(self, key):
        if (key.row, key.col) in self.broken:
            raise lt.TileFetchError(f"tile {key.row}/{key.col} could not be read (test)")
        return super()._read_tile(key)


def test_unreadable_windows_are_recorded_as_failed_and_retried_on_resume(tmp_path: Path) -> None:
    def flaky_windows() -> lt.WindowSequence:  # each with its own cache, so no tile is read from memory
        src = FlakySource(
            scene(), transform=UTM_10M, crs="EPSG:32633", tile_shape=64, token="flaky", cache=lt.TileCache()
        )
        return run_child.windows(src)

    merged, _ = reference(flaky_windows())
    wins = flaky_windows()
    out = tmp_path / "run.gpkg"
    FlakySource.broken = {(1, 1)}  # pixels 64..128: under windows 0, 1, 5, 6 (offsets 0 and 72)
    try:
        with pytest.warns(lt.FailedWindowsWarning, match=r"4 of 25 windows could not be read .*resume=True"):
            partial = run(wins, out)
    finally:
        FlakySource.broken = set()
    with lt.open_run(out) as r:
        assert sorted(r.failed) == [0, 1, 5, 6]
        assert all("tile 1/1 could not be read" in reason for reason in r.failed.values())
        s = r.summary()
        assert (s["done"], s["failed"], s["missing"], s["complete"]) == (21, 4, 0, False)
        assert s["failed_windows"][5]["attempts"] == 1
    assert len(partial) < len(merged)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = run(flaky_windows(), out)  # the tile reads again: only the failed windows run
    assert same(found, merged)
    assert_complete(out, wins)
    with sqlite3.connect(out) as con:
        attempts = dict(con.execute("SELECT window_index, attempts FROM lazytiles_windows WHERE attempts > 1"))
    assert attempts == {0: 2, 1: 2, 5: 2, 6: 2}


def test_a_corrupt_geotiff_block_fails_its_windows_only(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "scene.tif", scene(), block=(64, 64), compress="deflate")
    with open(path, "r+b") as f:  # overwrite the middle of the compressed data with garbage
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\xff" * 64)
    wins = windows_of(path)
    with pytest.warns(lt.FailedWindowsWarning):
        run(wins, tmp_path / "run.gpkg")
    with lt.open_run(tmp_path / "run.gpkg") as r:
        assert r.failed and len(r.done) + len(r.failed) == 25 and len(r.done) > 0


# -- refusing to continue, clearly, and changing nothing ---------------------------------------------------


@pytest.fixture
def finished(scene_tif: Path, tmp_path: Path) -> tuple[Path, lt.WindowSequence]:
    out = tmp_path / "run.gpkg"
    run(windows_of(scene_tif), out)
    return out, windows_of(scene_tif)


def test_a_different_recipe_is_refused_naming_the_parameter(finished, scene_tif: Path, tmp_path: Path) -> None:
    out, wins = finished
    before = digest(out)
    src = lt.RasterSource(scene_tif)
    other = tmp_path / "other.tif"
    shutil.copy(scene_tif, other)
    cases = [
        (
            lambda: run(lt.windows(src, size=128, overlap=0.25), out),
            r"windows\.size is \[96, 96\] there but \[128, 128\] now",
        ),
        (lambda: run(lt.windows(src, size=96, stride=48), out), r"windows\.stride"),
        (
            lambda: run(lt.windows(src, size=96, overlap=0.25, bounds=(500000, 5997000, 503000, 6000000)), out),
            r"windows\.area",
        ),
        (lambda: run(windows_of(other), out), r"source is .*scene\.tif.* there but .*other\.tif.* now"),
        (lambda: lt.detect_region(BlobDetector(threshold=0.4), wins, out=out, progress=False), r"model\.sha256"),
        (lambda: run(wins, out, score_threshold=0.9), r"score_threshold is 0\.0 there but 0\.9 now"),
        (lambda: run(wins, out, preprocess=lt.Preprocess(scale=1 / 128)), r"preprocess"),
        (lambda: run(wins[1:], out), r"windows\.count is 25 there but 24 now"),
    ]
    for call, message in cases:
        with pytest.raises(lt.RecipeMismatchError, match=message) as info:
            call()
        assert isinstance(info.value, ValueError) and "force_new=True (CLI: --force-new)" in str(info.value)
    assert digest(out) == before


def test_force_new_replaces_a_run_and_resume_false_refuses_one(finished, scene_tif: Path) -> None:
    out, wins = finished
    before = digest(out)
    with pytest.raises(lt.RunStoreError, match=r"already exists; pass resume=True \(CLI: --resume\)"):
        run(wins, out, resume=False)
    assert digest(out) == before
    src = lt.RasterSource(scene_tif, cache=lt.TileCache())
    new = lt.windows(src, size=128, overlap=0.5)
    found = run(new, out, force_new=True)
    assert same(found, lt.merge(lt.detect(run_child.model(), new, progress=False), progress=False))
    with lt.open_run(out) as r:
        assert r.recipe["windows.size"] == [128, 128] and r.summary()["sessions"] == 1
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp.gpkg")]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "zeroed-page"])
def test_a_damaged_store_is_refused_unchanged_and_force_new_replaces_it(finished, damage: str) -> None:
    out, wins = finished
    data = out.read_bytes()
    if damage == "garbage":
        out.write_bytes(b"this is not a database " * 100)
    elif damage == "truncated":
        out.write_bytes(data[: len(data) // 3])
    elif damage == "empty":
        out.write_bytes(b"")
    else:  # the page holding the raw detections' rows zeroed
        out.write_bytes(data[:8192] + b"\0" * (len(data) - 8192))
    before = digest(out)
    with pytest.raises(lt.RunStoreError, match=r"damaged or only partly written .*force_new=True") as info:
        run(wins, out)
    assert isinstance(info.value, OSError)
    with pytest.raises(lt.RunStoreError):
        lt.open_run(out).summary()
    assert digest(out) == before
    assert same(run(wins, out, force_new=True), reference(wins)[0])


def test_a_foreign_geopackage_is_never_replaced(finished, tmp_path: Path) -> None:
    out, wins = finished
    mine = tmp_path / "mine.gpkg"
    lt.Detections([[0, 0, 1, 1]], [1.0], [0], crs="EPSG:32633").to_gpkg(mine)
    before = digest(mine)
    for kwargs, message in (
        ({}, "is an SQLite database .* but not a lazytiles run store"),
        ({"force_new": True}, "lazytiles did not make; refusing to replace it"),
    ):
        with pytest.raises(lt.RunStoreError, match=message):
            run(wins, mine, **kwargs)
        assert digest(mine) == before
    with pytest.raises(lt.RunStoreError, match="not a lazytiles run store"):
        lt.open_run(mine)


def test_a_missing_directory_is_an_error_and_creates_nothing(tmp_path: Path, scene_tif: Path) -> None:
    out = tmp_path / "no" / "such" / "run.gpkg"
    with pytest.raises(lt.RunStoreError, match=r"directory .*no/such' does not exist; create it first") as info:
        run(windows_of(scene_tif), out)
    assert isinstance(info.value, OSError)
    assert not (tmp_path / "no").exists()
    with pytest.raises(lt.RunStoreError, match="no run store at .* does not exist"):
        lt.open_run(out)


READ_ONLY_CHILD = """
import json, sys, numpy as np, lazytiles as lt
from lazytiles.detection.models import BlobDetector
wins = lt.windows(lt.ArraySource(np.zeros((3, 64, 64), np.uint8), token="ro"), size=32)
errors = []
for out, force in json.loads(sys.argv[1]):
    try:
        lt.detect_region(BlobDetector(), wins, out=out, progress=False, force_new=force)
        errors.append(None)
    except lt.RunStoreError as err:
        errors.append(str(err))
print(json.dumps(errors))
"""


@pytest.mark.timeout(120)
def test_a_read_only_directory_is_an_error_and_nothing_changes() -> None:
    """Run as an unprivileged user when we are root (root writes anywhere), else as ourselves."""
    base = Path(tempfile.mkdtemp())
    try:
        base.chmod(0o755)
        ro = base / "ro"
        ro.mkdir()
        # an existing store, made while the directory was writable
        wins = lt.windows(lt.ArraySource(np.zeros((3, 64, 64), np.uint8), token="ro"), size=32)
        lt.detect_region(BlobDetector(), wins, out=ro / "old.gpkg", progress=False)
        before = digest(ro / "old.gpkg")
        ro.chmod(0o555)
        prefix: list[str] = []
        if os.geteuid() == 0:
            if not shutil.which("setpriv"):
                pytest.skip("running as root, and no setpriv to run the check as an unprivileged user")
            prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(base)}
        attempts = [(str(ro / "new.gpkg"), False), (str(ro / "old.gpkg"), False), (str(ro / "old.gpkg"), True)]
        proc = subprocess.run(
            [*prefix, sys.executable, "-c", READ_ONLY_CHILD, json.dumps(attempts)],
            env=env,
            capture_output=True,
            text=True,
            timeout=100,
            cwd=base,
        )
        if proc.returncode and ("ModuleNotFoundError" in proc.stderr or "ermission denied" in proc.stderr):
            pytest.skip(f"cannot run python as an unprivileged user here: {proc.stderr[-300:]}")
        assert proc.returncode == 0, proc.stderr
        new, old, replace = json.loads(proc.stdout)
        assert re.search(
            r"cannot create run store .*new\.gpkg.*: cannot write in .*ro' \(Permission denied\); "
            r"choose a writable directory",
            new,
        ), new
        assert re.search(r"cannot write run store .*old\.gpkg.*check the permissions", old), old
        assert re.search(r"cannot create run store .*old\.gpkg.*cannot write in", replace), replace
        assert sorted(p.name for p in ro.iterdir()) == ["old.gpkg"]
        assert digest(ro / "old.gpkg") == before
    finally:
        (base / "ro").chmod(0o755)
        shutil.rmtree(base)


# -- two writers ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_a_second_writer_gets_run_locked_error_and_the_first_finishes(scene_tif: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.gpkg"
    proc = child(scene_tif, out, "--block-at-read", "9", stdin=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == "BLOCKED"  # it holds the lock, mid-run
        wins = windows_of(scene_tif)
        for kwargs in ({}, {"force_new": True}):
            with pytest.raises(lt.RunLockedError, match=rf"being written by another process \(pid {proc.pid} ") as info:
                run(wins, out, **kwargs)
            assert isinstance(info.value, lt.RunStoreError)
        with lt.open_run(out) as r:  # readers are welcome meanwhile
            assert r.summary()["running"] and not r.complete
        proc.stdin.write("\n")
        proc.stdin.flush()
        rc, stdout, stderr = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0 and stdout.strip() == f"DONE {len(reference(windows_of(scene_tif))[0])}", stderr
    assert_complete(out, windows_of(scene_tif))


def test_two_writers_in_one_process_are_refused_too(finished) -> None:
    out, wins = finished
    store = RunStore.resume(out)
    try:
        with pytest.raises(lt.RunLockedError):
            run(wins, out)
        barrier = threading.Barrier(2, timeout=30)
        errors = []

        def second() -> None:
            barrier.wait()
            try:
                RunStore.resume(out)
            except lt.RunLockedError as err:
                errors.append(err)

        t = threading.Thread(target=second)
        t.start()
        barrier.wait()
        t.join(30)
        assert len(errors) == 1
    finally:
        store.close()
    assert same(run(wins, out), reference(wins)[0])  # released


# -- arguments -----------------------------------------------------------------------------------------------


def test_bad_arguments_fail_before_anything_is_written(scene_tif: Path, tmp_path: Path) -> None:
    wins = windows_of(scene_tif)
    out = tmp_path / "run.gpkg"
    cases = [
        (dict(wins=list(wins)), "wins must be a lazytiles.WindowSequence"),
        (dict(iou=0), r"iou must be a threshold in \(0, 1\]"),
        (dict(method="mean"), "method must be"),
        (dict(resume="yes"), "resume must be True or False"),
        (dict(commit_interval=-1), "commit_interval must be"),
        (dict(batch_size=0), "batch_size must be"),
        (dict(wins=wins[np.array([0, 0])]), "more than once"),
    ]
    for kwargs, message in cases:
        args = {"wins": wins, **kwargs}
        with pytest.raises(ValueError, match=message):
            lt.detect_region(run_child.model(), args.pop("wins"), out=out, progress=False, **args)
    with pytest.raises(lt.CRSError, match="geojson= writes lon/lat"):
        lt.detect_region(
            run_child.model(), lt.windows(lt.ArraySource(scene()), size=96), out=out, geojson=tmp_path / "x.json"
        )
    assert list(tmp_path.iterdir()) == [scene_tif]
