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
a GeoPackage or SQLite database that is not a run store.

Everything, the GeoPackage tables included, is written with Python's ``sqlite3``: GDAL links its own
SQLite, and two copies of SQLite with one file open in one process can break each other's locks.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import socket
import sqlite3
import threading
import uuid
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from ._gpkg import create_geopackage, polygon_blobs, register_table
from ._index import select
from .detections import Detections
from .errors import RunLockedError, RunStoreError

try:
    import fcntl
except ImportError:  # Windows: a sidecar lock file, see _Lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: Version of the tables' layout; a store with a higher one was made by a newer lazytiles.
STORE_SCHEMA = 1
#: Layer names in the GeoPackage.
MERGED_LAYER = "detections"
RAW_LAYER = "raw_detections"
#: Test hook: ``"N"`` or ``"N:after"`` SIGKILLs the writing process inside its N-th commit (before
#: COMMIT, or right after it with ``:after``). Read when a store opens for writing; never set it
#: outside tests.
KILL_HOOK_ENV = "LAZYTILES_TEST_KILL_AT_COMMIT"

_RAW_FIELDS = ("window_index", "rank", "x0", "y0", "x1", "y1", "score", "label", "partial")
_MERGED_FIELDS = ("score", "label", "window_index", "partial", "x0", "y0", "x1", "y1")
_FIELD_TYPES = {
    "window_index": np.int64, "rank": np.int64, "label": np.int64, "partial": np.bool_,
    "x0": np.float64, "y0": np.float64, "x1": np.float64, "y1": np.float64, "score": np.float32,
}  # fmt: skip
_SCHEMA = """
CREATE TABLE lazytiles_run (key TEXT PRIMARY KEY NOT NULL, value TEXT);
CREATE TABLE lazytiles_windows (
    window_index INTEGER PRIMARY KEY NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    boxes INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 1,
    error TEXT,
    col_off INTEGER, row_off INTEGER, width INTEGER, height INTEGER,
    session INTEGER NOT NULL,
    finished TEXT NOT NULL
);
CREATE TABLE lazytiles_sessions (
    session INTEGER PRIMARY KEY NOT NULL,
    started TEXT NOT NULL, ended TEXT, status TEXT NOT NULL,
    pid INTEGER, host TEXT, lazytiles_version TEXT, options TEXT,
    windows_done INTEGER NOT NULL DEFAULT 0, windows_failed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX lazytiles_raw_by_window ON raw_detections (window_index, rank);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- locking ---------------------------------------------------------------------------------------


class _Lock:
    """An exclusive, non-blocking lock on a store file, held until :meth:`release`.

    POSIX: ``flock`` on the file itself (independent of SQLite's own ``fcntl`` locks, released by
    the kernel when the process dies). Elsewhere (untested): ``msvcrt.locking`` on a sidecar
    ``<sidecar_for or path>.lock``.
    The descriptor must outlive every SQLite connection to the file: closing any descriptor of a file
    drops that process's ``fcntl`` locks on it, SQLite's included.
    """

    def __init__(self, path: Path, *, sidecar_for: Path | None = None) -> None:
        self.path = path
        self._fd: int | None = None
        if fcntl is not None:
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _Busy() from None
        else:  # pragma: no cover - Windows
            import msvcrt

            fd = os.open(f"{sidecar_for or path}.lock", os.O_RDWR | os.O_CREAT)
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            except OSError:
                os.close(fd)
                raise _Busy() from None
        self._fd = fd

    def fsync(self) -> None:
        if self._fd is not None and fcntl is not None:
            os.fsync(self._fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the lock
            self._fd = None


class _Busy(Exception):
    """Another process holds the lock."""


# -- the store ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowResult:
    """What became of one window: its raw detections, or why it could not be read."""

    index: int
    detections: Detections | None
    error: str | None = None
    window: tuple[int, int, int, int] | None = None  # col_off, row_off, width, height


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    uri = Path(path).absolute().as_uri() + ("?mode=ro" if readonly else "?mode=rw")
    con = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA busy_timeout = 10000")
    return con


def _store_error(path: Path, err: BaseException, doing: str) -> RunStoreError:
    return RunStoreError(
        f"run store {str(path)!r} could not be {doing}: {err}. It may be damaged or only partly written "
        "(nothing was changed); move it away and start again, or pass force_new=True (CLI: --force-new) "
        "to replace it with a new run"
    )


class RunStore:
    """One run store file, open for reading or (locked) for writing. Made by :meth:`create`,
    :meth:`resume` and :meth:`read`; :func:`lazytiles.open_run` wraps a read-only one."""

    def __init__(self, path: Path, con: sqlite3.Connection, lock: _Lock | None) -> None:
        self.path = path
        self._con = con
        self._lock = lock
        self._writing = False
        self._db_lock = threading.Lock()
        self._commits = 0
        self._kill_at: tuple[int, str] | None = None
        if lock is not None and os.environ.get(KILL_HOOK_ENV):
            n, _, when = os.environ[KILL_HOOK_ENV].partition(":")
            self._kill_at = (int(n), when or "before")
        try:
            values = dict(con.execute("SELECT key, value FROM lazytiles_run"))
            schema = json.loads(values["schema"])
        except (sqlite3.Error, KeyError, TypeError, ValueError) as err:
            self._close_quietly()
            if "no such table: lazytiles_run" not in str(err):
                raise _store_error(path, err, "read as a lazytiles run store") from err
            if path.stat().st_size == 0:
                raise _store_error(path, RuntimeError("the file is empty"), "read as a lazytiles run store") from None
            raise RunStoreError(
                f"{str(path)!r} is an SQLite database (a GeoPackage?) but not a lazytiles run store; nothing was "
                "changed, and force_new=True will not replace it either; choose another out= path"
            ) from None
        if schema > STORE_SCHEMA:
            self._close_quietly()
            raise RunStoreError(
                f"run store {str(path)!r} has layout version {schema}, newer than this lazytiles reads "
                f"({STORE_SCHEMA}); upgrade lazytiles to open it"
            )
        self.recipe: dict[str, Any] = json.loads(values["recipe"])
        self.created: str = json.loads(values["created"])
        self.windows = RunWindows(_unpack(values["windows"]), _unpack(values["pixel_windows"]).reshape(-1, 4))
        georef = json.loads(values["georef"])
        self.transform = Affine(*georef["transform"])
        self.crs = None if georef["crs"] is None else CRS.from_wkt(georef["crs"])
        self.srs_id = int(georef["srs_id"])
        self.merge_params: dict[str, Any] | None = json.loads(values.get("merge") or "null")
        self.merged_info: dict[str, Any] | None = json.loads(values.get("merged") or "null")
        self._session: int | None = None

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        recipe: dict[str, Any],
        *,
        indices: np.ndarray,
        rects: np.ndarray,
        transform: Affine,
        crs: CRS | None,
        replace: bool = False,
    ) -> RunStore:
        """A new, empty store at ``path`` for the windows ``indices`` (whose pixel windows are ``rects``,
        ``(N, 4)`` col_off, row_off, width, height), locked for writing.

        Built as ``.<name>.<random>.tmp.gpkg`` beside ``path`` and linked into place when complete, so
        ``path`` never holds a half-made store. ``replace=True`` replaces an existing file (the caller
        has checked what it is); otherwise an existing ``path`` raises :class:`RunStoreError`.
        """
        path = Path(path)
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
        tmp = parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp.gpkg"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
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
                srs_id = create_geopackage(
                    con,
                    crs,
                    {
                        MERGED_LAYER: ({f: _FIELD_TYPES[f] for f in _MERGED_FIELDS}, "lazytiles: merged detections"),
                        RAW_LAYER: ({f: _FIELD_TYPES[f] for f in _RAW_FIELDS}, "lazytiles: raw detections per window"),
                    },
                )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        con.execute(statement)
                for table, what in (
                    ("lazytiles_run", "the run's recipe and state"),
                    ("lazytiles_windows", "each recorded window: done, or failed and why"),
                    ("lazytiles_sessions", "each process that worked on the run"),
                ):
                    register_table(con, table, f"lazytiles: {what}")
                georef = {"transform": list(transform)[:6], "crs": None if crs is None else crs.to_wkt(), "srs_id": srs_id}
                rows = {
                    "schema": json.dumps(STORE_SCHEMA),
                    "recipe": json.dumps(recipe, sort_keys=True),
                    "created": json.dumps(_now()),
                    "georef": json.dumps(georef),
                    "windows": _pack(indices),
                    "pixel_windows": _pack(rects),
                }
                con.executemany("INSERT INTO lazytiles_run (key, value) VALUES (?, ?)", rows.items())
                con.execute("COMMIT")
                con.execute("PRAGMA journal_mode = WAL")  # persistent: the run starts in WAL mode
            finally:
                con.close()
            lock = _Lock(tmp, sidecar_for=path)  # same inode as `path` once linked: nobody can take it in between
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
        store = cls._open_locked(path, lock)
        store.start_writing()
        return store

    @classmethod
    def resume(cls, path: str | os.PathLike[str], *, check: bool = True) -> RunStore:
        """The existing store at ``path``, locked, checked for damage when ``check``, and unchanged
        until :meth:`start_writing` (call it after checking the recipe)."""
        path = Path(path)
        lock = cls.lock(path)
        if check:
            try:
                con = _connect(path, readonly=True)
                try:
                    result = con.execute("PRAGMA quick_check").fetchone()[0]
                finally:
                    con.close()
            except sqlite3.Error as err:
                lock.release()
                raise _store_error(path, err, "opened") from err
            if result != "ok":
                lock.release()
                raise _store_error(path, RuntimeError(f"SQLite's check says {result!r}"), "verified")
        return cls._open_locked(path, lock)

    @classmethod
    def lock(cls, path: Path) -> _Lock:
        """Take the writer's lock on an existing file, or raise :class:`RunLockedError`."""
        try:
            return _Lock(path)
        except _Busy:
            raise RunLockedError(
                f"run store {str(path)!r} is being written by another process{_holder(path)}; wait for it to "
                "finish or stop it, then resume; lt.open_run(path).summary() shows its progress meanwhile"
            ) from None
        except PermissionError as err:
            raise RunStoreError(f"cannot open run store {str(path)!r}: {err.strerror}") from err

    @classmethod
    def _open_locked(cls, path: Path, lock: _Lock) -> RunStore:
        try:
            con = _connect(path, readonly=False)
        except sqlite3.Error as err:
            lock.release()
            raise _store_error(path, err, "opened") from err
        return cls(path, con, lock)

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
            raise _store_error(self.path, err, "opened for writing") from err
        if mode != "wal":
            log.debug("%s: journal mode %s (WAL not available)", self.path, mode)
        self._writing = True

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> RunStore:
        """The store at ``path``, read-only and unlocked (a writer may be adding to it)."""
        path = Path(path)
        if not path.is_file():
            raise RunStoreError(
                f"no run store at {str(path)!r}" + ("" if path.absolute().parent.is_dir() else
                f" (its directory {str(path.absolute().parent)!r} does not exist)") + "; check the path"
            )
        try:
            con = _connect(path, readonly=True)
        except sqlite3.Error as err:
            raise _store_error(path, err, "opened") from err
        return cls(path, con, None)

    @staticmethod
    def classify(path: Path) -> str:
        """``"store"``, ``"other"`` (a readable SQLite database that is not a run store) or ``"broken"``."""
        try:
            con = _connect(path, readonly=True)
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

    # -- writing -----------------------------------------------------------------------------------

    def begin_session(self, options: dict[str, Any], version: str) -> int:
        """Record that this process starts working on the run; returns the session id."""
        with self._db_lock:
            cur = self._con.execute(
                "INSERT INTO lazytiles_sessions (started, status, pid, host, lazytiles_version, options) "
                "VALUES (?, 'running', ?, ?, ?, ?)",
                (_now(), os.getpid(), socket.gethostname(), version, json.dumps(options, sort_keys=True)),
            )
            self._session = int(cur.lastrowid)
        return self._session

    def end_session(self, status: str) -> None:
        with self._db_lock:
            if self._session is not None:
                self._con.execute(
                    "UPDATE lazytiles_sessions SET ended = ?, status = ? WHERE session = ?",
                    (_now(), status, self._session),
                )

    def commit(self, results: Sequence[WindowResult]) -> None:
        """Record finished and failed windows in one transaction: all of them, or none."""
        if not results:
            return
        done = [r for r in results if r.detections is not None]
        failed = [r for r in results if r.detections is None]
        raw_rows: list[tuple[Any, ...]] = []
        for r in done:
            d = r.detections
            n = len(d)  # type: ignore[arg-type]
            if n:
                blobs = polygon_blobs(d.boxes, self.transform, self.srs_id)  # type: ignore[union-attr]
                b = d.boxes.tolist()  # type: ignore[union-attr]
                raw_rows.extend(
                    (blobs[k], int(d.window_index[k]), k, *b[k], float(d.scores[k]), int(d.labels[k]), bool(d.partial[k]))  # type: ignore[union-attr]
                    for k in range(n)
                )
        now, session = _now(), self._session or 0
        self._commits += 1
        try:
            with self._db_lock:
                con = self._con
                con.execute("BEGIN IMMEDIATE")
                try:
                    indices = [r.index for r in results]
                    previous = {}
                    for chunk in range(0, len(indices), 500):
                        part = indices[chunk : chunk + 500]
                        previous.update(
                            con.execute(
                                f"SELECT window_index, attempts FROM lazytiles_windows WHERE status = 'failed' "
                                f"AND window_index IN ({','.join('?' * len(part))})",
                                part,
                            ).fetchall()
                        )
                    con.executemany("DELETE FROM lazytiles_windows WHERE window_index = ?", [(i,) for i in previous])
                    con.executemany(
                        f"INSERT INTO {RAW_LAYER} (geom, {', '.join(_RAW_FIELDS)}) VALUES ({','.join('?' * 10)})", raw_rows
                    )
                    con.executemany(
                        "INSERT INTO lazytiles_windows (window_index, status, boxes, attempts, error, col_off, row_off, "
                        "width, height, session, finished) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (
                                r.index,
                                "failed" if r.detections is None else "done",
                                0 if r.detections is None else len(r.detections),
                                previous.get(r.index, 0) + 1,
                                r.error,
                                *(r.window or (None,) * 4),
                                session,
                                now,
                            )
                            for r in results
                        ],
                    )
                    con.execute(
                        "UPDATE lazytiles_sessions SET windows_done = windows_done + ?, "
                        "windows_failed = windows_failed + ? WHERE session = ?",
                        (len(done), len(failed), session),
                    )
                    self._maybe_die("before")
                    con.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        con.execute("ROLLBACK")
                    raise
                self._maybe_die("after")
        except sqlite3.IntegrityError as err:
            raise RunStoreError(
                f"run store {str(self.path)!r} refused windows {[r.index for r in results][:10]}: {err}; a window "
                "was recorded twice, which means two writers or a bug; the store is unchanged"
            ) from err
        except sqlite3.Error as err:
            raise RunStoreError(f"cannot write to run store {str(self.path)!r}: {err}") from err

    def _maybe_die(self, when: str) -> None:
        if self._kill_at is not None and self._kill_at == (self._commits, when):
            os.kill(os.getpid(), signal.SIGKILL)

    def write_merged(self, found: Detections, params: dict[str, Any]) -> None:
        """Replace the ``detections`` layer with ``found`` and record ``params``, in one transaction."""
        rows: list[tuple[Any, ...]] = []
        if len(found):
            blobs = polygon_blobs(found.boxes, self.transform, self.srs_id)
            b = found.boxes.tolist()
            s, lab, w = found.scores.tolist(), found.labels.tolist(), found.window_index.tolist()
            p = found.partial.tolist()
            rows = [(k + 1, blobs[k], s[k], lab[k], w[k], p[k], *b[k]) for k in range(len(found))]
        info = {"params": params, "count": len(found), "windows_done": len(self.done()), "written": _now()}
        try:
            with self._db_lock:
                con = self._con
                con.execute("BEGIN IMMEDIATE")
                try:
                    con.execute(f"DELETE FROM {MERGED_LAYER}")
                    con.executemany(
                        f"INSERT INTO {MERGED_LAYER} (fid, geom, {', '.join(_MERGED_FIELDS)}) VALUES "
                        f"({','.join('?' * (len(_MERGED_FIELDS) + 2))})",
                        rows,
                    )
                    extent = self._extent(found)
                    con.execute(
                        "UPDATE gpkg_contents SET min_x = ?, min_y = ?, max_x = ?, max_y = ?, "
                        "last_change = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE table_name = ?",
                        (*extent, MERGED_LAYER),
                    )
                    con.executemany(
                        "INSERT OR REPLACE INTO lazytiles_run (key, value) VALUES (?, ?)",
                        [("merge", json.dumps(params)), ("merged", json.dumps(info))],
                    )
                    con.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        con.execute("ROLLBACK")
                    raise
        except sqlite3.Error as err:
            raise RunStoreError(f"cannot write merged detections to run store {str(self.path)!r}: {err}") from err
        self.merge_params, self.merged_info = params, info

    def _extent(self, found: Detections) -> tuple[float | None, ...]:
        if not len(found):
            return (None, None, None, None)
        t = self.transform
        xs = found.boxes[:, [0, 2, 0, 2]]
        ys = found.boxes[:, [1, 1, 3, 3]]
        mx, my = t.a * xs + t.b * ys + t.c, t.d * xs + t.e * ys + t.f
        return (float(mx.min()), float(my.min()), float(mx.max()), float(my.max()))

    # -- reading -------------------------------------------------------------------------------------

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._db_lock:
                return self._con.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as err:
            raise _store_error(self.path, err, "read") from err

    def done(self) -> np.ndarray:
        """Indices of the windows recorded as done, ascending."""
        rows = self._query("SELECT window_index FROM lazytiles_windows WHERE status = 'done' ORDER BY window_index")
        return np.array([r[0] for r in rows], dtype=np.int64)

    def failed(self) -> dict[int, tuple[str, int]]:
        """``{window index: (reason, attempts)}`` of the windows recorded as failed."""
        rows = self._query(
            "SELECT window_index, error, attempts FROM lazytiles_windows WHERE status = 'failed' ORDER BY window_index"
        )
        return {int(i): (str(e), int(a)) for i, e, a in rows}

    def sessions(self) -> list[dict[str, Any]]:
        cols = ("session", "started", "ended", "status", "pid", "host", "lazytiles_version", "windows_done", "windows_failed")
        return [dict(zip(cols, r)) for r in self._query(f"SELECT {', '.join(cols)} FROM lazytiles_sessions ORDER BY session")]

    def raw(self) -> StoredDetections:
        """The raw detections of every done window, per window, in the run's window order."""
        rows = self._query(f"SELECT {', '.join(_RAW_FIELDS)} FROM {RAW_LAYER} ORDER BY window_index, rank")
        columns = _columns(rows, _RAW_FIELDS)
        return StoredDetections(self.windows, columns, self.transform, self.crs)

    def merged(self) -> Detections | None:
        """The ``detections`` layer as written by the last merge, or None before the first merge."""
        if self.merged_info is None:
            return None
        rows = self._query(f"SELECT {', '.join(_MERGED_FIELDS)} FROM {MERGED_LAYER} ORDER BY fid")
        c = _columns(rows, _MERGED_FIELDS)
        boxes = np.stack([c["x0"], c["y0"], c["x1"], c["y1"]], axis=1)
        return Detections(
            boxes, c["score"], c["label"], c["window_index"], partial=c["partial"], transform=self.transform, crs=self.crs
        )

    def counts(self) -> dict[str, int]:
        rows = self._query("SELECT status, COUNT(*), COALESCE(SUM(boxes), 0) FROM lazytiles_windows GROUP BY status")
        out = {"done": 0, "failed": 0, "raw_detections": 0}
        for status, n, boxes in rows:
            out[status] = int(n)
            out["raw_detections"] += int(boxes)
        return out

    # -- closing ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database, then drop the writer's lock (in that order: see :class:`_Lock`)."""
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


def _pack(array: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.ascontiguousarray(array, dtype="<i8").tobytes())).decode()


def _unpack(text: str) -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype="<i8").astype(np.int64)


class RunWindows:
    """The windows of a run, without their source: what ``lt.merge(..., windows=)`` needs.

    ``indices`` are the windows' indices in the sequence ``lt.windows`` made, in the run's order;
    :meth:`pixel_windows` their ``(N, 4)`` col_off, row_off, width, height in the source's pixels.
    """

    def __init__(self, indices: np.ndarray, rects: np.ndarray) -> None:
        self.indices = indices
        self._rects = rects

    def __len__(self) -> int:
        return len(self.indices)

    def pixel_windows(self) -> np.ndarray:
        return self._rects

    def __repr__(self) -> str:
        return f"<RunWindows: {len(self)} windows>"


def _holder(path: Path) -> str:
    """`` (pid N on host, since T)`` of the running session, best effort, for RunLockedError."""
    try:
        con = _connect(path, readonly=True)
        try:
            row = con.execute(
                "SELECT pid, host, started FROM lazytiles_sessions WHERE status = 'running' ORDER BY session DESC LIMIT 1"
            ).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return ""
    return "" if row is None else f" (pid {row[0]} on {row[1]}, since {row[2]})"


def _columns(rows: list[tuple[Any, ...]], names: Sequence[str]) -> dict[str, np.ndarray]:
    if not rows:
        return {name: np.empty(0, dtype=_FIELD_TYPES[name]) for name in names}
    cols = list(zip(*rows))
    return {name: np.array(col, dtype=np.float64 if name == "score" else _FIELD_TYPES[name]).astype(_FIELD_TYPES[name])
            for name, col in zip(names, cols)}  # fmt: skip


class StoredDetections(Sequence[Detections]):
    """Raw detections of a run: one :class:`~lazytiles.Detections` per window of the run, in its order.

    A window that is not done (missing or failed) gives an empty ``Detections``. ``windows`` is the
    run's :class:`RunWindows`, so ``lt.merge(stored)`` merges exactly as ``lt.merge(lt.detect(model,
    wins))`` does. Every box is held in a few numpy arrays; per-window objects are made on access.
    """

    def __init__(self, windows: RunWindows, columns: dict[str, np.ndarray], transform: Affine, crs: CRS | None) -> None:
        self.windows = windows
        self.transform, self.crs = transform, crs
        self._cols = columns
        w = columns["window_index"]
        self._start = np.searchsorted(w, windows.indices, side="left")
        self._stop = np.searchsorted(w, windows.indices, side="right")

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, key: Any) -> Any:
        picked = select(range(len(self)), key, what="window")
        if isinstance(picked, int):
            return self._take(np.arange(self._start[picked], self._stop[picked]))
        idx = np.asarray(picked, dtype=np.int64)
        sub = RunWindows(self.windows.indices[idx], self.windows.pixel_windows()[idx])
        return StoredDetections(sub, self._cols, self.transform, self.crs)

    def __iter__(self) -> Iterator[Detections]:
        for a, b in zip(self._start.tolist(), self._stop.tolist()):
            yield self._take(slice(a, b))

    def _take(self, idx: Any) -> Detections:
        c = self._cols
        boxes = np.stack([c["x0"][idx], c["y0"][idx], c["x1"][idx], c["y1"][idx]], axis=1)
        return Detections(
            boxes, c["score"][idx], c["label"][idx], c["window_index"][idx],
            partial=c["partial"][idx], transform=self.transform, crs=self.crs,
        )  # fmt: skip

    def concat(self) -> Detections:
        """Every box, in window order, as one :class:`~lazytiles.Detections`."""
        lengths = self._stop - self._start
        idx = np.repeat(self._start - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))
        return self._take(idx)

    def __repr__(self) -> str:
        return f"<StoredDetections: {len(self)} windows, {int((self._stop - self._start).sum())} boxes>"


__all__ = ["KILL_HOOK_ENV", "MERGED_LAYER", "RAW_LAYER", "RunStore", "RunWindows", "StoredDetections", "WindowResult"]
