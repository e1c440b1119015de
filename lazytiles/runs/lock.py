"""An exclusive, non-blocking lock on a file, dropped by the kernel when its process dies.

A run store's writer (:mod:`lazytiles.runs.store`) holds one on the store file for its whole life: a second
writer fails at once instead of waiting, and a writer killed even by SIGKILL leaves no stale lock.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if sys.platform != "win32":  # Windows: a sidecar lock file, see FileLock
    import fcntl


class LockHeldError(Exception):
    """Another process holds the lock (internal: the run store raises ``RunLockedError`` instead)."""


class FileLock:
    """An exclusive, non-blocking lock on a store file, held until :meth:`release`.

    POSIX: ``flock`` on the file itself (independent of SQLite's own ``fcntl`` locks, released by
    the kernel when the process dies). Elsewhere (untested): ``msvcrt.locking`` on a sidecar
    ``<sidecar_for or path>.lock``.
    The descriptor must outlive every SQLite connection to the file: closing any descriptor of a file
    drops that process's ``fcntl`` locks on it, SQLite's included.

    Examples
    --------
    >>> import tempfile
    >>> fd, name = tempfile.mkstemp()
    >>> os.close(fd)
    >>> lock = FileLock(Path(name))
    >>> FileLock(Path(name))  # a second holder, even in the same process
    Traceback (most recent call last):
    ...
    lazytiles.runs.lock.LockHeldError
    >>> lock.release()
    >>> FileLock(Path(name)).release()
    >>> os.unlink(name)
    """

    def __init__(self, path: Path, *, sidecar_for: Path | None = None) -> None:
        self.path = path
        self._fd: int | None = None
        if sys.platform != "win32":
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockHeldError() from None
        else:  # pragma: no cover - Windows
            import msvcrt

            fd = os.open(f"{sidecar_for or path}.lock", os.O_RDWR | os.O_CREAT)
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            except OSError:
                os.close(fd)
                raise LockHeldError() from None
        self._fd = fd

    def fsync(self) -> None:
        if self._fd is not None and sys.platform != "win32":
            os.fsync(self._fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the lock
            self._fd = None


__all__ = ["FileLock", "LockHeldError"]
