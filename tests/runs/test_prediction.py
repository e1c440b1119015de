"""lt.predict_region: equal to write_raster, a COG, durable across kill -9, finished blocks not recomputed."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import predict_child  # the child's windows and options, shared with the tests (tests/ is on sys.path)
import pytest
import rasterio
import torch
from conftest import write_tif
from numpy.testing import assert_array_equal

import lazytiles as lt
from lazytiles.detection.models import ColourSegmenter
from lazytiles.runs.blockstore import BlockStore, store_path
from lazytiles.testing.sample import sample_classes, sample_scene

pytestmark = pytest.mark.timeout(300)

HERE = Path(__file__).parent.parent  # tests/, where predict_child.py lives
SCENE, OBJECTS = 256, 8


class Counting(ColourSegmenter):
    """The colour segmenter, counting the windows it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen += len(images)
        return super().forward(images)


@pytest.fixture
def scene_tif(tmp_path: Path) -> Path:
    pixels, _, _ = sample_scene(size=SCENE, objects=OBJECTS)
    return write_tif(tmp_path / "scene.tif", pixels, block=(64, 64))


def wins_of(path: Path) -> lt.WindowSequence:
    return predict_child.windows(lt.RasterSource(str(path), cache=lt.TileCache(max_bytes=2**24)))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("blend", ["center", "mean"])
def test_a_run_writes_the_truth_as_a_cog_equal_to_write_raster(scene_tif, tmp_path, blend):
    wins = wins_of(scene_tif)
    out = predict_child.run(ColourSegmenter(), wins, str(tmp_path / "p.tif"), blend=blend)
    plain = lt.write_raster(
        lt.predict(ColourSegmenter(), wins, progress=False),
        tmp_path / "w.tif",
        blend=blend,
        block=predict_child.BLOCK,
        progress=False,
    )
    with rasterio.open(out) as ds, rasterio.open(plain) as w:
        assert_array_equal(ds.read(1), sample_classes(size=SCENE, objects=OBJECTS))
        assert_array_equal(ds.read(), w.read())
        assert (ds.transform, ds.crs, ds.dtypes) == (w.transform, w.crs, w.dtypes)
        assert ds.overviews(1) == [2] and ds.block_shapes[0] == (128, 128)  # the COG driver's least
        assert "LAZYTILES_RECIPE" in ds.tags()
    assert not store_path(out).exists() and not list(tmp_path.glob(".*partial"))


def test_a_finished_run_is_not_run_again_and_a_changed_recipe_is_refused(scene_tif, tmp_path):
    wins, out = wins_of(scene_tif), tmp_path / "p.tif"
    model = Counting()
    predict_child.run(model, wins, str(out))
    assert model.seen == len(wins)
    before = digest(out)
    again = Counting()
    predict_child.run(again, wins, str(out))
    assert again.seen == 0 and digest(out) == before
    with pytest.raises(lt.RecipeMismatchError, match='raster.blend is "center" there but "mean" now'):
        predict_child.run(Counting(), wins, str(out), blend="mean")
    with pytest.raises(lt.RecipeMismatchError, match="model.tolerance|model.sha256"):
        predict_child.run(ColourSegmenter(tolerance=0.1), wins, str(out))
    with pytest.raises(lt.RunStoreError, match="already exists; pass resume=True"):
        predict_child.run(Counting(), wins, str(out), resume=False)
    assert digest(out) == before and not store_path(out).exists()
    predict_child.run(Counting(), wins, str(out), blend="mean", force_new=True)
    assert digest(out) != before


def test_a_file_it_did_not_write_is_left_alone_and_a_held_store_is_refused(scene_tif, tmp_path):
    wins = wins_of(scene_tif)
    with pytest.raises(lt.RunStoreError, match="is not a raster lazytiles.predict_region finished"):
        predict_child.run(Counting(), wins, str(scene_tif))
    out = tmp_path / "p.tif"
    with BlockStore.open(store_path(out)), pytest.raises(lt.RunLockedError, match="another process"):
        predict_child.run(Counting(), wins, str(out))


def child(scene_tif: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    repo = HERE.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), str(HERE), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, str(HERE / "predict_child.py"), str(scene_tif), str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.parametrize(("blend", "kill"), [("center", "--kill-at-call=8"), ("mean", "--kill-at-call=11")])
def test_killed_then_resumed_gives_the_same_file_without_recomputing_stored_blocks(scene_tif, tmp_path, blend, kill):
    whole = tmp_path / "whole.tif"
    first = child(scene_tif, whole, "--blend", blend)
    assert first.stdout.split() == ["DONE", "25"], first.stderr  # 5 x 5 windows
    out = tmp_path / "p.tif"
    killed = child(scene_tif, out, "--blend", blend, kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()
    with BlockStore.open(store_path(out)) as store:
        stored = len(store.done())
    assert 0 < stored < 64  # some of the 8 x 8 blocks were committed before the kill
    resumed = child(scene_tif, out, "--blend", blend)
    seen = int(resumed.stdout.split()[1])
    assert 0 < seen < 25  # the windows of stored blocks only were not run again
    assert digest(out) == digest(whole)
    assert not store_path(out).exists()


@pytest.mark.parametrize(
    ("dtype", "shape", "data"),
    [("|O", "[1, 2, 2]", b"x"), ("|u1", "[1, 2, 2]", b"abc"), ("|u1", '"2"', b"ab"), ("|u1", "[1, 65536, 65536]", b"")],
)
def test_a_damaged_block_store_is_an_error_naming_it(tmp_path, dtype, shape, data):
    import sqlite3
    import zlib

    path = tmp_path / "p.tif.blocks"
    BlockStore.open(path).close()
    with sqlite3.connect(path) as con:
        con.execute("INSERT INTO lazytiles_blocks VALUES (0, 0, ?, ?, ?)", (dtype, shape, zlib.compress(data)))
    with BlockStore.open(path) as store, pytest.raises(lt.RunStoreError, match=r"damaged block \(0, 0\)"):
        list(store.blocks())
