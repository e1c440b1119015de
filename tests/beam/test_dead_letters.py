"""Beam's dead letters: every error reading a window makes it a dead letter; an error of the model fails the bundle.

The oracle is the local pipeline over the same source: ``lt.detect(model, wins).outcomes(tolerate=...)``
says which windows cannot be read and what the others hold. Beam runs for real, on the DirectRunner.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from rasterio.errors import RasterioIOError

import lazytiles as lt
from lazytiles.detection.models import BlobDetector
from lazytiles.sources.http import HttpClient
from lazytiles.testing.tileserver import TileServer
from lazytiles.testing.xyztiles import write_xyz_tiles

beam = pytest.importorskip("apache_beam")
lb = pytest.importorskip("lazytiles.beam")

from .test_beam import Dump, load  # noqa: E402  (after the skip: it needs Beam)

MODEL = "lazytiles.detection.models:blob_detector"
ZOOM, TOP_LEFT = 10, (550, 335)
DIRECT = ["--runner=DirectRunner"]


def scene() -> np.ndarray:
    """512 x 512 px, 3 bands, a bright square in each 128-px cell."""
    image = np.full((3, 512, 512), 20, np.uint8)
    for r in range(4):
        for c in range(4):
            image[(r + c) % 3, 128 * r + 40 : 128 * r + 60, 128 * c + 30 : 128 * c + 70] = 230
    return image


def run_detect(wins: lt.WindowSequence, tmp_path: Path, model=MODEL, **options) -> tuple[dict, dict]:
    """``{index: DeadLetter}`` and ``{index: Detections}`` of DetectWindows over ``wins``."""
    with beam.Pipeline(options=lb.to_pipeline_options(DIRECT)) as p:
        found = p | lb.DetectWindows(wins, model, **options)
        _ = found.dead_letter | "Dump dead" >> beam.ParDo(Dump(tmp_path / "dead"))
        _ = found.detections | "Dump ok" >> beam.ParDo(Dump(tmp_path / "ok"))
    dead = {d.index: d for d in load(tmp_path / "dead")}
    ok = {w.index: w.detections for w in load(tmp_path / "ok")}
    return dead, ok


def assert_like_local(wins: lt.WindowSequence, dead: dict, ok: dict, tolerate: tuple) -> dict:
    """The job's dead letters and detections are the local pipeline's failures and detections."""
    local = list(lt.detect(BlobDetector(), wins, progress=False).outcomes(tolerate=tolerate))
    failed = {i: err for i, _, err in local if err is not None}
    assert failed and sorted(dead) == sorted(failed)
    assert sorted(ok) == sorted(i for i, _, err in local if err is None)
    for i, found, err in local:
        if err is None:
            np.testing.assert_array_equal(ok[i].boxes, found.boxes)
    rects = wins.pixel_windows()
    for d in dead.values():
        assert d.window == tuple(rects[d.position].tolist()) and d.index == wins.indices[d.position]
    return failed


# -- a tile server with a damaged and a missing tile --------------------------------------------------------


#: Seconds an HTTP attempt may take; each client's deadline thread lingers that long after its last request.
DEADLINE = 10.0


@pytest.fixture
def http_threads_joined():
    """Wait, after the test, for the HTTP clients' deadline threads to end (at most ``DEADLINE``
    seconds after the last request), so that later tests find no lazytiles thread running."""
    yield
    for thread in threading.enumerate():
        if thread.name == "lazytiles-http-deadlines":
            thread.join(DEADLINE + 20)


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("http_threads_joined")
def test_a_damaged_and_a_missing_tile_on_a_tile_server_are_dead_letters_and_a_resume_retries_them(tmp_path):
    tiles = tmp_path / "tiles"
    cover = write_xyz_tiles(scene(), tiles, zoom=ZOOM, top_left_tile=TOP_LEFT)
    damaged = tiles / str(ZOOM) / str(TOP_LEFT[0] + 1) / f"{TOP_LEFT[1]}.png"
    missing = tiles / str(ZOOM) / str(TOP_LEFT[0]) / f"{TOP_LEFT[1] + 1}.png"
    good_damaged, good_missing = damaged.read_bytes(), missing.read_bytes()
    damaged.write_bytes(good_damaged[: len(good_damaged) // 2])  # a PNG cut short: the header reads, the pixels do not
    missing.unlink()

    with TileServer(tiles) as server:

        def windows() -> lt.WindowSequence:
            src = lt.open(
                server.template() + "?api_key=SECRET",
                zoom=ZOOM,
                tile_size=256,
                on_missing="raise",
                http=HttpClient(retries=0, deadline=DEADLINE),
                cache=lt.TileCache(),
            )
            return lt.windows(src, size=128, overlap=0.25, bounds=cover.bounds, bounds_crs="EPSG:3857")

        wins = windows()
        dead, ok = run_detect(wins, tmp_path, shard_size=7)
        failed = assert_like_local(wins, dead, ok, (lt.TileFetchError,))
        reasons = {d.reason for d in dead.values()}
        assert any("damaged PNG" in r for r in reasons) and any("is absent" in r for r in reasons)
        assert not any("SECRET" in r for r in reasons)

        out = tmp_path / "run.gpkg"
        with pytest.warns(lt.FailedWindowsWarning, match=rf"{len(failed)} of {len(wins)} windows could not be read"):
            lb.detect_region(MODEL, windows(), out, shard_size=7, pipeline_options=DIRECT)
        with lt.open_run(out) as run:
            assert sorted(run.failed) == sorted(failed)
        damaged.write_bytes(good_damaged)
        missing.write_bytes(good_missing)
        with warnings.catch_warnings():
            warnings.simplefilter("error", lt.FailedWindowsWarning)
            found = lb.detect_region(MODEL, windows(), out, shard_size=7, pipeline_options=DIRECT)
    expected = lt.merge(lt.detect(BlobDetector(), windows_of_files(tiles, cover)), progress=False)
    np.testing.assert_array_equal(found.boxes, expected.boxes)
    with lt.open_run(out) as run:
        assert run.complete and [s["windows_done"] for s in run.sessions] == [len(wins) - len(failed), len(failed)]


def windows_of_files(tiles: Path, cover) -> lt.WindowSequence:
    src = lt.open(str(tiles / "{z}/{x}/{y}.png"), zoom=ZOOM, cache=lt.TileCache())
    return lt.windows(src, size=128, overlap=0.25, bounds=cover.bounds, bounds_crs="EPSG:3857")


# -- any error while reading, on either reading path -----------------------------------------------------------


class BrokenTiles(lt.ArraySource):
    """An ArraySource whose tile (1, 2) raises ``BrokenTiles.error()``: what a source, GDAL or an image
    decoder may raise, wrapped by lazytiles or not."""

    error = staticmethod(lambda: ValueError("bad block"))

    def _read_tile(self, key):
        if (key.row, key.col) == (1, 2):
            raise BrokenTiles.error()
        return super()._read_tile(key)

    def __reduce__(self):  # travels to Beam's workers as itself, not as an ArraySource
        return broken_tiles, ()


def broken_tiles() -> BrokenTiles:
    return BrokenTiles(scene(), tile_shape=128, token="broken", cache=lt.TileCache())


ERRORS = {
    "a raw ValueError": (lambda: ValueError("bad block"), "ValueError: bad block"),
    "GDAL's error": (lambda: RasterioIOError("Read failed at block 7"), "Read failed at block 7"),
    "SourceOpenError": (lambda: lt.SourceOpenError("cannot reopen https://u:pw@h.example/s.tif"), "***@h.example"),
    "TileMissingError": (lambda: lt.TileMissingError("tile 1/2 is absent"), "tile 1/2 is absent"),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", [1, 2], ids=["in order", "reader pool"])
@pytest.mark.parametrize("kind", list(ERRORS))
def test_every_error_reading_a_window_is_a_dead_letter(tmp_path, kind, workers):
    make, reason = ERRORS[kind]
    BrokenTiles.error = staticmethod(make)
    wins = lt.windows(broken_tiles(), size=128, overlap=0.25)
    dead, ok = run_detect(wins, tmp_path, shard_size=9, workers=workers, batch_size=3)
    failed = assert_like_local(wins, dead, ok, (Exception,))
    assert len(failed) == 4  # the windows over tile (1, 2) only: the shard's later windows were read
    assert all(reason in d.reason for d in dead.values()), [d.reason for d in dead.values()]
    assert not any("pw@" in d.reason for d in dead.values())


# -- the model's errors fail the bundle ----------------------------------------------------------------------


def failing_preprocess(x):
    raise RuntimeError("preprocessing broke")


class FailingModel(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("the model broke")


@pytest.mark.timeout(300)
def test_an_error_of_the_model_or_its_preprocessing_fails_the_bundle_naming_the_windows(tmp_path):
    wins = lt.windows(lt.ArraySource(scene(), tile_shape=128, token="model-errors"), size=128, overlap=0.25)
    with pytest.raises(Exception, match=r"detecting the windows \[0, 1, 2\] .*RuntimeError: preprocessing broke"):
        run_detect(wins, tmp_path, shard_size=9, batch_size=3, preprocess=failing_preprocess)
    assert not (tmp_path / "dead").exists()
    with pytest.raises(Exception, match=r"the model raised RuntimeError on the batch of windows \[0, 1, 2\]"):
        run_detect(wins, tmp_path, shard_size=9, batch_size=3, model=FailingModel())
    assert not (tmp_path / "dead").exists()
