"""The whole job: :func:`detect_region` as one Beam pipeline over a run store, and the ``--runner beam`` CLI.

Its ``DoFn`` classes record each window done or failed in the run store and read back the windows
a previous run finished, so that a run resumes where the last one stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions

from ..detections import Detections
from ..errors import CRSError, InvalidArgumentError, RunStoreError
from ..windowing.sequence import WindowSequence
from .shards import _check_shard, shard_ranges
from .store import _done_among, _locked_store
from .transforms import DeadLetter, DetectWindows, WindowDetections, _abs, _merge_records, _merge_setup, _WriteOnce

log = logging.getLogger(__name__)

# -- the run store ---------------------------------------------------------------------------------------


def _result_of(item):
    from ..runs.store import WindowResult

    if isinstance(item, DeadLetter):
        return WindowResult(item.index, None, item.reason, item.window)
    return WindowResult(item.index, item.detections, None, item.window)


class _RecordWindows(beam.DoFn):
    """Commit windows done and failed to the run store, a bundle (or ``flush`` windows) at a time."""

    def __init__(self, path: str, session: int | None, flush: int = 1024) -> None:
        self._path, self._session, self._flush_at = path, session, flush

    def start_bundle(self) -> None:
        self._buffer: list[Any] = []

    def process(self, item):
        self._buffer.append(_result_of(item))
        if len(self._buffer) >= self._flush_at:
            self._flush()

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        with _locked_store(self._path, self._session) as store:
            done = _done_among(store, [r.index for r in self._buffer])  # a retried bundle commits nothing twice
            store.commit([r for r in self._buffer if r.index not in done])
        self._buffer = []


class _ReadStored(beam.DoFn):
    """The raw detections a run store holds for the windows of a shard (of done windows)."""

    def __init__(self, path: str, wins: WindowSequence) -> None:
        self._path, self._wins = path, wins

    def setup(self) -> None:
        from ..runs.store import RunStore

        self._store = RunStore.read(self._path)

    def teardown(self) -> None:
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()

    def process(self, shard):
        from ..runs.tables import RAW_FIELDS, RAW_LAYER, columns

        start, stop = _check_shard(shard, len(self._wins))
        part = self._wins[start:stop]
        indices = np.asarray(part.indices, dtype=np.int64)
        rects = part.pixel_windows()
        rows: list[tuple[Any, ...]] = []
        for a in range(0, len(indices), 500):
            chunk = indices[a : a + 500].tolist()
            rows += self._store._query(
                f"SELECT {', '.join(RAW_FIELDS)} FROM {RAW_LAYER} WHERE window_index IN ({','.join('?' * len(chunk))}) "
                "ORDER BY window_index, rank",
                chunk,
            )
        c = columns(rows, RAW_FIELDS)
        lo = np.searchsorted(c["window_index"], indices, side="left") if len(rows) else np.zeros(len(indices), int)
        hi = np.searchsorted(c["window_index"], indices, side="right") if len(rows) else np.zeros(len(indices), int)
        store = self._store
        for k in range(len(indices)):
            sl = slice(int(lo[k]), int(hi[k]))
            boxes = np.stack([c["x0"][sl], c["y0"][sl], c["x1"][sl], c["y1"][sl]], axis=1)
            d = Detections(boxes, c["score"][sl], c["label"][sl], c["window_index"][sl], partial=c["partial"][sl],
                           transform=store.transform, crs=store.crs)  # fmt: skip
            yield WindowDetections(start + k, int(indices[k]), tuple(int(v) for v in rects[k]), d)


# -- the whole job ---------------------------------------------------------------------------------------


def to_pipeline_options(options: Any) -> PipelineOptions:
    """``PipelineOptions`` from a list of flags (``["--runner=DirectRunner"]``), a dict, or as given."""
    if options is None:
        return PipelineOptions([])
    if isinstance(options, PipelineOptions):
        return options
    if isinstance(options, dict):
        return PipelineOptions.from_dictionary(options)
    if isinstance(options, str) or not all(isinstance(o, str) for o in options):
        raise InvalidArgumentError(
            f"pipeline_options must be a list of flags such as ['--runner=DirectRunner'], a dict or a "
            f"PipelineOptions, got {options!r}"
        )
    return PipelineOptions(list(options))


def detect_region(
    model: Any,
    wins: WindowSequence,
    out: str | os.PathLike[str] = "run.gpkg",
    *,
    pipeline_options: Any = None,
    resume: bool = True,
    force_new: bool = False,
    geojson: str | os.PathLike[str] | None = None,
    gpkg: str | os.PathLike[str] | None = None,
    batch_size: int = 8,
    device: Any = "cpu",
    workers: int = 1,
    preprocess: Any = None,
    score_threshold: float = 0.0,
    iou: float = 0.5,
    method: str = "union",
    metric: str = "ios",
    class_aware: bool = True,
    margin: float = 1.0,
    shard_size: int | None = None,
    cell_size: float | None = None,
    fanin: int = 4,
) -> Detections:
    """:func:`lazytiles.detect_region` as an Apache Beam job: detect, record, merge and write, on any runner.

    The run store ``out`` (the same GeoPackage ``lt.detect_region`` makes) is created, or resumed
    (its recipe must match), before the job starts; workers commit each window done or failed to it;
    windows done before are read back from it instead of being detected again. At the end one worker
    writes the merged detections to its ``detections`` layer and to ``geojson`` / ``gpkg``. Windows
    whose tiles cannot be read are dead letters: recorded as failed with the reason, left out, and
    reported with a :class:`~lazytiles.FailedWindowsWarning`; run again to retry them.

    Parameters
    ----------
    model
        ``"pkg.module:factory"`` or a TorchScript path (loaded by every worker), or a picklable model.
    wins, out, resume, force_new, geojson
        As in :func:`lazytiles.detect_region`. ``out`` must be reachable by every worker.
    pipeline_options
        Beam's options: a list of flags (``["--runner=DataflowRunner", "--project=...", ...]``), a
        dict or a ``PipelineOptions``. Default: the DirectRunner, in this process.
    gpkg
        Also write the merged detections to this GeoPackage (layer ``detections``, source CRS).
    batch_size, device, workers, preprocess, score_threshold
        As in :func:`lazytiles.detect`, on each worker.
    iou, method, metric, class_aware, margin
        As in :func:`lazytiles.merge`.
    shard_size
        As in :func:`shard_ranges`.
    cell_size, fanin
        As in :class:`MergeDetections`.

    Returns
    -------
    Detections
        The merged detections, read back from the run store: equal to
        ``lt.merge(lt.detect(model, wins))`` (the windows that failed left out).

    Raises
    ------
    RecipeMismatchError, RunLockedError, RunStoreError
        As :func:`lazytiles.detect_region` (checked before the job starts).

    Examples
    --------
    >>> import pathlib, tempfile, numpy as np, lazytiles as lt
    >>> from lazytiles.beam import detect_region
    >>> image = np.zeros((3, 512, 512), np.uint8)
    >>> image[1, 300:320, 100:140] = 255
    >>> wins = lt.windows(lt.ArraySource(image, token="beam-demo"), size=256, overlap=0.25)
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "run.gpkg"
    >>> detect_region("lazytiles.detection.models:blob_detector", wins, out).boxes   # the DirectRunner, here
    array([[100., 300., 140., 320.]])
    >>> lt.open_run(out).summary()["done"]
    9
    """
    from .. import __version__
    from ..detection.sequence import detect
    from ..runs.store import RunStore
    from ..runs.recipe import _window_table, run_recipe
    from ..runs.run import _check_bool, _open_store, warn_failed

    if not isinstance(wins, WindowSequence):
        raise InvalidArgumentError(f"wins must be a lazytiles.WindowSequence (made by lt.windows), got {type(wins).__name__}")
    if not isinstance(out, str | os.PathLike):
        raise InvalidArgumentError(f"out must be the path of a .gpkg file, got {type(out).__name__} {out!r}")
    _check_bool("resume", resume)
    _check_bool("force_new", force_new)
    for name, value in (("geojson", geojson), ("gpkg", gpkg)):
        if value is not None and not isinstance(value, str | os.PathLike):
            raise InvalidArgumentError(f"{name} must be a file path or None, got {value!r}")
    if geojson is not None and wins.source.crs is None:
        raise CRSError("geojson= writes lon/lat and needs the source's CRS, but it has none; leave geojson out")
    options = to_pipeline_options(pipeline_options)
    grid, merge_options = _merge_setup(wins, iou, method, metric, class_aware, margin, cell_size, fanin)
    merge_params = {k: merge_options[k] for k in ("iou", "method", "metric", "class_aware", "margin")}
    detector = DetectWindows(wins, model, shard_size=shard_size, batch_size=batch_size, device=device,
                             workers=workers, preprocess=preprocess, score_threshold=score_threshold)  # fmt: skip
    spec = os.fspath(model) if isinstance(model, str | os.PathLike) else None
    described = detect(spec or model, wins, device="cpu", progress=False).model  # the recipe needs the model
    indices, rects = _window_table(wins)
    if len(np.unique(indices)) != len(indices):
        raise InvalidArgumentError("wins holds some windows more than once; a run detects each window once")
    recipe = run_recipe(described, wins, preprocess=preprocess, score_threshold=score_threshold, indices=indices, rects=rects)

    path = Path(out).absolute()
    store = _open_store(path, recipe, indices, rects, wins, resume=resume, force_new=force_new)
    try:
        flags = options.get_all_options(drop_default=True)
        session = store.begin_session(
            {"runner": "beam", "beam": {k: str(v) for k, v in flags.items()}, "batch_size": batch_size,
             "device": str(device), "workers": workers},
            __version__,
        )  # fmt: skip
        done = np.isin(indices, store.done())
    finally:
        store.close()  # the workers take the lock for each commit
    todo_shards = shard_ranges(wins, shard_size, mask=~done)
    stored_shards = shard_ranges(wins, shard_size, mask=done)
    log.info("%s: %d of %d windows done; %d to detect in %d shards", path, int(done.sum()), len(indices),
             int((~done).sum()), len(todo_shards))  # fmt: skip

    status = "finished"
    try:
        with beam.Pipeline(options=options) as p:
            found = p | "Shards" >> beam.Create(todo_shards) | "Spread shards" >> beam.Reshuffle() | "Detect" >> detector
            _ = (
                (found.detections, found.dead_letter)
                | "Outcomes" >> beam.Flatten()
                | "Record windows" >> beam.ParDo(_RecordWindows(str(path), session))
            )
            stored = (
                p
                | "Stored shards" >> beam.Create(stored_shards)
                | "Spread stored" >> beam.Reshuffle()
                | "Read store" >> beam.ParDo(_ReadStored(str(path), wins))
            )
            merged = _merge_records((found.detections, stored) | "All windows" >> beam.Flatten(), grid, merge_options)
            src = wins.source
            sink = _WriteOnce(src.transform, src.crs, _abs(geojson), _abs(gpkg), str(path), merge_params, as_records=True)
            _ = p | "Once" >> beam.Create([None]) | "Write" >> beam.ParDo(sink, beam.pvalue.AsIter(merged))
    except BaseException as err:
        status = f"stopped: {type(err).__name__}: {err}"[:500]
        raise
    finally:
        with contextlib.suppress(Exception), _locked_store(str(path), session) as store:
            failed = store.failed()
            if status == "finished" and failed:
                status = f"finished; {len(failed)} windows failed"
            store.end_session(status)

    with contextlib.closing(RunStore.read(path)) as store:
        result = store.merged()
        failed = store.failed()
    if result is None:  # pragma: no cover - the job wrote it, or raised
        raise RunStoreError(f"the job finished but run store {str(path)!r} has no merged detections")
    warn_failed(failed, len(indices), out)
    return result


def run_cli(args: Any, wins: WindowSequence) -> Detections:
    """``lazytiles detect ... --runner beam [-- BEAM_OPTIONS]``: :func:`detect_region` with the CLI's arguments."""
    options = dict(resume=args.resume, force_new=args.force_new, geojson=args.geojson, batch_size=args.batch_size,
                   device=args.device, workers=args.workers)  # fmt: skip
    return detect_region(
        args.model,
        wins,
        args.out,
        pipeline_options=list(getattr(args, "runner_options", None) or []),
        **{k: v for k, v in options.items() if v is not None},
    )

