"""Dense models on Beam: :class:`PredictWindows` writes each shard's finished output blocks, and
:func:`predict_raster` assembles one GeoTIFF from them, equal to ``lt.write_raster``'s.

A shard (a range of windows, :func:`~lazytiles.beam.shards.shard_ranges`) runs ``lt.predict`` over its
windows and stitches them as ``lt.write_raster`` does (:mod:`lazytiles.outputs.blocks`). A block that
only the shard's windows touch is finished there and written to the shard's block store
(:mod:`lazytiles.runs.blockstore`, a file in the job's work directory). A block that windows of other
shards touch too goes out as pieces, one per window, grouped by block (one ``GroupByKey``) and stitched
by one worker, which writes it to a block store of its own. At the end, the job writes the GeoTIFF
from every store, block by block. Only window ranges, block pieces and file names travel.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.pvalue import PBegin, PCollection, TaggedOutput
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.shared import Shared

from ..detection.dense import predict
from ..errors import InvalidArgumentError, RunStoreError
from ..merging.window_table import WindowTable
from ..outputs.blocks import Blend, BlockKey
from ..outputs.raster import BlockWriter, Layout, Output
from ..runs.blockstore import BlockStore
from ..runs.prediction import raster_from_blocks
from ..windowing.sequence import WindowSequence
from .job import to_pipeline_options
from .shards import _check_shard, shard_ranges
from .transforms import _Loaded, _no_beam_hints

#: Tags of :class:`PredictWindows`' shard step: the block stores it wrote, and the pieces of shared blocks.
STORES, PIECES = "stores", "pieces"

#: A piece of a block: (layout, window position, (row0, row1, col0, col1) in the block, the pixels).
Piece = tuple[dict[str, Any], int, tuple[int, int, int, int], np.ndarray]


def _writer(wins: WindowSequence, raster: dict[str, Any], layout: Layout | None = None) -> BlockWriter:
    src = wins.source
    writer = BlockWriter(WindowTable.of(wins), (src.height, src.width), **raster)
    if layout is not None:
        writer.start(layout)
    return writer


class _PredictShard(beam.DoFn):
    """``lt.predict`` over a shard: its own blocks into a block store, the pieces of shared blocks out."""

    def __init__(
        self,
        wins: WindowSequence,
        model: Any,
        options: dict[str, Any],
        raster: dict[str, Any],
        workdir: str,
        shared: Shared,
    ) -> None:
        self._wins, self._model, self._options, self._raster = wins, model, options, raster
        self._workdir, self._shared = workdir, shared

    def setup(self) -> None:
        from ..detection.models import load_model

        model = self._model
        if isinstance(model, str):  # a spec: loaded once per process, shared by its threads
            model = self._shared.acquire(lambda: _Loaded(load_model(self._model)), tag=self._model).model
        self._preds = predict(model, self._wins, progress=False, **self._options)

    @_no_beam_hints
    def process(self, shard: Any) -> Iterator[TaggedOutput[str, Any]]:
        start, stop = _check_shard(shard, len(self._wins))
        writer = _writer(self._wins, self._raster)
        path = Path(self._workdir) / f"shard-{start:012d}.blocks"
        shared: set[BlockKey] = set()
        with BlockStore.open(path) as store:
            store.clear()  # a retried bundle starts again
            for position, (_, prediction, _) in zip(range(start, stop), self._preds[start:stop].outcomes(tolerate=())):
                assert prediction is not None  # nothing is tolerated: a window that cannot be read fails the bundle
                if writer.layout is None:
                    writer.start(Layout.of(prediction))
                    store.set_meta({"layout": vars(writer.layout)})
                    shared = _shared_blocks(writer, start, stop)
                    assert writer.stitcher is not None
                    for key in shared:  # stitched where all their windows meet, not here
                        writer.stitcher.remaining[key] = 0
                assert writer.plan is not None and writer.stitcher is not None and writer.layout is not None
                data = writer.prepare(prediction)
                store.commit((key, writer.finish(block)) for key, block in writer.stitcher.add(position, data))
                for key in writer.plan.blocks_of(position):
                    if key in shared:
                        (rows, cols), piece = writer.plan.piece(position, key, data)
                        where = (rows.start, rows.stop, cols.start, cols.stop)
                        value = (vars(writer.layout), position, where, np.ascontiguousarray(piece))
                        yield TaggedOutput(PIECES, (key, value))
        yield TaggedOutput(STORES, str(path))


def _shared_blocks(writer: BlockWriter, start: int, stop: int) -> set[BlockKey]:
    """The blocks windows ``start..stop`` touch that windows outside that range touch too."""
    plan = writer.plan
    assert plan is not None
    keys = {key for position in range(start, stop) for key in plan.blocks_of(position)}
    return {key for key in keys if any(not start <= p < stop for p in plan.touching[key])}


class _StitchSeams(beam.DoFn):
    """Stitch each shared block from its pieces; write the blocks of a bundle to one block store."""

    def __init__(self, wins: WindowSequence, raster: dict[str, Any], workdir: str) -> None:
        self._wins, self._raster, self._workdir = wins, raster, workdir

    def start_bundle(self) -> None:
        self._store: BlockStore | None = None
        self._writers: dict[tuple[Any, ...], BlockWriter] = {}

    @_no_beam_hints
    def process(self, element: tuple[BlockKey, Iterable[Piece]]) -> None:
        key = (int(element[0][0]), int(element[0][1]))
        block = writer = None
        layout: dict[str, Any] = {}
        for layout, position, (r0, r1, c0, c1), piece in element[1]:
            stamp = tuple(sorted(layout.items()))
            writer = self._writers.get(stamp)
            if writer is None:
                writer = self._writers[stamp] = _writer(self._wins, self._raster, Layout(**layout))
            assert writer.stitcher is not None
            block = writer.stitcher.take(key, position, (slice(r0, r1), slice(c0, c1)), piece)
        if block is None or writer is None:
            raise RunStoreError(f"block {key} got pieces from only some of the windows that touch it")
        if self._store is None:
            self._store = BlockStore.open(Path(self._workdir) / f"seams-{uuid.uuid4().hex}.blocks")
            self._store.set_meta({"layout": layout})
        self._store.commit([(key, writer.finish(block))])

    def finish_bundle(self) -> Iterator[Any]:
        if self._store is not None:
            store, self._store = self._store, None
            store.close()
            yield GlobalWindows.windowed_value(str(store.path))


class PredictWindows(beam.PTransform[PBegin | PCollection[tuple[int, int]], PCollection[str]]):
    """Run a dense model over a window sequence, shard by shard, into block stores: ``lt.write_raster``'s
    blocks, as a Beam transform.

    Applied to a pipeline it makes its shards with :func:`~lazytiles.beam.shard_ranges`; applied to a
    PCollection of ``(start, stop)`` ranges it predicts those. Each block of the raster is written once,
    to a block store (SQLite) in ``workdir`` — a directory every worker can reach. :func:`predict_raster`
    runs it and writes the GeoTIFF.

    Parameters
    ----------
    wins, model
        As in :class:`~lazytiles.beam.DetectWindows`.
    workdir
        Where the block stores go.
    blend, output, dtype, nodata, block
        As in :func:`lazytiles.write_raster`.
    shard_size, batch_size, device, workers, preprocess
        As in :class:`~lazytiles.beam.DetectWindows`.

    Returns
    -------
    PCollection of str
        The paths of the block stores written.
    """

    def __init__(
        self,
        wins: WindowSequence,
        model: Any,
        workdir: str | os.PathLike[str],
        *,
        blend: Blend = "center",
        output: Output = "labels",
        dtype: Any = None,
        nodata: float | None = None,
        block: int = 256,
        shard_size: int | None = None,
        batch_size: int = 8,
        device: Any = "cpu",
        workers: int = 1,
        preprocess: Any = None,
    ) -> None:
        super().__init__()
        if isinstance(model, os.PathLike):
            model = os.fspath(model)
        options = {"batch_size": batch_size, "device": device, "workers": workers, "preprocess": preprocess}
        predict(model, wins, progress=False, **{**options, "device": "cpu"})  # checks them; nothing runs
        raster = {"blend": blend, "output": output, "dtype": dtype, "nodata": nodata, "block": block}
        _writer(wins, raster)  # checks them
        if shard_size is not None:
            shard_ranges(wins[:0], shard_size)  # checks shard_size
        self._wins, self._model, self._options, self._raster = wins, model, options, raster
        self._workdir, self._shard_size, self._shared = os.fspath(workdir), shard_size, Shared()

    @_no_beam_hints
    def expand(self, pcoll: PBegin | PCollection[tuple[int, int]]) -> PCollection[str]:
        if isinstance(pcoll, beam.pvalue.PBegin):
            pcoll = (
                pcoll
                | "Shards" >> beam.Create(shard_ranges(self._wins, self._shard_size))
                | "Spread shards" >> beam.Reshuffle()
            )
        step = _PredictShard(self._wins, self._model, self._options, self._raster, self._workdir, self._shared)
        out = pcoll | "Predict" >> beam.ParDo(step).with_outputs(STORES, PIECES)
        seams = (
            out[PIECES]
            | "By block" >> beam.GroupByKey()
            | "Stitch seams" >> beam.ParDo(_StitchSeams(self._wins, self._raster, self._workdir))
        )
        stores: PCollection[str] = (out[STORES], seams) | "Stores" >> beam.Flatten()
        return stores


def predict_raster(
    model: Any,
    wins: WindowSequence,
    out: str | os.PathLike[str] = "pred.tif",
    *,
    blend: Blend = "center",
    output: Output = "labels",
    dtype: Any = None,
    nodata: float | None = None,
    block: int = 256,
    overviews: bool = False,
    pipeline_options: Any = None,
    workdir: str | os.PathLike[str] | None = None,
    shard_size: int | None = None,
    batch_size: int = 8,
    device: Any = "cpu",
    workers: int = 1,
    preprocess: Any = None,
) -> Path:
    """``lt.write_raster(lt.predict(model, wins), out)`` as an Apache Beam job, on any runner.

    Runs :class:`PredictWindows` into block stores in ``workdir``, then writes ``out`` from them block
    by block (never the whole raster in memory) and deletes them. The file's pixels, georeferencing
    and layout equal ``lt.write_raster``'s with the same options; ``overviews=True`` makes it a COG,
    as ``lt.predict_region`` does.

    Parameters
    ----------
    model, wins, blend, output, dtype, nodata, block, shard_size, batch_size, device, workers, preprocess
        As in :class:`PredictWindows`.
    out
        The GeoTIFF to write (replaced if it exists).
    overviews
        Make it a COG with overviews.
    pipeline_options
        As in :func:`lazytiles.beam.detect_region` (default: the DirectRunner, in this process).
    workdir
        A directory every worker can reach, for the block stores (default: ``.<out name>.beam`` beside
        ``out``); emptied of block stores first.

    Examples
    --------
    >>> import pathlib, tempfile, numpy as np, rasterio, lazytiles as lt
    >>> from lazytiles.beam import predict_raster
    >>> image = np.zeros((3, 512, 512), np.uint8)
    >>> image[:, 300:340, 100:140] = np.array([40, 90, 235])[:, None, None]     # a blue square
    >>> src = lt.ArraySource(image, transform=rasterio.Affine(1, 0, 0, 0, -1, 0), crs="EPSG:3857")
    >>> wins = lt.windows(src, size=128, overlap=0.25, edge="pad")
    >>> out = predict_raster("lazytiles.detection.models:colour_segmenter", wins,
    ...                      pathlib.Path(tempfile.mkdtemp()) / "pred.tif", shard_size=5)
    >>> with rasterio.open(out) as ds:
    ...     int((ds.read(1) == 3).sum())
    1600
    """
    if not isinstance(out, str | os.PathLike):
        raise InvalidArgumentError(f"out must be the path of a .tif file, got {type(out).__name__} {out!r}")
    out = Path(out)
    work = out.with_name(f".{out.name}.beam") if workdir is None else Path(workdir)
    transform = PredictWindows(
        wins,
        model,
        work,
        blend=blend,
        output=output,
        dtype=dtype,
        nodata=nodata,
        block=block,
        shard_size=shard_size,
        batch_size=batch_size,
        device=device,
        workers=workers,
        preprocess=preprocess,
    )
    options = to_pipeline_options(pipeline_options)
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("*.blocks"):
        old.unlink()
    with beam.Pipeline(options=options) as p:
        _ = p | "Predict windows" >> transform
    stores = sorted(work.glob("*.blocks"))
    if not stores:
        raise RunStoreError(f"the job wrote no blocks into {str(work)!r}; is it a directory every worker reaches?")
    with BlockStore.open(stores[0]) as first:
        layout = Layout(**first.meta()["layout"])
    raster = {"blend": blend, "output": output, "dtype": dtype, "nodata": nodata, "block": block}
    writer = _writer(wins, raster, layout)

    def blocks() -> Iterator[tuple[BlockKey, np.ndarray]]:
        for path in stores:
            with BlockStore.open(path) as store:
                yield from store.blocks()

    raster_from_blocks(blocks(), writer, wins.source, out, tags={}, overviews=overviews)
    for path in stores:
        path.unlink()
    if workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return out


__all__ = ["PIECES", "STORES", "PredictWindows", "predict_raster"]
