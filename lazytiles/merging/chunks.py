"""Chunks of the cell merge: box records (a numpy structured array) with the objects' outlines beside them.

:mod:`lazytiles.merging.cells` moves boxes between cells as fixed-size records; an outline has no fixed
size, so it travels beside its record in a :class:`Chunk` and, between Beam workers, as WKB after the
records in one byte string (:meth:`Chunk.tobytes`). A chunk of boxes without outlines costs 9 bytes
more than its records.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely

_HEADER = struct.Struct("<QB")  # record count, 1 when outlines follow


@dataclass(frozen=True)
class Chunk:
    """Records and, when some have one, their outlines (an object array, None where none); else None."""

    records: np.ndarray
    shapes: np.ndarray | None = None

    @classmethod
    def of(cls, value: Any, dtype: np.dtype) -> Chunk:
        """``value`` as a chunk: a Chunk, or a records array (no outlines)."""
        return value if isinstance(value, Chunk) else cls(np.asarray(value, dtype))

    @classmethod
    def with_shapes(cls, records: np.ndarray, shapes: np.ndarray) -> Chunk:
        """A chunk that keeps ``shapes`` only when one of them is an outline."""
        known = shapes != None  # noqa: E711 -- elementwise, on an object array
        return cls(records, shapes if bool(np.any(known)) else None)

    def __len__(self) -> int:
        return len(self.records)

    def all_shapes(self) -> np.ndarray:
        """One outline or None per record."""
        return np.full(len(self), None, dtype=object) if self.shapes is None else self.shapes

    def take(self, idx: np.ndarray) -> Chunk:
        return Chunk(self.records[idx], None if self.shapes is None else self.shapes[idx])

    @classmethod
    def concat(cls, chunks: Sequence[Chunk], dtype: np.dtype) -> Chunk:
        if not chunks:
            return cls(np.empty(0, dtype))
        records = np.concatenate([c.records for c in chunks])
        if all(c.shapes is None for c in chunks):
            return cls(records)
        return cls(records, np.concatenate([c.all_shapes() for c in chunks]))

    def tobytes(self) -> bytes:
        """The records, then (when there are outlines) each one's WKB length (-1: none) and the WKB."""
        head = _HEADER.pack(len(self), self.shapes is not None)
        if self.shapes is None:
            return head + self.records.tobytes()
        wkb = shapely.to_wkb(self.shapes)
        lengths = np.array([-1 if w is None else len(w) for w in wkb], dtype="<i8")
        return b"".join([head, self.records.tobytes(), lengths.tobytes(), *(w for w in wkb if w is not None)])

    @classmethod
    def frombytes(cls, data: bytes, dtype: np.dtype) -> Chunk:
        """What :meth:`tobytes` wrote, for records of ``dtype``."""
        n, has = _HEADER.unpack_from(data)
        start, end = _HEADER.size, _HEADER.size + n * dtype.itemsize
        records = np.frombuffer(data, dtype, count=n, offset=start)
        if not has:
            return cls(records)
        lengths = np.frombuffer(data, "<i8", count=n, offset=end)
        ends = end + 8 * n + np.cumsum(np.maximum(lengths, 0))
        starts = ends - np.maximum(lengths, 0)
        wkb = np.array([None if k < 0 else data[a:b] for k, a, b in zip(lengths.tolist(), starts, ends)], dtype=object)
        return cls(records, shapely.from_wkb(wkb))


__all__ = ["Chunk"]
