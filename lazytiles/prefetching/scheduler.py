"""The scheduler behind :func:`lazytiles.prefetch`: which item each worker computes next, and when.
(Iterating windows in order on threads is the windows' own pass instead: :mod:`lazytiles.prefetching.feed`.)

Each consumer (an iterator over the prefetched sequence, or a thread calling ``pre[i]``)
is a *stream*. An iterator's stream knows its order; an indexing thread's stream is detected like OS
read-ahead: a small step forward (``i, i + 1``) or three indices with equal steps (reverse, every
k-th) switch read-ahead on, anything else switches it off. The *plan* is the next ``ahead`` indices
of the streams, merged. Workers take, in this order: indices a consumer is waiting for, then plan
indices nobody holds yet (with threads, an item nobody has started is computed by the thread that
asks for it). Plan indices dropped by a change of pattern are never started (cancelled); finished
ones stay reusable until their room is needed, and an item one of the live streams will ask for
within its next ``ahead`` is never dropped to make room for another stream's read-ahead (that work
would only be done again): the other stream waits for the first to consume. A stream that has asked
for nothing while the others asked ``STALE_AFTER`` times per read-ahead slot is no longer live (an
iterator left half-way in a notebook), so it cannot hold the read-ahead forever. So random access
costs one computation per access and no restart, and at most ``ahead`` items are computed or in
flight beyond those consumers asked for.

Process workers receive the pickled sequence once, at start, and compute items by index. Each
returns its items pickled with protocol 5: large buffers (numpy arrays) are copied into a shared
memory segment that the parent created for that worker (and unlinks at close), the rest goes through
its pipe; the parent copies the buffers out before the segment is reused.
"""

from __future__ import annotations

import atexit
import importlib
import os
import pickle
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from ..errors import InvalidArgumentError
from ..windowing.index import Positions
from .feed import Feed, closed_error
from .processes import CLOSE_TIMEOUT, StartMethod, _Failure, _ProcessWorker

Method = Literal["thread", "process"]
METHODS = ("thread", "process")

T_co = TypeVar("T_co", covariant=True)


class Indexable(Protocol[T_co]):
    """What :func:`lazytiles.prefetch` takes: ``len()`` and ``[i]`` (a sequence, ``seqtools.smap(...)``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> T_co: ...


#: Most indexing threads whose access pattern is tracked at once.
MAX_INDEX_STREAMS = 16

#: A stream that asked for nothing during this many requests per read-ahead slot stops being live.
STALE_AFTER = 8

_PENDING, _RUNNING, _DONE = 0, 1, 2


@dataclass(frozen=True)
class _Options:
    """What :func:`lazytiles.prefetch` was asked for, checked."""

    workers: int
    method: Method
    ahead: int
    progress: bool
    start_method: StartMethod | None


class _Stream:
    """One consumer's access pattern: the last index it asked for, and which ones it will want next."""

    __slots__ = ("delta", "last", "pos", "positions", "seen", "step")

    def __init__(self, positions: Positions | None = None, seen: int = 0) -> None:
        self.positions = positions  # an iterator's order, known in advance
        self.seen = seen  # the engine's request count when this stream last asked for an item
        self.pos = -1
        self.last: int | None = None
        self.delta: int | None = None
        self.step: int | None = None  # None: no read-ahead

    def observe(self, index: int, ahead: int) -> None:
        if self.last is not None:
            d = index - self.last
            if d != 0 and d == self.delta:
                self.step = d  # a constant stride, forwards or backwards
            elif 0 < d <= max(ahead, 1):
                self.step = 1  # moving forward a little: several threads sharing a queue of indices
            else:
                self.step = None
            self.delta = d
        self.last = index

    def upcoming(self, k: int, n: int) -> int | None:
        """The k-th index (k >= 1) this stream is expected to ask for next, or None."""
        if self.positions is not None:
            j = self.pos + k
            return int(self.positions[j]) if 0 <= j < len(self.positions) else None
        if self.step is None or self.last is None:
            return None
        i = self.last + self.step * k
        return i if 0 <= i < n else None


class _Slot:
    """One item being computed or computed: for consumers waiting on it, or read ahead."""

    __slots__ = ("failure", "state", "value", "waiters")

    def __init__(self, state: int) -> None:
        self.state = state
        self.waiters = 0
        self.value: Any = None
        self.failure: _Failure | None = None


_engines: weakref.WeakSet[_Engine] = weakref.WeakSet()


class _Engine:
    """The scheduler shared by a prefetched sequence and its views, and its workers."""

    def __init__(self, seq: Indexable[Any], options: _Options) -> None:
        self.seq = seq
        self.options = options
        self.n = len(seq)
        self.closed = False
        self._reset()
        self._payload: bytes | None = None
        if options.method == "process":
            try:
                self._payload = pickle.dumps(seq, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as err:  # pickling raises several kinds (PicklingError, TypeError, AttributeError)
                raise InvalidArgumentError(
                    f"method='process' sends the sequence to worker processes, but {type(seq).__name__} "
                    f"does not pickle: {type(err).__name__}: {err}; use method='thread', or build it from "
                    "module-level functions (no lambdas or local functions)"
                ) from err
        _engines.add(self)

    def _reset(self) -> None:
        """A fresh scheduler with no workers: at start, and in the child of a ``fork()``."""
        self._lock = threading.RLock()  # re-entrant: a finalizer may close us from inside our own code
        self._work = threading.Condition(self._lock)  # workers wait here for something to compute
        self._done = threading.Condition(self._lock)  # consumers wait here for their item
        self._slots: OrderedDict[int, _Slot] = OrderedDict()
        self._demand: deque[int] = deque()  # asked-for indices no worker has taken yet (process method)
        self._streams: dict[object, _Stream] = {}
        self._index_streams: OrderedDict[int, _Stream] = OrderedDict()  # per indexing thread
        self._plan: list[int] | None = None  # cached; None when a stream changed
        self._wanted: set[int] = set()  # what the live streams ask for within ``ahead``: never evicted
        self._requests = 0
        self._threads: list[threading.Thread] = []
        self._procs: list[_ProcessWorker] = []  # their processes and shared memory are the parent's
        self._feeds: set[Feed] = set()  # in-order passes of window sequences (see .feed)
        self._counts = {"computed": 0, "hits": 0, "misses": 0, "wasted": 0, "restarts": 0}

    # -- consumers ---------------------------------------------------------------------------------

    def open_stream(self, positions: Positions) -> _Stream:
        with self._lock:
            stream = _Stream(positions, self._requests)
            self._check_open()
            self._streams[stream] = stream
            self._plan = None
        return stream

    def close_stream(self, stream: _Stream) -> None:
        with self._lock:
            if self._streams.pop(stream, None) is not None:
                self._plan = None

    def open_feed(self, items: Iterable[Any]) -> Feed:
        """A feed running the pass ``items`` for one consumer (see :mod:`lazytiles.prefetching.feed`)."""
        with self._lock:
            self._check_open()
            feed = Feed(items, self.options.ahead, self._count)
            self._feeds.add(feed)
        return feed

    def close_feed(self, feed: Feed) -> None:
        """The consumer of ``feed`` is done with it: the producer stops after its item in progress."""
        with self._lock:
            self._feeds.discard(feed)
        feed.stop()

    def _count(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                self._counts[name] += n

    def get(self, index: int, stream: _Stream | None, pos: int = -1) -> Any:
        """Item ``index``, for ``stream`` (an iterator at ``pos`` of its order) or for plain indexing."""
        thread_method = self.options.method == "thread"
        with self._lock:
            self._check_open()
            self._requests += 1
            if stream is None:  # plain indexing: detect this thread's pattern
                stream = self._index_stream()
                stream.observe(index, self.options.ahead)
            else:  # moved under the lock with the claim below, so the item is never evicted in between
                stream.pos = pos
            stream.seen = self._requests
            self._plan = None
            slot = self._slots.get(index)
            compute_here = False
            if slot is None:
                self._counts["misses"] += 1
                slot = self._slots[index] = _Slot(_RUNNING if thread_method else _PENDING)
                if thread_method:
                    compute_here = True  # the cheapest worker is the one already waiting
                else:
                    self._demand.append(index)
            else:
                self._counts["hits"] += 1
            slot.waiters += 1
            self._start_workers()
            self._work.notify_all()
        if compute_here:
            self._compute_here(index, slot)
        with self._lock:
            try:
                while slot.state != _DONE:
                    if self.closed:
                        raise closed_error(index)
                    self._done.wait()
            finally:
                slot.waiters -= 1
                if slot.waiters == 0 and self._slots.get(index) is slot:
                    del self._slots[index]  # consumed: its room goes back to read-ahead
                    self._work.notify_all()
            value, failure = slot.value, slot.failure
        if failure is not None:
            failure.raise_for(index)
        return value

    def _compute_here(self, index: int, slot: _Slot) -> None:
        try:
            value, failure = self.seq[index], None
        except Exception as err:
            value, failure = None, _Failure.of(err, "the calling thread")
        except BaseException as err:  # KeyboardInterrupt: let other waiters go, then stop this caller
            self._finish(slot, None, _Failure.of(err, "the calling thread"))
            raise
        self._finish(slot, value, failure)

    def _index_stream(self) -> _Stream:
        key = threading.get_ident()
        stream = self._index_streams.get(key)
        if stream is None:
            stream = self._index_streams[key] = _Stream(None, self._requests)
            if len(self._index_streams) > MAX_INDEX_STREAMS:
                self._index_streams.popitem(last=False)
        else:
            self._index_streams.move_to_end(key)
        return stream

    def _check_open(self) -> None:
        if self.closed:
            raise closed_error()

    # -- workers -----------------------------------------------------------------------------------

    def _current_plan(self) -> list[int]:
        if self._plan is None:
            plan: list[int] = []
            ahead = self.options.ahead
            streams = [*self._streams.values(), *self._index_streams.values()]
            stale = self._requests - STALE_AFTER * max(ahead, 1)
            live = [s for s in streams if s.seen >= stale]
            seen: set[int] = set()
            for k in range(1, ahead + 1):  # round-robin over the live streams, nearest first
                for stream in live:
                    i = stream.upcoming(k, self.n)
                    if i is not None and i not in seen:
                        seen.add(i)
                        plan.append(i)
            self._plan = plan[:ahead]
            self._wanted = seen
        return self._plan

    def _pick(self, *, take: bool) -> int | None:
        """The next index for a worker (asked-for first, then the plan), or None; with ``take``, claim it."""
        while self._demand:
            index = self._demand[0]
            slot = self._slots.get(index)
            if slot is None or slot.state != _PENDING:  # its consumer gave up (an interrupt)
                self._demand.popleft()
                continue
            if take:
                self._demand.popleft()
                slot.state = _RUNNING
            return index
        plan = self._current_plan()
        free = [i for i in plan if i not in self._slots]
        if not free:
            return None
        held = [i for i, s in self._slots.items() if s.waiters == 0]  # read ahead, not yet asked for
        victim = None
        if len(held) >= self.options.ahead:
            wanted = self._wanted
            victim = next((i for i in held if self._slots[i].state == _DONE and i not in wanted), None)
            if victim is None:
                return None  # full of items in progress, or that a live stream will soon consume
        if take:
            if victim is not None:
                del self._slots[victim]
                self._counts["wasted"] += 1
            self._slots[free[0]] = _Slot(_RUNNING)
        return free[0]

    def _take(self) -> tuple[int, _Slot] | None:
        with self._lock:
            while True:
                if self.closed:
                    return None
                index = self._pick(take=True)
                if index is not None:
                    return index, self._slots[index]
                self._work.wait()

    def _finish(self, slot: _Slot, value: Any, failure: _Failure | None) -> None:
        with self._lock:
            slot.value, slot.failure, slot.state = value, failure, _DONE
            self._counts["computed"] += 1
            self._done.notify_all()
            self._work.notify_all()

    def _serve(self, compute: Any) -> None:
        """A worker thread: take an index, compute it (here, or in its process), store it; repeat."""
        while (task := self._take()) is not None:
            index, slot = task
            try:
                value, failure = compute(index)
            except BaseException as err:  # a bug in the worker itself: the waiter still gets an error
                value, failure = None, _Failure.of(err, "a prefetch worker")
            self._finish(slot, value, failure)

    def _compute_in_thread(self, index: int) -> tuple[Any, _Failure | None]:
        try:
            return self.seq[index], None
        except BaseException as err:
            return None, _Failure.of(err, "a prefetch thread")

    def _start_workers(self) -> None:
        if self._threads or self.closed:
            return
        if self.options.method == "thread" and not self._current_plan():
            return  # pure random access on threads: callers compute their own items
        for k in range(self.options.workers):
            if self.options.method == "thread":
                target: Any = self._compute_in_thread
            else:
                assert self._payload is not None  # pickled in __init__ for method="process"
                worker = _ProcessWorker(k, self._payload, self.options.start_method, self._count_restart)
                self._procs.append(worker)
                target = worker.compute
            thread = threading.Thread(target=self._serve, args=(target,), name=f"lazytiles-prefetch-{k}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _count_restart(self) -> None:
        with self._lock:
            if not self.closed:  # close() terminating a busy process is no restart
                self._counts["restarts"] += 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no item is being computed and none would be started (for tests); False on timeout."""

        def idle() -> bool:
            busy = any(s.state != _DONE for s in self._slots.values())
            return self.closed or not (busy or (self._threads and self._pick(take=False) is not None))

        with self._lock:
            return self._done.wait_for(idle, timeout)

    def pids(self) -> list[int]:
        """Process ids of the worker processes running now."""
        with self._lock:
            return [w.proc.pid for w in self._procs if w.proc is not None and w.proc.pid is not None]

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._work.notify_all()
            self._done.notify_all()
            threads, procs, feeds = list(self._threads), list(self._procs), list(self._feeds)
            self._feeds.clear()
        for feed in feeds:
            feed.stop(closed=True)
        others = [t for t in threads if t is not threading.current_thread()]
        deadline = time.monotonic() + timeout
        for feed in feeds:
            feed.join(max(0.0, deadline - time.monotonic()))
        for thread in others:  # an idle worker stops at once, a busy one after its item
            thread.join(max(0.0, deadline - time.monotonic()))
        for thread, worker in zip(threads, procs):
            if thread.is_alive():
                worker.kill()  # still busy after the timeout: its thread then sees the process exit
        for thread in others:
            thread.join(timeout)  # threads computing in this process cannot be stopped: they are daemons
        for worker in procs:
            worker.release()
        _engines.discard(self)


def _close_all() -> None:
    for engine in list(_engines):
        engine.close(timeout=1.0)


# atexit runs the last-registered hook first; importing multiprocessing.util registers the hook that
# joins worker processes (if nothing imported it yet), so ours, registered after it, closes them first
importlib.import_module("multiprocessing.util")
atexit.register(_close_all)


def _reset_all_after_fork() -> None:  # a forked child has none of its parent's threads
    for engine in list(_engines):
        engine._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all_after_fork)
