"""Run stores: the durable, resumable record of a detection run, in one GeoPackage.

A run store is a GeoPackage (an SQLite database that QGIS, GDAL and pyogrio open as is) holding:

``detections``
    The merged result: a polygon layer in the source's CRS with ``score``, ``label``,
    ``window_index`` and the exact pixel box ``x0, y0, x1, y1``. Rewritten whole, in one transaction,
    each time the run is merged.
``raw_detections``
    What the model found in each finished window, before merging (also a polygon layer, with
    ``partial`` and the box's ``rank`` in its window): replaying a merge needs nothing else.
``lazytiles_windows``
    One row per recorded window: ``done`` (with its box count) or ``failed`` (with the reason and the
    number of attempts).
``lazytiles_run`` and ``lazytiles_sessions``
    The run's recipe (source, windows, model, lazytiles version) as JSON, the windows it covers, the
    merge parameters of the ``detections`` layer, and one row per process that worked on the run.
    No record holds a credential: URLs in the recipe, session options, session endings and window
    errors are masked (:func:`lazytiles.sources.http.redact`).

Why it is durable: a window's raw boxes and its ``done`` row are written in the same SQLite
transaction as the other windows of its batch, so after a kill a window is recorded completely or not
at all. The database runs in WAL mode with ``synchronous=NORMAL`` while a run writes: a commit costs
no fsync and survives the process being killed (a power cut may lose the last commits, never
consistency). A closed store is switched back to a single self-contained file (``journal_mode=DELETE``).

Why two writers cannot collide: a writer holds an exclusive ``flock`` on the store file for its whole
life (released by the kernel when the process dies, even by SIGKILL); a second writer gets a
:class:`~lazytiles.RunLockedError` at once. Readers (``lt.open_run``) take no lock and see the last
commit.

Why nothing is overwritten: a new store is built under a temporary name beside ``out`` and linked into
place only when complete; an existing file is replaced only by ``force_new=True``, and never when it is
a GeoPackage or SQLite database that is not a run store. Opening a store reads and type-checks its
``lazytiles_run`` rows and tables; whatever fails closes it and releases its lock before the
:class:`~lazytiles.RunStoreError` naming the file and what is wrong.

Everything, the GeoPackage tables included, is written with Python's ``sqlite3``: GDAL links its own
SQLite, and two copies of SQLite with one file open in one process can break each other's locks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from ..detections import Detections
from ..errors import RunLockedError, RunStoreError
from ..merging.rule import MergeRule
from ..merging.window_table import WindowTable
from ..sources.http import redact
from .create import build_store
from .files import connect, lock_store, read_rows, select_among, store_error, verify
from .gpkg import set_extent
from .lock import FileLock
from .recipe import masked
from .stored import StoredDetections
from .tables import (
    INSERT_MERGED,
    INSERT_RAW,
    MERGED_FIELDS,
    MERGED_LAYER,
    RAW_FIELDS,
    RAW_LAYER,
    StoreFormatError,
    StoreHeader,
    columns,
    merged_rows,
    now,
    raw_rows,
)

log = logging.getLogger(__name__)

Row = tuple[Any, ...]

_FAILED_AMONG = "SELECT window_index, attempts FROM lazytiles_windows WHERE status = 'failed' AND window_index IN (?)"
_DONE_AMONG = "SELECT window_index FROM lazytiles_windows WHERE status = 'done' AND window_index IN (?)"


@dataclass(frozen=True)
class WindowResult:
    """What became of one window: its raw detections, or why it could not be read."""

    index: int
    detections: Detections | None
    error: str | None = None
    window: tuple[int, int, int, int] | None = None  # col_off, row_off, width, height


class RunStore:
    """One run store file, open for reading or (locked) for writing. Made by :meth:`create`,
    :meth:`resume` and :meth:`read`; :func:`lazytiles.open_run` wraps a read-only one."""

    def __init__(self, path: Path, con: sqlite3.Connection, lock: FileLock | None) -> None:
        """Read the store's ``lazytiles_run`` rows through ``con``; on any error, close ``con`` and
        release ``lock``, then raise :class:`~lazytiles.RunStoreError` naming the file and what is wrong."""
        self.path = path
        self._con = con
        self._lock = lock
        self._writing = False
        self._db_lock = threading.Lock()
        self._session: int | None = None
        try:
            rows = read_rows(path, con)
        except BaseException:
            self._close_quietly()  # a store that cannot be opened keeps no lock
            raise
        self.recipe: dict[str, Any] = rows.header.recipe
        self.created: str = rows.header.created
        self.windows: WindowTable = rows.header.windows
        self.transform: Affine = rows.header.transform
        self.crs: CRS | None = rows.header.crs
        self.srs_id = rows.srs_id
        self.merge_rule: MergeRule | None = rows.merge_rule
        self.merged_info: dict[str, Any] | None = rows.merged_info

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], header: StoreHeader, *, replace: bool = False) -> RunStore:
        """A new, empty store at ``path`` for ``header`` (the recipe, windows and georeferencing), locked
        for writing.

        Built as ``.<name>.<random>.tmp.gpkg`` beside ``path`` and linked into place when complete, so
        ``path`` never holds a half-made store. ``replace=True`` replaces an existing file (the caller
        has checked what it is); otherwise an existing ``path`` raises :class:`RunStoreError`.
        """
        path = Path(path)
        lock = build_store(path, header, replace=replace)
        store = cls._open_locked(path, lock)
        store.start_writing()
        return store

    @classmethod
    def resume(cls, path: str | os.PathLike[str], *, check: bool = True) -> RunStore:
        """The existing store at ``path``, locked, checked for damage when ``check``, and unchanged
        until :meth:`start_writing` (call it after checking the recipe)."""
        path = Path(path)
        lock = lock_store(path)
        if check:
            try:
                verify(path)
            except BaseException:
                lock.release()
                raise
        return cls._open_locked(path, lock)

    @classmethod
    def join(cls, path: str | os.PathLike[str], session: int | None, *, wait: float) -> RunStore:
        """The store at ``path``, locked for one short write by one of the processes sharing a run (the
        workers of a Beam job), waiting up to ``wait`` seconds while another holds the lock.

        Unchecked, and not started for writing (that would mark ``session`` killed); what it commits
        counts towards ``session``.
        """
        deadline = time.monotonic() + wait
        pause = 0.01
        while True:
            try:
                store = cls.resume(path, check=False)
                break
            except RunLockedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(pause)  # another process is committing; a commit takes milliseconds
                pause = min(0.5, pause * 2)
        store._session = session
        return store

    @classmethod
    def _open_locked(cls, path: Path, lock: FileLock) -> RunStore:
        try:
            con = connect(path, readonly=False)
        except BaseException as err:
            lock.release()
            if isinstance(err, sqlite3.Error):
                raise store_error(path, err, "opened") from err
            raise
        return cls(path, con, lock)  # releases the lock if the store cannot be read

    def start_writing(self) -> None:
        """The first write: WAL mode, ``synchronous=NORMAL``, and sessions of dead writers marked
        ``killed``. Until this is called an opened store is unchanged byte for byte."""
        try:
            with self._db_lock:
                mode = self._con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                self._con.execute("PRAGMA synchronous = NORMAL")
                # sessions still 'running' belong to processes that died: we hold the lock
                self._con.execute("UPDATE lazytiles_sessions SET status = 'killed' WHERE status = 'running'")
        except sqlite3.Error as err:
            self._close_quietly()
            if "unable to open" in str(err) or "readonly" in str(err):
                raise RunStoreError(
                    f"cannot write run store {str(self.path)!r}: {err} (a run writes the file and, beside it, "
                    f"{self.path.name}-wal and {self.path.name}-shm; check the permissions of the file and its "
                    "directory, or choose a writable directory for out=); nothing was changed"
                ) from err
            raise store_error(self.path, err, "opened for writing") from err
        if mode != "wal":
            log.debug("%s: journal mode %s (WAL not available)", self.path, mode)
        self._writing = True

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> RunStore:
        """The store at ``path``, read-only and unlocked (a writer may be adding to it)."""
        path = Path(path)
        if not path.is_file():
            raise RunStoreError(
                f"no run store at {str(path)!r}"
                + (
                    ""
                    if path.absolute().parent.is_dir()
                    else f" (its directory {str(path.absolute().parent)!r} does not exist)"
                )
                + "; check the path"
            )
        try:
            con = connect(path, readonly=True)
        except sqlite3.Error as err:
            raise store_error(path, err, "opened") from err
        return cls(path, con, None)

    # -- writing -----------------------------------------------------------------------------------

    def begin_session(self, options: dict[str, Any], version: str) -> int:
        """Record that this process starts working on the run (``options``: how, credentials in URLs
        masked); returns the session id."""
        options_text = json.dumps(masked(options), sort_keys=True)
        try:
            with self._db_lock:
                cur = self._con.execute(
                    "INSERT INTO lazytiles_sessions (started, status, pid, host, lazytiles_version, options) "
                    "VALUES (?, 'running', ?, ?, ?, ?)",
                    (now(), os.getpid(), socket.gethostname(), version, options_text),
                )
                self._session = int(cur.lastrowid)  # type: ignore[arg-type]
        except sqlite3.Error as err:
            raise RunStoreError(f"cannot write to run store {str(self.path)!r}: {err}") from err
        return self._session

    def end_session(self, status: str) -> None:
        """Record how this process's session ended (credentials in URLs of ``status`` masked)."""
        try:
            with self._db_lock:
                if self._session is not None:
                    self._con.execute(
                        "UPDATE lazytiles_sessions SET ended = ?, status = ? WHERE session = ?",
                        (now(), redact(status), self._session),
                    )
        except sqlite3.Error as err:
            raise RunStoreError(f"cannot write to run store {str(self.path)!r}: {err}") from err

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, with the store's connection: committed whole, or rolled back on any error."""
        with self._db_lock:
            con = self._con
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
                raise

    def commit(self, results: Sequence[WindowResult]) -> None:
        """Record finished and failed windows in one transaction: all of them, or none."""
        if not results:
            return
        done = [r for r in results if r.detections is not None]
        failed = [r for r in results if r.detections is None]
        rows: list[tuple[Any, ...]] = []
        for r in done:
            rows.extend(raw_rows(r.detections, self.transform, self.srs_id))  # type: ignore[arg-type]
        finished, session = now(), self._session or 0
        try:
            with self._transaction() as con:
                previous = dict(select_among(con, _FAILED_AMONG, [r.index for r in results]))
                con.executemany("DELETE FROM lazytiles_windows WHERE window_index = ?", [(i,) for i in previous])
                con.executemany(INSERT_RAW, rows)
                con.executemany(
                    "INSERT INTO lazytiles_windows (window_index, status, boxes, attempts, error, col_off, row_off, "
                    "width, height, session, finished) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            r.index,
                            "failed" if r.detections is None else "done",
                            0 if r.detections is None else len(r.detections),
                            previous.get(r.index, 0) + 1,
                            None if r.error is None else redact(r.error),
                            *(r.window or (None,) * 4),
                            session,
                            finished,
                        )
                        for r in results
                    ],
                )
                con.execute(
                    "UPDATE lazytiles_sessions SET windows_done = windows_done + ?, "
                    "windows_failed = windows_failed + ? WHERE session = ?",
                    (len(done), len(failed), session),
                )
        except sqlite3.IntegrityError as err:
            raise RunStoreError(
                f"run store {str(self.path)!r} refused windows {[r.index for r in results][:10]}: {err}; a window "
                "was recorded twice, which means two writers or a bug; the store is unchanged"
            ) from err
        except sqlite3.Error as err:
            raise RunStoreError(f"cannot write to run store {str(self.path)!r}: {err}") from err

    def write_merged(self, found: Detections, rule: MergeRule) -> None:
        """Replace the ``detections`` layer with ``found``, merged by ``rule``, and record the rule, in one
        transaction."""
        rows = merged_rows(found, self.transform, self.srs_id)
        params = rule.to_dict()
        info = {"params": params, "count": len(found), "windows_done": len(self.done()), "written": now()}
        try:
            with self._transaction() as con:
                con.execute(f"DELETE FROM {MERGED_LAYER}")
                con.executemany(INSERT_MERGED, rows)
                set_extent(con, MERGED_LAYER, found.boxes, self.transform)
                con.executemany(
                    "INSERT OR REPLACE INTO lazytiles_run (key, value) VALUES (?, ?)",
                    [("merge", json.dumps(params)), ("merged", json.dumps(info))],
                )
        except sqlite3.Error as err:
            raise RunStoreError(f"cannot write merged detections to run store {str(self.path)!r}: {err}") from err
        self.merge_rule, self.merged_info = rule, info

    # -- reading -------------------------------------------------------------------------------------

    def _query(self, sql: str, args: Iterable[Any] = (), *, among: Sequence[int] | None = None) -> list[Row]:
        """The rows of ``sql``; with ``among``, its ``IN (?)`` is filled with those values."""
        try:
            with self._db_lock:
                if among is not None:
                    return select_among(self._con, sql, among)
                return self._con.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as err:
            raise store_error(self.path, err, "read") from err

    def done(self, among: Sequence[int] | None = None) -> np.ndarray:
        """Indices of the windows recorded as done (of those ``among``, when given), ascending."""
        if among is None:
            rows = self._query("SELECT window_index FROM lazytiles_windows WHERE status = 'done' ORDER BY window_index")
        else:
            rows = self._query(_DONE_AMONG, among=among)
        return np.sort(np.array([r[0] for r in rows], dtype=np.int64))

    def failed(self) -> dict[int, tuple[str, int]]:
        """``{window index: (reason, attempts)}`` of the windows recorded as failed."""
        rows = self._query(
            "SELECT window_index, error, attempts FROM lazytiles_windows WHERE status = 'failed' ORDER BY window_index"
        )
        return {int(i): (str(e), int(a)) for i, e, a in rows}

    def sessions(self) -> list[dict[str, Any]]:
        cols = "session, started, ended, status, pid, host, lazytiles_version, windows_done, windows_failed"
        rows = self._query(f"SELECT {cols} FROM lazytiles_sessions ORDER BY session")
        return [dict(zip(cols.split(", "), r)) for r in rows]

    def raw(self, positions: slice | np.ndarray | None = None) -> StoredDetections:
        """The raw detections of every done window, per window, in the run's window order; given
        ``positions`` (in that order: a slice or an integer array), of the windows there only."""
        select = f"SELECT {', '.join(RAW_FIELDS)} FROM {RAW_LAYER}"
        if positions is None:
            windows, rows = self.windows, self._query(f"{select} ORDER BY window_index, rank")
        else:
            windows = self.windows[positions]
            rows = self._query(f"{select} WHERE window_index IN (?)", among=windows.indices.tolist())
            rows.sort(key=lambda row: (row[0], row[1]))  # window_index, rank, across the chunks queried
        return StoredDetections(windows, self._columns(rows, RAW_FIELDS), self.transform, self.crs)

    def _columns(self, rows: list[Row], fields: Sequence[str]) -> dict[str, np.ndarray]:
        try:  # the outlines decoded: a bad blob is this store's error
            return columns(rows, fields)
        except StoreFormatError as err:
            raise store_error(self.path, err, "read") from err

    def merged(self) -> Detections | None:
        """The ``detections`` layer as written by the last merge, or None before the first merge."""
        if self.merged_info is None:
            return None
        rows = self._query(f"SELECT {', '.join(MERGED_FIELDS)} FROM {MERGED_LAYER} ORDER BY fid")
        c = self._columns(rows, MERGED_FIELDS)
        boxes = np.stack([c["x0"], c["y0"], c["x1"], c["y1"]], axis=1)
        cols = (boxes, c["score"], c["label"], c["window_index"])
        return Detections(*cols, partial=c["partial"], shapes=c["outline"], transform=self.transform, crs=self.crs)

    def counts(self) -> dict[str, int]:
        rows = self._query("SELECT status, COUNT(*), COALESCE(SUM(boxes), 0) FROM lazytiles_windows GROUP BY status")
        out = {"done": 0, "failed": 0, "raw_detections": 0}
        for status, n, boxes in rows:
            out[status] = int(n)
            out["raw_detections"] += int(boxes)
        return out

    # -- closing ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database, then drop the writer's lock (in that order: see
        :class:`~lazytiles.runs.lock.FileLock`)."""
        con, self._con = self._con, None  # type: ignore[assignment]
        if con is not None:
            if self._writing:
                # leave a single self-contained file; fails harmlessly while a reader has it open
                with contextlib.suppress(sqlite3.Error):
                    con.execute("PRAGMA journal_mode = DELETE")
            con.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _close_quietly(self) -> None:
        if self._con is not None:
            with contextlib.suppress(sqlite3.Error):
                self._con.close()
            self._con = None  # type: ignore[assignment]
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["MERGED_LAYER", "RAW_LAYER", "RunStore", "StoredDetections", "WindowResult"]
