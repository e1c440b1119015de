"""A run store's file: connecting to it with ``sqlite3``, checking it, locking it, and saying what it is.

:class:`lazytiles.runs.store.RunStore` opens its file through these; the run lifecycle
(:mod:`lazytiles.runs.lifecycle`) asks :func:`classify` before it replaces a file and takes its lock
with :func:`lock_store` meanwhile.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from .lock import FileLock, LockHeldError
from ..errors import RunLockedError, RunStoreError


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


def _holder(path: Path) -> str:
    """`` (pid N on host, since T)`` of the running session, best effort, for RunLockedError."""
    try:
        con = connect(path, readonly=True)
        try:
            row = con.execute(
                "SELECT pid, host, started FROM lazytiles_sessions WHERE status = 'running' ORDER BY session DESC LIMIT 1"
            ).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return ""
    return "" if row is None else f" (pid {row[0]} on {row[1]}, since {row[2]})"


__all__ = ["classify", "connect", "lock_store", "select_among", "store_error", "verify"]
