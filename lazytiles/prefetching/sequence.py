"""``lt.prefetch``: compute the next items of a sequence ahead of the consumer, on threads or processes.

This module is the public face: :func:`prefetch` checks its arguments, and :class:`Prefetched` (a
sequence, with views that share one set of workers) hands every item request to the scheduler in
:mod:`lazytiles.prefetching.scheduler`, which says how read-ahead is planned and bounded, except
a pass over windows in order on threads, which runs the windows' own pass in
:mod:`lazytiles.prefetching.feed`. Process workers are in :mod:`lazytiles.prefetching.processes`.
"""

from __future__ import annotations

import multiprocessing
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar, overload

import numpy as np

from ..errors import InvalidArgumentError
from ..windowing.index import Positions, select
from .feed import Feed, in_order_pass
from .processes import StartMethod
from .scheduler import METHODS, Indexable, Method, _Engine, _Options, _Stream

T = TypeVar("T")


def prefetch(
    seq: Indexable[T],
    workers: int = 4,
    method: Method = "thread",
    ahead: int | None = None,
    *,
    progress: bool = True,
    start_method: StartMethod | None = None,
) -> Prefetched[T]:
    """The same items as ``seq``, computed ahead of an in-order consumer by worker threads or processes.

    Nothing is computed, and no worker started, until an item is asked for. Iterating, or indexing
    ``i, i + 1, ...`` (also in reverse or every k-th item), makes the workers compute the next
    ``ahead`` items in order. Any other index is computed on its own, without draining or restarting
    the read-ahead, so random access costs what ``seq[i]`` costs. Iterating windows in order on
    threads runs their own pass instead (``for w in wins``, which decodes ahead on the source's fetch
    threads and frees tiles behind): on your thread while the cores are busy, on one thread ``ahead``
    windows ahead of you once the process leaves a core idle (:mod:`lazytiles.prefetching.feed`).

    Parameters
    ----------
    seq
        Any sequence: a :class:`~lazytiles.WindowSequence`, ``seqtools.smap(f, wins)``, a list.
        Its items are computed with ``seq[i]`` in the workers; it must be safe to index from several
        threads (``method="thread"``) or pickle (``method="process"``).
    workers
        Number of worker threads or processes.
    method
        ``"thread"`` (default): a thread pool; right for lazytiles windows, whose decoding and copying
        release the GIL. ``"process"``: worker processes, for items that need the GIL (pure-Python
        work); each receives the pickled sequence once, and items come back through shared memory.
    ahead
        Most items computed ahead of the consumers (default ``2 * workers``); this bounds memory.
        0 turns read-ahead off (process workers then only compute what is asked for).
    progress
        Show a progress bar (``tqdm.auto``) while iterating over the whole sequence.
    start_method
        How process workers start: ``"forkserver"`` (default where available) or ``"spawn"``;
        ``"fork"`` is unsafe next to threads, GDAL or torch. Only for ``method="process"``.

    Returns
    -------
    Prefetched
        A ``collections.abc.Sequence`` over the same items. Slices are prefetched views sharing the
        same workers. Close it with ``close()`` or a ``with`` block; it also closes when garbage
        collected and at interpreter exit.

    Raises
    ------
    InvalidArgumentError
        A bad ``workers``, ``method``, ``ahead`` or ``start_method``, ``seq`` is not a sequence, or
        ``seq`` does not pickle for ``method="process"``.

    Notes
    -----
    A failure computing item ``i`` is raised when item ``i`` is asked for: a
    :class:`~lazytiles.LazyTilesError` as its own type, anything else as
    :class:`~lazytiles.WorkerError`, with the index and the original message in the text (and the
    original as ``__cause__``, rebuilt from a process worker's pickle with its traceback text).
    With processes, scripts need the ``if __name__ == "__main__":`` guard, as for ``multiprocessing``.

    Examples
    --------
    >>> import lazytiles as lt
    >>> squares = lt.prefetch([i * i for i in range(10)], workers=2, progress=False)
    >>> list(squares)                    # items 1..4 are computed while item 0 is consumed
    [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
    >>> squares[7], squares[-1], list(squares[::3])
    (49, 81, [0, 9, 36, 81])
    >>> squares.close()
    """
    if not isinstance(seq, Sequence) and not (hasattr(seq, "__len__") and hasattr(seq, "__getitem__")):
        raise InvalidArgumentError(
            f"seq must be a sequence (len() and [i]), got {type(seq).__name__}; wrap an iterable with list()"
        )
    if isinstance(workers, bool) or not isinstance(workers, int | np.integer) or workers < 1:
        raise InvalidArgumentError(f"workers must be a positive int, got {workers!r}")
    if method not in METHODS:
        raise InvalidArgumentError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if ahead is None:
        ahead = 2 * int(workers)
    if isinstance(ahead, bool) or not isinstance(ahead, int | np.integer) or ahead < 0:
        raise InvalidArgumentError(f"ahead must be an int >= 0 (items computed ahead), got {ahead!r}")
    if start_method is not None:
        if method != "process":
            raise InvalidArgumentError(
                f"start_method={start_method!r} applies only to method='process', not method={method!r}"
            )
        methods = multiprocessing.get_all_start_methods()
        if start_method not in methods:
            raise InvalidArgumentError(
                f"start_method must be one of {', '.join(map(repr, methods))} on this system, got {start_method!r}"
            )
    options = _Options(int(workers), method, int(ahead), bool(progress), start_method)
    return Prefetched(_Handle(_Engine(seq, options)), None)


class Prefetched(Sequence[T]):
    """A sequence whose items are computed ahead of the consumer. Made by :func:`lazytiles.prefetch`.

    ``len()``, indexing and slicing follow a list's rules; slices and integer arrays give views that
    share the same workers. It pickles as the underlying sequence and its settings (the workers do
    not travel). ``close()`` stops the workers; a closed prefetched sequence raises on access.
    """

    def __init__(self, handle: _Handle, positions: Positions | None) -> None:
        self._handle = handle  # shared by a root and its views: the workers stop when all are gone
        self._engine = handle.engine
        self._positions = range(self._engine.n) if positions is None else positions

    @property
    def sequence(self) -> Indexable[T]:
        """The sequence whose items are prefetched (all of it, also for a view)."""
        return self._engine.seq

    @property
    def workers(self) -> int:
        return self._engine.options.workers

    @property
    def method(self) -> Method:
        return self._engine.options.method

    @property
    def ahead(self) -> int:
        return self._engine.options.ahead

    @property
    def indices(self) -> Positions:
        """Index in :attr:`sequence` of each item of this (view of the) sequence."""
        return self._positions

    def __len__(self) -> int:
        return len(self._positions)

    @overload
    def __getitem__(self, key: int | np.integer) -> T: ...
    @overload
    def __getitem__(self, key: slice | list[int] | tuple[int, ...] | np.ndarray) -> Prefetched[T]: ...
    def __getitem__(self, key: Any) -> T | Prefetched[T]:
        picked = select(self._positions, key, "item")
        if isinstance(picked, int):
            item: T = self._engine.get(picked, None)
            return item
        return Prefetched(self._handle, picked)

    def __iter__(self) -> Iterator[T]:
        engine, positions = self._engine, self._positions
        o = engine.options
        items = in_order_pass(engine.seq, positions, o.method, o.ahead)
        feed: Feed | None = None
        stream: _Stream | None = None
        bar = None
        try:
            if items is not None:  # windows in order: their own pass (see .feed)
                feed = engine.open_feed(items)
            else:
                stream = engine.open_stream(positions)
            if o.progress and len(positions):
                from tqdm.auto import tqdm

                bar = tqdm(total=len(positions), desc="prefetch", unit="item", mininterval=0.5, smoothing=0.1)
            for k in range(len(positions)):
                index = int(positions[k])
                item: T = feed.take(index) if feed is not None else engine.get(index, stream, k)
                if bar is not None:
                    bar.update(1)
                yield item
        finally:
            if feed is not None:
                engine.close_feed(feed)
            if stream is not None:
                engine.close_stream(stream)
            if bar is not None:
                bar.close()

    def stats(self) -> dict[str, int]:
        """Counters: ``computed`` items, ``hits`` (asked-for items already computed or in progress),
        ``misses``, ``wasted`` (read-ahead results dropped unused) and worker ``restarts``."""
        return self._engine.stats()

    def close(self) -> None:
        """Stop the workers (waiting for items in progress) and free their shared memory; idempotent."""
        self._engine.close()

    def __enter__(self) -> Prefetched[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        o = self._engine.options
        root = isinstance(self._positions, range) and self._positions == range(self._engine.n)
        positions = None if root else self._positions
        return (_restore, (self._engine.seq, o.workers, o.method, o.ahead, o.progress, o.start_method, positions))

    def __repr__(self) -> str:
        o = self._engine.options
        return (
            f"<Prefetched: {len(self)} items of {type(self._engine.seq).__name__}, {o.workers} {o.method} "
            f"workers, {o.ahead} ahead{', closed' if self._engine.closed else ''}>"
        )


def _restore(
    seq: Indexable[Any],
    workers: int,
    method: Method,
    ahead: int,
    progress: bool,
    start_method: StartMethod | None,
    positions: Positions | None,
) -> Prefetched[Any]:
    root = prefetch(seq, workers, method, ahead, progress=progress, start_method=start_method)
    return root if positions is None else Prefetched(root._handle, positions)


class _Handle:
    """Owned by a prefetched sequence and its views; when the last of them goes, the engine closes."""

    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        weakref.finalize(self, engine.close).atexit = False  # _close_all runs at exit instead


__all__ = ["Prefetched", "prefetch"]
