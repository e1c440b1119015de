"""RasterSource over HTTP (GDAL /vsicurl/ against the loopback TileServer): pixels, read-ahead, GDAL options."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from numpy.testing import assert_array_equal
from rasterio.windows import Window

import lazytiles as lt
from lazytiles.sources.raster import REMOTE_GDAL_DEFAULTS
from lazytiles.testing.tileserver import TileServer


@pytest.fixture
def cog(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A 3-band uint16 1024 x 768 GeoTIFF in 128-px blocks whose pixels name their position."""
    b, r, c = np.indices((3, 768, 1024), dtype=np.uint32)
    array = (b * 20_000 + r * 7 + c * 3).astype(np.uint16)
    path = tmp_path / "scene.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=1024,
        height=768,
        count=3,
        dtype="uint16",
        tiled=True,
        blockxsize=128,
        blockysize=128,
        compress="deflate",
        crs="EPSG:32633",
        transform=Affine(10, 0, 500_000, 0, -10, 6_000_000),
    ) as ds:
        ds.write(array)
    return path, array


@pytest.fixture
def served(cog):
    path, array = cog
    with TileServer(path.parent, hang_timeout=60) as server:
        yield server, f"/vsicurl/{server.url}/{path.name}", array


def test_windows_over_vsicurl_equal_the_file(served):
    server, url, array = served
    src = lt.open(url, cache=lt.TileCache(64 * 2**20))
    wins = lt.windows(src, size=300, stride=200)
    assert src.remote and src.fetch_workers == 16 and src.tile_shape == (128, 128)
    assert wins.readahead == len(wins.plan.cols) + 1  # a row of windows ahead
    for w in wins:
        r, c = int(w.window.row_off), int(w.window.col_off)
        assert_array_equal(w.data, array[:, r : r + 300, c : c + 300])


def test_readahead_keeps_several_range_requests_in_flight(served):
    server, url, array = served
    server.latency = 0.03
    src = lt.open(url, cache=lt.TileCache(64 * 2**20))
    server.reset_counts()
    wins = lt.windows(src, size=128, readahead=8)  # one block per window: only read-ahead can overlap requests
    for w in wins:
        r, c = int(w.window.row_off), int(w.window.col_off)
        assert_array_equal(w.data, array[:, r : r + 128, c : c + 128])
    assert server.peak_in_flight > 1
    assert src.stats()["tiles_read"] == 48  # 6 x 8 blocks, each read once


def test_remote_gdal_defaults_apply_unless_the_user_set_them(served, monkeypatch):
    _, url, _ = served
    src = lt.open(url, gdal_options={"GDAL_HTTP_MAX_RETRY": "1"})
    assert src._gdal_options == {**REMOTE_GDAL_DEFAULTS, "GDAL_HTTP_MAX_RETRY": "1"}
    monkeypatch.setenv("GDAL_HTTP_MULTIPLEX", "NO")
    assert "GDAL_HTTP_MULTIPLEX" not in lt.open(url)._gdal_options
    with rasterio.Env(GDAL_HTTP_MERGE_CONSECUTIVE_RANGES="NO"):
        assert "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES" not in lt.open(url)._gdal_options


def test_local_files_get_no_network_options_and_a_row_of_decode_readahead(cog):
    path, array = cog
    src = lt.open(path)
    assert src._gdal_options == {} and not src.remote
    wins = lt.windows(src, 128)
    assert src.fetch_workers == min(4, os.cpu_count() or 1) and wins.readahead == len(wins.plan.cols) + 1
    for w in lt.windows(src, 256, stride=128, readahead=0):  # everything on this thread
        r, c = w.window.row_off, w.window.col_off
        assert_array_equal(w.data, array[:, r : r + 256, c : c + 256])
    assert src._pool._pid is None  # its fetch threads never started


@pytest.mark.timeout(60)
def test_gdal_retries_transient_server_errors_with_the_defaults(served):
    server, url, array = served
    fast = {"GDAL_HTTP_RETRY_DELAY": "0.05"}
    src = lt.open(url, cache=lt.TileCache(64 * 2**20), gdal_options=fast)
    # another URL for the same file, so GDAL's process-wide /vsicurl/ cache cannot answer for it
    without = lt.open(url + "?copy", cache=lt.TileCache(64 * 2**20), gdal_options={**fast, "GDAL_HTTP_MAX_RETRY": "0"})
    server.fail(times=3, status=503)  # the next three requests of the file fail
    assert_array_equal(src.read(Window(512, 512, 128, 128)), array[:, 512:640, 512:640])
    server.clear_faults()
    server.reset_counts()
    server.fail(times=3, status=503)
    with pytest.raises(lt.TileFetchError, match=r"could not be read"):
        without.read(Window(512, 512, 128, 128))


def test_a_remote_source_pickles_with_its_own_options_only(served):
    _, url, array = served
    src = lt.open(url, max_connections=3, gdal_options={"GDAL_HTTP_MAX_RETRY": "2"})
    copy = pickle.loads(pickle.dumps(src))
    assert (copy.fetch_workers, copy._max_connections) == (3, 3)
    assert copy._user_gdal_options == {"GDAL_HTTP_MAX_RETRY": "2"}
    assert_array_equal(copy.read(Window(130, 140, 10, 10)), array[:, 140:150, 130:140])


@pytest.mark.parametrize("max_connections", [0, -1, True, 2.0])
def test_bad_max_connections_are_refused(cog, max_connections):
    with pytest.raises(lt.InvalidArgumentError, match=r"max_connections must be a positive int"):
        lt.open(cog[0], max_connections=max_connections)


@pytest.mark.timeout(30)
def settled(src) -> None:
    """Wait until the source's read-ahead has no load queued or running."""
    import time

    deadline = time.monotonic() + 20
    while getattr(src._pool, "_inflight", ()):  # made at first use
        assert time.monotonic() < deadline, "read-ahead never settled"
        time.sleep(0.01)


def test_indexing_forward_reads_ahead_and_a_jump_does_not(cog):
    path, array = cog
    src = lt.open(path, cache=lt.TileCache(64 * 2**20))
    wins = lt.windows(src, size=128, readahead=4)  # one block per window, 8 a row
    cached = lambda: {k for k in (src.tile_key(r, c) for r in range(6) for c in range(8)) if k in src.cache}  # noqa: E731
    assert_array_equal(wins[0].data, array[:, :128, :128])
    settled(src)
    assert cached() == {src.tile_key(0, 0)}  # one index is not a pattern: nothing read ahead
    assert_array_equal(wins[1].data, array[:, :128, 128:256])
    settled(src)  # i, i + 1: the blocks of windows 2..5 are decoded before anyone asks
    assert cached() == {src.tile_key(0, c) for c in range(6)}
    assert_array_equal(wins[40].data, array[:, 640:768, :128])  # a jump: no read-ahead
    settled(src)
    assert cached() == {src.tile_key(0, c) for c in range(6)} | {src.tile_key(5, 0)}
    for i in range(len(wins)):  # a loop over range(len(wins)) reads each block once, correctly
        r, c = divmod(i, 8)
        assert_array_equal(wins[i].data, array[:, 128 * r : 128 * r + 128, 128 * c : 128 * c + 128])
    assert src.stats()["tiles_read"] == 48


def test_local_readahead_decodes_on_a_pool_that_ends_with_its_source(cog):
    import gc
    import threading

    path, array = cog
    for _ in range(10):  # a late background load of a used-up block would read it twice: try often
        src = lt.open(path, cache=lt.TileCache(64 * 2**20))
        wins = lt.windows(src, 256, stride=128)
        for w in wins:  # an in-order pass: blocks of the next windows decode on the pool
            r, c = w.window.row_off, w.window.col_off
            assert_array_equal(w.data, array[:, r : r + 256, c : c + 256])
        assert src.stats()["tiles_read"] == src.grid.rows * src.grid.cols  # each block once
    pool = [t for t in threading.enumerate() if t.name.startswith("lazytiles-fetch-raster")]
    assert pool
    del src, wins, w
    gc.collect()
    for t in pool:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in pool)


def test_credentials_in_a_raster_url_never_show(tmp_path):
    url = "/vsicurl/http://user:hunter2@127.0.0.1:9/scene.tif?api_key=SECRET123&x=1"
    with pytest.raises(lt.SourceOpenError) as info:
        lt.RasterSource(url)
    text = str(info.value)
    assert "hunter2" not in text and "SECRET123" not in text and "***" in text
