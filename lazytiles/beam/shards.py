"""Shards: cut a window sequence into index ranges of whole window rows, each a compact block of tiles.

Plain numpy on the window plan, no Beam and no I/O: :func:`shard_ranges` makes the ranges that
:class:`~lazytiles.beam.DetectWindows` and :func:`~lazytiles.beam.detect_region` hand to workers,
and ``_check_shard`` checks one that comes back.
"""

from __future__ import annotations

import numbers
import operator
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..windowing.sequence import WindowSequence

#: Whole window rows per shard when ``shard_size`` is not given.
SHARD_ROWS = 8


def _row_starts(wins: WindowSequence, positions: np.ndarray, chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Masks over ``positions`` (ascending): where a window row starts, and where a new block starts
    (a gap in ``positions``, or the first row of a strip: the row offset goes back up)."""
    row_off = np.empty(len(positions), np.int64)
    for a in range(0, len(positions), chunk):
        part = positions[a : a + chunk]
        row_off[a : a + chunk] = wins[part].pixel_windows()[:, 1]
    gap = np.r_[True, positions[1:] != positions[:-1] + 1]
    up = np.r_[True, row_off[1:] < row_off[:-1]]
    return gap | np.r_[True, row_off[1:] != row_off[:-1]], gap | up


def shard_ranges(
    wins: WindowSequence, shard_size: int | None = None, *, mask: np.ndarray | None = None
) -> list[tuple[int, int]]:
    """Cut a window sequence into index ranges ``[start, stop)`` that each read a compact block of tiles.

    The sequence's order is cache-aware (row-major in strips, see :mod:`lazytiles.windowing.plan`), so a run
    of whole window rows of one strip is a compact block of tiles: a worker reading it in order
    fetches each tile once. Shards are such runs. No I/O.

    Parameters
    ----------
    wins
        The windows.
    shard_size
        At most how many windows per shard: whole rows are grouped while they fit, and a row longer
        than it is cut into pieces of ``shard_size`` windows (``1``: one shard per window). Default:
        ``SHARD_ROWS`` (8) whole rows per shard, so a tile row on a shard's edge is read by two
        shards, one in about 8.
    mask
        ``(len(wins),)`` bool: shard only the positions where it is True (a resumed run's missing
        windows); a shard never spans a position left out.

    Returns
    -------
    list of (start, stop)
        Positions in ``wins``, ascending and disjoint, covering every position asked for.

    Examples
    --------
    >>> import numpy as np, lazytiles as lt
    >>> wins = lt.windows(lt.ArraySource(np.zeros((1, 512, 1024), np.uint8)), size=256)   # 2 rows of 4
    >>> shard_ranges(wins, 4), shard_ranges(wins, 3)
    ([(0, 4), (4, 8)], [(0, 3), (3, 4), (4, 7), (7, 8)])
    """
    if not isinstance(wins, WindowSequence):
        raise InvalidArgumentError(
            f"wins must be a lazytiles.WindowSequence (made by lt.windows), got {type(wins).__name__}"
        )
    if shard_size is not None and not _is_count(shard_size):
        raise InvalidArgumentError(
            f"shard_size must be a number of windows >= 1 (or None for {SHARD_ROWS} rows), got {shard_size!r}"
        )
    n = len(wins)
    if mask is None:
        positions = np.arange(n, dtype=np.int64)
    else:
        mask = np.asarray(mask)
        if mask.shape != (n,) or mask.dtype != bool:
            raise InvalidArgumentError(
                f"mask must be a ({n},) bool array (one value per window), got {mask.dtype} {mask.shape}"
            )
        positions = np.flatnonzero(mask).astype(np.int64)
    if not len(positions):
        return []
    row, block = _row_starts(wins, positions)
    starts = np.flatnonzero(row)  # rows, as offsets into `positions`
    lengths = np.diff(np.r_[starts, len(positions)])
    new_run = block[starts]
    if shard_size is not None:  # cut rows longer than a shard into pieces
        pieces = -(-lengths // shard_size)
        first = np.repeat(np.cumsum(pieces) - pieces, pieces)
        k = np.arange(int(pieces.sum())) - first
        starts, ends = np.repeat(starts, pieces) + k * shard_size, np.repeat(starts + lengths, pieces)
        lengths = np.minimum(shard_size, ends - starts)
        new_run = np.repeat(new_run, pieces) & (k == 0)
    shards: list[tuple[int, int]] = []
    a = count = rows = 0
    for s, length, fresh in zip(starts.tolist(), lengths.tolist(), new_run.tolist()):
        full = rows == SHARD_ROWS if shard_size is None else count + length > shard_size
        if rows and (fresh or full):
            shards.append((int(positions[a]), int(positions[a + count - 1]) + 1))
            a, count, rows = s, 0, 0
        count += length
        rows += 1
    shards.append((int(positions[a]), int(positions[a + count - 1]) + 1))
    return shards


def _is_count(value: Any) -> bool:
    """``value`` is an integer >= 1 (but not a bool)."""
    integral = not isinstance(value, bool) and isinstance(value, numbers.Integral)
    return integral and value >= 1


def _check_shard(shard: Any, n: int) -> tuple[int, int]:
    try:
        start, stop = (operator.index(v) for v in shard)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"a shard must be (start, stop) positions, got {shard!r}") from None
    if not 0 <= start <= stop <= n:
        raise InvalidArgumentError(
            f"shard {shard!r} is not inside the {n} windows; make shards with shard_ranges(wins)"
        )
    return start, stop
