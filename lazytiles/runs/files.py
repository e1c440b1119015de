"""A run's files: connecting to its store with ``sqlite3``, checking it, locking it, saying what it is;
and writing any file of a run (a store, GeoJSON, a GeoPackage) under a temporary name, then moving it into place.

:class:`lazytiles.runs.store.RunStore` opens its file through these; the run lifecycle
(:mod:`lazytiles.runs.lifecycle`) asks :func:`classify` before it replaces a file and takes its lock
with :func:`lock_store` meanwhile. Every file lazytiles writes for a run is made by :func:`temp_beside`
and, but for the store itself (:mod:`lazytiles.runs.create`), written by :func:`write_output`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from ..errors import RunLockedError, RunStoreError
from .lock import FileLock, LockHeldError
from .tables import STORE_SCHEMA, RunRows, StoreFormatError, check_tables, read_run_rows, read_schema


def connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (the store runs its own transactions), usable from any thread."""
    uri = Path(path).absolute().as_uri() + ("?mode=ro" if readonly else "?mode=rw")
    con = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA busy_timeout = 10000")
    return con


def select_among(con: sqlite3.Connection, sql: str, values: Sequence[int]) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` with its ``IN (?)`` filled by ``values``, 500 at a time (SQLite's parameter limit)."""
    rows: list[tuple[Any, ...]] = []
    for a in range(0, len(values), 500):
        part = [int(v) for v in values[a : a + 500]]
        rows += con.execute(sql.replace("IN (?)", f"IN ({','.join('?' * len(part))})"), part).fetchall()
    return rows


def store_error(path: Path, err: BaseException, doing: str) -> RunStoreError:
    """The error for a store that could not be ``doing`` (opened, read, verified): what to do about it."""
    return RunStoreError(
        f"run store {str(path)!r} could not be {doing}: {err}. It may be damaged or only partly written "
        "(nothing was changed); move it away and start again, or pass force_new=True (CLI: --force-new) "
        "to replace it with a new run"
    )


def verify(path: Path) -> None:
    """Raise :class:`~lazytiles.RunStoreError` unless SQLite's quick check of the file passes."""
    try:
        con = connect(path, readonly=True)
        try:
            result = con.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error as err:
        raise store_error(path, err, "opened") from err
    if result != "ok":
        raise store_error(path, RuntimeError(f"SQLite's check says {result!r}"), "verified")


def read_rows(path: Path, con: sqlite3.Connection) -> RunRows:
    """The ``lazytiles_run`` rows of the store at ``path``, read through ``con`` and checked, with its
    tables; :class:`~lazytiles.RunStoreError` naming the file and what is wrong, or saying what it is
    instead (empty, another SQLite database, a store of a newer layout)."""
    try:
        values = dict(con.execute("SELECT key, value FROM lazytiles_run"))
    except sqlite3.Error as err:
        if "no such table: lazytiles_run" not in str(err):
            raise store_error(path, err, "read as a lazytiles run store") from err
        if path.stat().st_size == 0:
            raise store_error(path, RuntimeError("the file is empty"), "read as a lazytiles run store") from None
        raise RunStoreError(
            f"{str(path)!r} is an SQLite database (a GeoPackage?) but not a lazytiles run store; nothing was "
            "changed, and force_new=True will not replace it either; choose another out= path"
        ) from None
    try:
        schema = read_schema(values)
        if schema > STORE_SCHEMA:
            raise RunStoreError(
                f"run store {str(path)!r} has layout version {schema}, newer than this lazytiles reads "
                f"({STORE_SCHEMA}); upgrade lazytiles to open it"
            )
        check_tables(con)
        return read_run_rows(values)
    except (StoreFormatError, sqlite3.Error) as err:
        raise store_error(path, err, "read as a lazytiles run store") from err


def lock_store(path: Path) -> FileLock:
    """Take the writer's lock on an existing file, or raise :class:`~lazytiles.RunLockedError`."""
    try:
        return FileLock(path)
    except LockHeldError:
        raise RunLockedError(
            f"run store {str(path)!r} is being written by another process{_holder(path)}; wait for it to "
            "finish or stop it, then resume; lt.open_run(path).summary() shows its progress meanwhile"
        ) from None
    except PermissionError as err:
        raise RunStoreError(f"cannot open run store {str(path)!r}: {err.strerror}") from err


def classify(path: Path) -> Literal["store", "other", "broken"]:
    """``"store"``, ``"other"`` (a readable SQLite database that is not a run store) or ``"broken"``."""
    try:
        con = connect(path, readonly=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "lazytiles_run" in tables:
                return "store"
            if tables or os.path.getsize(path) > 0:
                con.execute("PRAGMA quick_check").fetchone()
                return "other" if tables else "broken"
            return "broken"
        finally:
            con.close()
    except sqlite3.Error:
        return "broken"


def temp_beside(path: Path, *, suffix: str = "", mode: int = 0o666) -> Path:
    """A new, empty file beside ``path``: ``.<name>.<random>.tmp<suffix>``, created exclusively.

    The name is unpredictable (64 random bits) and the file is made with ``O_CREAT | O_EXCL |
    O_NOFOLLOW``, so it is never a file or link someone placed there, as ``tempfile.mkstemp`` does; its
    mode is ``mode`` less the umask, as ``open(path, "w")`` gives (``mkstemp`` forces 0600, and reading
    the umask is not thread-safe). Raises ``OSError`` when the directory is not writable.
    """
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(8):  # a name taken is tried again with another: 2**-64 by chance
        tmp = path.absolute().parent / f".{path.name}.{secrets.token_hex(8)}.tmp{suffix}"
        try:
            os.close(os.open(tmp, flags, mode))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, "every temporary name tried beside it was taken", str(path))


def write_output(path: Path, write: Callable[[Path], Any], what: str, *, after: str = "") -> None:
    """Write the file ``path`` with ``write(tmp)`` into a :func:`temp_beside` file (with ``path``'s
    suffix, which names the format), flush it to disk, and move it into place with ``os.replace``: a
    failed, killed or retried writer never leaves half a file, nor a temporary one. ``what`` names the
    file in the :class:`~lazytiles.RunStoreError` raised when it cannot be written (``after`` is appended)."""
    tmp: Path | None = None
    try:
        tmp = temp_beside(path, suffix=path.suffix)
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
        _fsync_directory(path.absolute().parent)
    except OSError as err:
        raise RunStoreError(f"cannot write {what} {str(path)!r}: {err}{after}") from err
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _fsync_directory(directory: Path) -> None:
    """Flush a rename in ``directory`` to disk, where the system allows it (not on Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _holder(path: Path) -> str:
    """`` (pid N on host, since T)`` of the running session, best effort, for RunLockedError."""
    try:
        con = connect(path, readonly=True)
        try:
            row = con.execute(
                "SELECT pid, host, started FROM lazytiles_sessions"
                " WHERE status = 'running' ORDER BY session DESC LIMIT 1"
            ).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return ""
    return "" if row is None else f" (pid {row[0]} on {row[1]}, since {row[2]})"


__all__ = [
    "classify",
    "connect",
    "lock_store",
    "read_rows",
    "select_among",
    "store_error",
    "temp_beside",
    "verify",
    "write_output",
]
