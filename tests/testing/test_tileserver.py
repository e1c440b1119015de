"""The loopback TileServer (ranges, keep-alive, faults, counting) and write_xyz_tiles."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import mercantile
import numpy as np
import pytest
import rasterio
from affine import Affine
from numpy.testing import assert_array_equal
from PIL import Image
from rasterio.windows import Window

import lazytiles as lt
from lazytiles.testing.faults import GARBAGE
from lazytiles.testing.tileserver import CHUNK, TileServer
from lazytiles.testing.xyztiles import write_xyz_tiles

DATA = bytes(range(256)) * 8  # 2048 bytes, each names its offset modulo 256


@pytest.fixture
def server(tmp_path: Path):
    root = tmp_path / "served"
    (root / "d").mkdir(parents=True)
    (root / "d" / "data.bin").write_bytes(DATA)
    (tmp_path / "secret.txt").write_text("outside the root")
    with TileServer(root, hang_timeout=60) as s:
        yield s


def request(server: TileServer, path: str, method: str = "GET", **headers: str) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


# -- serving files -------------------------------------------------------------------------------


def test_get_serves_the_file_and_says_ranges_are_accepted(server):
    status, headers, body = request(server, "/d/data.bin")
    assert status == 200 and body == DATA
    assert headers["Accept-Ranges"] == "bytes" and headers["Content-Length"] == str(len(DATA))


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [("bytes=10-19", 10, 19), ("bytes=2000-", 2000, 2047), ("bytes=-5", 2043, 2047), ("bytes=2040-9999", 2040, 2047)],
)
def test_a_range_request_gets_206_and_exactly_those_bytes(server, spec, start, end):
    status, headers, body = request(server, "/d/data.bin", Range=spec)
    assert status == 206 and body == DATA[start : end + 1]
    assert headers["Content-Range"] == f"bytes {start}-{end}/{len(DATA)}"


def test_an_unsatisfiable_range_gets_416(server):
    status, headers, _ = request(server, "/d/data.bin", Range="bytes=4096-")
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(DATA)}"


def test_several_ranges_get_the_whole_file(server):
    status, _, body = request(server, "/d/data.bin", Range="bytes=0-1,5-6")
    assert status == 200 and body == DATA


def test_head_sends_the_headers_without_the_body(server):
    status, headers, body = request(server, "/d/data.bin", "HEAD")
    assert status == 200 and body == b"" and headers["Content-Length"] == str(len(DATA))


def raw_get(server: TileServer, target: str) -> tuple[int, bytes]:
    """GET ``target`` exactly as written (http clients would normalise ``..``): the status and the body."""
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize(
    "target",
    ["/../secret.txt", "/d/../../secret.txt", "/%2e%2e/secret.txt", "/d/%2E%2E/%2e%2e/secret.txt", "/..%2fsecret.txt"],
)
def test_dot_dot_in_the_url_cannot_leave_the_directory(server, tmp_path, target):
    status, body = raw_get(server, target)
    assert status == 403 and b"outside the root" not in body


def test_a_symlink_pointing_out_of_the_directory_is_refused(server, tmp_path):
    (server.directory / "d" / "link.txt").symlink_to(tmp_path / "secret.txt")
    (server.directory / "out").symlink_to(tmp_path, target_is_directory=True)
    (server.directory / "inside.bin").symlink_to(server.directory / "d" / "data.bin")
    for target in ("/d/link.txt", "/out/secret.txt"):
        status, body = raw_get(server, target)
        assert status == 403 and b"outside the root" not in body, target
    assert raw_get(server, "/inside.bin") == (200, DATA)  # links that end inside are served
    assert raw_get(server, "/out/served/d/data.bin") == (200, DATA)
    server.truncate(times=1)  # a fault that needs the file does not read through the link either
    assert raw_get(server, "/d/link.txt")[0] == 403


@pytest.mark.parametrize("path", ["/nothing.png", "/", "/d", "/d/data.bin/x"])
def test_missing_files_answer_404(server, path):
    assert request(server, path)[0] == 404


def test_large_files_and_ranges_of_them_are_streamed_whole(server):
    big = np.random.default_rng(0).integers(0, 256, 5 * CHUNK + 123, dtype=np.uint8).tobytes()
    (server.directory / "big.bin").write_bytes(big)
    status, headers, body = request(server, "/big.bin")
    assert status == 200 and body == big and headers["Content-Length"] == str(len(big))
    status, _, body = request(server, "/big.bin", Range=f"bytes={CHUNK - 7}-{3 * CHUNK + 9}")
    assert status == 206 and body == big[CHUNK - 7 : 3 * CHUNK + 10]


def test_one_connection_serves_many_requests(server):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        for _ in range(5):
            conn.request("GET", "/d/data.bin")
            assert conn.getresponse().read() == DATA
    finally:
        conn.close()
    assert server.connections == 1 and server.hits == {"/d/data.bin": 5}


def test_gdal_vsicurl_reads_a_geotiff_through_the_server(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (2, 300, 400), dtype=np.uint8)
    path = tmp_path / "scene.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=400,
        height=300,
        count=2,
        dtype="uint8",
        tiled=True,
        blockxsize=128,
        blockysize=128,
        compress="deflate",
        crs="EPSG:32633",
        transform=Affine(10, 0, 500_000, 0, -10, 6_000_000),
    ) as ds:
        ds.write(array)
    with TileServer(tmp_path) as server, rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        with rasterio.open(f"/vsicurl/{server.url}/scene.tif") as ds:
            assert_array_equal(ds.read(window=Window(100, 50, 200, 150)), array[:, 50:200, 100:300])
        assert any(p == "/scene.tif" for p in server.hits)


# -- faults ------------------------------------------------------------------------------------------


def test_a_fault_hits_the_first_times_requests_of_each_matching_path(server):
    server.fail("/d/*", times=2, status=503)
    statuses = [request(server, "/d/data.bin")[0] for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert request(server, "/d/other.bin")[0] == 503  # a path of its own: its own two faults
    server.clear_faults()
    assert request(server, "/d/other.bin")[0] == 404


def test_throttle_sends_429_with_retry_after(server):
    server.throttle(times=1, retry_after=7)
    status, headers, _ = request(server, "/d/data.bin")
    assert status == 429 and headers["Retry-After"] == "7"


def test_truncate_sends_half_the_promised_body(server):
    server.truncate(times=1)
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", "/d/data.bin")
        response = conn.getresponse()
        assert response.getheader("Content-Length") == str(len(DATA))
        with pytest.raises(http.client.IncompleteRead) as info:
            response.read()
    finally:
        conn.close()
    assert info.value.partial == DATA[: len(DATA) // 2]


def test_garbage_and_absent_replace_the_file(server):
    server.garbage("/d/data.bin", times=1)
    assert request(server, "/d/data.bin")[2] == GARBAGE
    server.absent("/d/data.bin", status=204)
    status, headers, body = request(server, "/d/data.bin")
    assert status == 204 and body == b"" and "Content-Length" not in headers


def test_drop_closes_without_an_answer(server):
    server.inject("drop", times=1)
    with pytest.raises(http.client.RemoteDisconnected):
        request(server, "/d/data.bin")
    assert request(server, "/d/data.bin")[2] == DATA


@pytest.mark.timeout(60)
def test_hang_holds_the_request_until_released(server):
    server.hang(times=1)
    conn = http.client.HTTPConnection(server.host, server.port, timeout=0.3)
    try:
        conn.request("GET", "/d/data.bin")
        with pytest.raises(TimeoutError):
            conn.getresponse()
    finally:
        conn.close()
    server.release()
    assert request(server, "/d/data.bin")[2] == DATA


def test_bad_fault_settings_are_refused(server):
    with pytest.raises(lt.InvalidArgumentError, match=r"fault kind must be one of"):
        server.inject("explode")
    with pytest.raises(lt.InvalidArgumentError, match=r"times must be a positive int"):
        server.fail(times=0)


def test_counts_reset(server):
    request(server, "/d/data.bin")
    request(server, "/nothing")
    assert server.requests == 2 and server.hits == {"/d/data.bin": 1, "/nothing": 1}
    server.reset_counts()
    assert server.requests == 0 and server.connections == 0 and server.request_times("/nothing") == []


def test_the_command_line_server_prints_its_url_and_counts_on_exit(tmp_path):
    (tmp_path / "t.png").write_bytes(b"png")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lazytiles.testing.tileserver", str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        url = proc.stdout.readline().strip()
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("GET", "/t.png")
            assert conn.getresponse().read() == b"png"
        finally:
            conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert json.loads(out.strip().splitlines()[-1]) == {"requests": 1, "paths": 1}


def test_a_stopped_server_can_start_again(tmp_path):
    server = TileServer(tmp_path)
    assert "stopped" in repr(server)
    with server:
        assert "serving at http://127.0.0.1:" in repr(server)
    server.stop()  # twice is harmless
    with pytest.raises(lt.InvalidArgumentError, match=r"is not a directory"):
        TileServer(tmp_path / "nope")


# -- write_xyz_tiles --------------------------------------------------------------------------------


def test_write_xyz_tiles_names_tiles_and_bounds_like_mercantile(tmp_path):
    image = np.random.default_rng(1).integers(0, 255, (3, 512, 768), dtype=np.uint8)
    cov = write_xyz_tiles(image, tmp_path, zoom=9, top_left_tile=(260, 170))
    assert (cov.cols, cov.rows, len(cov)) == (3, 2, 6) and (261, 171) in cov and (263, 170) not in cov
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert files == sorted(f"9/{x}/{y}.png" for x in range(260, 263) for y in range(170, 172))
    ul, lr = mercantile.Tile(260, 170, 9), mercantile.Tile(262, 171, 9)
    assert cov.bounds == pytest.approx(
        (
            mercantile.xy_bounds(ul).left,
            mercantile.xy_bounds(lr).bottom,
            mercantile.xy_bounds(lr).right,
            mercantile.xy_bounds(ul).top,
        )
    )
    assert cov.lnglat_bounds == pytest.approx(
        (
            mercantile.bounds(ul).west,
            mercantile.bounds(lr).south,
            mercantile.bounds(lr).east,
            mercantile.bounds(ul).north,
        )
    )
    assert cov.window == Window(260 * 256, 170 * 256, 768, 512)
    with Image.open(tmp_path / "9/261/171.png") as tile:
        assert_array_equal(np.asarray(tile).transpose(2, 0, 1), image[:, 256:, 256:512])


@pytest.mark.parametrize("bands", [1, 2, 4])
def test_write_xyz_tiles_keeps_grey_and_alpha_bands(tmp_path, bands):
    image = np.random.default_rng(bands).integers(0, 255, (bands, 256, 256), dtype=np.uint8)
    write_xyz_tiles(image, tmp_path, zoom=0, template="{z}/{x}/{-y}.png")
    with Image.open(tmp_path / "0/0/0.png") as tile:
        pixels = np.asarray(tile)
    assert_array_equal(pixels if bands == 1 else pixels.transpose(2, 0, 1), image[0] if bands == 1 else image)


@pytest.mark.parametrize(
    ("array", "options", "match"),
    [
        (np.zeros((3, 200, 256), np.uint8), {}, r"not whole 256-px tiles"),
        (np.zeros((3, 256, 256), np.float32), {}, r"must be uint8"),
        (np.zeros((5, 256, 256), np.uint8), {}, r"1 to 4 bands"),
        (np.zeros((3, 256, 512), np.uint8), {"zoom": 0}, r"do not fit the 1x1 tiles of zoom 0"),
    ],
)
def test_write_xyz_tiles_refuses_what_it_cannot_write(tmp_path, array, options, match):
    with pytest.raises(lt.InvalidArgumentError, match=match):
        write_xyz_tiles(array, tmp_path, **{"zoom": 3, **options})
