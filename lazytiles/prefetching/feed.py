"""A thread prefetch iterating windows in order: the sequence's own pass, on one producer thread.

A :class:`~lazytiles.WindowSequence` passed over in order already reads ahead (see
:mod:`lazytiles.windowing.readahead`): the source's fetch threads decode the tiles of the next row of
windows, and each tile is released after its last window. Worker threads each calling ``wins[i]``
on top of that only add hand-offs, and waits for the same decodes. So when ``lt.prefetch(wins)`` on
threads is iterated in order, one producer thread runs the plain pass (``for w in wins[view]``) into a
buffer of at most ``ahead`` windows: the consumer's work on a window overlaps the assembly of the next
ones, decoding stays on the fetch threads, and the tiles held are the plain pass's. A failure ends the
pass at its window and is raised when that window is asked for, as the scheduler raises it.

Anything else (indexing, reverse or out-of-order views, ``ahead=0``, process workers, a sequence that
is not a window sequence or does not read ahead) goes through :mod:`lazytiles.prefetching.scheduler`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..errors import WorkerError
from ..windowing.index import Positions
from ..windowing.sequence import WindowSequence
from .processes import _Failure


def closed_error(index: int | None = None) -> WorkerError:
    """What a consumer of a closed prefetched sequence gets; ``index``: the item it was waiting for."""
    fix = "index the underlying sequence (.sequence[i]) or make a new lt.prefetch"
    if index is None:
        return WorkerError(f"this prefetched sequence is closed; {fix}")
    return WorkerError(f"item {index} was still being computed when this prefetched sequence was closed; {fix}")


def in_order_pass(seq: Any, positions: Positions, method: str, ahead: int) -> Iterable[Any] | None:
    """The plain pass giving the items ``seq[i]`` for ``i`` in ``positions``, when a :class:`Feed`
    should run it: threads, read-ahead on, a window sequence that reads ahead itself, and ascending
    ``positions``; None otherwise."""
    if method != "thread" or not ahead or not len(positions):
        return None
    if not isinstance(seq, WindowSequence) or not seq.readahead:
        return None
    if isinstance(positions, range):
        if positions.step < 0 or positions.start < 0 or positions.stop < 0:
            return None
        view: WindowSequence = seq[slice(positions.start, positions.stop, positions.step)]
    elif len(positions) > 1 and not bool(np.all(np.diff(positions) > 0)):
        return None
    else:
        view = seq[positions]
    return view


class Feed:
    """One pass over ``items`` on a producer thread, at most ``ahead`` items ahead of its consumer.

    :meth:`take` gives the items in turn. :meth:`stop` ends the pass: the producer finishes its item
    in progress, then closes the pass, which frees what it holds (:meth:`join` waits for that).
    ``count(name, n)`` adds to the scheduler's counters, never under this feed's lock: ``computed``,
    ``hits`` (every item taken was computed ahead, or in progress) and ``wasted`` (never taken).
    """

    def __init__(self, items: Iterable[Any], ahead: int, count: Callable[[str, int], None]) -> None:
        self._items = items
        self._ahead = ahead
        self._count = count
        self._cond = threading.Condition()
        self._buffer: deque[Any] = deque()
        self._failure: _Failure | None = None  # why the pass ended early, after the buffered items
        self._ended = False  # the producer has nothing more to give
        self._stopped = False
        self._closed = False  # stopped by closing the prefetched sequence
        self.thread = threading.Thread(target=self._produce, name="lazytiles-prefetch-pass", daemon=True)

    def start(self) -> None:
        with self._cond:
            if not self._stopped:
                self.thread.start()

    def take(self, index: int) -> Any:
        """The next item of the pass, which is item ``index`` of the prefetched sequence."""
        with self._cond:
            if self._closed:
                raise closed_error()
            while not self._buffer and not self._ended and not self._stopped:
                self._cond.wait()
            ready = bool(self._buffer)
            if ready:
                item = self._buffer.popleft()
                self._cond.notify_all()
            failure = None if self._stopped else self._failure
        if ready:
            self._count("hits", 1)
            return item
        if failure is None:  # closed while this consumer waited
            raise closed_error(index)
        failure.raise_for(index)

    def stop(self, *, closed: bool = False) -> None:
        """End the pass: the producer stops after its item in progress; ``closed``: the prefetched
        sequence was closed, which the consumer is told."""
        with self._cond:
            self._stopped = True
            self._closed = self._closed or closed
            dropped = len(self._buffer)
            self._buffer.clear()
            self._cond.notify_all()
        if dropped:
            self._count("wasted", dropped)

    def join(self, timeout: float) -> None:
        """Wait for a stopped producer to finish its item in progress, at most ``timeout`` seconds."""
        if self.thread.ident is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def _produce(self) -> None:
        it = iter(self._items)
        try:
            while True:
                with self._cond:
                    while len(self._buffer) >= self._ahead and not self._stopped:
                        self._cond.wait()
                    if self._stopped:
                        return
                try:
                    item = next(it)
                except StopIteration:
                    return
                except BaseException as err:
                    with self._cond:
                        self._failure = _Failure.of(err, "a prefetch thread")
                    return
                with self._cond:
                    kept = not self._stopped
                    if kept:
                        self._buffer.append(item)
                        self._cond.notify_all()
                self._count("computed", 1)
                if not kept:
                    self._count("wasted", 1)
                    return
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # the pass's generator: stops its read-ahead
            with self._cond:
                self._ended = True
                self._cond.notify_all()


__all__ = ["Feed", "closed_error", "in_order_pass"]
