"""Which windows a merge or a run covers, without their source: window indices and pixel rectangles.

:class:`WindowTable` is the one value for it. A run's recipe hashes it, the run store keeps it, the
merge looks boxes' windows up in it, the Kafka worker and the Beam job take each window's rectangle
from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import shapely

from ..errors import InvalidArgumentError

T = TypeVar("T")


def _frozen(array: Any, shape: tuple[int, ...]) -> np.ndarray:
    out = np.array(array, dtype=np.int64).reshape(shape)
    out.flags.writeable = False
    return out


@dataclass(frozen=True, eq=False)
class WindowTable:
    """The windows of a sequence, in its order: ``indices`` and their pixel rectangles ``rects``.

    ``indices`` (N,) are the windows' :attr:`lazytiles.Window.index`; ``rects`` (N, 4) their
    ``col_off, row_off, width, height`` in the source's pixels. Both are read-only int64 arrays. Like a
    :class:`~lazytiles.WindowSequence`, a table has ``indices`` and :meth:`pixel_windows`, so it goes
    where the windows do (``lt.merge(dets, windows=table)``).

    Examples
    --------
    >>> import numpy as np, lazytiles as lt
    >>> wins = lt.windows(lt.ArraySource(np.zeros((1, 256, 448), np.uint8)), 256, stride=192)
    >>> table = WindowTable.of(wins)
    >>> table.indices, table.rect(1)
    (array([0, 1]), (192, 0, 256, 256))
    >>> table[1:].indices
    array([1])
    """

    indices: np.ndarray
    rects: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "indices", _frozen(self.indices, (-1,)))
        object.__setattr__(self, "rects", _frozen(self.rects, (-1, 4)))
        if len(self.indices) != len(self.rects):
            raise InvalidArgumentError(
                f"a window table needs one rectangle per index, got {len(self.indices)} indices and "
                f"{len(self.rects)} rectangles"
            )

    @classmethod
    def of(cls, windows: Any) -> WindowTable:
        """The table of a :class:`~lazytiles.WindowSequence` (or of anything with ``indices`` and
        ``pixel_windows()``); a table is returned as it is. No I/O."""
        if isinstance(windows, WindowTable):
            return windows
        try:
            return cls(np.asarray(windows.indices), windows.pixel_windows())
        except AttributeError:
            raise InvalidArgumentError(
                f"windows must be the lt.WindowSequence the detections came from, got {type(windows).__name__}"
            ) from None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, positions: slice | np.ndarray) -> WindowTable:
        """The windows at ``positions`` (a slice or an integer array), as a table."""
        return WindowTable(self.indices[positions], self.rects[positions])

    def pixel_windows(self) -> np.ndarray:
        """``(N, 4)`` col_off, row_off, width, height, as :meth:`lazytiles.WindowSequence.pixel_windows`."""
        return self.rects

    def rect(self, position: int) -> tuple[int, int, int, int]:
        """``(col_off, row_off, width, height)`` of the window at ``position``, as Python ints."""
        col, row, width, height = self.rects[position].tolist()
        return col, row, width, height

    def has_duplicates(self) -> bool:
        """Whether some window index occurs more than once."""
        return len(np.unique(self.indices)) != len(self.indices)

    # -- what the merge asks --------------------------------------------------------------------------

    def lookup(self, window_index: np.ndarray) -> np.ndarray:
        """Boxes ``(x0, y0, x1, y1)`` of the windows ``window_index`` (NaN rows for -1); an error for an
        index not in the table."""
        out = np.full((len(window_index), 4), np.nan)
        known = window_index >= 0
        if known.any():
            wi = window_index[known]
            sorter, ordered = self._kept("sorted", self._sorted)
            pos = np.minimum(np.searchsorted(ordered, wi), len(ordered) - 1)
            found = (len(ordered) > 0) & (ordered[pos] == wi)
            if not np.all(found):
                bad = int(wi[~found][0])
                raise InvalidArgumentError(
                    f"a box has window_index={bad}, which is not one of the {len(self)} windows given; "
                    "pass the windows the detections were made on (windows=wins), or none"
                )
            out[known] = self._boxes()[sorter[pos]]
        return out

    def last_position(self, boxes: np.ndarray, reach: float, positions: np.ndarray | None = None) -> np.ndarray:
        """For each box, the last sequence position of a window that could hold a box matching it: of a
        window within ``reach`` of the box, edges included.

        ``positions`` (optional): the position of each box's window. A box inside its window can only
        be within ``reach`` of that window's neighbours, so those alone are tested, in numpy.
        """
        last = np.full(len(boxes), -1, np.int64)
        rest = np.arange(len(boxes))
        if positions is not None and len(boxes):
            near = self._kept(f"near {reach!r}", lambda: self._neighbours(reach))
            w = self._boxes()
            own = w[positions]
            inside = np.all(boxes[:, :2] >= own[:, :2], axis=1) & np.all(boxes[:, 2:] <= own[:, 2:], axis=1)
            ins = np.flatnonzero(inside)
            nb = near[positions[ins]]  # (n, D), -1 padded
            r = w[nb]
            g = boxes[ins, None, :] + np.array([-reach, -reach, reach, reach])
            hit = (
                (g[..., 0] <= r[..., 2])
                & (r[..., 0] <= g[..., 2])
                & (g[..., 1] <= r[..., 3])
                & (r[..., 1] <= g[..., 3])
            )
            last[ins] = np.where(hit & (nb >= 0), nb, -1).max(axis=1)
            rest = np.flatnonzero(~inside)
        if len(rest):
            tree = self._kept("tree", lambda: shapely.STRtree(shapely.box(*self._boxes().T)))
            g = boxes[rest] + np.array([-reach, -reach, reach, reach])
            bi, wi = tree.query(shapely.box(g[:, 0], g[:, 1], g[:, 2], g[:, 3]))
            np.maximum.at(last, rest[bi], wi)
        return last

    def _neighbours(self, reach: float) -> np.ndarray:
        """``(N, D)``: the positions of the windows within ``reach`` of each window (itself included),
        padded with -1."""
        w = self._boxes()
        tree = shapely.STRtree(shapely.box(*w.T))
        g = w + np.array([-reach, -reach, reach, reach])
        wi, nj = tree.query(shapely.box(*g.T))
        counts = np.bincount(wi, minlength=len(w))
        out = np.full((len(w), max(int(counts.max(initial=0)), 1)), -1, np.int64)
        order = np.lexsort((nj, wi))
        wi, nj = wi[order], nj[order]
        out[wi, np.arange(len(wi)) - np.repeat(np.cumsum(counts) - counts, counts)] = nj
        return out

    def _sorted(self) -> tuple[np.ndarray, np.ndarray]:
        sorter = np.argsort(self.indices, kind="stable")
        return sorter, self.indices[sorter]

    def _boxes(self) -> np.ndarray:
        def make() -> np.ndarray:
            r = self.rects.astype(np.float64)
            return np.stack([r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]], axis=1)

        return self._kept("boxes", make)

    def _kept(self, name: str, make: Callable[[], T]) -> T:
        """What ``make()`` returns, made at first use and kept (the table is frozen; its fields never change)."""
        kept = self.__dict__.setdefault("_made", {})
        if name not in kept:
            kept[name] = make()
        made: T = kept[name]
        return made

    def __reduce__(self) -> tuple[Any, ...]:
        return (WindowTable, (self.indices, self.rects))

    def __repr__(self) -> str:
        return f"<WindowTable: {len(self)} windows>"


__all__ = ["WindowTable"]
