"""DiskCache: raw bytes keyed by URL, atomic writes, no path traversal, nothing unpickled; untrustworthy
entries are misses; file modes follow the umask; least-recently-used eviction under a size limit."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
import shutil
import stat
import tempfile
import threading
import time
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


# -- entries that cannot be trusted are misses -----------------------------------------------------


def test_the_absent_marker_round_trips_and_a_crash_cannot_fake_it(tmp_path):
    cache = DiskCache(tmp_path)
    cache.put(URL, b"")
    assert cache.get(URL) == b""
    assert cache.path(URL).stat().st_size > 0  # an explicit marker, not an empty file
    assert DiskCache(tmp_path).get(URL) == b""  # another instance (or process) reads it the same
    cache.path(URL).write_bytes(b"")  # what a crash between create and write leaves
    assert cache.get(URL) is None


def _damaged(entry: bytes) -> dict[str, bytes]:
    return {
        "empty": b"",
        "header cut short": entry[:5],
        "body cut short": entry[:-7],
        "one byte flipped": entry[:-1] + bytes([entry[-1] ^ 1]),
        "one byte too many": entry + b"\0",
        "raw bytes of another format": b"\x89PNG\r\n\x1a\n" + entry[8:],
    }


@pytest.mark.parametrize("damage", list(_damaged(b"x" * 40)))
def test_a_partial_or_damaged_entry_is_a_miss_and_is_replaced(tmp_path, damage):
    cache = DiskCache(tmp_path)
    cache.put(URL, b"tile bytes" * 100)
    path = cache.path(URL)
    path.write_bytes(_damaged(path.read_bytes())[damage])
    assert cache.get(URL) is None
    cache.put(URL, b"fetched again")
    assert cache.get(URL) == b"fetched again"


def test_a_damaged_absent_marker_is_a_miss_not_an_absent_tile(tmp_path):
    cache = DiskCache(tmp_path)
    cache.put(URL, b"")
    path = cache.path(URL)
    for damaged in _damaged(path.read_bytes()).values():
        path.write_bytes(damaged)
        assert cache.get(URL) is None


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
def test_an_entry_that_is_no_regular_file_is_a_miss_and_is_replaced(tmp_path, kind):
    cache = DiskCache(tmp_path / "c")
    path = cache.path(URL)
    path.parent.mkdir()
    if kind == "directory":
        (path / "inside").mkdir(parents=True)
    elif kind == "fifo":
        os.mkfifo(path)  # opening it for reading must not wait for a writer
    else:
        elsewhere = DiskCache(tmp_path / "elsewhere")
        elsewhere.put(URL, b"planted")
        path.symlink_to(elsewhere.path(URL))
    assert cache.get(URL) is None
    cache.put(URL, b"fetched again")
    assert cache.get(URL) == b"fetched again" and path.is_file() and not path.is_symlink()


def _get_and_put_as_nobody(directory: str) -> tuple[bytes | None, bytes | None]:
    os.setgid(65534)
    os.setuid(65534)
    cache = DiskCache(directory)
    first = cache.get(URL)
    cache.put(URL, b"fetched again")
    return first, cache.get(URL)


@pytest.mark.timeout(120)
def test_an_entry_this_user_may_not_read_is_a_miss_and_is_replaced(tmp_path):
    if os.geteuid() != 0:
        cache = DiskCache(tmp_path)
        cache.put(URL, b"secret")
        cache.path(URL).chmod(0)
        assert cache.get(URL) is None
        cache.put(URL, b"fetched again")
        assert cache.get(URL) == b"fetched again"
        return
    # root reads everything: another user (nobody) meets an entry written under umask 077
    shared = Path(tempfile.mkdtemp())
    try:
        shared.chmod(0o777)
        cache = DiskCache(shared)
        old = os.umask(0o077)
        try:
            cache.put(URL, b"secret")
        finally:
            os.umask(old)
        cache.path(URL).parent.chmod(0o777)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            first, after = pool.apply(_get_and_put_as_nobody, (str(shared),))
        assert (first, after) == (None, b"fetched again")
    finally:
        shutil.rmtree(shared)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_entries_are_as_readable_as_the_umask_allows(tmp_path, umask, mode):
    cache = DiskCache(tmp_path)
    old = os.umask(umask)
    try:
        cache.put(URL, b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(cache.path(URL).stat().st_mode) == mode


# -- size limit ------------------------------------------------------------------------------------


def _entry_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))


def test_eviction_keeps_the_total_under_max_bytes_and_drops_the_least_recently_used_first(tmp_path):
    one = len(_stored(tmp_path / "probe", b"x" * 1000))
    cache = DiskCache(tmp_path / "c", max_bytes=3 * one + one // 2)
    for name in "abc":
        cache.put(f"{URL}?{name}", name.encode() * 1000)
    assert cache.get(f"{URL}?a") == b"a" * 1000  # a is now used more recently than b
    cache.put(f"{URL}?d", b"d" * 1000)  # four entries do not fit: b goes
    assert cache.get(f"{URL}?b") is None
    assert [cache.get(f"{URL}?{name}") for name in "acd"] == [name.encode() * 1000 for name in "acd"]
    assert _entry_bytes(tmp_path / "c") <= cache.max_bytes
    for i in range(20):
        cache.put(f"{URL}?{i}", bytes([i]) * 1000)
        assert _entry_bytes(tmp_path / "c") <= cache.max_bytes
    assert [cache.get(f"{URL}?{i}") is not None for i in range(20)] == [False] * 17 + [True] * 3


def _stored(directory: Path, body: bytes) -> bytes:
    cache = DiskCache(directory)
    cache.put(URL, body)
    return cache.path(URL).read_bytes()


def test_the_total_is_counted_at_first_write_so_a_reopened_cache_keeps_the_limit(tmp_path):
    DiskCache(tmp_path).put(f"{URL}?old", b"o" * 5000)  # written with no limit
    cache = DiskCache(tmp_path, max_bytes=4000)
    cache.put(URL, b"n" * 1000)
    assert cache.get(f"{URL}?old") is None and cache.get(URL) == b"n" * 1000
    assert _entry_bytes(tmp_path) <= 4000


def test_eviction_removes_temporary_files_left_by_a_crash_and_keeps_fresh_ones(tmp_path):
    cache = DiskCache(tmp_path, max_bytes=3000)
    cache.put(URL, b"x")
    stale, fresh = cache.path(URL).parent / ".stale.tmp", cache.path(URL).parent / ".fresh.tmp"
    stale.write_bytes(b"left by a crash")
    fresh.write_bytes(b"being written")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    cache.put(f"{URL}?big", b"y" * 4000)  # over the limit: eviction scans the directory
    assert not stale.exists() and fresh.exists()


def test_a_body_larger_than_the_limit_is_not_kept(tmp_path):
    cache = DiskCache(tmp_path, max_bytes=1000)
    cache.put(URL, b"x" * 2000)
    assert cache.get(URL) is None and _entry_bytes(tmp_path) == 0


@pytest.mark.parametrize("max_bytes", [0, -5, 1.5, True, "1GB"])
def test_max_bytes_must_be_a_positive_integer(tmp_path, max_bytes):
    with pytest.raises(lt.InvalidArgumentError, match=r"cache_dir_max_bytes must be a number of bytes > 0"):
        DiskCache(tmp_path, max_bytes=max_bytes)


def test_a_cache_with_a_limit_pickles_with_it(tmp_path):
    cache = DiskCache(tmp_path, max_bytes=10_000)
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.max_bytes == 10_000 and repr(copy) == f"DiskCache({str(tmp_path)!r}, max_bytes=10000)"


# -- sharing ---------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_threads_reading_writing_and_evicting_at_once_see_whole_bodies(tmp_path):
    cache = DiskCache(tmp_path, max_bytes=40_000)
    urls = [f"{URL}?{i}" for i in range(12)]
    start = threading.Barrier(6, timeout=30)

    def work(seed: int) -> list[bytes | None]:
        start.wait()
        seen = []
        for step in range(200):
            i = (seed * 7 + step) % len(urls)
            if step % 3:
                cache.put(urls[i], bytes([i]) * 3000)
            else:
                seen.append(cache.get(urls[i]))
                if step % 11 == 0:
                    cache.discard(urls[i])
        return seen

    with ThreadPoolExecutor(6) as pool:
        seen = [body for part in pool.map(work, range(6)) for body in part]
    assert all(body is None or body == body[:1] * 3000 for body in seen)
    assert _entry_bytes(tmp_path) <= 40_000
    assert not list(tmp_path.rglob("*.tmp"))


def _share(args: tuple[str, int]) -> int:
    directory, seed = args
    cache = DiskCache(directory, max_bytes=30_000)
    whole = 0
    for step in range(300):
        i = (seed * 5 + step) % 16
        url = f"{URL}?{i}"
        if step % 2:
            cache.put(url, bytes([i]) * 2500)
        else:
            body = cache.get(url)
            assert body is None or body == bytes([i]) * 2500, f"entry {i} came back mixed or partial"
            whole += body is not None
    return whole


@pytest.mark.timeout(120)
def test_processes_sharing_a_directory_with_a_limit_do_not_crash(tmp_path):
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        hits = pool.map(_share, [(str(tmp_path), seed) for seed in range(3)])
    assert sum(hits) > 0
    cache = DiskCache(tmp_path, max_bytes=30_000)
    cache.put(URL, b"last")  # one more write evicts whatever the others left over the limit
    assert _entry_bytes(tmp_path) <= 30_000
    assert not list(tmp_path.rglob("*.tmp"))
