"""Durable runs: ``lt.detect_region`` stores each window's detections as it finishes; ``lt.open_run`` replays.

A region at zoom 18 can take hours. :func:`detect_region` runs ``lt.detect`` over the windows and
commits their raw detections to a run store (a GeoPackage, see :mod:`lazytiles.runs.store`) batch by batch; a
killed process loses at most the batch in flight, and running the same call again continues with the
windows still missing (and those that failed). At the end the stored detections are merged with
``lt.merge`` and written to the store's ``detections`` layer, which QGIS opens directly.

The store remembers the run's *recipe* — the source (credentials in its URL masked), the windows, the model,
the preprocessing, the lazytiles minor version, see :mod:`lazytiles.runs.recipe` — and resuming with a
different one is an error naming what differs (:class:`~lazytiles.RecipeMismatchError`). Merge parameters
are not part of it: the raw detections do not depend on them, so a resumed run, or :meth:`Run.merge` on a
finished one, merges with any.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..detections import Detections
from ..errors import InvalidArgumentError
from ..merging.boxes import Metric
from ..merging.rule import MergeRule, Method
from ..merging.streaming import Merger, merge_by_rule
from ..merging.window_table import WindowTable
from ..outputs.matching import Match
from ..outputs.sweep import sweep_merges
from ..outputs.table import Table
from ..windowing.sequence import WindowSequence
from .lifecycle import RunLifecycle, check_bool
from .recipe import DetectOptions
from .store import RunStore, StoredDetections

# -- detect_region -------------------------------------------------------------------------------------


def detect_region(
    model: Any,
    wins: WindowSequence,
    out: str | os.PathLike[str] = "run.gpkg",
    *,
    resume: bool = True,
    force_new: bool = False,
    geojson: str | os.PathLike[str] | None = None,
    batch_size: int = 8,
    device: Any = "cpu",
    workers: int = 1,
    preprocess: Any = None,
    score_threshold: float = 0.0,
    iou: float = MergeRule.iou,
    method: Method = MergeRule.method,
    metric: Metric = MergeRule.metric,
    class_aware: bool = MergeRule.class_aware,
    margin: float = MergeRule.margin,
    commit_interval: float = 1.0,
    progress: bool = True,
) -> Detections:
    """Detect over a region durably: store each window's detections as it finishes, then merge.

    Eager: it runs the model over every window not yet in the store ``out``, committing the raw
    detections of finished windows in batches, then merges all stored detections with
    ``lt.merge`` and writes them to the store's ``detections`` layer (a GeoPackage layer in the
    source's CRS). If the process is killed, calling it again with the same arguments continues
    where it stopped; a finished run is only merged again. The merged result equals
    ``lt.merge(lt.detect(model, wins), ...)``, however often the run was interrupted.

    Parameters
    ----------
    model, wins, batch_size, device, workers, preprocess, score_threshold
        As in :func:`lazytiles.detect`.
    out
        The run store, a GeoPackage file (created if missing; its directory must exist).
    resume
        Continue the run in an existing ``out`` (default). Its recipe — source (but for credentials in
        its URL), windows, model, preprocessing, score threshold, lazytiles major.minor version — must
        match; windows done are skipped, windows that failed are tried again. False: an existing
        ``out`` is an error.
    force_new
        Replace an existing ``out`` with a new run (a run store, or a file that is not a readable
        database; never another GeoPackage).
    geojson
        Also write the merged detections to this GeoJSON file (lon/lat, RFC 7946).
    iou, method, metric, class_aware, margin
        As in :func:`lazytiles.merge`. Not part of the recipe: a resumed run merges with the values given.
    commit_interval
        Seconds between commits, at most (finished windows are committed with the batch that ends
        them); 0 commits every ``batch_size`` windows. A kill loses at most this much work.
    progress
        Show a progress bar (tqdm) over all windows of the run, starting at those already done.

    Returns
    -------
    Detections
        The merged detections of every window done. Windows whose tiles could not be read (after
        the source's retries) are recorded as failed, left out, and reported with a
        :class:`FailedWindowsWarning`; resume to retry them.

    Raises
    ------
    RecipeMismatchError
        ``out`` holds a run of a different recipe; the message names the parameter that differs.
    RunLockedError
        Another process is writing ``out``.
    RunStoreError
        ``out`` cannot be created or written (missing or read-only directory), is damaged, or is
        not a run store; the message names the file and what is wrong. Nothing is overwritten, and
        no lock is left held.

    Examples
    --------
    >>> import pathlib, tempfile, numpy as np, lazytiles as lt
    >>> from lazytiles.detection.models import BlobDetector
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> image = np.zeros((3, 512, 512), np.uint8)
    >>> image[1, 300:320, 100:140] = 255
    >>> wins = lt.windows(lt.ArraySource(image, token="demo"), size=256, overlap=0.25)
    >>> found = lt.detect_region(BlobDetector(), wins, out=tmp / "run.gpkg", progress=False)
    >>> found.boxes
    array([[100., 300., 140., 320.]])
    >>> lt.open_run(tmp / "run.gpkg").summary()["done"]
    9
    """
    options = DetectOptions(batch_size, device, workers, preprocess, score_threshold)
    run = RunLifecycle(wins, out, options, resume=resume, force_new=force_new, geojson=geojson)
    check_bool("progress", progress)
    _check_interval(commit_interval)
    rule = MergeRule(iou=iou, method=method, metric=metric, class_aware=class_aware, margin=margin)
    dets = options.detect(model, wins)  # checks the detection arguments; runs nothing
    with run.open(dets.model, options.session()):
        found = _run_windows(run, dets, rule, commit_interval, progress)
        run.write(found, rule)
    run.warn_failed()
    return found


def _check_interval(value: Any) -> None:
    """``commit_interval`` is a number of seconds >= 0 (any real number but a bool)."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not number or not (0 <= value < math.inf):
        raise InvalidArgumentError(f"commit_interval must be a number of seconds >= 0, got {value!r}")


def _run_windows(run: RunLifecycle, dets: Any, rule: MergeRule, commit_interval: float, progress: bool) -> Detections:
    """Run the windows still to do, committing their outcomes in batches, and merge every window as
    it comes, in run order: stored windows from the store, the others from the model. Returns the
    merged detections (what merging the finished store gives, without reading it back)."""
    from tqdm.auto import tqdm

    merger = Merger(run.table, rule)
    stored = run.stored()
    empty = Detections.empty(transform=stored.transform, crs=stored.crs)
    total, todo = len(run.table), len(run.todo)
    desc, show = f"detect -> {run.path.name}", progress and todo > 0
    bar = tqdm(total=total, initial=total - todo, unit="win", desc=desc, disable=not show)
    record = run.recorder(batch_size=run.options.batch_size, commit_interval=commit_interval)
    with bar, record, contextlib.closing(run.outcomes(dets)) as outcomes:
        for k in range(total):
            if run.done[k]:
                merger.add(stored[k])
                continue
            position, outcome = next(outcomes)
            record.add(position, outcome)
            merger.add(empty if outcome[1] is None else outcome[1])
            bar.update(1)
    return merger.result()


# -- open_run ------------------------------------------------------------------------------------------


class Run:
    """A run store opened for reading: its recipe, progress, raw detections, and merging them again.

    Made by :func:`open_run`. Reading takes no lock, so a run can be watched while another process
    writes it. Pickles as its path.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._store = RunStore.read(self.path)

    @property
    def recipe(self) -> dict[str, Any]:
        """The parameters the run was made with (see :func:`lazytiles.runs.recipe.run_recipe`)."""
        return dict(self._store.recipe)

    @property
    def windows(self) -> np.ndarray:
        """Indices of the run's windows, in its order."""
        return self._store.windows.indices

    @property
    def window_table(self) -> WindowTable:
        """The run's windows with their pixel rectangles (what ``lt.evaluate(windows=...)`` takes)."""
        return self._store.windows

    @property
    def done(self) -> np.ndarray:
        """Indices of the windows done, ascending."""
        return self._store.done()

    @property
    def failed(self) -> dict[int, str]:
        """``{window index: reason}`` of the windows whose tiles could not be read (at the last attempt)."""
        return {i: reason for i, (reason, _) in self._store.failed().items()}

    @property
    def missing(self) -> np.ndarray:
        """Indices of the windows neither done nor failed, in run order."""
        w = self.windows
        return w[~np.isin(w, np.concatenate([self.done, np.fromiter(self._store.failed(), np.int64)]))]

    @property
    def complete(self) -> bool:
        """Every window is done."""
        return len(self.done) == len(self.windows)

    @property
    def sessions(self) -> list[dict[str, Any]]:
        """One dict per process that worked on the run: ``session``, ``started``, ``ended``, ``status``
        (``running``, ``finished``, ``stopped: <error>`` or ``killed``), ``pid``, ``host``,
        ``lazytiles_version``, ``windows_done``, ``windows_failed``."""
        return self._store.sessions()

    def detections(self) -> Detections:
        """The raw detections of every window done, before merging, in window order."""
        return self._store.raw().concat()

    def per_window(self) -> StoredDetections:
        """The raw detections as a sequence of one :class:`~lazytiles.Detections` per window of the run."""
        return self._store.raw()

    def result(self) -> Detections | None:
        """The merged detections stored by the last merge (the ``detections`` layer), or None."""
        return self._store.merged()

    def merge(
        self,
        *,
        iou: float | None = None,
        method: str | None = None,
        metric: str | None = None,
        class_aware: bool | None = None,
        margin: float | None = None,
        progress: bool = False,
    ) -> Detections:
        """Merge the stored raw detections again (replay; no model runs, nothing is written).

        Parameters left out take the values of the run's last merge (``lt.merge``'s defaults before
        one). The result equals ``lt.merge(lt.detect(model, wins), ...)`` with the same parameters.
        """
        given: dict[str, Any] = dict(iou=iou, method=method, metric=metric, class_aware=class_aware, margin=margin)
        last = self._store.merge_rule or MergeRule()
        rule = dataclasses.replace(last, **{k: v for k, v in given.items() if v is not None})
        return merge_by_rule(self._store.raw(), rule, progress=progress)

    def sweep(
        self,
        *,
        iou: Any = None,
        method: Any = None,
        metric: Any = None,
        truth: Any = None,
        match: Match = "box",
        eval_iou: float = 0.5,
    ) -> Table:
        """Replay the merge with every combination of settings (no model runs); one row per setting.

        ``iou``, ``method``, ``metric``: a value or a list (left out: the run's last merge's). Each
        row has the settings and ``objects``, the merged count; with ``truth`` (Detections or a vector
        file, as :func:`lazytiles.evaluate` takes) also ``precision``, ``recall``, ``f1``, ``ap`` at
        ``eval_iou`` (by ``match``) and ``seam_recall``, the recall of objects no window holds whole.
        """
        raw = self._store.raw()
        base = self._store.merge_rule or MergeRule()
        return sweep_merges(
            raw, base, iou=iou, method=method, metric=metric, truth=truth, match=match, eval_iou=eval_iou
        )

    def summary(self) -> dict[str, Any]:
        """Progress and outcome: window counts, failed windows with reasons, merge state, sessions.

        ``running`` is True while a process is writing the run (on this host: its process is alive).
        """
        counts = self._store.counts()
        failed = self._store.failed()
        n = len(self.windows)
        merged = self._store.merged_info
        sessions = self._store.sessions()
        return {
            "path": str(self.path),
            "windows": n,
            "done": counts["done"],
            "failed": counts["failed"],
            "missing": n - counts["done"] - counts["failed"],
            "complete": counts["done"] == n,
            "raw_detections": counts["raw_detections"],
            "merged_detections": None if merged is None else merged["count"],
            "merge": None if merged is None else merged["params"],
            "failed_windows": {i: {"error": reason, "attempts": a} for i, (reason, a) in failed.items()},
            "created": self._store.created,
            "sessions": len(sessions),
            "running": any(s["status"] == "running" and _alive(s["pid"], s["host"]) for s in sessions),
            "lazytiles_version": self._store.recipe.get("lazytiles.version"),
        }

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (open_run, (str(self.path),))

    def __repr__(self) -> str:
        s = self._store.counts()
        return (
            f"<Run {str(self.path)!r}: {s['done']} of {len(self.windows)} windows done, {s['failed']} failed, "
            f"{s['raw_detections']} raw detections>"
        )


def _alive(pid: int | None, host: str | None) -> bool:
    """Whether the process of a session still runs (assumed so on another host)."""
    import socket

    if pid is None or host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def open_run(path: str | os.PathLike[str]) -> Run:
    """Open a run store made by :func:`detect_region`, read-only: ``lt.open_run("run.gpkg").merge(iou=0.3)``.

    Reads only what is asked for; takes no lock, so it works while another process writes the run.

    Raises
    ------
    RunStoreError
        No file at ``path``, or it is not a readable run store.

    Examples
    --------
    A red blob across the seam of two overlapping windows: two raw boxes, one object.

    >>> import pathlib, tempfile, numpy as np, lazytiles as lt
    >>> from lazytiles.detection.models import BlobDetector
    >>> image = np.zeros((3, 256, 512), np.uint8)
    >>> image[0, 100:120, 180:220] = 255
    >>> wins = lt.windows(lt.ArraySource(image, token="example"), size=256, overlap=0.25)
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "run.gpkg"
    >>> found = lt.detect_region(BlobDetector(), wins, out=out, progress=False)
    >>> run = lt.open_run(out)
    >>> run
    <Run '...run.gpkg': 3 of 3 windows done, 0 failed, 2 raw detections>
    >>> run.detections().boxes                  # as the model saw it, window by window
    array([[180., 100., 220., 120.],
           [192., 100., 220., 120.]])
    >>> run.merge(iou=0.3).boxes                # replay: merged again, no model
    array([[180., 100., 220., 120.]])
    >>> run.close()
    """
    if not isinstance(path, str | os.PathLike):
        raise InvalidArgumentError(f"path must be the path of a run store (.gpkg), got {type(path).__name__}")
    return Run(path)


__all__ = ["Run", "detect_region", "open_run"]
