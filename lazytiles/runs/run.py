"""Durable runs: ``lt.detect_region`` stores each window's detections as it finishes; ``lt.open_run`` replays.

A region at zoom 18 can take hours. :func:`detect_region` runs ``lt.detect`` over the windows and
commits their raw detections to a run store (a GeoPackage, see :mod:`lazytiles.runs.store`) batch by batch; a
killed process loses at most the batch in flight, and running the same call again continues with the
windows still missing (and those that failed). At the end the stored detections are merged with
``lt.merge`` and written to the store's ``detections`` layer, which QGIS opens directly.

The store remembers the run's *recipe* — the source, the windows, the model, the preprocessing, the
lazytiles version, see :mod:`lazytiles.runs.recipe` — and resuming with a different one is an error naming
what differs (:class:`~lazytiles.RecipeMismatchError`). Merge parameters are not part of it: the raw detections do
not depend on them, so a resumed run, or :meth:`Run.merge` on a finished one, merges with any.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..detections import Detections
from ..errors import CRSError, FailedWindowsWarning, InvalidArgumentError, RunStoreError
from .store import RunStore, StoredDetections, WindowResult
from .recipe import _window_table, check_recipe, run_recipe
from ..windowing.sequence import WindowSequence

log = logging.getLogger(__name__)

#: Merge parameters of ``detect_region`` and their defaults (those of ``lt.merge``).
MERGE_DEFAULTS: dict[str, Any] = {"iou": 0.5, "method": "union", "metric": "ios", "class_aware": True, "margin": 1.0}


# -- opening the store ---------------------------------------------------------------------------------


def _open_store(
    out: Path,
    recipe: dict[str, Any],
    indices: np.ndarray,
    rects: np.ndarray,
    wins: WindowSequence,
    *,
    resume: bool,
    force_new: bool,
) -> RunStore:
    src = wins.source
    if not out.exists():
        return RunStore.create(out, recipe, indices=indices, rects=rects, transform=src.transform, crs=src.crs)
    if out.is_dir():
        raise RunStoreError(f"out={str(out)!r} is a directory; give the path of a .gpkg file to store the run in")
    if force_new:
        lock = RunStore.lock(out)  # nobody may be writing what we replace
        try:
            kind = RunStore.classify(out)
            if kind == "other":
                raise RunStoreError(
                    f"{str(out)!r} is a GeoPackage or SQLite database that lazytiles did not make; refusing to replace "
                    "it even with force_new=True (nothing was changed); delete it yourself or choose another out= path"
                )
            log.info("replacing %s (%s) with a new run", out, "a run store" if kind == "store" else "an unreadable file")
            return RunStore.create(
                out, recipe, indices=indices, rects=rects, transform=src.transform, crs=src.crs, replace=True
            )
        finally:
            lock.release()  # the new file has its own lock
    if not resume:
        raise RunStoreError(
            f"{str(out)!r} already exists; pass resume=True (CLI: --resume) to continue the run stored there, "
            "force_new=True (CLI: --force-new) to replace it, or choose another out= path (nothing was changed)"
        )
    store = RunStore.resume(out)
    try:
        check_recipe(out, store.recipe, recipe)
    except BaseException:
        store.close()
        raise
    store.start_writing()
    return store


# -- detect_region -------------------------------------------------------------------------------------


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be True or False, got {value!r}")


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
    iou: float = MERGE_DEFAULTS["iou"],
    method: str = MERGE_DEFAULTS["method"],
    metric: str = MERGE_DEFAULTS["metric"],
    class_aware: bool = MERGE_DEFAULTS["class_aware"],
    margin: float = MERGE_DEFAULTS["margin"],
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
        Continue the run in an existing ``out`` (default). Its recipe — source, windows, model,
        preprocessing, score threshold, lazytiles version — must match; windows done are skipped,
        windows that failed are tried again. False: an existing ``out`` is an error.
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
        not a run store. Nothing is overwritten.

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
    from .. import __version__
    from ..detection.sequence import detect
    from ..merging.streaming import _check_options

    if not isinstance(wins, WindowSequence):
        raise InvalidArgumentError(
            f"wins must be a lazytiles.WindowSequence (made by lt.windows), got {type(wins).__name__}"
        )
    if not isinstance(out, str | os.PathLike):
        raise InvalidArgumentError(f"out must be the path of a .gpkg file, got {type(out).__name__} {out!r}")
    _check_bool("resume", resume)
    _check_bool("force_new", force_new)
    _check_bool("progress", progress)
    if geojson is not None and not isinstance(geojson, str | os.PathLike):
        raise InvalidArgumentError(f"geojson must be a file path or None, got {geojson!r}")
    if geojson is not None and wins.source.crs is None:
        raise CRSError(
            "geojson= writes lon/lat and needs the source's CRS, but it has none; leave geojson out, or give "
            "the source a crs"
        )
    if isinstance(commit_interval, bool) or not isinstance(commit_interval, numbers.Real) or not (
        0 <= commit_interval < math.inf
    ):
        raise InvalidArgumentError(f"commit_interval must be a number of seconds >= 0, got {commit_interval!r}")
    _check_options(iou, method, metric, margin)
    merge_params = {"iou": float(iou), "method": method, "metric": metric, "class_aware": bool(class_aware), "margin": float(margin)}
    # checks the detection arguments; runs nothing
    dets = detect(
        model, wins, batch_size=batch_size, device=device, workers=workers, preprocess=preprocess,
        score_threshold=score_threshold, progress=False,
    )  # fmt: skip
    indices, rects = _window_table(wins)
    if len(np.unique(indices)) != len(indices):
        raise InvalidArgumentError("wins holds some windows more than once; a run detects each window once")
    recipe = run_recipe(
        dets.model, wins, preprocess=preprocess, score_threshold=score_threshold, indices=indices, rects=rects
    )

    out = Path(out)
    store = _open_store(out, recipe, indices, rects, wins, resume=resume, force_new=force_new)
    try:
        store.begin_session({"batch_size": batch_size, "device": str(device), "workers": workers}, __version__)
        stored = store.raw()
        done = np.isin(indices, store.done())
        if done.any():
            retry = len(set(store.failed()) & set(indices[~done].tolist()))
            log.info("%s: %d of %d windows done; running %d (%d failed before)", out, int(done.sum()),
                     len(indices), int((~done).sum()), retry)  # fmt: skip
        found = _run_windows(dets, stored, done, store, merge_params, commit_interval, batch_size, progress, out)
        store.write_merged(found, merge_params)
        failed = store.failed()
        store.end_session("finished" if not failed else f"finished; {len(failed)} windows failed")
    except BaseException as err:
        with contextlib.suppress(Exception):
            store.end_session(f"stopped: {type(err).__name__}: {err}"[:500])
        raise
    finally:
        store.close()

    if geojson is not None:
        _write_geojson(found, Path(geojson))
    warn_failed(failed, len(indices), out)
    return found


def warn_failed(failed: dict[int, tuple[str, int]], total: int, out: Any) -> None:
    """Issue a :class:`FailedWindowsWarning` naming the first of ``failed`` windows, if any, and the fix."""
    if not failed:
        return
    first, (reason, attempts) = next(iter(failed.items()))
    warnings.warn(
        FailedWindowsWarning(
            f"{len(failed)} of {total} windows could not be read and are left out of the result "
            f"(window {first}, {attempts} attempt{'s' * (attempts > 1)}: {reason}); run again with "
            f"resume=True (CLI: --resume) to retry them; lt.open_run({str(out)!r}).failed lists them"
        ),
        stacklevel=3,
    )


def _run_windows(
    dets: Any,
    stored: StoredDetections,
    done: np.ndarray,
    store: RunStore,
    merge_params: dict[str, Any],
    commit_interval: float,
    batch_size: int,
    progress: bool,
    out: Path,
) -> Detections:
    """Run the windows not ``done``, committing their outcomes in batches, and merge every window as
    it comes, in run order: stored windows from ``stored``, the others from the model. Returns the
    merged detections (what merging the finished store gives, without reading it back)."""
    from tqdm.auto import tqdm

    from ..merging.streaming import Merger

    merger = Merger(stored.windows, **merge_params)
    indices, rects = stored.windows.indices, stored.windows.pixel_windows()
    todo = np.flatnonzero(~done)
    empty = Detections.empty(transform=stored.transform, crs=stored.crs)
    buffer: list[WindowResult] = []
    last = time.monotonic()
    total = len(indices)
    bar = tqdm(
        total=total, initial=total - len(todo), unit="win", desc=f"detect -> {out.name}", disable=not (progress and len(todo))
    )  # fmt: skip
    stream = dets[todo].outcomes() if len(todo) else iter(())
    try:
        for k in range(total):
            if done[k]:
                merger.add(stored[k])
                continue
            index, found, error = next(stream)
            if index != indices[k]:  # pragma: no cover - lt.detect yields windows in order
                raise RuntimeError(f"lt.detect yielded window {index} where window {indices[k]} was due")
            buffer.append(WindowResult(index, found, error, tuple(rects[k].tolist())))
            merger.add(empty if found is None else found)
            if len(buffer) >= batch_size and time.monotonic() - last >= commit_interval:
                store.commit(buffer)
                buffer, last = [], time.monotonic()
            bar.update(1)
    except BaseException:
        if hasattr(stream, "close"):
            stream.close()  # stops the pipeline's threads now
        if buffer:
            with contextlib.suppress(Exception):  # what finished before the error is still good
                store.commit(buffer)
        raise
    finally:
        bar.close()
    store.commit(buffer)
    return merger.result()


def _merge(stored: StoredDetections, params: dict[str, Any], progress: bool) -> Detections:
    from ..merging.streaming import merge

    return merge(stored, windows=stored.windows, progress=progress, **params)


def _write_geojson(found: Detections, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        found.to_geojson(tmp)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise RunStoreError(f"cannot write GeoJSON {str(path)!r}: {err} (the run store is complete)") from err


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
        from ..merging.streaming import _check_options

        params = dict(self._store.merge_params or MERGE_DEFAULTS)
        given = {"iou": iou, "method": method, "metric": metric, "class_aware": class_aware, "margin": margin}
        params.update({k: v for k, v in given.items() if v is not None})
        _check_options(params["iou"], params["method"], params["metric"], params["margin"])
        return _merge(self._store.raw(), params, progress)

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


__all__ = ["Run", "check_recipe", "detect_region", "open_run", "run_recipe"]
