"""DiskCache: raw tile bytes on disk, keyed by URL, shared safely by threads, processes and users.

An entry is a small header (a magic word, whether the tile is present or absent, the body's length and
CRC-32) followed by the bytes the server sent, never a pickle: nothing read back is executed or
unpickled. An entry that cannot be read, or that is empty, cut short or damaged (wrong magic, length
or checksum), is a miss: the tile is fetched again and the entry replaced. So a crash can only ever
cost a fetch, never fake an absent tile, and a damaged tile is never served.

Each entry is written to a temporary file in its own directory (an unpredictable name, created with
``O_EXCL``), flushed to disk with ``fsync`` and renamed into place with ``os.replace``, which is
atomic: a reader in any process sees the old entry or the new one, never half of one, and two
processes writing the same tile both leave a complete copy. File names are the SHA-256 of the URL, so
no URL can name a path outside the cache directory; entries are opened without following symlinks.

File modes honour the umask: with the usual 022, entries are readable by everyone and writable by
their owner, so several processes (and users, with a shared group and umask 002) can share one cache.

With ``max_bytes``, entries read or written least recently are removed once the entries' total size
passes it (down to 90 % of it). Each read stamps the entry's modification time, which is what "least
recently used" compares. The total is counted once, at the first write, then kept up to date by the
writes of this process; other processes' writes show up at the next eviction, which counts again. So
with several writers the total can pass ``max_bytes`` by what the others wrote since their last look.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import stat
import struct
import threading
import time
import zlib
from pathlib import Path

from ..errors import InvalidArgumentError

log = logging.getLogger(__name__)

_MAGIC = b"LTCACHE1"
#: magic, kind (b"T": the tile's bytes follow; b"A": the server said the tile is absent), length, CRC-32
_HEADER = struct.Struct(">8scQI")
_TILE, _ABSENT = b"T", b"A"
#: Eviction removes entries until the total is at most this fraction of ``max_bytes``.
_LOW_WATER = 0.9
#: Temporary files older than this (nanoseconds) were left by a crash; eviction removes them.
_STALE_TEMP_NS = 3600 * 10**9
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


class DiskCache:
    """Raw bytes of tiles under ``directory``, keyed by URL.

    Parameters
    ----------
    directory
        Where entries live (created if missing). Several processes may share it.
    max_bytes
        Most bytes of entries to keep; beyond it the least recently used go. None (default): no limit.

    Notes
    -----
    One cache may be shared by any number of threads: every method is safe to call concurrently,
    also for the same URL (the last complete write wins).

    Examples
    --------
    >>> import tempfile
    >>> cache = DiskCache(tempfile.mkdtemp(), max_bytes=2**20)
    >>> cache.get("https://tiles.example/1/0/0.png") is None        # not cached
    True
    >>> cache.put("https://tiles.example/1/0/0.png", b"\\x89PNG...")
    >>> cache.get("https://tiles.example/1/0/0.png")
    b'\\x89PNG...'
    >>> cache.put("https://tiles.example/1/1/1.png", b"")            # the server said: absent
    >>> cache.get("https://tiles.example/1/1/1.png")
    b''
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int | None = None) -> None:
        if not isinstance(directory, str | os.PathLike):
            raise InvalidArgumentError(
                f"cache_dir must be a directory path, got {type(directory).__name__} {directory!r}"
            )
        if max_bytes is not None and (not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes <= 0):
            raise InvalidArgumentError(
                f"cache_dir_max_bytes must be a number of bytes > 0 (or None: no limit), got {max_bytes!r}"
            )
        self.directory = Path(directory).expanduser()
        self.max_bytes = max_bytes
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InvalidArgumentError(
                f"cache_dir={os.fspath(directory)!r} cannot be used as a directory ({err}); pass a writable directory"
            ) from err
        self._lock = threading.Lock()
        self._evicting = threading.Lock()
        self._total: int | None = None  # bytes of entries, counted at the first put, then estimated

    def path(self, url: str) -> Path:
        """Where the entry of ``url`` lives: ``<directory>/<2 hex>/<62 hex>`` of its SHA-256."""
        digest = hashlib.sha256(url.encode("utf-8")).hexdigest()
        return self.directory / digest[:2] / digest[2:]

    def get(self, url: str) -> bytes | None:
        """The cached bytes of ``url``: None if not cached (or unreadable), ``b""`` if recorded as absent."""
        path = self.path(url)
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as err:  # not ours to read, a directory, a symlink...: fetch it again
            log.debug("disk cache entry %s is unreadable, so a miss: %s", path, err)
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # a FIFO or device planted here
                    return None
                head, rest = f.read(_HEADER.size), f.read()
        except OSError as err:
            log.debug("disk cache entry %s is unreadable, so a miss: %s", path, err)
            return None
        body = _parse(head, rest)
        if body is not None:
            now = time.time_ns()
            try:
                os.utime(path, ns=(now, now))  # "recently used", for eviction
            except OSError:
                pass
        return body

    def put(self, url: str, body: bytes) -> None:
        """Store ``body`` for ``url`` atomically and durably (``b""`` records an absent tile)."""
        header = _HEADER.pack(_MAGIC, _TILE if body else _ABSENT, len(body), zlib.crc32(body))
        target = self.path(url)
        target.parent.mkdir(exist_ok=True)
        fd, tmp = _create_temp(target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(header)
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            now = time.time_ns()
            os.utime(tmp, ns=(now, now))
            replaced = _size(target) if self.max_bytes is not None else 0
            try:
                os.replace(tmp, target)  # atomic: readers see the old entry or the new one, never half
            except IsADirectoryError:  # something made a directory of the entry's name: ours to clear
                shutil.rmtree(target)
                os.replace(tmp, target)
        except BaseException:  # broad only to remove the temporary file and re-raise
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _sync_directory(target.parent)
        if self.max_bytes is not None:
            self._grew(_HEADER.size + len(body) - replaced)

    def discard(self, url: str) -> None:
        """Remove the entry of ``url`` if there is one (e.g. bytes that no longer decode)."""
        try:
            self.path(url).unlink()
        except FileNotFoundError:
            pass

    # -- size limit --------------------------------------------------------------------------------

    def _grew(self, delta: int) -> None:
        assert self.max_bytes is not None
        with self._lock:
            if self._total is None:
                self._total = sum(size for _, size, _ in self._entries())
            else:
                self._total += delta
            over = self._total > self.max_bytes
        if over:
            self._evict()

    def _evict(self) -> None:
        """Count the entries again and remove the least recently used down to the low-water mark."""
        assert self.max_bytes is not None
        if not self._evicting.acquire(blocking=False):  # another thread of this process is at it
            return
        try:
            entries = self._entries()
            total = sum(size for _, size, _ in entries)
            if total > self.max_bytes:
                goal = int(self.max_bytes * _LOW_WATER)
                for _, size, path in sorted(entries):
                    if total <= goal:
                        break
                    try:
                        os.unlink(path)
                    except FileNotFoundError:  # another process evicted or replaced it first
                        pass
                    except OSError as err:
                        log.debug("could not evict %s from the disk cache: %s", path, err)
                        continue
                    total -= size
            with self._lock:
                self._total = total
        finally:
            self._evicting.release()

    def _entries(self) -> list[tuple[int, int, str]]:
        """(mtime in ns, size, path) of every entry; removes temporary files left by crashes."""
        out: list[tuple[int, int, str]] = []
        stale = time.time_ns() - _STALE_TEMP_NS
        for sub in _scan(self.directory):
            if len(sub.name) != 2 or not sub.is_dir(follow_symlinks=False):
                continue
            for entry in _scan(sub.path):
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:  # vanished: another process evicted or replaced it
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue
                if entry.name.endswith(".tmp"):
                    if info.st_mtime_ns < stale:
                        _remove(entry.path)
                    continue
                out.append((info.st_mtime_ns, info.st_size, entry.path))
        return out

    # -- pickling and display ----------------------------------------------------------------------

    def __reduce__(self) -> tuple[type[DiskCache], tuple[str, int | None]]:
        return (DiskCache, (os.fspath(self.directory), self.max_bytes))

    def __repr__(self) -> str:
        limit = "" if self.max_bytes is None else f", max_bytes={self.max_bytes}"
        return f"DiskCache({os.fspath(self.directory)!r}{limit})"


def _parse(head: bytes, body: bytes) -> bytes | None:
    """The body stored in an entry (its ``head``er and the rest); None unless whole and undamaged."""
    if len(head) < _HEADER.size:
        return None
    magic, kind, length, crc = _HEADER.unpack(head)
    if magic != _MAGIC or len(body) != length or zlib.crc32(body) != crc:
        return None
    if kind == _ABSENT and not body:
        return b""
    return body if kind == _TILE and body else None


def _create_temp(directory: Path) -> tuple[int, str]:
    """A new file in ``directory`` with an unpredictable name, created exclusively; mode 0666 less the
    umask (``tempfile.mkstemp`` would force 0600, and reading the umask is not thread-safe)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        name = os.path.join(directory, f".{secrets.token_hex(8)}.tmp")
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name in {os.fspath(directory)!r} after 100 tries")


def _sync_directory(directory: Path) -> None:
    """fsync ``directory`` so a rename survives a power cut, where the system allows it (not Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _size(path: Path) -> int:
    try:
        return path.stat(follow_symlinks=False).st_size
    except OSError:
        return 0


def _scan(directory: str | os.PathLike[str]) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return list(it)
    except OSError:  # vanished, or not ours to list
        return []


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


__all__ = ["DiskCache"]
