"""Making a new run store file atomically: built under a temporary name, locked, then linked into place.

:meth:`lazytiles.runs.store.RunStore.create` calls :func:`build_store`, so ``out`` never holds a half-made store
and a store is never overwritten by accident (the module docstring of :mod:`lazytiles.runs.store` says why).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from ..errors import RunStoreError
from .files import temp_beside
from .lock import FileLock
from .tables import StoreHeader, create_tables


def build_store(path: Path, header: StoreHeader, *, replace: bool = False) -> FileLock:
    """Write a new, empty run store for ``header`` to ``path`` (see :func:`~lazytiles.runs.tables.create_tables`)
    and return the writer's lock on it, taken before the store appeared at ``path``.

    Built as ``.<name>.<random>.tmp.gpkg`` beside ``path``, in WAL mode, and linked into place when
    complete. ``replace=True`` replaces an existing file (the caller has checked what it is); otherwise
    an existing ``path`` raises :class:`~lazytiles.RunStoreError`. On any error nothing is left behind.
    """
    parent = path.absolute().parent
    if not parent.is_dir():
        raise RunStoreError(
            f"cannot create run store {str(path)!r}: its directory {str(parent)!r} does not exist; "
            "create it first (nothing was written)"
        )
    for leftover in (f"{path}-wal", f"{path}-journal"):
        if not path.exists() and os.path.exists(leftover):
            raise RunStoreError(
                f"found {leftover!r} without its database {str(path)!r}: it is left from a store that was "
                "deleted and would corrupt a new one; delete it, then run again"
            )
    try:
        tmp = temp_beside(path, suffix=".gpkg", mode=0o644)  # SQLite's mode for new databases
    except OSError as err:
        raise RunStoreError(
            f"cannot create run store {str(path)!r}: cannot write in {str(parent)!r} ({err.strerror}); "
            "choose a writable directory for out= (nothing was written)"
        ) from err
    lock = None
    try:
        con = sqlite3.connect(tmp, isolation_level=None)
        try:
            # nobody sees the temporary file: no journal, and one fsync below instead of several
            con.execute("PRAGMA journal_mode = OFF")
            con.execute("PRAGMA synchronous = OFF")
            con.execute("BEGIN")
            create_tables(con, header)
            con.execute("COMMIT")
            con.execute("PRAGMA journal_mode = WAL")  # persistent: the run starts in WAL mode
        finally:
            con.close()
        lock = FileLock(tmp, sidecar_for=path)  # same inode as `path` once linked: nobody can take it in between
        lock.fsync()
        if replace:
            for stale in (f"{path}-wal", f"{path}-journal", f"{path}-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(stale)  # they belong to the store being replaced
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise RunStoreError(
                    f"run store {str(path)!r} appeared while this one was being made (another process "
                    "starting the same run?); nothing was overwritten; run again to resume it"
                ) from None
            except OSError:  # a file system without hard links
                if path.exists():
                    raise RunStoreError(f"run store {str(path)!r} appeared while this one was being made") from None
                os.rename(tmp, path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    except BaseException as err:
        if lock is not None:
            lock.release()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, RunStoreError | KeyboardInterrupt | SystemExit):
            raise
        if isinstance(err, OSError | sqlite3.Error):
            raise RunStoreError(f"cannot create run store {str(path)!r}: {err} (nothing was written)") from err
        raise
    return lock


__all__ = ["build_store"]
