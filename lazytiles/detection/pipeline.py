"""The streaming pass behind iterating over :func:`lazytiles.detect` and :func:`lazytiles.predict`: reading,
the model and post-processing overlap, with bounded queues between them::

    reader threads (workers)        model thread                     caller
    read window, copy its bands ->  host batch -> device (-> float)  Detections in source pixels
    into a (pinned) host batch      -> model -> outputs checked  ->  (or Predictions), in order
    (as floats on a CPU)            --- bounded queue (backpressure) --->

At most a few batches are in flight, so memory stays bounded whatever the region's size, and
stopping early (``break``, an error, the iterator being garbage collected) stops and joins every
thread before control returns.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
from rasterio.windows import Window as PixelWindow

from ..errors import LazyTilesError, WorkerError
from ..windowing.sequence import WindowSequence

if TYPE_CHECKING:
    from .runner import ModelRunner

_Slot = tuple[int, Any, Any, "str | None"]  # index, pixel window, result (None: unread), error
#: Applied on the model thread to each window's checked result: ``reduce(window index, result)``.
Reduce = Callable[[int, Any], Any]


class _Pipeline:
    """One streaming pass: reader threads fill host batches, a model thread runs them, in order."""

    def __init__(
        self,
        runner: ModelRunner,
        wins: WindowSequence,
        options: dict[str, Any],
        tolerate: tuple[type[BaseException], ...],
        reduce: Reduce | None = None,
    ) -> None:
        self._runner, self._wins, self._bs, self._tolerate = runner, wins, options["batch_size"], tolerate
        self._reduce = reduce
        workers = options["workers"]
        self._indices = np.asarray(wins.indices)
        self._depth = max(2, math.ceil(2 * workers / self._bs))  # batches read ahead of the model
        self._out: queue.Queue[list[_Slot] | BaseException | None] = queue.Queue(maxsize=2)  # None: the end
        self._stop = threading.Event()
        self._items: Any = wins
        self._ordered: Iterator[tuple[int, Any, BaseException | None]] | None = None
        readers = workers
        if options["method"] == "thread" and workers == 1:
            # one reader walks the windows in order: the source decodes the next windows' tiles on
            # its read-ahead threads and frees each tile after its last window
            self._ordered = wins.outcomes(tolerate=tolerate)
        if options["method"] == "process":
            from ..prefetching.sequence import prefetch

            # processes read ahead in order; one thread copies their windows into host batches
            self._items = prefetch(wins, workers, "process", ahead=self._depth * self._bs, progress=False)
            readers = 1
        self._pool = ThreadPoolExecutor(readers, thread_name_prefix="lazytiles-read") if readers else None
        self._thread = threading.Thread(target=self._run, name="lazytiles-model", daemon=True)
        import torch

        self._torch_threads = torch.get_num_threads()  # the caller's setting: OpenMP keeps it per thread
        self._free: list[tuple[Any, np.ndarray]] = []
        self._times = {"model_seconds": 0.0, "wait_seconds": 0.0, "batches": 0, "windows": 0}
        self._start = self._end = 0.0

    def start(self) -> None:
        self._start = time.perf_counter()
        self._thread.start()

    def next(self) -> list[_Slot] | None:
        """The next batch of outcomes, None at the end; re-raises a worker's error here."""
        batch = self._out.get()
        if isinstance(batch, BaseException):
            raise batch
        return batch

    def close(self) -> None:
        """Stop, and join every thread (reads in progress finish; queued ones are cancelled)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                while True:
                    self._out.get_nowait()  # unblock a model thread waiting to hand over a batch
            except queue.Empty:
                pass
            self._thread.join(0.05)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._items is not self._wins:
            self._items.close()
        if isinstance(self._ordered, Generator):
            self._ordered.close()
        if not self._end:
            self._end = time.perf_counter()

    def stats(self) -> dict[str, Any]:
        seconds = (self._end or time.perf_counter()) - self._start
        out: dict[str, Any] = dict(self._times, seconds=seconds)
        out["model_busy"] = out["model_seconds"] / seconds if seconds > 0 else 0.0
        return out

    # -- model thread ------------------------------------------------------------------------------

    def _put(self, item: list[_Slot] | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, position: int, buffer: np.ndarray, slot: int) -> PixelWindow | None:
        if self._stop.is_set():
            return None
        try:
            if self._ordered is not None:  # one reader thread: its tasks run in position order
                index, w, error = next(self._ordered)
                if error is not None:
                    raise error
            else:
                w = self._items[position]
        except LazyTilesError:
            raise
        except Exception as err:  # broad on purpose: report any reading bug with its window
            index = int(self._indices[position])
            raise WorkerError(f"reading window {index} failed: {type(err).__name__}: {err}") from err
        self._runner.fill(buffer, slot, w.data)
        return w.window  # the pixels are in the batch now

    def _submit(self, first: int) -> tuple[int, Any, np.ndarray, list[Future[PixelWindow | None]]]:
        n = min(self._bs, len(self._indices) - first)
        tensor, buffer = self._free.pop() if self._free else self._runner.new_buffer(self._bs)
        futures: list[Future[PixelWindow | None]] = []
        for slot in range(n):
            if self._pool is not None:
                futures.append(self._pool.submit(self._read, first + slot, buffer, slot))
            else:
                done: Future[PixelWindow | None] = Future()
                try:
                    done.set_result(self._read(first + slot, buffer, slot))
                except Exception as err:
                    done.set_exception(err)
                futures.append(done)
        return first, tensor, buffer, futures

    def _run(self) -> None:
        import torch

        torch.set_num_threads(self._torch_threads)  # else a new thread runs the model on every core
        pending: deque[tuple[int, Any, np.ndarray, list[Future[PixelWindow | None]]]] = deque()
        try:
            n = len(self._indices)
            next_first = 0
            while not self._stop.is_set() and (pending or next_first < n):
                while len(pending) < self._depth and next_first < n:
                    pending.append(self._submit(next_first))
                    next_first += self._bs
                first, tensor, buffer, futures = pending.popleft()
                slots = self._collect(first, futures)
                ok = [k for k, s in enumerate(slots) if s[3] is None]
                if ok:
                    started = time.perf_counter()
                    batch = tensor[: len(slots)] if len(ok) == len(slots) else tensor[ok]
                    results = self._runner.run(batch, [slots[k][0] for k in ok])
                    if self._reduce is not None:  # here, so that only the reduced results wait in the queue
                        results = [self._reduce(slots[k][0], result) for k, result in zip(ok, results)]
                    self._times["model_seconds"] += time.perf_counter() - started
                    for k, result in zip(ok, results):
                        slots[k] = (slots[k][0], slots[k][1], result, None)
                self._free.append((tensor, buffer))
                self._times["batches"] += 1
                self._times["windows"] += len(slots)
                if not self._put(slots):
                    return
            self._put(None)
        except BaseException as err:  # broad only to hand the error to the caller's thread
            self._put(err)
        finally:
            for _, _, _, futures in pending:
                for f in futures:
                    f.cancel()

    def _collect(self, first: int, futures: list[Future[PixelWindow | None]]) -> list[_Slot]:
        started = time.perf_counter()
        slots: list[_Slot] = []
        for k, future in enumerate(futures):
            index = int(self._indices[first + k])
            try:
                window = future.result()
            except self._tolerate as err:
                slots.append((index, None, None, str(err)))
                continue
            if window is None:  # stopped before it was read
                raise WorkerError(f"window {index} was not read: the pass was stopped")
            slots.append((index, window, None, None))
        self._times["wait_seconds"] += time.perf_counter() - started
        return slots
