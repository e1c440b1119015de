"""A thread prefetch iterating windows in order: the sequence's own pass, moved to a thread only when
a core is spare.

A :class:`~lazytiles.WindowSequence` passed over in order already reads ahead (see
:mod:`lazytiles.windowing.readahead`): the source's fetch threads decode the tiles of the next row of
windows, and each tile is released after its last window. What is left for a window is copying its
part of each tile out of the cache. Worker threads each calling ``wins[i]`` on top of that only add
hand-offs and waits for the same decodes, so ``lt.prefetch(wins)`` on threads, iterated in order,
runs the plain pass (``for w in wins[view]``) instead, in one of two places:

- on the consumer's own thread, to start with: the copy stays on the core that reads the window next,
  and nothing is handed over. While the fetch threads and the consumer keep every core busy (a
  CPU-bound consumer on a small machine) another thread cannot make the pass faster, only slower: it
  takes a core from the decoding, and each window's pixels are then read on another core than the one
  that wrote them (measured on two cores: 0.4 CPU s more over 4k windows, 7 % of the pass).
- on one producer thread, at most ``ahead`` windows ahead, once the process has left at least
  :data:`SPARE_CORES` of the machine's cores idle over :data:`PROBE_SECONDS` of the pass (a consumer
  waiting on a GPU or the network, or a machine with cores to spare): the copies then overlap the
  consumer's work. The switch happens once, between two windows; the producer goes on with the same pass.

A failure ends the pass at its window and is raised when that window is asked for, as the scheduler
raises it, on either side of the switch.

Anything else (indexing, reverse or out-of-order views, ``ahead=0``, process workers, a sequence that
is not a window sequence or does not read ahead) goes through :mod:`lazytiles.prefetching.scheduler`.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from ..errors import WorkerError
from ..windowing.index import Positions
from ..windowing.sequence import WindowSequence
from .processes import _Failure

#: The pass moves to a producer thread once the process leaves this many cores idle, on average...
SPARE_CORES = 1.0
#: ...over at least this long a stretch of the pass (measured again from each window after that).
PROBE_SECONDS = 0.25
#: Where a failure happened, as its error says.
WHERE = "the prefetch pass"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform says)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


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
    """One pass over ``items`` for one consumer: on its thread while the cores are busy, then, once a
    core is spare, on a producer thread at most ``ahead`` items ahead of it.

    :meth:`take` gives the items in turn. :meth:`stop` ends the pass: the thread running it finishes
    its item in progress, then closes the pass, which frees what it holds (:meth:`join` waits for a
    producer to do so). ``count(name=n, ...)`` adds to the scheduler's counters, never under this feed's
    lock: ``computed``, ``hits`` (every item taken: computed ahead, in progress, or on the consumer's
    thread as it asked) and ``wasted`` (never taken).
    """

    def __init__(self, items: Iterable[Any], ahead: int, count: Callable[..., None]) -> None:
        self._items = items
        self._ahead = ahead
        self._count = count
        self._cores = usable_cores()
        self._iter: Iterator[Any] | None = None  # the pass, started by the first take
        self._running = threading.Lock()  # held by the thread advancing the pass (one at a time)
        self._cond = threading.Condition()
        self._buffer: deque[Any] = deque()
        self._failure: _Failure | None = None  # why the pass ended early, after the buffered items
        self._ended = False  # the pass has nothing more to give
        self._stopped = False
        self._closed = False  # stopped by closing the prefetched sequence
        self._probe = (0.0, 0.0)  # (wall, process CPU) seconds when the current stretch started
        self.thread: threading.Thread | None = None  # the producer, once the pass moved to it

    def take(self, index: int) -> Any:
        """The next item of the pass, which is item ``index`` of the prefetched sequence."""
        if self._closed:
            raise closed_error()
        if self.thread is None and not self._ended and not self._stopped:  # one look, without the lock
            here = False
            with self._running:
                if self.thread is None and not self._ended and not self._stopped:  # stop() did not end it
                    item, here = self._take_here(index), True
            if here:
                self._end_if_stopped(index)
                return item
        with self._cond:
            while not self._buffer and not self._ended and not self._stopped:
                self._cond.wait()
            ready = bool(self._buffer)
            if ready:
                item = self._buffer.popleft()
                self._cond.notify_all()
            failure = None if self._stopped else self._failure
        if ready:
            self._count(hits=1)
            return item
        if failure is None:  # closed while this consumer waited
            raise closed_error(index)
        failure.raise_for(index)

    def _end_if_stopped(self, index: int) -> None:
        """After an item computed here: a stop() while this thread held ``_running`` could not end the
        pass, so end it now (stop() sets the flag before it tries the lock: one of the two sees the
        other); a consumer that was closed meanwhile is told so instead of getting the item."""
        if self._stopped and self.thread is None:
            with self._running:
                if not self._ended:
                    self._finish(None)
            if self._closed:
                raise closed_error(index)

    def _take_here(self, index: int) -> Any:
        """The next item, computed on the consumer's thread; then, once a stretch of the pass is long
        enough, a look at whether the process leaves a core idle, to move the pass to a producer thread.
        Called holding ``_running``."""
        if self._iter is None:
            self._probe = (time.perf_counter(), time.process_time())
            self._iter = iter(self._items)
        try:
            item = next(self._iter)
        except StopIteration:  # more items asked for than the pass has: cannot happen from __iter__
            self._finish(None)
            raise closed_error(index) from None
        except Exception as err:
            failure = _Failure.of(err, WHERE)
            self._finish(failure)
            failure.raise_for(index)
        except BaseException:  # KeyboardInterrupt and the like reach the consumer as they are
            self._finish(None)
            raise
        self._count(computed=1, hits=1)
        if time.perf_counter() - self._probe[0] >= PROBE_SECONDS:
            self._consider_moving()
        return item

    def _consider_moving(self) -> None:
        # The process's CPU clock is read once a stretch, not once a window: with the fetch threads
        # running on the other cores, reading it took 170 us on average in a 2-core VM (most reads
        # 2 us, some milliseconds), where the wall clock takes tens of nanoseconds.
        wall0, cpu0 = self._probe
        self._probe = now = (time.perf_counter(), time.process_time())
        wall, cpu = now[0] - wall0, now[1] - cpu0
        if wall <= 0 or self._cores - cpu / wall < SPARE_CORES:
            return
        with self._cond:
            if self._stopped or self._ended:
                return
            thread = threading.Thread(target=self._produce, name="lazytiles-prefetch-pass", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # no thread to be had (out of threads, or the interpreter exiting): stay here
                return
            self.thread = thread  # the producer waits for this thread's _running before it goes on

    def _finish(self, failure: _Failure | None) -> None:
        """End the pass (called by the thread holding ``_running``): close it, which stops its read-ahead."""
        it, self._iter = self._iter, None
        close = getattr(it, "close", None)
        try:
            if close is not None:
                close()  # the pass's generator
        finally:  # whatever its clean-up raises, the consumer is told the pass ended
            with self._cond:
                if failure is not None and not self._stopped:
                    self._failure = failure
                self._ended = True
                self._cond.notify_all()

    def stop(self, *, closed: bool = False) -> None:
        """End the pass: the thread running it stops after its item in progress; ``closed``: the
        prefetched sequence was closed, which the consumer is told."""
        with self._cond:
            self._stopped = True
            self._closed = self._closed or closed
            dropped = len(self._buffer)
            self._buffer.clear()
            self._cond.notify_all()
            producing = self.thread is not None
        if dropped:
            self._count(wasted=dropped)
        if not producing and self._running.acquire(blocking=False):  # else the consumer is mid-item
            try:  # and ends the pass after it
                if not self._ended:
                    self._finish(None)
            finally:
                self._running.release()

    def join(self, timeout: float) -> None:
        """Wait for a stopped producer to finish its item in progress, at most ``timeout`` seconds."""
        thread = self.thread
        if thread is not None and thread.ident is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _produce(self) -> None:
        with self._running:
            it = self._iter
            assert it is not None, "the pass moves to a producer only after it started"
            failure = None
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
                        failure = _Failure.of(err, WHERE)
                        return
                    with self._cond:
                        kept = not self._stopped
                        if kept:
                            self._buffer.append(item)
                            self._cond.notify_all()
                    self._count(computed=1, wasted=int(not kept))
                    if not kept:
                        return
            finally:
                self._finish(failure)


__all__ = ["PROBE_SECONDS", "SPARE_CORES", "Feed", "closed_error", "in_order_pass", "usable_cores"]
