"""XYZSource over a real loopback tile server (and local directories): pixels, requests, faults, errors."""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mercantile
import numpy as np
import pytest
from numpy.testing import assert_array_equal
from PIL import Image, features
from rasterio.windows import Window

import lazytiles as lt
from lazytiles.sources.http import HttpClient
from lazytiles.sources.xyz import XYZSource
from lazytiles.testing.tileserver import TileServer
from lazytiles.testing.xyztiles import write_xyz_tiles

from .conftest import ORIGIN, ZOOM, position_image


def fast(**options) -> HttpClient:
    """A client that retries at once: the tests count attempts, they do not wait for backoff."""
    options.setdefault("backoff", 0.001)
    options.setdefault("max_backoff", 0.5)
    options.setdefault("read_timeout", 10)
    return HttpClient(**options)


def open_xyz(template: str, **options) -> XYZSource:
    options.setdefault("cache", lt.TileCache(64 * 2**20))
    options.setdefault("tile_size", 256)
    if template.startswith("http"):
        options.setdefault("http", fast())
    return lt.open(template, zoom=options.pop("zoom", ZOOM), **options)


def tile_path(x: int, y: int, z: int = ZOOM) -> str:
    return f"/{z}/{x}/{y}.png"


def all_windows(src, tree, **options):
    options.setdefault("size", 256)
    options.setdefault("stride", 128)
    return lt.windows(src, bounds=tree.coverage.bounds, **options)


# -- pixels -----------------------------------------------------------------------------------------


def test_windows_over_http_equal_the_image_bit_for_bit(tile_server, xyz_tree):
    src = open_xyz(tile_server.template())
    wins = all_windows(src, xyz_tree)
    assert len(wins) == 5 * 7  # (768 - 256) / 128 + 1 rows, (1024 - 256) / 128 + 1 cols
    for w in wins:
        assert_array_equal(w.data, xyz_tree.pixels(w.window))
        assert w.crs == "EPSG:3857"
    assert_array_equal(src.read(xyz_tree.coverage.window), xyz_tree.image)


def test_window_transform_is_the_tiles_own_georeferencing(tile_server, xyz_tree):
    src = open_xyz(tile_server.template())
    w = all_windows(src, xyz_tree, size=256, stride=256)[0]
    left, bottom, right, top = mercantile.xy_bounds(mercantile.Tile(*ORIGIN, ZOOM))
    assert w.bounds == pytest.approx((left, bottom, right, top), abs=1e-6)
    west, south, east, north = mercantile.bounds(mercantile.Tile(*ORIGIN, ZOOM))
    by_lnglat = lt.windows(src, size=256, bounds=(west, south, east, north), bounds_crs="EPSG:4326")
    assert len(by_lnglat) == 1 and by_lnglat[0].window == w.window


def test_a_full_pass_requests_every_tile_exactly_once(tile_server, xyz_tree):
    src = open_xyz(tile_server.template())
    for _ in all_windows(src, xyz_tree, size=300, stride=100):  # windows straddle tiles every way
        pass
    expected = {tile_path(x, y) for x, y in xyz_tree.coverage.tiles()}
    assert tile_server.hits == dict.fromkeys(expected, 1)
    stats = src.stats()
    assert stats["requests"] == 12 and stats["tiles_read"] == 12 and stats["retries"] == 0


def test_eight_threads_reading_at_once_give_the_serial_result(tile_server, xyz_tree):
    serial = [w.data for w in all_windows(open_xyz(tile_server.template()), xyz_tree)]
    tile_server.reset_counts()
    src = open_xyz(tile_server.template())
    wins = all_windows(src, xyz_tree)
    start = threading.Barrier(8, timeout=30)

    def read(offset: int) -> list[tuple[int, np.ndarray]]:
        start.wait()  # all eight begin together, on the same tiles
        return [(i, wins[i].data) for i in range(offset, len(wins), 8)]

    with ThreadPoolExecutor(8) as pool:
        results = dict(pair for chunk in pool.map(read, range(8)) for pair in chunk)
    for i, expected in enumerate(serial):
        assert_array_equal(results[i], expected)
    assert max(tile_server.hits.values()) == 1  # single flight: no tile fetched twice


def test_readahead_keeps_requests_in_flight_for_a_single_consumer(tile_server, xyz_tree):
    tile_server.latency = 0.05  # one tile per window, so only read-ahead can overlap requests
    src = open_xyz(tile_server.template())
    list(all_windows(src, xyz_tree, size=256, stride=256, readahead=0))
    assert tile_server.peak_in_flight == 1
    tile_server.reset_counts()
    src = open_xyz(tile_server.template())
    wins = all_windows(src, xyz_tree, size=256, stride=256, readahead=8)
    for w in wins:
        assert_array_equal(w.data, xyz_tree.pixels(w.window))
    assert tile_server.peak_in_flight > 1
    assert max(tile_server.hits.values()) == 1


# -- faults -----------------------------------------------------------------------------------------


def test_with_every_fault_switched_on_the_result_equals_the_clean_run(tile_server, xyz_tree):
    clean = [w.data for w in all_windows(open_xyz(tile_server.template()), xyz_tree)]
    tile_server.reset_counts()
    # every tile: a 500, a 429, a truncated body, garbage bytes, a dropped connection, then the tile
    tile_server.fail(times=1)
    tile_server.throttle(times=1, retry_after=0)
    tile_server.truncate(times=1)
    tile_server.garbage(times=1)
    tile_server.inject("drop", times=1)
    src = open_xyz(tile_server.template(), http=fast(retries=5))
    faulty = [w.data for w in all_windows(src, xyz_tree)]
    for a, b in zip(clean, faulty, strict=True):
        assert_array_equal(a, b)
    assert set(tile_server.hits.values()) == {6}  # five faults and one success per tile, no more
    stats = src.stats()
    assert stats["retries"] == 5 * 12 and stats["failures"] == 0 and stats["failed_tiles"] == []


def test_a_tile_that_keeps_failing_fails_its_window_naming_url_attempts_and_cause(tile_server, xyz_tree):
    x, y = ORIGIN[0] + 1, ORIGIN[1]
    tile_server.fail(tile_path(x, y), times=None, status=503)
    src = open_xyz(tile_server.template(), http=fast(retries=2))
    wins = all_windows(src, xyz_tree, size=256, stride=256)
    assert_array_equal(wins[0].data, xyz_tree.pixels(wins[0].window))  # its neighbour is fine
    with pytest.raises(lt.TileFetchError) as info:
        wins[1]
    message = str(info.value)
    assert f"{tile_server.url}/{ZOOM}/{x}/{y}.png" in message
    assert "after 3 attempts" in message and "HTTP 503" in message and "window 1" in message
    assert isinstance(info.value, OSError)
    assert tile_server.hits[tile_path(x, y)] == 3
    assert src.stats()["failed_tiles"] == [(ZOOM, x, y)] and src.stats()["failures"] == 1
    tile_server.clear_faults()  # the server recovers: the tile reads and leaves the failed list
    assert_array_equal(wins[1].data, xyz_tree.pixels(wins[1].window))
    assert src.stats()["failed_tiles"] == []


@pytest.mark.timeout(60)
def test_a_hung_connection_costs_at_most_the_read_timeout(tile_server, xyz_tree):
    tile_server.hang(tile_path(*ORIGIN), times=1)  # held for 60 s unless the client gives up
    src = open_xyz(tile_server.template(), http=fast(read_timeout=0.5))
    start = time.monotonic()
    w = all_windows(src, xyz_tree, size=256, stride=256)[0]
    elapsed = time.monotonic() - start
    assert_array_equal(w.data, xyz_tree.pixels(w.window))
    assert tile_server.hits[tile_path(*ORIGIN)] == 2 and src.stats()["retries"] == 1
    assert elapsed < 30  # far below the server's 60 s hold: the client timed out and retried


def test_retry_after_is_honoured(tile_server, xyz_tree):
    tile_server.throttle(tile_path(*ORIGIN), times=1, retry_after=0.4)
    src = open_xyz(tile_server.template())  # backoff alone would wait about a millisecond
    src.read(Window(ORIGIN[0] * 256, ORIGIN[1] * 256, 256, 256))
    first, second = tile_server.request_times(tile_path(*ORIGIN))
    assert second - first >= 0.4


def test_undecodable_tiles_fail_after_the_retry_budget_with_a_clear_error(tile_server, xyz_tree):
    tile_server.garbage(times=None)
    src = open_xyz(tile_server.template(), http=fast(retries=1))
    with pytest.raises(lt.TileFetchError, match=r"after 2 attempts: undecodable body \(not a PNG, JPEG or WebP"):
        all_windows(src, xyz_tree)[0]


# -- missing tiles ----------------------------------------------------------------------------------


def test_missing_tiles_read_as_nodata_and_are_listed(tile_server, xyz_tree):
    cov = xyz_tree.coverage
    src = open_xyz(tile_server.template(), nodata=7)
    # one tile beyond the coverage on the left: a column of three tiles that the server does not have
    window = Window(cov.window.col_off - 256, cov.window.row_off, 512, 768)
    data = src.read(window)
    assert (data[:, :, :256] == 7).all()
    assert_array_equal(data[:, :, 256:], xyz_tree.image[:, :, :256])
    missing = [(ZOOM, ORIGIN[0] - 1, ORIGIN[1] + r) for r in range(3)]
    stats = src.stats()
    assert stats["missing_tiles"] == missing and stats["missing"] == 3 and stats["failures"] == 0


def test_204_no_content_is_absent_too(tile_server, xyz_tree):
    tile_server.absent(tile_path(*ORIGIN), status=204)
    src = open_xyz(tile_server.template(), bands=4)
    data = src.read(Window(ORIGIN[0] * 256, ORIGIN[1] * 256, 256, 256))
    assert (data == 0).all()  # alpha 0 too: an absent tile is transparent
    assert src.stats()["missing_tiles"] == [(ZOOM, *ORIGIN)]


def test_on_missing_raise_fails_reads_of_absent_tiles(tile_server, xyz_tree):
    src = open_xyz(tile_server.template(), on_missing="raise")
    x, y = ORIGIN[0] - 1, ORIGIN[1]
    with pytest.raises(lt.TileMissingError, match=rf"tile z={ZOOM} x={x} y={y} is absent .*404.*on_missing='nodata'"):
        src.read(Window(x * 256, y * 256, 256, 256))
    assert src.stats()["missing_tiles"] == [(ZOOM, x, y)]


# -- templates, local tiles and band layouts ------------------------------------------------------


def test_tms_quadkey_and_subdomain_templates_read_the_same_pixels(tmp_path, xyz_tree):
    image, cov = xyz_tree.image, xyz_tree.coverage
    write_xyz_tiles(image, tmp_path, zoom=ZOOM, top_left_tile=ORIGIN, template="tms/{z}/{x}/{-y}.png")
    write_xyz_tiles(image, tmp_path, zoom=ZOOM, top_left_tile=ORIGIN, template="bing/{q}.png")
    for sub in "ab":
        write_xyz_tiles(image, tmp_path, zoom=ZOOM, top_left_tile=ORIGIN, template=sub + "/{z}/{x}/{y}.png")
    with TileServer(tmp_path) as server:
        for pattern in ("tms/{z}/{x}/{-y}.png", "bing/{q}.png", "{s}/{z}/{x}/{y}.png"):
            src = open_xyz(server.template(pattern), subdomains="ab")
            assert_array_equal(src.read(cov.window), image)
        flipped = f"/tms/{ZOOM}/{ORIGIN[0]}/{2**ZOOM - 1 - ORIGIN[1]}.png"
        key = mercantile.quadkey(mercantile.Tile(*ORIGIN, ZOOM))
        hits = server.hits
        assert hits[flipped] == 1 and hits[f"/bing/{key}.png"] == 1
        by_subdomain = {s: sum(n for p, n in hits.items() if p.startswith(f"/{s}/")) for s in "ab"}
        assert by_subdomain == {"a": 6, "b": 6}  # (x + y) % 2 alternates like a chessboard


def test_local_directory_templates_read_like_the_server(xyz_tree):
    for template in (xyz_tree.template, "file://" + xyz_tree.template):
        src = open_xyz(template, tile_size=None)  # probes a tile file for its size
        assert src.tile_size == 256
        assert_array_equal(src.read(xyz_tree.coverage.window), xyz_tree.image)
    assert src.stats()["requests"] == 12 + 1  # twelve tiles and the probe


def _save(pixels: np.ndarray, path: Path, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)


@pytest.mark.parametrize("bands", [1, 2, 3, 4])
def test_band_layouts_of_grey_palette_and_alpha_tiles(tmp_path, bands):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (256, 256), dtype=np.uint8)
    rgba = rng.integers(0, 256, (256, 256, 4), dtype=np.uint8)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    index = rng.integers(0, 256, (256, 256), dtype=np.uint8)
    _save(grey, tmp_path / "1/0/0.png")
    _save(rgba, tmp_path / "1/1/0.png")
    paletted = Image.frombytes("P", (256, 256), index.tobytes())
    paletted.putpalette(palette.tobytes())
    paletted.save(tmp_path / "1/0/1.png")
    src = open_xyz(str(tmp_path / "{z}/{x}/{y}.png"), zoom=1, bands=bands)
    got_grey, got_rgba = src.read(Window(0, 0, 256, 256)), src.read(Window(256, 0, 256, 256))
    got_palette = src.read(Window(0, 256, 256, 256))
    rgb_of_palette = palette[index].transpose(2, 0, 1)
    if bands >= 3:  # colour layouts: grey repeats, alpha is 255 where the tile has none
        assert_array_equal(got_grey[:3], np.broadcast_to(grey, (3, 256, 256)))
        assert_array_equal(got_rgba[:3], rgba[..., :3].transpose(2, 0, 1))
        assert_array_equal(got_palette[:3], rgb_of_palette)
    else:  # grey layouts: colour becomes ITU-R 601 luma, computed the way Pillow does (integers)
        r, g, b = (rgba[..., i].astype(np.int64) for i in range(3))
        luma = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)
        assert_array_equal(got_grey[0], grey)
        assert_array_equal(got_rgba[0], luma)
    if bands in (2, 4):
        assert_array_equal(got_rgba[-1], rgba[..., 3])
        assert (got_grey[-1] == 255).all() and (got_palette[-1] == 255).all()
    assert got_grey.shape == (bands, 256, 256) and got_grey.dtype == np.uint8


def test_jpeg_and_webp_tiles_decode(tmp_path):
    image = position_image(256, 512)
    write_xyz_tiles(image, tmp_path, zoom=1, template="{z}/{x}/{y}.jpg", quality=95)
    src = open_xyz(str(tmp_path / "{z}/{x}/{y}.jpg"), zoom=1, tile_size=None)
    with Image.open(tmp_path / "1/1/0.jpg") as jpeg:
        assert_array_equal(src.read(Window(256, 0, 256, 256)), np.asarray(jpeg.convert("RGB")).transpose(2, 0, 1))
    if not features.check("webp"):
        pytest.skip("this Pillow has no WebP support")
    write_xyz_tiles(image, tmp_path, zoom=1, template="{z}/{x}/{y}.webp", lossless=True)
    src = open_xyz(str(tmp_path / "{z}/{x}/{y}.webp"), zoom=1)
    assert_array_equal(src.read(Window(0, 0, 512, 256)), image)


# -- tile size ---------------------------------------------------------------------------------------


def test_512_px_tiles_are_detected_from_the_first_tile(tmp_path):
    image = position_image(512, 1024, tile=512)
    cov = write_xyz_tiles(image, tmp_path, zoom=ZOOM, top_left_tile=ORIGIN, tile_size=512)
    write_xyz_tiles(np.zeros((3, 512, 512), np.uint8), tmp_path, zoom=0, tile_size=512)  # 0/0/0.png
    with TileServer(tmp_path) as server:
        src = open_xyz(server.template(), tile_size=None)
        assert src.tile_size == 512 and src.height == 512 * 2**ZOOM
        assert server.hits == {"/0/0/0.png": 1}
        wins = lt.windows(src, size=512, bounds=cov.bounds)
        assert len(wins) == 2
        assert_array_equal(wins[1].data, image[:, :, 512:])
    local = open_xyz(str(tmp_path / "{z}/{x}/{y}.png"), tile_size=None)
    assert local.tile_size == 512


def test_a_tile_of_the_wrong_size_fails_at_once_with_the_size_to_use(tmp_path):
    image = position_image(512, 512, tile=512)
    write_xyz_tiles(image, tmp_path, zoom=ZOOM, top_left_tile=ORIGIN, tile_size=512)
    with TileServer(tmp_path) as server:
        src = open_xyz(server.template(), tile_size=None)  # 0/0/0 is absent: 256 is assumed
        assert src.tile_size == 256
        with pytest.raises(
            lt.TileFetchError,
            match=r"512x512 px image but this source has 256 px tiles; "
            r"open the source with tile_size=512",
        ):
            src.read(Window(ORIGIN[0] * 256, ORIGIN[1] * 256, 256, 256))
        assert server.hits[tile_path(*ORIGIN)] == 1  # a wrong size is no transmission fault: no retry


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels: Pillow reads the size before any pixel."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = b"IDAT" + zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(idat) - 4)
        + idat
        + struct.pack(">I", zlib.crc32(idat))
    )


def test_a_decompression_bomb_is_refused_without_decoding(tmp_path):
    bomb = _png_header(100_000, 100_000)
    for z, x, y in [(ZOOM, *ORIGIN), (0, 0, 0)]:
        (tmp_path / f"{z}/{x}").mkdir(parents=True)
        (tmp_path / f"{z}/{x}/{y}.png").write_bytes(bomb)
    with TileServer(tmp_path) as server:
        src = open_xyz(server.template())
        with pytest.raises(lt.TileFetchError, match=r"is a 100000x100000 px image but this source has 256 px tiles"):
            src.read(Window(ORIGIN[0] * 256, ORIGIN[1] * 256, 256, 256))
        with pytest.raises(lt.SourceOpenError, match=r"0/0/0.png is a 100000x100000 px image: a decompression bomb"):
            open_xyz(server.template(), tile_size=None)  # the probe has no size to expect
        assert server.hits == {tile_path(*ORIGIN): 1, "/0/0/0.png": 1}  # refused, not retried


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("https://t.example/{z}/{x}.png", r"must hold \{z\}, \{x\} and \{y\}"),
        ("https://t.example/{x}/{y}.png", r"must hold \{z\}"),
        ("https://t.example/{z}/{x}/{y}/{style}.png", r"unknown field \{style\}"),
        ("https://t.example/{z}/{x}/{y}.png}", r"unmatched"),
        ("ftp://t.example/{z}/{x}/{y}.png", r"uses ftp://"),
    ],
)
def test_a_bad_template_is_refused(template, match):
    with pytest.raises(lt.InvalidArgumentError, match=match):
        XYZSource(template, zoom=3, tile_size=256)


@pytest.mark.parametrize("zoom", [-1, 31, 2.0, True, "5"])
def test_zoom_must_be_0_to_30(zoom):
    with pytest.raises(lt.InvalidArgumentError, match=r"zoom must be an integer from 0 to 30, got "):
        XYZSource("https://t.example/{z}/{x}/{y}.png", zoom=zoom, tile_size=256)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"bands": 5}, r"bands must be 1 \(grey\)"),
        ({"on_missing": "skip"}, r"on_missing must be 'nodata' or 'raise', got 'skip'"),
        ({"tile_size": 100_000}, r"tile_size must be"),
        ({"subdomains": ""}, r"subdomains must be"),
        ({"http": {"max_connections": 4}}, r"http must be a lazytiles.sources.http.HttpClient"),
    ],
)
def test_bad_options_are_refused(options, match):
    options.setdefault("tile_size", 256)
    with pytest.raises(lt.InvalidArgumentError, match=match):
        XYZSource("https://t.example/{z}/{x}/{y}.png", zoom=3, **options)


def test_windows_without_an_area_say_to_give_one(tile_server):
    src = open_xyz(tile_server.template())
    with pytest.raises(lt.BoundsError, match=r"covers the whole world at its zoom; give bounds=.*or region="):
        lt.windows(src, size=256)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_host_is_a_clear_error():
    template = f"http://127.0.0.1:{_closed_port()}/{{z}}/{{x}}/{{y}}.png"
    with pytest.raises(
        lt.SourceOpenError, match=r"could not read tile .*/0/0/0.png to learn the tile size.*connection refused"
    ):
        open_xyz(template, tile_size=None, http=fast(retries=1))
    src = open_xyz(template, http=fast(retries=1))  # with a tile size, nothing is read until a window
    with pytest.raises(
        lt.TileFetchError,
        match=rf"GET http://127.0.0.1:\d+/{ZOOM}/1/2.png failed after 2 attempts: "
        "connection refused",
    ):
        src.read(Window(256 * 1, 256 * 2, 1, 1))


def test_a_local_template_matching_no_file_is_an_open_error(tmp_path):
    with pytest.raises(lt.SourceOpenError, match=r"no tile file matches .* at zoom 4"):
        XYZSource(str(tmp_path / "{z}/{x}/{y}.png"), zoom=4)


def test_a_local_file_that_is_no_image_is_a_clear_error(xyz_tree):
    path = xyz_tree.root / f"{ZOOM}/{ORIGIN[0]}/{ORIGIN[1]}.png"
    path.write_text("this is not a tile")
    src = open_xyz(xyz_tree.template)
    with pytest.raises(lt.TileFetchError, match=r"is not a PNG, JPEG or WebP image"):
        src.read(Window(ORIGIN[0] * 256, ORIGIN[1] * 256, 256, 256))


def test_credentials_stay_out_of_errors_reprs_and_tokens():
    template = f"http://user:hunter2@127.0.0.1:{_closed_port()}/{{z}}/{{x}}/{{y}}.png?api_key=s3cret"
    src = open_xyz(template, zoom=2, http=fast(retries=0))
    with pytest.raises(lt.TileFetchError) as info:
        src.read(Window(0, 0, 1, 1))
    for text in (str(info.value), repr(src), src.token, str(src.describe())):
        assert "hunter2" not in text and "s3cret" not in text


# -- pickling -----------------------------------------------------------------------------------------


def test_a_source_pickles_as_its_recipe(tile_server, xyz_tree):
    src = open_xyz(tile_server.template(), nodata=3, bands=4, http=fast(max_connections=5, headers={"X-Key": "k"}))
    wins = all_windows(src, xyz_tree)
    first = wins[0].data
    blob = pickle.dumps(wins)
    assert len(blob) < 10_000
    copy = pickle.loads(blob)
    assert copy.source.token == src.token and copy.source.tile_size == 256 and copy.source.nodata == 3
    assert copy.source.http.max_connections == 5 and copy.source.http.headers == {"X-Key": "k"}
    assert_array_equal(copy[0].data, first)


def test_the_token_is_the_same_in_another_process(tile_server):
    src = open_xyz(tile_server.template(), bands=4)
    code = "import pickle, sys; print(pickle.loads(sys.stdin.buffer.read()).token)"
    out = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(src), capture_output=True, check=True, timeout=60
    )
    assert out.stdout.decode().strip() == src.token


# -- on-disk cache ---------------------------------------------------------------------------------


def test_the_disk_cache_makes_a_second_read_offline(tmp_path, xyz_tree):
    cache_dir = tmp_path / "disk"
    cov = xyz_tree.coverage
    area = Window(cov.window.col_off - 256, cov.window.row_off, 512, 512)  # two tiles are absent
    with TileServer(xyz_tree.root) as server:
        online = open_xyz(server.template(), cache_dir=cache_dir)
        first = online.read(area)
        assert server.requests == 4
    offline = open_xyz(online.template, cache_dir=cache_dir, http=fast(retries=0))  # server is gone
    assert_array_equal(offline.read(area), first)
    stats = offline.stats()
    assert stats["requests"] == 0 and stats["disk_hits"] == 4 and stats["missing"] == 2
    files = [p for p in cache_dir.rglob("*") if p.is_file()]
    assert len(files) == 4 and all(len(p.parent.name + p.name) == 64 for p in files)


def test_a_damaged_disk_entry_is_fetched_again(tmp_path, tile_server, xyz_tree):
    from lazytiles.sources.diskcache import DiskCache

    cache_dir = tmp_path / "disk"
    template = tile_server.template()
    url = template.format(z=ZOOM, x=ORIGIN[0], y=ORIGIN[1])
    DiskCache(cache_dir).put(url, b"\x89PNG\r\n\x1a\n half a tile")
    src = open_xyz(template, cache_dir=cache_dir)
    window = Window(ORIGIN[0] * 256, ORIGIN[1] * 256, 256, 256)
    assert_array_equal(src.read(window), xyz_tree.pixels(window))
    assert tile_server.hits[tile_path(*ORIGIN)] == 1
    with Image.open(io.BytesIO(DiskCache(cache_dir).get(url))) as repaired:
        assert repaired.size == (256, 256)


def _read_through_disk(args: tuple[str, str, tuple[int, int, int, int]]) -> bytes:
    template, cache_dir, window = args
    src = lt.open(template, zoom=ZOOM, tile_size=256, cache_dir=cache_dir, http=fast())
    return src.read(Window(*window)).tobytes()


@pytest.mark.timeout(120)
def test_processes_sharing_a_disk_cache_agree(tmp_path, tile_server, xyz_tree):
    import multiprocessing

    window = tuple(int(v) for v in xyz_tree.coverage.window.flatten())
    jobs = [(tile_server.template(), str(tmp_path / "disk"), window)] * 4
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_read_through_disk, jobs)
    assert all(r == xyz_tree.image.tobytes() for r in results)
    assert not list((tmp_path / "disk").rglob("*.tmp"))  # every write finished by a rename


def test_a_failed_window_error_pickles_with_its_text(tile_server, xyz_tree):
    import seqtools  # noqa: F401  # installs tblib's pickling of tracebacks and causes, as lt.prefetch does

    tile_server.fail(times=None)
    src = open_xyz(tile_server.template(), http=fast(retries=0))
    with pytest.raises(lt.TileFetchError) as info:
        all_windows(src, xyz_tree)[3]
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is lt.TileFetchError and str(copy) == str(info.value)
    assert "window 3" in str(copy) and "HTTP 500" in str(copy)


@pytest.mark.timeout(120)
def test_process_prefetch_over_http_gives_the_serial_windows(tile_server, xyz_tree):
    src = open_xyz(tile_server.template())
    wins = all_windows(src, xyz_tree)
    with lt.prefetch(wins, workers=2, method="process", progress=False) as pre:
        got = [w.data for w in pre]
    assert len(got) == len(wins)
    for w, data in zip(wins, got):
        assert_array_equal(data, xyz_tree.pixels(w.window))


def _first_window(src):
    return lt.windows(src, 256, bounds=(-10, -10, 10, 10), bounds_crs="EPSG:4326")[0].window


def test_a_local_template_never_quotes_what_it_read_and_never_reads_devices(tmp_path):
    (tmp_path / "secret.txt").write_bytes(b"AWS_SECRET=AKIAEXAMPLE")
    os.mkfifo(tmp_path / "fifo")
    for template, why in (
        (tmp_path / "secret.txt{q}", "not a PNG, JPEG or WebP image (22 bytes)"),  # {q} is '' at zoom 0
        ("/dev/zero{q}", "not a regular file"),
        (tmp_path / "fifo{q}", "not a regular file"),  # would block an open() without O_NONBLOCK
    ):
        src = lt.open(str(template), zoom=0, tile_size=256)
        with pytest.raises(lt.TileFetchError, match=re.escape(why)) as info:
            src.read(_first_window(src))
        assert "AKIA" not in str(info.value)


def test_a_local_tile_over_max_body_bytes_is_an_error(tmp_path):
    (tmp_path / "big.png").write_bytes(b"\x89PNG" + bytes(4096))
    src = lt.open(str(tmp_path / "big.png{q}"), zoom=0, tile_size=256, http=HttpClient(max_body_bytes=1024))
    with pytest.raises(lt.TileFetchError, match=r"over 1024 bytes \(max_body_bytes\)"):
        src.read(_first_window(src))


def test_cache_dir_max_bytes_reaches_the_disk_cache_and_survives_pickling(tmp_path):
    src = lt.open(
        "http://127.0.0.1:9/{z}/{x}/{y}.png", zoom=3, tile_size=256, cache_dir=tmp_path, cache_dir_max_bytes=10_000
    )
    again = pickle.loads(pickle.dumps(src))
    assert src._disk.max_bytes == again._disk.max_bytes == 10_000
