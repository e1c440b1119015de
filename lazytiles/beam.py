"""Apache Beam transforms: the detection pipeline as a distributed job, with a global seam-aware merge.

Install with ``pip install lazytiles[beam]``; ``import lazytiles`` does not import Beam, this module
does. The job, on any Beam runner (the DirectRunner locally, Dataflow, Flink or Spark)::

    index ranges          DetectWindows                 MergeDetections                    sinks
    (shard_ranges)  ->    setup: load the model   ->    cells with a halo, then     ->     GeoJSON, GeoPackage,
    Create, Reshuffle     shard: lt.detect over         coarser cells for what            the run store's
                          wins[start:stop]              crosses a cell's edge              ``detections`` layer
                          ├─ WindowDetections           (one GroupByKey per level)
                          └─ DeadLetter (index, reason) ──────────────────────────────>   run store: failed

Only recipes (the pickled :class:`~lazytiles.WindowSequence`: the source's path and the window plan),
index ranges and detections travel between workers; never pixels, never open handles.

Shards
    :func:`shard_ranges` cuts the sequence, in its cache-aware order, into ranges of whole window rows
    of one strip: each shard reads a compact block of tiles and, through its worker's tile cache,
    fetches each of them once.

The merge
    :class:`MergeDetections` gives exactly what ``lt.merge(lt.detect(model, wins))`` gives, without
    collecting every box on one worker: boxes are keyed by square cells of the area, each with a
    halo; a group of matching boxes that lies inside a cell is merged there, and the groups that
    reach a cell's edge go on to coarser cells, level by level (one ``GroupByKey`` each), until one
    last cell takes what lies on the seams of the largest cells. :mod:`lazytiles.cellmerge` has the
    algorithm, in plain numpy, and why it is exact.

Resuming
    :func:`detect_region` records every window in the run store of :func:`lazytiles.detect_region`
    (a GeoPackage) as it is done or fails; run it again and only the missing and failed windows are
    detected, the others are read back from the store. The store must be a path every worker can
    open: a local disk for the DirectRunner, a shared POSIX file system on a cluster.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import operator
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cellmerge import MERGED, RECORD, CellGrid, check_cells, merged_detections, merged_records, settle_cell, window_records
from .detections import Detections
from .errors import CRSError, InvalidArgumentError, MissingDependencyError, RunLockedError, RunStoreError
from .merge import _check_options
from .windows import WindowSequence

try:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.utils.shared import Shared
except ImportError as _err:
    raise MissingDependencyError(
        f"lazytiles.beam needs Apache Beam, which cannot be imported ({_err}); run `pip install lazytiles[beam]`"
    ) from _err

log = logging.getLogger(__name__)

#: Tags of :class:`DetectWindows`' outputs.
DETECTIONS, DEAD_LETTER = "detections", "dead_letter"

#: Whole window rows per shard when ``shard_size`` is not given.
SHARD_ROWS = 8

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
    """A window whose tiles could not be read, after the source's retries: where it is and why."""

    index: int
    position: int
    window: tuple[int, int, int, int]
    reason: str


# -- shards ---------------------------------------------------------------------------------------------


def _row_starts(wins: WindowSequence, positions: np.ndarray, chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Masks over ``positions`` (ascending): where a window row starts, and where a new block starts
    (a gap in ``positions``, or the first row of a strip: the row offset goes back up)."""
    row_off = np.empty(len(positions), np.int64)
    for a in range(0, len(positions), chunk):
        part = positions[a : a + chunk]
        row_off[a : a + chunk] = wins[part].pixel_windows()[:, 1]
    gap = np.r_[True, positions[1:] != positions[:-1] + 1]
    up = np.r_[True, row_off[1:] < row_off[:-1]]
    return gap | np.r_[True, row_off[1:] != row_off[:-1]], gap | up


def shard_ranges(
    wins: WindowSequence, shard_size: int | None = None, *, mask: np.ndarray | None = None
) -> list[tuple[int, int]]:
    """Cut a window sequence into index ranges ``[start, stop)`` that each read a compact block of tiles.

    The sequence's order is cache-aware (row-major in strips, see :mod:`lazytiles.plan`), so a run
    of whole window rows of one strip is a compact block of tiles: a worker reading it in order
    fetches each tile once. Shards are such runs. No I/O.

    Parameters
    ----------
    wins
        The windows.
    shard_size
        At most how many windows per shard: whole rows are grouped while they fit, and a row longer
        than it is cut into pieces of ``shard_size`` windows (``1``: one shard per window). Default:
        ``SHARD_ROWS`` (8) whole rows per shard, so a tile row on a shard's edge is read by two
        shards, one in about 8.
    mask
        ``(len(wins),)`` bool: shard only the positions where it is True (a resumed run's missing
        windows); a shard never spans a position left out.

    Returns
    -------
    list of (start, stop)
        Positions in ``wins``, ascending and disjoint, covering every position asked for.

    Examples
    --------
    >>> import numpy as np, lazytiles as lt
    >>> wins = lt.windows(lt.ArraySource(np.zeros((1, 512, 1024), np.uint8)), size=256)   # 2 rows of 4
    >>> shard_ranges(wins, 4), shard_ranges(wins, 3)
    ([(0, 4), (4, 8)], [(0, 3), (3, 4), (4, 7), (7, 8)])
    """
    if not isinstance(wins, WindowSequence):
        raise InvalidArgumentError(f"wins must be a lazytiles.WindowSequence (made by lt.windows), got {type(wins).__name__}")
    if shard_size is not None and (isinstance(shard_size, bool) or not isinstance(shard_size, numbers.Integral) or shard_size < 1):
        raise InvalidArgumentError(f"shard_size must be a number of windows >= 1 (or None for {SHARD_ROWS} rows), got {shard_size!r}")
    n = len(wins)
    if mask is None:
        positions = np.arange(n, dtype=np.int64)
    else:
        mask = np.asarray(mask)
        if mask.shape != (n,) or mask.dtype != bool:
            raise InvalidArgumentError(f"mask must be a ({n},) bool array (one value per window), got {mask.dtype} {mask.shape}")
        positions = np.flatnonzero(mask).astype(np.int64)
    if not len(positions):
        return []
    row, block = _row_starts(wins, positions)
    starts = np.flatnonzero(row)  # rows, as offsets into `positions`
    lengths = np.diff(np.r_[starts, len(positions)])
    new_run = block[starts]
    if shard_size is not None:  # cut rows longer than a shard into pieces
        pieces = -(-lengths // shard_size)
        first = np.repeat(np.cumsum(pieces) - pieces, pieces)
        k = np.arange(int(pieces.sum())) - first
        starts, ends = np.repeat(starts, pieces) + k * shard_size, np.repeat(starts + lengths, pieces)
        lengths = np.minimum(shard_size, ends - starts)
        new_run = np.repeat(new_run, pieces) & (k == 0)
    shards: list[tuple[int, int]] = []
    a = count = rows = 0
    for s, length, fresh in zip(starts.tolist(), lengths.tolist(), new_run.tolist()):
        full = rows == SHARD_ROWS if shard_size is None else count + length > shard_size
        if rows and (fresh or full):
            shards.append((int(positions[a]), int(positions[a + count - 1]) + 1))
            a, count, rows = s, 0, 0
        count += length
        rows += 1
    shards.append((int(positions[a]), int(positions[a + count - 1]) + 1))
    return shards


# -- detecting -----------------------------------------------------------------------------------------


class _Loaded:
    """A model held for :class:`~apache_beam.utils.shared.Shared` (which keeps a weak reference)."""

    def __init__(self, model: Any) -> None:
        self.model = model


class _DetectShard(beam.DoFn):
    """Run ``lt.detect`` over each shard ``(start, stop)``; the model is loaded once per worker process."""

    def __init__(self, wins: WindowSequence, model: Any, options: dict[str, Any], shared: Shared) -> None:
        self._wins, self._model, self._options, self._shared = wins, model, options, shared
        self._windows = beam.metrics.Metrics.counter("lazytiles", "windows_done")
        self._failed = beam.metrics.Metrics.counter("lazytiles", "windows_failed")
        self._boxes = beam.metrics.Metrics.counter("lazytiles", "boxes")

    def setup(self) -> None:
        from .detect import detect
        from .models import load_model

        model = self._model
        if isinstance(model, str):  # a spec: loaded once per process, shared by its threads
            model = self._shared.acquire(lambda: _Loaded(load_model(self._model)), tag=self._model).model
        self._dets = detect(model, self._wins, progress=False, **self._options)

    def process(self, shard):  # no annotations: Beam would read them as type hints
        start, stop = _check_shard(shard, len(self._wins))
        for k, (index, found, error) in enumerate(self._dets[start:stop].outcomes()):
            position = start + k
            w = self._wins.pixel_window(position)
            rect = (int(w.col_off), int(w.row_off), int(w.width), int(w.height))
            if error is None:
                self._windows.inc()
                self._boxes.inc(len(found))
                yield WindowDetections(position, int(index), rect, found)
            else:
                self._failed.inc()
                log.warning("window %d (position %d) goes to the dead letters: %s", index, position, error)
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(int(index), position, rect, error))


def _check_shard(shard: Any, n: int) -> tuple[int, int]:
    try:
        start, stop = (operator.index(v) for v in shard)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"a shard must be (start, stop) positions, got {shard!r}") from None
    if not 0 <= start <= stop <= n:
        raise InvalidArgumentError(f"shard {shard!r} is not inside the {n} windows; make shards with shard_ranges(wins)")
    return start, stop


class DetectWindows(beam.PTransform):
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
        :func:`lazytiles.models.load_model`), or a picklable model (an ``nn.Module``).
    shard_size
        As in :func:`shard_ranges` (when applied to a pipeline).
    batch_size, device, workers, preprocess, score_threshold
        As in :func:`lazytiles.detect`. ``device`` is checked on the workers, not here (a job may be
        launched from a machine without the workers' GPU).

    Returns
    -------
    apache_beam.pvalue.DoOutputsTuple
        ``.detections``: one :class:`WindowDetections` per window read; ``.dead_letter``: one
        :class:`DeadLetter` per window whose tiles could not be read (the job goes on).

    Examples
    --------
    >>> import apache_beam as beam, numpy as np, lazytiles as lt
    >>> from lazytiles.beam import DetectWindows
    >>> image = np.zeros((3, 256, 512), np.uint8)
    >>> image[0, 100:120, 300:340] = 255
    >>> wins = lt.windows(lt.ArraySource(image), size=256)
    >>> with beam.Pipeline() as p:
    ...     out = p | DetectWindows(wins, "lazytiles.models:blob_detector")
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
        from .detect import detect

        if isinstance(model, os.PathLike):
            model = os.fspath(model)
        # checks every argument here, where the job is built; the device is only parsed (see above)
        detect(model, wins, batch_size=batch_size, device="cpu", workers=workers, preprocess=preprocess,
               score_threshold=score_threshold, progress=False)  # fmt: skip
        _parse_device(device)
        if shard_size is not None:
            shard_ranges(wins[:0], shard_size)  # checks shard_size
        self._wins, self._model, self._shard_size = wins, model, shard_size
        self._options = dict(batch_size=batch_size, device=device, workers=workers, preprocess=preprocess,
                             score_threshold=score_threshold)  # fmt: skip
        self._shared = Shared()

    def expand(self, pcoll):
        if isinstance(pcoll, beam.pvalue.PBegin):
            pcoll = (
                pcoll
                | "Shards" >> beam.Create(shard_ranges(self._wins, self._shard_size))
                | "Spread shards" >> beam.Reshuffle()
            )
        return pcoll | "Detect" >> beam.ParDo(
            _DetectShard(self._wins, self._model, self._options, self._shared)
        ).with_outputs(DEAD_LETTER, main=DETECTIONS)


def _parse_device(device: Any) -> None:
    import torch

    try:
        torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise InvalidArgumentError(
            f"device={device!r} is not a torch device ({err}); use 'cpu', 'cuda', 'cuda:1' or a torch.device"
        ) from None


# -- merging: the transform ----------------------------------------------------------------------------------


def _route_window(item, grid):
    if not isinstance(item, WindowDetections):
        raise InvalidArgumentError(
            f"MergeDetections takes the WindowDetections of DetectWindows, got a {type(item).__name__}"
        )
    for key, rec in grid.route(window_records(item.position, item.window, item.detections), 0):
        yield key, rec.tobytes()


class _SettleCells(beam.DoFn):
    UP = "up"

    def __init__(self, grid: CellGrid, level: int, options: dict[str, Any]) -> None:
        self._grid, self._level, self._options = grid, level, options

    def process(self, element):
        key, chunks = element
        out, up = settle_cell(
            self._grid, self._level, tuple(key), [np.frombuffer(c, RECORD) for c in chunks], self._options
        )
        if len(out):
            yield out.tobytes()
        for k2, r2 in up:
            yield beam.pvalue.TaggedOutput(self.UP, (k2, r2.tobytes()))


def _merge_records(pcoll: Any, grid: CellGrid, options: dict[str, Any]) -> Any:
    """PCollection of WindowDetections -> PCollection of merged chunks (``MERGED`` records as bytes)."""
    routed = pcoll | "To cells" >> beam.FlatMap(_route_window, grid)
    merged = []
    for level in range(grid.levels + 1):
        name = "last cell" if level == grid.levels else f"level {level}"
        grouped = routed | f"Group {name}" >> beam.GroupByKey()
        out = grouped | f"Merge {name}" >> beam.ParDo(_SettleCells(grid, level, options)).with_outputs(
            _SettleCells.UP, main="merged"
        )
        merged.append(out.merged)
        routed = out[_SettleCells.UP]
    return tuple(merged) | "Merged chunks" >> beam.Flatten()


def _to_detections(chunk, transform, crs):
    return merged_detections([np.frombuffer(chunk, MERGED)], transform, crs)


class MergeDetections(beam.PTransform):
    """The global, seam-aware merge of :class:`DetectWindows`' output: exactly ``lt.merge``'s result.

    Boxes are keyed by square cells with a halo, then by coarser cells for the groups that reach a
    cell's edge (see :mod:`lazytiles.cellmerge`), so no worker holds more than one cell's boxes.

    Parameters
    ----------
    wins
        The windows the detections come from (for the area, the georeferencing and the default cell).
    iou, method, metric, class_aware, margin
        As in :func:`lazytiles.merge`.
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
        self,
        wins: WindowSequence,
        *,
        iou: float = 0.5,
        method: str = "union",
        metric: str = "ios",
        class_aware: bool = True,
        margin: float = 1.0,
        cell_size: float | None = None,
        fanin: int = 4,
    ) -> None:
        super().__init__()
        self._grid, self._options = _merge_setup(wins, iou, method, metric, class_aware, margin, cell_size, fanin)
        self._georef = (wins.source.transform, wins.source.crs)

    @property
    def grid(self) -> CellGrid:
        """The cells the merge uses."""
        return self._grid

    def expand(self, pcoll):
        chunks = _merge_records(pcoll, self._grid, self._options)
        return chunks | "To Detections" >> beam.Map(_to_detections, *self._georef)


def _merge_setup(
    wins: Any, iou: Any, method: Any, metric: Any, class_aware: Any, margin: Any, cell_size: Any, fanin: Any
) -> tuple[CellGrid, dict[str, Any]]:
    if not isinstance(wins, WindowSequence):
        raise InvalidArgumentError(f"wins must be a lazytiles.WindowSequence (made by lt.windows), got {type(wins).__name__}")
    _check_options(iou, method, metric, margin)
    cell, fan = check_cells(cell_size, fanin, wins.size)
    options = dict(iou=float(iou), metric=metric, class_aware=bool(class_aware), margin=float(margin), method=method)
    return CellGrid.for_area(wins.area, cell=cell, fanin=fan, margin=float(margin)), options


# -- sinks -----------------------------------------------------------------------------------------------


class _WriteOnce(beam.DoFn):
    """Runs once (on a single element) and reads every merged chunk from a side input: the sinks."""

    def __init__(self, transform: Any, crs: Any, geojson: str | None, gpkg: str | None, store: str | None,
                 params: dict[str, Any] | None, as_records: bool) -> None:  # fmt: skip
        self._georef = (transform, crs)
        self._geojson, self._gpkg, self._store, self._params = geojson, gpkg, store, params
        self._as_records = as_records

    def process(self, _, chunks):
        records = (np.frombuffer(c, MERGED) if self._as_records else _detections_records(c) for c in chunks)
        found = merged_detections(records, *self._georef)
        written = []
        if self._store is not None:
            with _locked_store(self._store) as store:
                store.write_merged(found, self._params or {})
            written.append(self._store)
        if self._gpkg is not None:
            _replace(Path(self._gpkg), lambda tmp: found.to_gpkg(tmp))
            written.append(self._gpkg)
        if self._geojson is not None:
            _replace(Path(self._geojson), lambda tmp: found.to_geojson(tmp))
            written.append(self._geojson)
        yield {"objects": len(found), "written": written}


def _detections_records(d: Detections) -> np.ndarray:
    return merged_records(d.boxes, d.scores, d.labels, d.window_index, d.partial)


def _replace(path: Path, write: Any) -> None:
    """Write a file beside ``path`` and move it into place: a retried writer never leaves half a file."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise RunStoreError(f"cannot write {str(path)!r}: {err}") from err


class WriteDetections(beam.PTransform):
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

    def __init__(self, wins: WindowSequence, *, geojson: str | os.PathLike[str] | None = None,
                 gpkg: str | os.PathLike[str] | None = None) -> None:  # fmt: skip
        super().__init__()
        src = wins.source
        if geojson is not None and src.crs is None:
            raise CRSError("geojson= writes lon/lat and needs the source's CRS, but it has none; use gpkg= instead")
        self._fn = _WriteOnce(src.transform, src.crs, _abs(geojson), _abs(gpkg), None, None, as_records=False)

    def expand(self, pcoll):
        return pcoll.pipeline | "Once" >> beam.Create([None]) | "Write" >> beam.ParDo(self._fn, beam.pvalue.AsIter(pcoll))


def _abs(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else os.path.abspath(os.fspath(path))


# -- the run store ---------------------------------------------------------------------------------------

#: How long a worker waits for another to finish writing the run store before giving up, seconds.
STORE_WAIT = 600.0


@contextlib.contextmanager
def _locked_store(path: str, session: int | None = None) -> Iterator[Any]:
    """The run store, locked for writing, waiting while another worker writes (commits are short)."""
    from .io import RunStore

    deadline = time.monotonic() + STORE_WAIT
    pause = 0.01
    while True:
        try:
            store = RunStore.resume(path, check=False)  # no start_writing: it would mark our session 'killed'
            break
        except RunLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)  # another worker is committing; a commit takes milliseconds
            pause = min(0.5, pause * 2)
    store._session = session  # commits count towards the job's session
    try:
        yield store
    finally:
        store.close()


def _done_among(store: Any, indices: Sequence[int]) -> set[int]:
    done: set[int] = set()
    for a in range(0, len(indices), 500):
        part = list(indices[a : a + 500])
        rows = store._query(
            f"SELECT window_index FROM lazytiles_windows WHERE status = 'done' AND window_index IN ({','.join('?' * len(part))})",
            part,
        )
        done.update(int(r[0]) for r in rows)
    return done


def _result_of(item):
    from .io import WindowResult

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
        from .io import RunStore

        self._store = RunStore.read(self._path)

    def teardown(self) -> None:
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()

    def process(self, shard):
        from .io import _RAW_FIELDS, RAW_LAYER, _columns

        start, stop = _check_shard(shard, len(self._wins))
        part = self._wins[start:stop]
        indices = np.asarray(part.indices, dtype=np.int64)
        rects = part.pixel_windows()
        rows: list[tuple[Any, ...]] = []
        for a in range(0, len(indices), 500):
            chunk = indices[a : a + 500].tolist()
            rows += self._store._query(
                f"SELECT {', '.join(_RAW_FIELDS)} FROM {RAW_LAYER} WHERE window_index IN ({','.join('?' * len(chunk))}) "
                "ORDER BY window_index, rank",
                chunk,
            )
        c = _columns(rows, _RAW_FIELDS)
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
    >>> detect_region("lazytiles.models:blob_detector", wins, out).boxes   # the DirectRunner, here
    array([[100., 300., 140., 320.]])
    >>> lt.open_run(out).summary()["done"]
    9
    """
    from . import __version__
    from .detect import detect
    from .io import RunStore
    from .runs import _check_bool, _open_store, _window_table, run_recipe, warn_failed

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


__all__ = [
    "DEAD_LETTER",
    "DETECTIONS",
    "DeadLetter",
    "DetectWindows",
    "MergeDetections",
    "WindowDetections",
    "WriteDetections",
    "detect_region",
    "run_cli",
    "shard_ranges",
    "to_pipeline_options",
]
