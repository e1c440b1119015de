"""The store of a durable prediction run: finished output blocks in an SQLite file beside the raster.

``lt.predict_region(..., out="pred.tif")`` keeps ``pred.tif.blocks`` while it runs: the run's recipe
and layout (key/value rows) and every finished block, compressed, committed in batches. A kill loses
at most the blocks not yet committed; the store is locked by its writer (:mod:`lazytiles.runs.lock`)
and deleted once the raster is complete.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RunLockedError, RunStoreError
from .files import connect
from .lock import FileLock, LockHeldError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lazytiles_prediction (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lazytiles_blocks (
    block_row INTEGER NOT NULL, block_col INTEGER NOT NULL, dtype TEXT NOT NULL, shape TEXT NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (block_row, block_col)
);
"""

#: A block larger than this, decompressed, is a damaged store.
_MAX_BLOCK_BYTES = 2**32


def store_path(out: Path) -> Path:
    """The block store of the raster ``out``."""
    return out.with_name(out.name + ".blocks")


class BlockStore:
    """An open, locked block store. Use :meth:`open`; close it (or leave its ``with`` block) to unlock."""

    def __init__(self, path: Path, con: sqlite3.Connection, lock: FileLock) -> None:
        self.path, self._con, self._lock = path, con, lock

    @classmethod
    def open(cls, path: Path) -> BlockStore:
        """Open (making it if missing) and lock the store at ``path``."""
        path.touch(exist_ok=True)
        try:
            lock = FileLock(path)
        except LockHeldError:
            raise RunLockedError(
                f"prediction run store {str(path)!r} is being written by another process; wait for it to finish, "
                "or choose another out= path"
            ) from None
        try:
            con = connect(path, readonly=False)
            con.executescript(_SCHEMA)
        except sqlite3.Error as err:
            lock.release()
            raise RunStoreError(
                f"prediction run store {str(path)!r} could not be opened: {err}; it may be damaged: delete it, or "
                "pass force_new=True, to start the run again"
            ) from err
        return cls(path, con, lock)

    def meta(self) -> dict[str, Any]:
        """The stored key/value rows (the recipe, the layout), as JSON values."""
        return {
            key: json.loads(value) for key, value in self._con.execute("SELECT key, value FROM lazytiles_prediction")
        }

    def set_meta(self, values: dict[str, Any]) -> None:
        """Store key/value rows (JSON values), all or none."""
        self._write(
            "INSERT OR REPLACE INTO lazytiles_prediction VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()]
        )

    def clear(self) -> None:
        """Forget everything stored: a new run."""
        self._con.execute("BEGIN IMMEDIATE")
        self._con.execute("DELETE FROM lazytiles_blocks")
        self._con.execute("DELETE FROM lazytiles_prediction")
        self._con.execute("COMMIT")

    def done(self) -> set[tuple[int, int]]:
        """The blocks stored, as (block row, block column)."""
        return {(int(r), int(c)) for r, c in self._con.execute("SELECT block_row, block_col FROM lazytiles_blocks")}

    def commit(self, blocks: Iterable[tuple[tuple[int, int], np.ndarray]]) -> None:
        """Store finished blocks, all or none."""
        rows = [
            (key[0], key[1], a.dtype.str, json.dumps(a.shape), zlib.compress(np.ascontiguousarray(a).tobytes(), 1))
            for key, a in blocks
        ]
        self._write("INSERT OR REPLACE INTO lazytiles_blocks VALUES (?, ?, ?, ?, ?)", rows)

    def _write(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        self._con.execute("BEGIN IMMEDIATE")
        try:
            self._con.executemany(sql, rows)
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    def blocks(self) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
        """Every stored block, one at a time (in block order)."""
        cursor = self._con.execute(
            "SELECT block_row, block_col, dtype, shape, data FROM lazytiles_blocks ORDER BY block_row, block_col"
        )
        for row, col, dtype, shape, data in cursor:
            try:  # a file is hostile: numeric pixels of a sane 3-d shape, or a damaged store
                dt, dims = np.dtype(dtype), tuple(json.loads(shape))
                sane = dt.kind in "biuf" and len(dims) == 3 and all(isinstance(d, int) and 0 < d <= 2**16 for d in dims)
            except (TypeError, ValueError):
                sane = False
            size = int(np.prod(dims)) * dt.itemsize if sane else -1
            raw = zlib.decompressobj().decompress(data, _MAX_BLOCK_BYTES) if 0 < size <= _MAX_BLOCK_BYTES else b""
            if len(raw) != size:
                raise RunStoreError(
                    f"prediction run store {str(self.path)!r} holds a damaged block ({row}, {col}); delete the "
                    "store, or pass force_new=True, to start the run again"
                )
            yield (int(row), int(col)), np.frombuffer(raw, dt).reshape(dims)

    def close(self) -> None:
        try:
            self._con.close()
        finally:
            self._lock.release()

    def __enter__(self) -> BlockStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BlockStore", "store_path"]
