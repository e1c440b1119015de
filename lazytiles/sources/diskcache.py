"""DiskCache: raw tile bytes on disk, keyed by URL, shared safely by threads and processes.

Entries are the bytes the server sent, never pickles: nothing read back is executed or unpickled, and
a damaged entry is at worst an image that fails to decode (the source then discards it and fetches
again). Each entry is written to a temporary file in the same directory and renamed into place with
``os.replace``, which is atomic: a reader in any process sees either no entry or a complete one, and
two processes writing the same tile both leave a complete copy. File names are the SHA-256 of the URL,
so no URL can name a path outside the cache directory. An empty entry records an absent tile (the
server answered 404 or 204), so a cached area reads the same offline.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from ..errors import InvalidArgumentError


class DiskCache:
    """Raw bytes of tiles under ``directory``, keyed by URL.

    Parameters
    ----------
    directory
        Where entries live (created if missing). Several processes may share it.

    Examples
    --------
    >>> import tempfile
    >>> cache = DiskCache(tempfile.mkdtemp())
    >>> cache.get("https://tiles.example/1/0/0.png") is None        # not cached
    True
    >>> cache.put("https://tiles.example/1/0/0.png", b"\\x89PNG...")
    >>> cache.get("https://tiles.example/1/0/0.png")
    b'\\x89PNG...'
    >>> cache.put("https://tiles.example/1/1/1.png", b"")            # the server said: absent
    >>> cache.get("https://tiles.example/1/1/1.png")
    b''
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        if not isinstance(directory, str | os.PathLike):
            raise InvalidArgumentError(f"cache_dir must be a directory path, got {type(directory).__name__} {directory!r}")
        self.directory = Path(directory).expanduser()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InvalidArgumentError(
                f"cache_dir={os.fspath(directory)!r} cannot be used as a directory ({err}); pass a writable directory"
            ) from err

    def path(self, url: str) -> Path:
        """Where the entry of ``url`` lives: ``<directory>/<2 hex>/<62 hex>`` of its SHA-256."""
        digest = hashlib.sha256(url.encode("utf-8")).hexdigest()
        return self.directory / digest[:2] / digest[2:]

    def get(self, url: str) -> bytes | None:
        """The cached bytes of ``url``: None if not cached, ``b""`` if recorded as absent."""
        try:
            return self.path(url).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, url: str, body: bytes) -> None:
        """Store ``body`` for ``url`` atomically (``b""`` records an absent tile)."""
        target = self.path(url)
        target.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            os.replace(tmp, target)  # atomic: readers see the old entry or the new one, never half
        except BaseException:  # broad only to remove the temporary file and re-raise
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def discard(self, url: str) -> None:
        """Remove the entry of ``url`` if there is one (e.g. bytes that no longer decode)."""
        try:
            self.path(url).unlink()
        except FileNotFoundError:
            pass

    def __reduce__(self) -> tuple[type[DiskCache], tuple[str]]:
        return (DiskCache, (os.fspath(self.directory),))

    def __repr__(self) -> str:
        return f"DiskCache({os.fspath(self.directory)!r})"


__all__ = ["DiskCache"]
