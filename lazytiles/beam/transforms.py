"""The Beam transforms: detect windows shard by shard, merge their detections across seams, write them once.

:class:`DetectWindows`, :class:`MergeDetections` and :class:`WriteDetections` with the ``DoFn`` classes
they apply, and the values that travel between them (:class:`WindowDetections`, :class:`DeadLetter`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import apache_beam as beam
from apache_beam.metrics.metric import Metrics
from apache_beam.pvalue import DoOutputsTuple, PBegin, PCollection, TaggedOutput
from apache_beam.typehints.decorators import no_annotations
from apache_beam.utils.shared import Shared

from ..detections import Detections
from ..errors import CRSError, InvalidArgumentError, LazyTilesError, WorkerError
from ..merging.cells import (
    MERGED,
    RECORD,
    CellGrid,
    Key,
    cell_grid,
    merged_detections,
    merged_records,
    settle_cell,
    window_chunk,
)
from ..merging.chunks import Chunk
from ..merging.rule import MergeRule
from ..runs.files import write_output
from ..runs.lifecycle import SharedRun
from ..runs.recipe import DetectOptions
from ..sources.http import redact
from ..windowing.sequence import WindowSequence
from .shards import _check_shard, shard_ranges

log = logging.getLogger(__name__)

#: Tags of :class:`DetectWindows`' outputs.
DETECTIONS, DEAD_LETTER = "detections", "dead_letter"

#: What reading a window may raise and still make it a dead letter rather than fail its bundle: any
#: error while its tiles are fetched, decoded and assembled (TileFetchError and TileMissingError, a
#: SourceOpenError where a worker cannot reopen the source, GDAL's errors, undecodable images). Only
#: reads are tolerated this way: an error of the model or its preprocessing fails the bundle.
READ_ERRORS: tuple[type[BaseException], ...] = (Exception,)

_F = TypeVar("_F", bound=Callable[..., Any])


def _no_beam_hints(fn: _F) -> _F:
    """``fn``'s annotations are for mypy: Beam reads none of them as type hints (which would change how
    it checks and encodes elements; postponed annotations it would read as ``Any``)."""
    no_annotations(fn)
    return fn


# -- values that travel ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class WindowDetections:
    """One window's detections, as :class:`DetectWindows` emits them.

    ``position`` is the window's place in the sequence (the merge's order), ``index`` its
    :attr:`lazytiles.Window.index`, ``window`` its pixel area ``(col_off, row_off, width, height)``
    and ``detections`` what the model found, in the source's pixels (as ``lt.detect`` gives them).
    """

    position: int
    index: int
    window: tuple[int, int, int, int]
    detections: Detections


@dataclass(frozen=True)
class DeadLetter:
    """A window that could not be read (its tiles, after the source's retries; a source that could not be
    reopened; an image that does not decode): where it is and why (credentials in URLs masked)."""

    index: int
    position: int
    window: tuple[int, int, int, int]
    reason: str


# -- detecting -----------------------------------------------------------------------------------------


class _Loaded:
    """A model held for :class:`~apache_beam.utils.shared.Shared` (which keeps a weak reference)."""

    def __init__(self, model: Any) -> None:
        self.model = model


class _DetectShard(beam.DoFn):
    """Run ``lt.detect`` over each shard ``(start, stop)``; the model is loaded once per worker process."""

    def __init__(self, wins: WindowSequence, model: Any, options: DetectOptions, shared: Shared) -> None:
        self._wins, self._model, self._options, self._shared = wins, model, options, shared
        self._windows = Metrics.counter("lazytiles", "windows_done")
        self._failed = Metrics.counter("lazytiles", "windows_failed")
        self._boxes = Metrics.counter("lazytiles", "boxes")

    def setup(self) -> None:
        from ..detection.models import load_model

        model = self._model
        if isinstance(model, str):  # a spec: loaded once per process, shared by its threads
            model = self._shared.acquire(lambda: _Loaded(load_model(self._model)), tag=self._model).model
        self._dets = self._options.detect(model, self._wins)

    @_no_beam_hints
    def process(self, shard: Any) -> Iterator[WindowDetections | TaggedOutput[str, DeadLetter]]:
        start, stop = _check_shard(shard, len(self._wins))
        position = start
        try:
            for index, found, error in self._dets[start:stop].outcomes(tolerate=READ_ERRORS):
                w = self._wins.pixel_window(position)
                rect = (int(w.col_off), int(w.row_off), int(w.width), int(w.height))
                if error is None:
                    assert found is not None  # outcomes gives a window's detections or its error
                    self._windows.inc()
                    self._boxes.inc(len(found))
                    yield WindowDetections(position, int(index), rect, found)
                else:
                    reason = redact(error)
                    self._failed.inc()
                    log.warning("window %d (position %d) goes to the dead letters: %s", index, position, reason)
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(int(index), position, rect, reason))
                position += 1
        except LazyTilesError:
            raise  # the model's errors name their windows
        except Exception as err:  # the model or its preprocessing, on the batch after the last window out
            batch = self._wins.indices[position : min(stop, position + self._options.batch_size)]
            raise WorkerError(
                f"detecting the windows {_span(batch)} (positions {position}.. of shard {start}..{stop}) failed: "
                f"{type(err).__name__}: {redact(str(err))}"
            ) from err


class DetectWindows(beam.PTransform[PBegin | PCollection[tuple[int, int]], DoOutputsTuple]):
    """Detect objects in a window sequence, shard by shard: ``lt.detect`` as a Beam transform.

    Applied to a pipeline (``p | DetectWindows(wins, model)``) it makes its shards with
    :func:`shard_ranges`; applied to a PCollection of ``(start, stop)`` ranges it detects those. A
    ``DoFn`` loads the model in ``setup``, once per worker process, and reads each shard with the
    batched, prefetching pipeline of ``lt.detect``, in the sequence's cache-aware order.

    Parameters
    ----------
    wins
        The windows; it travels to the workers as its recipe (the source's path and the plan).
    model
        ``"pkg.module:factory"`` or a TorchScript path (loaded by each worker with
        :func:`lazytiles.detection.models.load_model`), or a picklable model (an ``nn.Module``).
    shard_size
        As in :func:`shard_ranges` (when applied to a pipeline).
    batch_size, device, workers, preprocess, score_threshold
        As in :func:`lazytiles.detect`. ``device`` is checked on the workers, not here (a job may be
        launched from a machine without the workers' GPU).

    Returns
    -------
    apache_beam.pvalue.DoOutputsTuple
        ``.detections``: one :class:`WindowDetections` per window read; ``.dead_letter``: one
        :class:`DeadLetter` per window that could not be read (any error while reading it, see
        :data:`READ_ERRORS`; the job goes on). An error of the model fails the bundle, naming its windows.

    Examples
    --------
    >>> import apache_beam as beam, numpy as np, lazytiles as lt
    >>> from lazytiles.beam import DetectWindows
    >>> image = np.zeros((3, 256, 512), np.uint8)
    >>> image[0, 100:120, 300:340] = 255
    >>> wins = lt.windows(lt.ArraySource(image), size=256)
    >>> with beam.Pipeline() as p:
    ...     out = p | DetectWindows(wins, "lazytiles.detection.models:blob_detector")
    ...     _ = out.detections | beam.Map(lambda w: print(w.index, w.detections.boxes))
    0 []
    1 [[300. 100. 340. 120.]]
    """

    def __init__(
        self,
        wins: WindowSequence,
        model: Any,
        *,
        shard_size: int | None = None,
        batch_size: int = 8,
        device: Any = "cpu",
        workers: int = 1,
        preprocess: Any = None,
        score_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(model, os.PathLike):
            model = os.fspath(model)
        options = DetectOptions(batch_size, device, workers, preprocess, score_threshold)
        # checks every argument here, where the job is built; the device is only parsed (see above)
        dataclasses.replace(options, device="cpu").detect(model, wins)
        _parse_device(device)
        if shard_size is not None:
            shard_ranges(wins[:0], shard_size)  # checks shard_size
        self._wins, self._model, self._shard_size, self._options = wins, model, shard_size, options
        self._shared = Shared()

    @_no_beam_hints
    def expand(self, pcoll: PBegin | PCollection[tuple[int, int]]) -> DoOutputsTuple:
        if isinstance(pcoll, beam.pvalue.PBegin):
            pcoll = (
                pcoll
                | "Shards" >> beam.Create(shard_ranges(self._wins, self._shard_size))
                | "Spread shards" >> beam.Reshuffle()
            )
        detect = beam.ParDo(_DetectShard(self._wins, self._model, self._options, self._shared))
        out: DoOutputsTuple = pcoll | "Detect" >> detect.with_outputs(DEAD_LETTER, main=DETECTIONS)
        return out


def _span(indices: Any) -> str:
    items = [int(i) for i in indices]
    return str(items) if len(items) <= 6 else f"[{items[0]}, {items[1]}, ..., {items[-1]}] ({len(items)} windows)"


def _parse_device(device: Any) -> None:
    import torch

    try:
        torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise InvalidArgumentError(
            f"device={device!r} is not a torch device ({err}); use 'cpu', 'cuda', 'cuda:1' or a torch.device"
        ) from None


# -- merging: the transform ----------------------------------------------------------------------------------


@_no_beam_hints
def _route_window(item: Any, grid: CellGrid) -> Iterator[tuple[Key, bytes]]:
    if not isinstance(item, WindowDetections):
        raise InvalidArgumentError(
            f"MergeDetections takes the WindowDetections of DetectWindows, got a {type(item).__name__}"
        )
    for key, chunk in grid.route(window_chunk(item.position, item.window, item.detections), 0):
        yield key, chunk.tobytes()


class _SettleCells(beam.DoFn):
    UP = "up"

    def __init__(self, grid: CellGrid, level: int, rule: MergeRule) -> None:
        self._grid, self._level, self._rule = grid, level, rule

    @_no_beam_hints
    def process(self, element: tuple[Any, Iterable[bytes]]) -> Iterator[bytes | TaggedOutput[str, tuple[Key, bytes]]]:
        key, chunks = element
        records = [Chunk.frombytes(c, RECORD) for c in chunks]
        out, up = settle_cell(self._grid, self._level, tuple(key), records, self._rule)
        if len(out):
            yield out.tobytes()
        for k2, r2 in up:
            yield beam.pvalue.TaggedOutput(self.UP, (k2, r2.tobytes()))


def _merge_records(pcoll: PCollection[WindowDetections], grid: CellGrid, rule: MergeRule) -> PCollection[bytes]:
    """PCollection of WindowDetections -> PCollection of merged chunks (``MERGED`` records as bytes)."""
    routed = pcoll | "To cells" >> beam.FlatMap(_route_window, grid)
    merged = []
    for level in range(grid.levels + 1):
        name = "last cell" if level == grid.levels else f"level {level}"
        grouped = routed | f"Group {name}" >> beam.GroupByKey()
        out = grouped | f"Merge {name}" >> beam.ParDo(_SettleCells(grid, level, rule)).with_outputs(
            _SettleCells.UP, main="merged"
        )
        merged.append(out.merged)
        routed = out[_SettleCells.UP]
    chunks: PCollection[bytes] = tuple(merged) | "Merged chunks" >> beam.Flatten()
    return chunks


@_no_beam_hints
def _to_detections(chunk: bytes, transform: Any, crs: Any) -> Detections:
    return merged_detections([Chunk.frombytes(chunk, MERGED)], transform, crs)


class MergeDetections(beam.PTransform[PCollection[WindowDetections], PCollection[Detections]]):
    """The global, seam-aware merge of :class:`DetectWindows`' output: exactly ``lt.merge``'s result.

    Boxes are keyed by square cells with a halo, then by coarser cells for the groups that reach a
    cell's edge (see :mod:`lazytiles.merging.cells`), so no worker holds more than one cell's boxes.

    Parameters
    ----------
    wins
        The windows the detections come from (for the area, the georeferencing and the default cell).
    rule
        The :class:`~lazytiles.MergeRule` (default: ``lt.merge``'s).
    cell_size
        Side of a level-0 cell in pixels. Default: ``CELL_WINDOWS`` (8) windows.
    fanin
        Cells per side of the next level's cells (>= 2): ``fanin ** 2`` cells become one.

    Returns
    -------
    PCollection of Detections
        The merged objects, one :class:`~lazytiles.Detections` per cell and level that settled any;
        together, the boxes ``lt.merge`` returns. :func:`merged_detections` or
        :class:`WriteDetections` puts them in one, in ``lt.merge``'s order.
    """

    def __init__(
        self, wins: WindowSequence, rule: MergeRule = MergeRule(), *, cell_size: float | None = None, fanin: int = 4
    ) -> None:
        super().__init__()
        self._grid, self._rule = merge_grid(wins, rule, cell_size, fanin), rule
        self._georef = (wins.source.transform, wins.source.crs)

    @property
    def grid(self) -> CellGrid:
        """The cells the merge uses."""
        return self._grid

    @_no_beam_hints
    def expand(self, pcoll: PCollection[WindowDetections]) -> PCollection[Detections]:
        chunks = _merge_records(pcoll, self._grid, self._rule)
        found: PCollection[Detections] = chunks | "To Detections" >> beam.Map(_to_detections, *self._georef)
        return found


def merge_grid(wins: Any, rule: MergeRule, cell_size: Any, fanin: Any) -> CellGrid:
    """The cells :class:`MergeDetections` merges ``wins``' detections in, all arguments checked."""
    if not isinstance(wins, WindowSequence):
        raise InvalidArgumentError(
            f"wins must be a lazytiles.WindowSequence (made by lt.windows), got {type(wins).__name__}"
        )
    return cell_grid(wins, rule, cell_size, fanin)


# -- sinks -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StoreSink:
    """Where a job's merged detections go besides files: its run store, with the rule they were merged by."""

    run: SharedRun
    rule: MergeRule


class _WriteOnce(beam.DoFn):
    """Runs once (on a single element) and reads every merged chunk from a side input: the sinks."""

    def __init__(
        self,
        wins: WindowSequence,
        geojson: str | os.PathLike[str] | None,
        gpkg: str | os.PathLike[str] | None,
        *,
        store: _StoreSink | None = None,
        as_records: bool = False,
    ) -> None:
        src = wins.source
        self._georef = (src.transform, src.crs)
        self._geojson, self._gpkg, self._store, self._as_records = _abs(geojson), _abs(gpkg), store, as_records

    @_no_beam_hints
    def process(self, _: None, chunks: Iterable[Any]) -> Iterator[dict[str, Any]]:
        records = (Chunk.frombytes(c, MERGED) if self._as_records else _detections_records(c) for c in chunks)
        found = merged_detections(records, *self._georef)
        written: list[str] = []
        if self._store is not None:
            self._store.run.write(found, self._store.rule)
            written.append(self._store.run.path)
        if self._gpkg is not None:
            write_output(Path(self._gpkg), found.to_gpkg, "GeoPackage")
            written.append(self._gpkg)
        if self._geojson is not None:
            write_output(Path(self._geojson), found.to_geojson, "GeoJSON")
            written.append(self._geojson)
        yield {"objects": len(found), "written": written}


def _detections_records(d: Detections) -> Chunk:
    return Chunk.with_shapes(merged_records(d.boxes, d.scores, d.labels, d.window_index, d.partial), d.shapes)


class WriteDetections(beam.PTransform[PCollection[Detections], PCollection[dict[str, Any]]]):
    """Write merged detections once, at the end: one worker gathers them and writes each file.

    The input is :class:`MergeDetections`' output. The gathered boxes are put in ``lt.merge``'s
    order; each file is written beside its path and moved into place, so a retried write never
    leaves half a file. The one step whose memory grows with the number of objects found: about
    170 bytes an object to gather and sort them, and about 350 more to write a GeoPackage, 1.3 KB
    to write GeoJSON.

    Parameters
    ----------
    wins
        The windows (for the georeferencing).
    geojson
        A GeoJSON file (RFC 7946, lon/lat).
    gpkg
        A GeoPackage file, layer ``detections``, in the source's CRS.

    Returns
    -------
    PCollection
        One dict: ``{"objects": n, "written": [paths]}``.
    """

    def __init__(
        self,
        wins: WindowSequence,
        *,
        geojson: str | os.PathLike[str] | None = None,
        gpkg: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if geojson is not None and wins.source.crs is None:
            raise CRSError("geojson= writes lon/lat and needs the source's CRS, but it has none; use gpkg= instead")
        self._fn = _WriteOnce(wins, geojson, gpkg)

    @_no_beam_hints
    def expand(self, pcoll: PCollection[Detections]) -> PCollection[dict[str, Any]]:
        once = pcoll.pipeline | "Once" >> beam.Create([None])
        written: PCollection[dict[str, Any]] = once | "Write" >> beam.ParDo(self._fn, beam.pvalue.AsIter(pcoll))
        return written


def _abs(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else os.path.abspath(os.fspath(path))
