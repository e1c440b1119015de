"""``lt.write_raster``: window predictions stitched into a tiled GeoTIFF, block by block.

:class:`BlockWriter` is what ``write_raster`` and ``lt.predict_region`` share: it learns the output's
layout from the first prediction (:class:`Layout`), stitches predictions into blocks
(:mod:`lazytiles.outputs.blocks`) and hands back finished blocks in the file's pixel format.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from affine import Affine

from ..detection.dense import Prediction, PredictionSequence
from ..errors import InvalidArgumentError, ModelOutputError
from ..merging.window_table import WindowTable
from ..windowing.sequence import WindowSequence
from .blocks import Blend, BlockKey, BlockPlan, OutputGrid, Stitcher, output_grid, taper

Output = Literal["labels", "scores"]
#: Windows whose finished blocks may wait for the writing thread.
WRITES_AHEAD = 16


@dataclass(frozen=True)
class Layout:
    """What a model's predictions are: ``factor`` (source pixels per output pixel), ``bands`` (K scores,
    or 1) and whether they are ``labels`` (integers) rather than scores."""

    factor: int
    bands: int
    labels: bool

    @classmethod
    def of(cls, prediction: Prediction) -> Layout:
        data = prediction.data
        return cls(prediction.factor, 1 if data.ndim == 2 else int(data.shape[0]), prediction.labels)


class ToLabels:
    """Scores to labels (``output="labels"``, ``blend="center"``) as each batch leaves the model: what the
    pipeline then queues and the stitcher takes is one small integer array per window, not K float32
    bands. The argmax of a pixel is the same whichever window part it is taken for, so the file is too.
    Called on the model thread; :attr:`seen` is the first window's ``(bands, labels)``."""

    def __init__(self) -> None:
        self.seen: tuple[int, bool] | None = None

    def __call__(self, index: int, data: np.ndarray) -> np.ndarray:
        kind = (1 if data.ndim == 2 else int(data.shape[0]), data.dtype.kind in "iub")
        if self.seen is None:
            self.seen = kind
        elif kind != self.seen:
            raise ModelOutputError(
                f"window {index} has a prediction of shape {data.shape} and dtype {data.dtype}, unlike the first "
                f"window's ({self.seen[0]} bands of {'labels' if self.seen[1] else 'scores'}); a dense model must "
                "return one shape for every window"
            )
        if kind[1]:
            return data  # the model's labels, checked against the file's dtype when stitched
        scores = data if data.ndim == 3 else data[None]
        return scores[0] >= 0.5 if kind[0] == 1 else first_argmax(scores)


def check_options(blend: Any, output: Any, dtype: Any, nodata: Any, block: Any, weights: Any = None) -> None:
    """An error naming the bad one of ``write_raster``'s options."""
    if blend not in ("center", "mean"):
        raise InvalidArgumentError(f"blend must be 'center' or 'mean', got {blend!r}")
    if weights is not None:
        if blend != "mean":
            raise InvalidArgumentError("weights apply to blend='mean' only; pass weights=None with blend='center'")
        if isinstance(weights, str):
            if weights != "taper":
                raise InvalidArgumentError(f"weights must be 'taper', an array (h, w) or None, got {weights!r}")
        else:
            array = np.asarray(weights)
            if array.ndim != 2 or array.dtype.kind not in "fiu" or not (np.isfinite(array) & (array > 0)).all():
                raise InvalidArgumentError(
                    f"weights must be 'taper' or an array (h, w) of positive finite numbers, one per pixel of a "
                    f"window's output, got {'an array of shape ' + str(array.shape) if array.ndim else repr(weights)}"
                )
    if output not in ("labels", "scores"):
        raise InvalidArgumentError(
            f"output must be 'labels' (one band of classes) or 'scores' (K bands), got {output!r}"
        )
    if dtype is not None:
        try:
            np.dtype(dtype)
        except TypeError:
            raise InvalidArgumentError(
                f"dtype must be a numpy dtype such as 'uint8' or 'float32', got {dtype!r}"
            ) from None
    if nodata is not None and not isinstance(nodata, int | float | np.integer | np.floating):
        raise InvalidArgumentError(f"nodata must be a number or None, got {nodata!r}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 16 or block % 16:
        raise InvalidArgumentError(f"block must be a multiple of 16 pixels (GeoTIFF tiles), got {block!r}")


class BlockWriter:
    """Predictions in, in any order; finished output blocks out, in the file's dtype.

    Made with the windows (their rectangles and indices, no pixels), the raster's shape and the
    options; :meth:`start` fixes the :class:`Layout` (from the first prediction, or a stored run).
    """

    def __init__(
        self,
        table: WindowTable,
        raster_shape: tuple[int, int],
        *,
        blend: Blend,
        output: Output,
        dtype: Any,
        nodata: float | None,
        block: int,
        weights: Any = None,
    ) -> None:
        check_options(blend, output, dtype, nodata, block, weights)
        self.weights = weights
        self.table, self.raster_shape = table, raster_shape
        self.blend, self.output, self.nodata, self.block = blend, output, nodata, block
        self._dtype: np.dtype | None = None if dtype is None else np.dtype(dtype)
        self.layout: Layout | None = None
        self.grid: OutputGrid | None = None
        self.plan: BlockPlan | None = None
        self.stitcher: Stitcher | None = None
        self.reduce: ToLabels | None = None

    def reducing(self) -> ToLabels | None:
        """Take predictions reduced to labels on the model thread from now on (``blend="center"``,
        ``output="labels"``): the ``reduce`` to pass ``outcomes``; None for other options (nothing changes)."""
        if self.blend == "center" and self.output == "labels" and self.layout is None:
            self.reduce = ToLabels()
        return self.reduce

    def start(self, layout: Layout) -> None:
        """Fix the layout: the output grid, the block plan, the stitcher."""
        if layout.labels and self.blend == "mean":
            raise InvalidArgumentError(
                "the model returns labels, which cannot be averaged; use blend='center', or a model returning scores"
            )
        if layout.labels and self.output == "scores":
            raise InvalidArgumentError("the model returns labels, not scores; use output='labels'")
        self.layout = layout
        self.grid = output_grid(self.table.rects, self.raster_shape, layout.factor, self.block)
        self.plan = BlockPlan(self.grid, self.table.rects, self.table.indices)
        if self.blend == "center":  # each pixel from one window: stitch the file's pixels, converted already
            empty = np.nan if self.output == "scores" else 0
            fill = empty if self.nodata is None else self.nodata
            reduced = self.reduce is not None and not layout.labels  # labels already: the buffer casts them
            convert = None if reduced else self.convert
            self.stitcher = Stitcher(self.plan, self.count, self.dtype, "center", fill, convert)
        else:
            weights = self._window_weights(layout.factor)
            self.stitcher = Stitcher(self.plan, layout.bands, np.dtype(np.float32), "mean", np.nan, weights=weights)

    def _window_weights(self, factor: int) -> np.ndarray | None:
        """The weights of a window's output pixels ``(h, w)`` for ``blend="mean"``; None: all 1."""
        if self.weights is None:
            return None
        shape = (int(self.table.rects[0, 3]) // factor, int(self.table.rects[0, 2]) // factor)
        if isinstance(self.weights, str):
            return taper(*shape)
        weights = np.asarray(self.weights, np.float32)
        if weights.shape != shape:
            raise InvalidArgumentError(
                f"weights have shape {weights.shape}, but a window's output is {shape[0]} x {shape[1]} pixels; "
                "pass an array of that shape, or weights='taper'"
            )
        return weights

    @property
    def dtype(self) -> np.dtype:
        """The file's dtype: as given, else uint8 for labels (uint16 past 256 classes), float32 for scores."""
        if self._dtype is not None:
            return self._dtype
        if self.output == "scores":
            return np.dtype(np.float32)
        assert self.layout is not None
        return np.dtype(np.uint8 if self.layout.bands <= 256 else np.uint16)

    @property
    def dtype_option(self) -> str | None:
        """The ``dtype`` given, by name (None: the default)."""
        return None if self._dtype is None else self._dtype.name

    @property
    def count(self) -> int:
        """Bands of the file."""
        assert self.layout is not None
        return self.layout.bands if self.output == "scores" else 1

    def add(self, position: int, prediction: Prediction) -> list[tuple[BlockKey, np.ndarray]]:
        """Take the prediction of the window at ``position``; the blocks it finished, in the file's format."""
        layout = Layout.of(prediction)
        if self.reduce is not None and self.reduce.seen is not None:  # reduced to labels: as the model gave it
            layout = Layout(layout.factor, *self.reduce.seen)
        if self.layout is None:
            self.start(layout)
        assert self.stitcher is not None and self.layout is not None
        if layout != self.layout:
            raise ModelOutputError(
                f"window {prediction.index} has a prediction of shape {prediction.data.shape}, unlike the "
                f"first window's ({self.layout}); a dense model must return one shape for every window"
            )
        return [(key, self.finish(block)) for key, block in self.stitcher.add(position, self.prepare(prediction))]

    def prepare(self, prediction: Prediction) -> np.ndarray:
        """What the stitcher takes of a prediction: its array as ``(K, h, w)``."""
        return prediction.data if prediction.data.ndim == 3 else prediction.data[None]

    def finish(self, block: np.ndarray) -> np.ndarray:
        """A block the stitcher finished, in the file's format."""
        return block if self.blend == "center" else self.convert(block)

    def convert(self, block: np.ndarray) -> np.ndarray:
        """Values ``(K, ...)`` (a block, or a window's pixels) in the file's format ``(bands, ...)``: labels
        (argmax of K scores, score >= 0.5 of one, or the model's labels) or scores; NaN (no window) becomes
        ``nodata`` (labels: 0 if None)."""
        assert self.layout is not None
        dtype = self.dtype
        if self.layout.labels:
            info = np.iinfo(dtype) if dtype.kind in "iu" else None
            if info is not None and block.size and (block.min() < info.min or block.max() > info.max):
                raise ModelOutputError(
                    f"the model returned labels {block.min()}..{block.max()}, beyond {dtype.name}; pass "
                    "dtype='uint16' or 'int32' to write_raster"
                )
            return block.astype(dtype)
        empty = np.isnan(block[0])
        if self.output == "scores":
            out = block.astype(dtype)
            if self.nodata is not None:
                out[:, empty] = self.nodata
            return out
        classes: np.ndarray = ((block[0] >= 0.5) if self.layout.bands == 1 else first_argmax(block)).astype(dtype)[None]
        if empty.any():
            classes[:, empty] = 0 if self.nodata is None else self.nodata
        return classes

    def profile(self, src_transform: Affine, crs: Any) -> dict[str, Any]:
        """rasterio's creation options of the file: tiled, deflate, the output grid's transform."""
        grid = self.grid
        assert grid is not None
        transform = src_transform @ Affine.translation(grid.col_off, grid.row_off) @ Affine.scale(grid.factor)
        return dict(
            driver="GTiff",
            width=grid.width,
            height=grid.height,
            count=self.count,
            dtype=self.dtype.name,
            crs=crs,
            transform=transform,
            nodata=np.nan if self.nodata is None and self.output == "scores" else self.nodata,
            tiled=True,
            blockxsize=self.block,
            blockysize=self.block,
            compress="deflate",
            BIGTIFF="IF_SAFER",
        )


def first_argmax(scores: np.ndarray) -> np.ndarray:
    """``scores.argmax(axis=0)`` for K scores ``(K, ...)`` (the first of equal maxima), a band at a time:
    several times faster than numpy's strided reduction for a few classes. NaN rows give some index."""
    best = scores[0].copy()
    index = np.zeros(best.shape, np.uint8 if len(scores) <= 256 else np.int64)
    for k in range(1, len(scores)):
        higher = scores[k] > best
        index[higher] = k
        np.maximum(best, scores[k], out=best)
    return index


def partial_path(path: Path) -> Path:
    """Where a file is written before it is moved to ``path``: beside it, hidden."""
    return path.with_name(f".{path.name}.partial")


def write_raster(
    preds: PredictionSequence,
    path: str | os.PathLike[str],
    *,
    blend: Blend = "center",
    output: Output = "labels",
    dtype: Any = None,
    nodata: float | None = None,
    block: int = 256,
    weights: Any = None,
    progress: bool = True,
) -> Path:
    """Stitch window predictions into a tiled GeoTIFF, writing each block as soon as it is finished.

    Runs the model (the streaming pass of ``preds``) and holds in memory only the output blocks that
    windows still to come touch — a few rows of blocks for windows in their usual order, never the whole
    raster. The file is in the source's CRS, on the source's grid coarsened by the model's factor, over
    the windows' area; it is written beside ``path`` and moved there when complete.

    Parameters
    ----------
    preds
        ``lt.predict(model, wins)``.
    path
        The GeoTIFF to write (replaced if it exists).
    blend
        ``"center"``: each pixel from the window whose centre is nearest (ties: the lower window index).
        ``"mean"``: the float32 average of the scores of every window covering the pixel.
    output
        ``"labels"``: one band of classes (argmax of K scores; for one score, score >= 0.5; a model's
        labels as they are). ``"scores"``: K float32 bands.
    dtype
        The file's dtype. Default: uint8 labels (uint16 past 256 classes), float32 scores.
    nodata
        Value of pixels no window covers, and the file's nodata tag. Default: labels 0 (no tag),
        scores NaN (the tag).
    block
        GeoTIFF tile size in output pixels (a multiple of 16).
    weights
        ``blend="mean"`` only: how much each pixel of a window counts, ``sum(weight * score) / sum(weight)``.
        None: all equally. ``"taper"``: falling linearly from the window's middle to its edges (edge
        pixels, which see least context, count least). Or an array ``(h, w)`` of positive numbers, the
        shape of one window's output.
    progress
        Show a progress bar (tqdm) over the windows.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import pathlib, tempfile, numpy as np, rasterio, lazytiles as lt
    >>> from lazytiles.detection.models import ColourSegmenter
    >>> image = np.zeros((3, 96, 96), np.uint8)
    >>> image[:, 40:60, 30:70] = np.array([40, 220, 60])[:, None, None]           # a green field
    >>> src = lt.ArraySource(image, transform=rasterio.Affine(10, 0, 500000, 0, -10, 5000000), crs="EPSG:32633")
    >>> wins = lt.windows(src, size=32, overlap=0.5, edge="pad")
    >>> out = lt.write_raster(lt.predict(ColourSegmenter(), wins, progress=False),
    ...                       pathlib.Path(tempfile.mkdtemp()) / "pred.tif", progress=False)
    >>> with rasterio.open(out) as ds:
    ...     labels = ds.read(1)
    ...     print(ds.crs, ds.transform.a, ds.block_shapes)
    EPSG:32633 10.0 [(256, 256)]
    >>> labels.shape, int((labels == 2).sum())                                      # class 2: green
    ((96, 96), 800)
    """
    if not isinstance(preds, PredictionSequence):
        raise InvalidArgumentError(f"preds must be lt.predict(model, wins), got {type(preds).__name__}")
    if not isinstance(path, str | os.PathLike):
        raise InvalidArgumentError(f"path must be a file path, got {type(path).__name__} {path!r}")
    wins: WindowSequence = preds.windows
    src = wins.source
    table = WindowTable.of(wins)
    writer = BlockWriter(
        table,
        (src.height, src.width),
        blend=blend,
        output=output,
        dtype=dtype,
        nodata=nodata,
        block=block,
        weights=weights,
    )
    path = Path(path)
    temp = partial_path(path)
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    ds = None
    # one thread compresses and writes blocks (GDAL lets go of the GIL) while this one stitches; at most
    # WRITES_AHEAD windows' blocks wait for it
    writes: deque[Future[None]] = deque()
    pool = ThreadPoolExecutor(1, thread_name_prefix="lazytiles-write")
    try:
        stream = preds.outcomes(tolerate=(), progress=progress, reduce=writer.reducing())
        with contextlib.closing(stream):
            for position, (_, prediction, _) in enumerate(stream):
                assert prediction is not None  # nothing is tolerated: a window that cannot be read raised
                finished = writer.add(position, prediction)
                if ds is None:
                    with warnings.catch_warnings():  # a source without georeferencing gives a file without it
                        warnings.simplefilter("ignore", NotGeoreferencedWarning)
                        ds = rasterio.open(temp, "w", **writer.profile(src.transform, src.crs))
                if finished:
                    writes.append(pool.submit(write_blocks, ds, writer, finished))
                while writes and (len(writes) > WRITES_AHEAD or writes[0].done()):
                    writes.popleft().result()  # raises a write's error here
        while writes:
            writes.popleft().result()
        if ds is None:
            raise InvalidArgumentError("preds has no windows; there is nothing to write")
        ds.close()
        os.replace(temp, path)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # before the file is closed
        if ds is not None and not ds.closed:
            ds.close()
        temp.unlink(missing_ok=True)
    return path


def write_blocks(ds: Any, writer: BlockWriter, finished: list[tuple[BlockKey, np.ndarray]]) -> None:
    """Write finished blocks into an open rasterio dataset of ``writer``'s profile."""
    from rasterio.windows import Window

    assert writer.grid is not None
    for key, array in finished:
        col, row, width, height = writer.grid.block_window(key)
        ds.write(array, window=Window(col, row, width, height))


__all__ = [
    "BlockWriter",
    "Layout",
    "Output",
    "ToLabels",
    "check_options",
    "first_argmax",
    "partial_path",
    "write_blocks",
    "write_raster",
]
