"""DiskCache: raw bytes keyed by URL, atomic writes, no path traversal, nothing unpickled."""

from __future__ import annotations

import hashlib
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import lazytiles as lt
from lazytiles.sources.diskcache import DiskCache

URL = "https://tiles.example/12/2100/1400.png"


def test_put_get_and_discard(tmp_path):
    cache = DiskCache(tmp_path / "c")
    assert cache.get(URL) is None
    cache.put(URL, b"tile bytes")
    assert cache.get(URL) == b"tile bytes"
    cache.put(URL, b"")  # absent, recorded
    assert cache.get(URL) == b""
    cache.discard(URL)
    cache.discard(URL)  # twice is harmless
    assert cache.get(URL) is None


@pytest.mark.parametrize("url", [URL, "../../../etc/passwd", "file:///etc/passwd", "https://h/" + "../" * 50 + "x"])
def test_entries_are_named_by_the_sha256_of_the_url_inside_the_directory(tmp_path, url):
    cache = DiskCache(tmp_path / "c")
    cache.put(url, b"x")
    digest = hashlib.sha256(url.encode()).hexdigest()
    (entry,) = [p for p in (tmp_path / "c").rglob("*") if p.is_file()]
    assert entry == tmp_path / "c" / digest[:2] / digest[2:]
    assert cache.path(url).resolve().is_relative_to((tmp_path / "c").resolve())


def test_bytes_that_look_like_a_pickle_come_back_as_bytes(tmp_path):
    payload = pickle.dumps({"would": "run code if unpickled"})
    cache = DiskCache(tmp_path)
    cache.put(URL, payload)
    assert cache.get(URL) == payload and isinstance(cache.get(URL), bytes)


@pytest.mark.timeout(60)
def test_threads_writing_one_entry_at_once_leave_one_whole_body(tmp_path):
    cache = DiskCache(tmp_path)
    bodies = [bytes([i]) * 200_000 for i in range(8)]
    start = threading.Barrier(8, timeout=30)
    seen: list[bytes | None] = []

    def write(body: bytes) -> None:
        start.wait()
        cache.put(URL, body)
        seen.append(cache.get(URL))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, bodies))
    assert cache.get(URL) in bodies
    assert all(body in bodies for body in seen)  # never a mix or a partial file
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    cache = DiskCache(tmp_path)
    with pytest.raises(TypeError):
        cache.put(URL, "not bytes")  # type: ignore[arg-type]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_cache_pickles_as_its_directory(tmp_path):
    cache = DiskCache(tmp_path)
    cache.put(URL, b"x")
    assert pickle.loads(pickle.dumps(cache)).get(URL) == b"x"


def test_a_file_is_no_cache_directory(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(lt.InvalidArgumentError, match=r"cannot be used as a directory"):
        DiskCache(tmp_path / "f")
    with pytest.raises(lt.InvalidArgumentError, match=r"cache_dir must be a directory path, got int"):
        DiskCache(3)  # type: ignore[arg-type]


def test_the_cache_takes_a_path_like(tmp_path):
    assert DiskCache(Path(tmp_path)).directory == Path(tmp_path)
