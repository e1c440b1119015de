"""lazytiles.beam: the detection job on real Apache Beam, against the local pipeline.

The oracle everywhere is the local pipeline, ``lt.merge(lt.detect(model, wins))``: the job must give
the same boxes, scores, labels, window indices and partial flags, exactly. Beam runs for real: the
DirectRunner in this process, and once (through the command line) with two worker processes.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from conftest import CountingSource, assert_same, tiles_touched

import lazytiles as lt
from lazytiles.detection.models import BlobDetector
from lazytiles.merging.cells import merged_detections
from lazytiles.testing.sample import make_sample

beam = pytest.importorskip("apache_beam")
lb = pytest.importorskip("lazytiles.beam")

ROOT = Path(__file__).resolve().parents[2]
MODEL = "lazytiles.detection.models:blob_detector"

# Beam's own notices: apache-beam 2.77 reports through logging on these paths ("apitools not found",
# "Discarding unparseable args", ...), not through the warnings module, so nothing needs ignoring and
# setup.cfg's "error" stays in force, in Beam's threads too. A warning a later Beam adds fails here
# and gets its own filterwarnings entry below, with its reason.
pytestmark: list[pytest.MarkDecorator] = []


# -- data ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory):
    """The built-in scene, 1024 px, 130 objects (many on 128-px seams), as a COG and as XYZ tiles."""
    return make_sample(tmp_path_factory.mktemp("beam-sample"), size=1024, objects=130, tiles=True)


def cog_windows(sample, cache_bytes: int | None = None) -> lt.WindowSequence:
    """121 windows of 128 px, stride 96: most objects straddle a window seam."""
    cache = lt.TileCache() if cache_bytes is None else lt.TileCache(max_bytes=cache_bytes)
    return lt.windows(lt.open(sample.cog, cache=cache), size=128, overlap=0.25)


@pytest.fixture(scope="module")
def local(sample):
    """The oracle: per-window detections and the merged result of the local pipeline."""
    wins = cog_windows(sample)
    per_window = list(lt.detect(BlobDetector(), wins, progress=False))
    merged = lt.merge(lt.detect(BlobDetector(), wins, progress=False), progress=False)
    assert len(merged) >= 100 and len(merged) == len(sample.boxes)  # every object, once
    straddling = sum(bool(d.partial.any()) for d in per_window)
    assert straddling > 50  # many windows cut an object
    return wins, per_window, merged


class Dump(beam.DoFn):
    """Pickle every element into its own file under ``directory``: how a test reads a job's output."""

    def __init__(self, directory: Path) -> None:
        self.directory = str(directory)

    def process(self, element):
        os.makedirs(self.directory, exist_ok=True)
        with open(os.path.join(self.directory, f"{uuid.uuid4().hex}.pkl"), "wb") as f:
            pickle.dump(element, f)


def load(directory: Path) -> list:
    return [pickle.loads(p.read_bytes()) for p in sorted(directory.glob("*.pkl"))] if directory.exists() else []


# -- shards (no Beam run) -----------------------------------------------------------------------------------


def rows_of(wins: lt.WindowSequence) -> tuple[list[list[int]], list[int]]:
    """Positions grouped into window rows, and the strip of each row, by walking the windows (the oracle):
    a row ends where the row offset changes, a strip where it goes back up."""
    rows: list[list[int]] = []
    strips: list[int] = []
    last = None
    for k, (_, row_off, _, _) in enumerate(wins.pixel_windows().tolist()):
        if row_off != last:
            strips.append(strips[-1] + (row_off < last) if strips else 0)
            rows.append([])
            last = row_off
        rows[-1].append(k)
    return rows, strips


@pytest.mark.parametrize("shard_size", [None, 1, 3, 7, 11, 25, 1000])
def test_shards_are_whole_rows_of_one_strip_and_cover_every_window_once(sample, shard_size):
    wins = cog_windows(sample, cache_bytes=3 * 2**19)  # a small cache: strips of 5, 5 and 1 window columns
    assert wins.plan.strip == 5
    shards = lb.shard_ranges(wins, shard_size)
    assert [p for a, b in shards for p in range(a, b)] == list(range(len(wins)))
    rows, strips = rows_of(wins)
    assert strips[-1] == 2 and len(rows) == 33
    row_of = {p: i for i, row in enumerate(rows) for p in row}
    for a, b in shards:
        rows = sorted({row_of[p] for p in range(a, b)})
        assert rows == list(range(rows[0], rows[-1] + 1))
        assert len({strips[r] for r in rows}) == 1  # one strip: a compact block of tiles
        if len(rows) > 1:  # a shard of several rows holds them whole
            assert row_of.get(a - 1) != rows[0] and row_of.get(b) != rows[-1]
        if shard_size is None:
            assert len(rows) <= lb.SHARD_ROWS and row_of.get(a - 1) != rows[0] and row_of.get(b) != rows[-1]
        else:
            assert b - a <= shard_size
    if shard_size == 1:
        assert len(shards) == len(wins)
    if shard_size is None:  # 11 rows per strip, in shards of 8 and 3
        assert [b - a for a, b in shards] == [40, 15, 40, 15, 8, 3]


def test_a_shard_reads_a_compact_block_of_tiles_each_once(sample):
    with rasterio.open(sample.cog) as ds:
        pixels = ds.read()
    for a, b in lb.shard_ranges(cog_windows(sample, cache_bytes=3 * 2**19)):
        src = CountingSource(pixels, tile_shape=256, cache=lt.TileCache(max_bytes=3 * 2**19))
        wins = lt.windows(src, size=128, overlap=0.25)
        touched = set().union(*(tiles_touched(wins.pixel_window(p), 256) for p in range(a, b)))
        rows, cols = {r for r, _ in touched}, {c for _, c in touched}
        assert touched == {(r, c) for r in rows for c in cols}  # a rectangle of tiles
        for _ in wins[a:b]:
            pass
        assert {(k.row, k.col) for k in src.reads} == touched and max(src.reads.values()) == 1


def test_a_mask_shards_only_the_windows_left(sample):
    wins = cog_windows(sample)
    mask = np.ones(len(wins), bool)
    mask[[0, 5, 6, 40, 120]] = False
    shards = lb.shard_ranges(wins, 20, mask=mask)
    assert [p for a, b in shards for p in range(a, b)] == np.flatnonzero(mask).tolist()
    assert lb.shard_ranges(wins, mask=np.zeros(len(wins), bool)) == []


def test_bad_shard_arguments_name_the_value(sample):
    wins = cog_windows(sample)
    with pytest.raises(lt.InvalidArgumentError, match=r"shard_size must be a number of windows >= 1.*got 0"):
        lb.shard_ranges(wins, 0)
    with pytest.raises(ValueError, match=r"mask must be a \(121,\) bool array"):
        lb.shard_ranges(wins, mask=np.ones(3, bool))
    with pytest.raises(lt.InvalidArgumentError, match="wins must be a lazytiles.WindowSequence"):
        lb.shard_ranges([1, 2, 3])


# -- the merge by cells (no Beam run) -----------------------------------------------------------------------


def test_cell_arguments_are_checked(sample):
    wins = cog_windows(sample)
    with pytest.raises(lt.InvalidArgumentError, match="fanin must be an integer >= 2.*got 1"):
        lb.MergeDetections(wins, fanin=1)
    with pytest.raises(lt.InvalidArgumentError, match="cell_size must be a positive number of pixels, got -5"):
        lb.MergeDetections(wins, cell_size=-5)
    with pytest.raises(lt.InvalidArgumentError, match="rule must be an lt.MergeRule"):
        lb.MergeDetections(wins, {"iou": 0.3})
    assert lb.MergeDetections(wins).grid.cell == 8 * 128


# -- values that travel ---------------------------------------------------------------------------------------


def test_elements_pickle_small_and_whole(local):
    wins, per_window, _ = local
    item = lb.WindowDetections(5, 5, (480, 0, 128, 128), per_window[5])
    back = pickle.loads(pickle.dumps(item))
    assert (back.position, back.index, back.window) == (5, 5, (480, 0, 128, 128))
    assert back.detections == per_window[5] and np.array_equal(back.detections.partial, per_window[5].partial)
    letter = lb.DeadLetter(3, 3, (288, 0, 128, 128), "tile could not be read")
    assert pickle.loads(pickle.dumps(letter)) == letter
    assert len(pickle.dumps(wins)) < 10_000  # what every worker gets: a recipe


# -- Beam, in this process ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_beam_job_gives_the_local_merge_exactly_for_every_shard_size(local, sample, tmp_path):
    wins, per_window, merged = local
    shard_of = {p: k for k, (a, b) in enumerate(lb.shard_ranges(wins, 7)) for p in range(a, b)}
    rects = wins.pixel_windows()
    across = [
        {
            shard_of[p]
            for p, (c, r, w, h) in enumerate(rects.tolist())
            if c < x1 and x0 < c + w and r < y1 and y0 < r + h
        }
        for x0, y0, x1, y1 in sample.boxes
    ]
    assert sum(len(shards) > 1 for shards in across) > 60  # objects seen by two shards or more
    branches = {"one per window": (1, 17, 2), "7 windows": (7, 300, 3), "default": (None, None, 4)}
    with beam.Pipeline(options=lb.to_pipeline_options(["--runner=DirectRunner"])) as p:
        for name, (shard_size, cell, fanin) in branches.items():
            found = p | f"Detect {name}" >> lb.DetectWindows(wins, MODEL, shard_size=shard_size, batch_size=4)
            if shard_size == 7:
                _ = found.detections | f"Dump windows {name}" >> beam.ParDo(Dump(tmp_path / "windows"))
            _ = (
                found.detections
                | f"Merge {name}" >> lb.MergeDetections(wins, cell_size=cell, fanin=fanin)
                | f"Dump {name}" >> beam.ParDo(Dump(tmp_path / name))
            )
    for name in branches:
        chunks = load(tmp_path / name)
        assert all(isinstance(c, lt.Detections) and c.crs == wins.source.crs for c in chunks)
        together = lt.Detections.concat(chunks)
        assert_same(merged_detections([_records(together)], merged.transform, merged.crs), merged)
    windows = sorted(load(tmp_path / "windows"), key=lambda w: w.position)
    assert [w.position for w in windows] == list(range(len(wins))) == [w.index for w in windows]
    for w, expected in zip(windows, per_window):
        assert_same(w.detections, expected)
        assert w.window == tuple(wins.pixel_windows()[w.position].tolist())


def _records(d: lt.Detections) -> np.ndarray:
    from lazytiles.merging.cells import merged_records

    return merged_records(d.boxes, d.scores, d.labels, d.window_index, d.partial)


def corrupt_tile(sample, x: int, y: int) -> tuple[Path, bytes]:
    """Overwrite one XYZ tile of the sample with bytes that are not an image; returns what to restore."""
    path = Path(sample.tiles_dir) / str(sample.zoom) / str(x) / f"{y}.png"
    good = path.read_bytes()
    path.write_bytes(b"this is not a PNG" * 10)
    return path, good


def windows_over(wins: lt.WindowSequence, *, cols: tuple[int, int], rows: tuple[int, int]) -> list[int]:
    """Indices of the windows holding a pixel of the block ``cols`` x ``rows`` (scene pixels), by brute force."""
    area = wins.area
    return [
        int(i)
        for i, (c, r, w, h) in zip(wins.indices, wins.pixel_windows().tolist())
        if c - area.col_off < cols[1]
        and c - area.col_off + w > cols[0]
        and r - area.row_off < rows[1]
        and r - area.row_off + h > rows[0]
    ]


def xyz_windows(sample) -> lt.WindowSequence:
    src = lt.open(sample.tile_template, zoom=sample.zoom, cache=lt.TileCache())
    return lt.windows(src, size=128, overlap=0.25, bounds=sample.bounds, bounds_crs="EPSG:3857")


@pytest.mark.timeout(300)
def test_windows_whose_tiles_cannot_be_read_go_to_the_dead_letters(sample, tmp_path):
    x0, y0 = 34168, 23440  # the sample's upper-left tile (lazytiles.testing.sample.ORIGIN_TILE)
    path, good = corrupt_tile(sample, x0 + 1, y0 + 2)  # pixels 256..512 x 512..768
    try:
        wins = xyz_windows(sample)
        outcomes = list(lt.detect(BlobDetector(), wins, progress=False).outcomes())
        failed = {i: err for i, _, err in outcomes if err is not None}
        assert sorted(failed) == windows_over(wins, cols=(256, 512), rows=(512, 768))  # 4 x 3 windows
        assert all("is not a PNG" in err for err in failed.values())
        with beam.Pipeline(options=lb.to_pipeline_options(["--runner=DirectRunner"])) as p:
            found = p | lb.DetectWindows(wins, MODEL, shard_size=10)
            _ = found.dead_letter | "Dump dead" >> beam.ParDo(Dump(tmp_path / "dead"))
            _ = found.detections | "Dump ok" >> beam.ParDo(Dump(tmp_path / "ok"))
            _ = (
                found.detections
                | lb.MergeDetections(wins)
                | lb.WriteDetections(wins, geojson=tmp_path / "found.geojson", gpkg=tmp_path / "found.gpkg")
            )
    finally:
        path.write_bytes(good)
    dead = sorted(load(tmp_path / "dead"), key=lambda d: d.index)
    assert [d.index for d in dead] == sorted(failed)
    for d in dead:
        assert d.reason == failed[d.index] and d.window == tuple(wins.pixel_windows()[d.position].tolist())
    ok = {w.index: w.detections for w in load(tmp_path / "ok")}
    expected = {i: d for i, d, err in outcomes if err is None}
    assert sorted(ok) == sorted(expected)
    for i in expected:
        assert_same(ok[i], expected[i])
    merged = lt.merge([d for _, d, _ in outcomes if d is not None], windows=wins, progress=False)
    features = json.loads((tmp_path / "found.geojson").read_text())["features"]
    assert len(features) == len(merged) and {f["properties"]["window_index"] for f in features} <= set(expected)
    meta = pyogrio.read_info(tmp_path / "found.gpkg")
    assert meta["features"] == len(merged) and "3857" in meta["crs"]


@pytest.mark.timeout(300)
def test_a_durable_job_records_every_window_and_a_rerun_retries_only_the_failed(sample, tmp_path):
    out = tmp_path / "run.gpkg"
    path, good = corrupt_tile(sample, 34168 + 2, 23440 + 1)
    try:
        with pytest.warns(lt.FailedWindowsWarning, match=r"12 of 121 windows could not be read"):
            partial = lb.detect_region(
                MODEL,
                xyz_windows(sample),
                out,
                shard_size=30,
                cell_size=200,
                fanin=2,
                pipeline_options=["--runner=DirectRunner"],
            )
    finally:
        path.write_bytes(good)
    wins = xyz_windows(sample)
    expected = lt.merge(lt.detect(BlobDetector(), wins, progress=False), progress=False)
    with lt.open_run(out) as run:
        s = run.summary()
        assert (s["done"], s["failed"], s["missing"]) == (109, 12, 0)
        assert sorted(run.failed) == windows_over(wins, cols=(512, 768), rows=(256, 512))
        assert all("is not a PNG" in r for r in run.failed.values())
        assert_same(partial, run.result())
    assert len(partial) < len(expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error", lt.FailedWindowsWarning)
        found = lb.detect_region(MODEL, wins, out, cell_size=200, fanin=2)
    assert_same(found, expected)
    with lt.open_run(out) as run:
        s = run.summary()
        assert (s["done"], s["failed"], s["complete"], s["sessions"]) == (121, 0, True, 2)
        sessions = run._store.sessions()
        assert [x["windows_done"] for x in sessions] == [109, 12]  # the rerun detected the 12 failed only
        assert [x["status"] for x in sessions] == ["finished; 12 windows failed", "finished"]
        assert_same(run.merge(), expected)  # the local replay of the same store agrees
    assert_same(lt.detect_region(BlobDetector(), wins, out, progress=False), expected)  # the local runner agrees
    again = lb.detect_region(MODEL, wins, out)  # all done: every window is read back from the store
    assert_same(again, expected)


def test_a_store_of_another_recipe_is_refused(sample, tmp_path):
    out = tmp_path / "run.gpkg"
    wins = cog_windows(sample)[:4]
    lt.detect_region(BlobDetector(), wins, out, progress=False)
    with pytest.raises(lt.RecipeMismatchError, match="model"):
        lb.detect_region("lazytiles.detection.models:window_classifier", wins, out)


def test_bad_job_arguments_are_errors_before_anything_runs(sample, tmp_path):
    wins = cog_windows(sample)
    with pytest.raises(lt.InvalidArgumentError, match="pipeline_options must be a list of flags"):
        lb.detect_region(MODEL, wins, tmp_path / "run.gpkg", pipeline_options="--runner=DirectRunner")
    with pytest.raises(lt.InvalidArgumentError, match=r"device='gpu:0' is not a torch device"):
        lb.DetectWindows(wins, MODEL, device="gpu:0")
    with pytest.raises(lt.InvalidArgumentError, match="batch_size must be an integer >= 1"):
        lb.DetectWindows(wins, MODEL, batch_size=0)
    with pytest.raises(lt.InvalidArgumentError, match="model 'no_such_module:x': module .* cannot be imported"):
        lb.detect_region("no_such_module:x", wins, tmp_path / "run.gpkg")
    assert not (tmp_path / "run.gpkg").exists()
    assert lb.DetectWindows(wins, MODEL, device="cuda:3")  # checked on the workers, which may have GPUs


# -- packaging -------------------------------------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


def test_import_lazytiles_does_not_import_beam():
    done = run_python(
        "import sys, lazytiles, lazytiles.cli, lazytiles.merging.cells; print('apache_beam' in sys.modules)"
    )
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_without_beam_the_error_names_the_extra():
    done = run_python(
        "import sys; sys.modules['apache_beam'] = None\n"
        "import lazytiles as lt\n"
        "try:\n    import lazytiles.beam\n"
        "except lt.MissingDependencyError as err:\n    print(isinstance(err, ImportError), err)\n"
    )
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.startswith("True lazytiles.beam needs Apache Beam") and "pip install lazytiles[beam]" in done.stdout
    )


# -- the command line, with two worker processes -------------------------------------------------------------


def test_options_after_a_double_dash_need_the_beam_runner(sample, capsys):
    from lazytiles.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["detect", str(sample.cog), "--model", MODEL, "--out", "x.gpkg", "--", "--runner=DirectRunner"])
    assert exit_.value.code == 2
    assert (
        "options after '--' (--runner=DirectRunner) are Beam's; they need 'detect --runner beam'"
        in capsys.readouterr().err
    )


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_command_runs_the_job_on_two_worker_processes(local, sample, tmp_path):
    _, _, merged = local
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lazytiles",
            "detect",
            str(sample.cog),
            "--model",
            MODEL,
            "--out",
            "run.gpkg",
            "--geojson",
            "found.geojson",
            "--size",
            "128",
            "--overlap",
            "0.25",
            "--batch-size",
            "4",
            "--runner",
            "beam",
            "--",
            "--runner=DirectRunner",
            "--direct_num_workers=2",
            "--direct_running_mode=multi_processing",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=380,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"objects  {len(merged)} " in done.stdout and "run.gpkg, found.geojson" in done.stdout
    with lt.open_run(tmp_path / "run.gpkg") as run:
        assert_same(run.result(), merged)
        assert run.complete and run.summary()["sessions"] == 1
    features = json.loads((tmp_path / "found.geojson").read_text())["features"]
    assert len(features) == len(merged)
