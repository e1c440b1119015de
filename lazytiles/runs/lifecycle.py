"""The one run lifecycle: a store made or resumed, one session of work in it, windows recorded in batches,
the merge written, the store closed.

``lt.detect_region`` (:mod:`lazytiles.runs.run`), the Beam job (:mod:`lazytiles.beam.job`) and the Kafka
worker (:mod:`lazytiles.streams.worker`) all run a region through a :class:`RunLifecycle`::

    run = RunLifecycle(wins, out, options)             # checks the arguments; opens nothing
    with run.open(model, session):                     # made, or resumed (same recipe); locked; a session begun
        with run.recorder(batch_size=8) as record:     # outcomes committed in batches
            for position, outcome in run.outcomes(dets):   # the windows not done, failed ones again
                record.add(position, outcome)
        run.merge(rule)                                # every stored window merged into the merged layer
    run.warn_failed()                                  # the session ended, the store closed, on every path

A Beam job hands the store to its workers in between: :meth:`RunLifecycle.release` closes it and
returns a :class:`SharedRun`, through which each worker commits under the store's lock, briefly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..detection.sequence import DetectionSequence, Outcome
from ..detections import Detections
from ..errors import CRSError, FailedWindowsWarning, InvalidArgumentError, RunLockedError, RunStoreError
from ..merging.rule import MergeRule
from ..merging.streaming import merge_by_rule
from ..merging.window_table import WindowTable
from ..windowing.sequence import WindowSequence
from .files import classify, lock_store, write_output
from .recipe import DetectOptions, check_recipe, run_recipe
from .store import RunStore, StoredDetections, WindowResult
from .tables import StoreHeader

log = logging.getLogger(__name__)

#: What a run hands a batch of windows to before committing it (the Kafka worker: publish, confirm).
Deliver = Callable[[list[WindowResult]], None]


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be True or False, got {value!r}")


def check_path(name: str, value: Any) -> None:
    """An error unless ``value`` is a file path or None."""
    if value is not None and not isinstance(value, str | os.PathLike):
        raise InvalidArgumentError(f"{name} must be a file path or None, got {value!r}")


class RunLifecycle:
    """One process's work on a run store ``out``: open or resume it, one session, record, merge, close.

    Made with the run's windows, the store's path and the :class:`~lazytiles.runs.recipe.DetectOptions`;
    the arguments are checked here and nothing is opened until :meth:`open`. Use it as the ``with``
    block :meth:`open` returns: leaving it ends the session — ``finished`` (``finished; N windows
    failed``) or ``stopped: <error>`` — and closes the store, releasing its lock, on every path; then
    it writes ``geojson`` from what :meth:`write` was given, if the block ended normally.

    Parameters
    ----------
    wins, out, resume, force_new, geojson
        As in :func:`lazytiles.detect_region`.
    options
        How ``lt.detect`` runs: its recipe part must match a resumed store's.
    """

    def __init__(
        self,
        wins: WindowSequence,
        out: str | os.PathLike[str],
        options: DetectOptions = DetectOptions(),
        *,
        resume: bool = True,
        force_new: bool = False,
        geojson: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(wins, WindowSequence):
            raise InvalidArgumentError(
                f"wins must be a lazytiles.WindowSequence (made by lt.windows), got {type(wins).__name__}"
            )
        if not isinstance(out, str | os.PathLike):
            raise InvalidArgumentError(f"out must be the path of a .gpkg file, got {type(out).__name__} {out!r}")
        check_bool("resume", resume)
        check_bool("force_new", force_new)
        check_path("geojson", geojson)
        if geojson is not None and wins.source.crs is None:
            raise CRSError(
                "geojson= writes lon/lat and needs the source's CRS, but it has none; leave geojson out, or give "
                "the source a crs"
            )
        self.table = WindowTable.of(wins)
        if self.table.has_duplicates():
            raise InvalidArgumentError("wins holds some windows more than once; a run detects each window once")
        self.wins, self.path, self.options = wins, Path(out), options
        self.geojson = None if geojson is None else Path(geojson)
        self._resume, self._force_new = resume, force_new
        self.recipe: dict[str, Any] = {}
        self.session: int | None = None
        self.done = np.zeros(len(self.table), bool)  #: which windows, by position, were done before this session
        self._store: RunStore | None = None
        self._shared: SharedRun | None = None
        self._found: Detections | None = None
        self._failed: dict[int, tuple[str, int]] = {}

    # -- opening ---------------------------------------------------------------------------------------

    def open(self, model: Any, session: Mapping[str, Any]) -> RunLifecycle:
        """Make the store, or resume it (its recipe must be this run's: else :class:`RecipeMismatchError`),
        lock it, begin a session recording ``session`` (how this process runs), and find the windows
        done. Returns this lifecycle, for a ``with`` block."""
        self.recipe = run_recipe(model, self.wins, self.options, self.table)
        src = self.wins.source
        store = self._store = self._open_store(StoreHeader(self.recipe, self.table, src.transform, src.crs))
        try:
            self.session = store.begin_session(dict(session), self.recipe["lazytiles.version"])
            self.done = np.isin(self.table.indices, store.done())
        except BaseException:
            self._store = None
            store.close()
            raise
        if self.done.any():
            retry = len(set(store.failed()) & set(self.table.indices[~self.done].tolist()))
            log.info(
                "%s: %d of %d windows done; running %d (%d failed before)",
                self.path,
                int(self.done.sum()),
                len(self.done),
                len(self.todo),
                retry,
            )
        return self

    def _open_store(self, header: StoreHeader) -> RunStore:
        out = self.path
        if not out.exists():
            try:
                return RunStore.create(out, header)
            except RunStoreError as err:
                if out.exists() and not isinstance(err, RunLockedError):  # made meanwhile by another process
                    raise RunLockedError(str(err)) from err
                raise
        if out.is_dir():
            raise RunStoreError(f"out={str(out)!r} is a directory; give the path of a .gpkg file to store the run in")
        if self._force_new:
            lock = lock_store(out)  # nobody may be writing what we replace
            try:
                kind = classify(out)
                if kind == "other":
                    raise RunStoreError(
                        f"{str(out)!r} is a GeoPackage or SQLite database that lazytiles did not make; refusing to "
                        "replace it even with force_new=True (nothing was changed); delete it yourself or choose "
                        "another out= path"
                    )
                what = "a run store" if kind == "store" else "an unreadable file"
                log.info("replacing %s (%s) with a new run", out, what)
                return RunStore.create(out, header, replace=True)
            finally:
                lock.release()  # the new file has its own lock
        if not self._resume:
            raise RunStoreError(
                f"{str(out)!r} already exists; pass resume=True (CLI: --resume) to continue the run stored there, "
                "force_new=True (CLI: --force-new) to replace it, or choose another out= path (nothing was changed)"
            )
        store = RunStore.resume(out)
        try:
            check_recipe(out, store.recipe, header.recipe)
        except BaseException:
            store.close()
            raise
        store.start_writing()
        return store

    # -- the work --------------------------------------------------------------------------------------

    @property
    def todo(self) -> np.ndarray:
        """Positions of the windows still to do, in run order: those not done, failed ones included."""
        return np.flatnonzero(~self.done)

    def stored(self) -> StoredDetections:
        """The raw detections of the windows done, per window of the run."""
        return self._writer().raw()

    def outcomes(self, dets: DetectionSequence) -> Generator[tuple[int, Outcome], None, None]:
        """``(position, (window index, detections or None, error))`` of each window still to do, in run
        order, from ``dets`` (``lt.detect`` over the run's windows). Closing it stops the pipeline now."""
        todo = self.todo
        if not len(todo):
            return
        with contextlib.closing(dets[todo].outcomes()) as stream:
            for outcome, position in zip(stream, todo.tolist()):
                yield position, outcome

    def recorder(self, *, batch_size: int, commit_interval: float = 0.0, deliver: Deliver | None = None) -> Recorder:
        """A :class:`Recorder` committing outcomes to this run's store."""
        store = self._writer()
        return Recorder(store, self.table, batch_size=batch_size, commit_interval=commit_interval, deliver=deliver)

    def failed(self) -> dict[int, tuple[str, int]]:
        """``{window index: (reason, attempts)}`` of the windows recorded as failed."""
        return self._writer().failed()

    def merge(self, rule: MergeRule) -> Detections:
        """Merge the raw detections of every window stored by ``rule``, and :meth:`write` them."""
        found = merge_by_rule(self._writer().raw(), rule, progress=False)
        self.write(found, rule)
        return found

    def write(self, found: Detections, rule: MergeRule) -> None:
        """Write ``found``, merged by ``rule``, as the store's merged layer (and, after closing, to ``geojson``)."""
        self._writer().write_merged(found, rule)
        self._found = found

    def release(self, *, wait: float) -> SharedRun:
        """Close the store, keeping the session, while other processes write it through the
        :class:`SharedRun` returned (each waiting up to ``wait`` seconds for the lock)."""
        store = self._writer()
        self._store = None
        store.close()
        self._shared = SharedRun(str(self.path.absolute()), self.session, wait)
        return self._shared

    def _writer(self) -> RunStore:
        if self._store is None:
            raise RunStoreError(f"run store {str(self.path)!r} is not open in this process; open the run first")
        return self._store

    # -- closing ---------------------------------------------------------------------------------------

    def __enter__(self) -> RunLifecycle:
        return self

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        self.close(error)

    def close(self, error: BaseException | None = None) -> None:
        """End the session (``finished``, or ``stopped`` by ``error``) and close the store; then, if no
        error, write ``geojson``. The lock is released whatever fails."""
        try:
            if self.session is not None and error is None:
                self._end(None)
            elif self.session is not None:
                with contextlib.suppress(Exception):
                    self._end(error)
        finally:
            store, self._store = self._store, None
            if store is not None:
                store.close()
        if error is None and self.geojson is not None and self._found is not None:
            write_output(self.geojson, self._found.to_geojson, "GeoJSON", after=" (the run store is complete)")

    def _end(self, error: BaseException | None) -> None:
        store = self._store
        if store is None and self._shared is not None:  # released: take the lock back for one write
            store = RunStore.join(self._shared.path, self.session, wait=self._shared.wait)
        if store is None:
            return
        try:
            if error is not None:
                status = f"stopped: {type(error).__name__}" + (f": {error}" if str(error) else "")
            else:
                self._failed = store.failed()
                status = "finished" if not self._failed else f"finished; {len(self._failed)} windows failed"
            store.end_session(status[:500])
        finally:
            if store is not self._store:
                store.close()
        self.session = None

    def warn_failed(self) -> None:
        """After closing: a :class:`~lazytiles.FailedWindowsWarning` naming the first window that failed,
        if any did, and the fix."""
        if not self._failed:
            return
        first, (reason, attempts) = next(iter(self._failed.items()))
        warnings.warn(
            FailedWindowsWarning(
                f"{len(self._failed)} of {len(self.table)} windows could not be read and are left out of the result "
                f"(window {first}, {attempts} attempt{'s' * (attempts > 1)}: {reason}); run again with "
                f"resume=True (CLI: --resume) to retry them; lt.open_run({str(self.path)!r}).failed lists them"
            ),
            stacklevel=3,
        )


class Recorder:
    """Outcomes of windows committed to a run store in batches: every ``batch_size`` windows, at most
    once every ``commit_interval`` seconds, each batch first handed to ``deliver`` when given (the Kafka
    worker publishes it and waits for the broker: a window done is a window delivered).

    Leaving its ``with`` block commits the rest; on an error, what finished before it is committed too
    (unless it had to be delivered first: it never was).
    """

    def __init__(
        self,
        store: RunStore,
        table: WindowTable,
        *,
        batch_size: int,
        commit_interval: float = 0.0,
        deliver: Deliver | None = None,
    ) -> None:
        self._store, self._table = store, table
        self._batch_size, self._interval, self._deliver = batch_size, commit_interval, deliver
        self._batch: list[WindowResult] = []
        self._last = time.monotonic()

    def add(self, position: int, outcome: Outcome) -> bool:
        """Record the outcome of the window at ``position``; True when that committed a batch."""
        index, found, error = outcome
        if index != self._table.indices[position]:  # pragma: no cover - lt.detect yields windows in order
            raise RuntimeError(f"lt.detect yielded window {index} where window {self._table.indices[position]} was due")
        self._batch.append(WindowResult(index, found, error, self._table.rect(position)))
        if len(self._batch) >= self._batch_size and time.monotonic() - self._last >= self._interval:
            return self.flush()
        return False

    def flush(self) -> bool:
        """Deliver and commit the windows held now; True if there were any."""
        if not self._batch:
            return False
        if self._deliver is not None:
            self._deliver(self._batch)
        self._store.commit(self._batch)
        self._batch, self._last = [], time.monotonic()
        return True

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        if error is None:
            self.flush()
        elif self._batch and self._deliver is None:
            with contextlib.suppress(Exception):  # what finished before the error is still good
                self._store.commit(self._batch)


@dataclass(frozen=True)
class SharedRun:
    """A run store shared by the processes of one session (a Beam job's workers), made by
    :meth:`RunLifecycle.release`: each write takes the store's lock for as long as it lasts, waiting up
    to ``wait`` seconds while another process holds it. Pickles as the path and the session."""

    path: str
    session: int | None
    wait: float

    def commit(self, results: Sequence[WindowResult]) -> None:
        """Commit windows done and failed to the session; a window already done (a retried bundle) is left out."""
        with RunStore.join(self.path, self.session, wait=self.wait) as store:
            done = set(store.done(among=[r.index for r in results]).tolist())
            store.commit([r for r in results if r.index not in done])

    def write(self, found: Detections, rule: MergeRule) -> None:
        """Write ``found``, merged by ``rule``, as the store's merged layer."""
        with RunStore.join(self.path, self.session, wait=self.wait) as store:
            store.write_merged(found, rule)


__all__ = ["Recorder", "RunLifecycle", "SharedRun", "check_bool", "check_path"]
