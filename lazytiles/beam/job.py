"""The whole job: :func:`detect_region` as one Beam pipeline over a run store, and the ``--runner beam`` CLI.

Its ``DoFn`` classes record each window done or failed in the run store and read back the windows
a previous run finished, so that a run resumes where the last one stopped.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from ..detections import Detections
from ..errors import InvalidArgumentError, RunStoreError
from ..merging.rule import MergeRule
from ..runs.lifecycle import RunLifecycle, SharedRun, check_path
from ..runs.recipe import DetectOptions
from ..runs.store import RunStore, WindowResult
from ..windowing.sequence import WindowSequence
from .shards import _check_shard, shard_ranges
from .transforms import (
    DeadLetter,
    DetectWindows,
    WindowDetections,
    _merge_records,
    _no_beam_hints,
    _StoreSink,
    _WriteOnce,
    merge_grid,
)

#: How long a worker waits for another to finish writing the run store before giving up, seconds.
STORE_WAIT = 600.0

# -- the run store ---------------------------------------------------------------------------------------


def _result_of(item: WindowDetections | DeadLetter) -> WindowResult:
    if isinstance(item, DeadLetter):
        return WindowResult(item.index, None, item.reason, item.window)
    return WindowResult(item.index, item.detections, None, item.window)


class _RecordWindows(beam.DoFn):
    """Commit windows done and failed to the run store, a bundle (or ``flush`` windows) at a time."""

    def __init__(self, run: SharedRun, flush: int = 1024) -> None:
        self._run, self._flush_at = run, flush

    def start_bundle(self) -> None:
        self._buffer: list[WindowResult] = []

    @_no_beam_hints
    def process(self, item: WindowDetections | DeadLetter) -> None:
        self._buffer.append(_result_of(item))
        if len(self._buffer) >= self._flush_at:
            self._flush()

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._run.commit(self._buffer)  # a retried bundle commits nothing twice
        self._buffer = []


class _ReadStored(beam.DoFn):
    """The raw detections a run store holds for the windows of a shard (of done windows)."""

    def __init__(self, path: str, wins: WindowSequence) -> None:
        self._path, self._wins = path, wins

    def setup(self) -> None:
        self._store = RunStore.read(self._path)

    def teardown(self) -> None:
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()

    @_no_beam_hints
    def process(self, shard: Any) -> Iterator[WindowDetections]:
        start, stop = _check_shard(shard, len(self._wins))
        stored = self._store.raw(slice(start, stop))
        for k, found in enumerate(stored):
            yield WindowDetections(start + k, int(stored.windows.indices[k]), stored.windows.rect(k), found)


# -- the whole job ---------------------------------------------------------------------------------------


def to_pipeline_options(options: Any) -> PipelineOptions:
    """``PipelineOptions`` from a list of flags (``["--runner=DirectRunner"]``), a dict, or as given."""
    if options is None:
        return PipelineOptions([])
    if isinstance(options, PipelineOptions):
        return options
    if isinstance(options, dict):
        built: PipelineOptions = PipelineOptions.from_dictionary(options)
        return built
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
    detect_options: DetectOptions = DetectOptions(),
    merge_rule: MergeRule = MergeRule(),
    pipeline_options: Any = None,
    resume: bool = True,
    force_new: bool = False,
    geojson: str | os.PathLike[str] | None = None,
    gpkg: str | os.PathLike[str] | None = None,
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
    detect_options
        How ``lt.detect`` runs on each worker: a :class:`~lazytiles.runs.recipe.DetectOptions` (batch
        size, device, reader workers, preprocessing, score threshold).
    merge_rule
        The :class:`~lazytiles.MergeRule` (default: ``lt.merge``'s).
    pipeline_options
        Beam's options: a list of flags (``["--runner=DataflowRunner", "--project=...", ...]``), a
        dict or a ``PipelineOptions``. Default: the DirectRunner, in this process.
    gpkg
        Also write the merged detections to this GeoPackage (layer ``detections``, source CRS).
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
    # geojson is checked here and written by the worker that writes the merged layer (workers reach `out`)
    run = RunLifecycle(wins, out, detect_options, resume=resume, force_new=force_new, geojson=geojson)
    check_path("gpkg", gpkg)
    if not isinstance(merge_rule, MergeRule):
        raise InvalidArgumentError(f"merge_rule must be an lt.MergeRule(...), got {merge_rule!r}")
    options = to_pipeline_options(pipeline_options)
    grid = merge_grid(wins, merge_rule, cell_size, fanin)
    detector = DetectWindows(wins, model, shard_size=shard_size, **detect_options.kwargs())
    spec = os.fspath(model) if isinstance(model, str | os.PathLike) else None
    on_cpu = dataclasses.replace(detect_options, device="cpu")
    described = on_cpu.detect(spec or model, wins).model  # the recipe needs the model
    flags = {k: str(v) for k, v in options.get_all_options(drop_default=True).items()}
    with run.open(described, {"runner": "beam", "beam": flags, **detect_options.session()}):
        done = run.done
        shared = run.release(wait=STORE_WAIT)  # the workers take the store's lock for each commit
        with beam.Pipeline(options=options) as p:
            todo = p | "Shards" >> beam.Create(shard_ranges(wins, shard_size, mask=~done))
            found = todo | "Spread shards" >> beam.Reshuffle() | "Detect" >> detector
            _ = (
                (found.detections, found.dead_letter)
                | "Outcomes" >> beam.Flatten()
                | "Record windows" >> beam.ParDo(_RecordWindows(shared))
            )
            stored = (
                p
                | "Stored shards" >> beam.Create(shard_ranges(wins, shard_size, mask=done))
                | "Spread stored" >> beam.Reshuffle()
                | "Read store" >> beam.ParDo(_ReadStored(shared.path, wins))
            )
            merged = _merge_records((found.detections, stored) | "All windows" >> beam.Flatten(), grid, merge_rule)
            sink = _WriteOnce(wins, geojson, gpkg, store=_StoreSink(shared, merge_rule), as_records=True)
            _ = p | "Once" >> beam.Create([None]) | "Write" >> beam.ParDo(sink, beam.pvalue.AsIter(merged))
    with RunStore.read(shared.path) as store:
        result = store.merged()
    if result is None:  # pragma: no cover - the job wrote it, or raised
        raise RunStoreError(f"the job finished but run store {shared.path!r} has no merged detections")
    run.warn_failed()
    return result


def run_cli(args: Any, wins: WindowSequence) -> Detections:
    """``lazytiles detect ... --runner beam [-- BEAM_OPTIONS]``: :func:`detect_region` with the CLI's arguments."""
    given = {"batch_size": args.batch_size, "device": args.device, "workers": args.workers}
    run = {"resume": args.resume, "force_new": args.force_new, "geojson": args.geojson}
    return detect_region(
        args.model,
        wins,
        args.out,
        detect_options=DetectOptions(**{k: v for k, v in given.items() if v is not None}),
        pipeline_options=list(getattr(args, "runner_options", None) or []),
        **{k: v for k, v in run.items() if v is not None},
    )
