"""``lt.predict``: a dense model (segmentation) mapped over windows — lazy when indexed, a pipeline when iterated.

A dense model returns, per batch, a tensor ``(N, K, h, w)`` (K class scores or logits, or K = 1 score)
or ``(N, h, w)`` (labels when integer, one score when float), where ``h, w`` are the window's size
divided by one whole factor ``f`` (1: the window's own grid; 4: a grid 4 times coarser). Each window's
result is a :class:`Prediction`: the array, the window, and the transform of the output grid.
:func:`lazytiles.write_raster` stitches them into a GeoTIFF block by block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window as PixelWindow

from ..errors import ModelOutputError
from ..windowing.sequence import WindowSequence
from .mapped import ModelSequence, SharedModel, model_options
from .preprocess import Preprocess

#: What a dense model must return; quoted by every ModelOutputError of lt.predict.
DENSE_EXPECTED = (
    "a dense model returns a tensor (N, K, h, w) of class scores (or logits), or (N, h, w) of labels (integers) "
    "or of one score (floats), where h, w are the window's size divided by one whole factor"
)


@dataclass(frozen=True, eq=False)
class Prediction:
    """A dense model's output for one window: ``data`` on the window's output grid.

    ``data`` is ``(K, h, w)`` float32 scores or ``(h, w)`` labels (int64) or one float32 score;
    ``window`` is the window in the source's pixels; ``transform`` maps ``data``'s pixels to the
    source's CRS (the window's transform, scaled by :attr:`factor`).
    """

    index: int
    window: PixelWindow
    transform: Affine
    crs: CRS | None
    data: np.ndarray = field(repr=False)

    @property
    def factor(self) -> int:
        """Source pixels per output pixel, along each axis."""
        return int(self.window.width) // int(self.data.shape[-1])

    @property
    def labels(self) -> bool:
        """Whether ``data`` holds labels (integers) rather than scores."""
        return self.data.dtype.kind in "iub"

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return self.data if dtype is None else self.data.astype(dtype)


def _span(windows: Sequence[int]) -> str:
    items = list(windows)
    return f"[{', '.join(map(str, items))}]" if len(items) <= 6 else f"[{items[0]}, ..., {items[-1]}]"


def parse_dense(out: Any, n: int, windows: Sequence[int], window_shape: tuple[int, int]) -> list[np.ndarray]:
    """A dense model's output for ``n`` windows of ``window_shape`` (rows, cols), checked, as one numpy
    array per window; :class:`~lazytiles.ModelOutputError` naming the shape and factor otherwise."""
    import torch

    if isinstance(out, torch.Tensor):
        tensor = out.detach()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        array = tensor.cpu().numpy()
    elif isinstance(out, np.ndarray):
        array = out
    else:
        raise ModelOutputError(
            f"the model returned a {type(out).__name__} for the batch of windows {_span(windows)}; {DENSE_EXPECTED}"
        )
    shape = tuple(array.shape)
    rows, cols = window_shape
    where = f"for the batch of {n} windows {_span(windows)} of {rows} x {cols} px"
    if array.ndim not in (3, 4) or shape[0] != n or array.dtype.kind not in "fiub":
        raise ModelOutputError(
            f"the model returned an array of shape {shape} and dtype {array.dtype} {where}; {DENSE_EXPECTED}"
        )
    h, w = shape[-2:]
    if not h or not w or rows % h or cols % w or rows // h != cols // w:
        raise ModelOutputError(
            f"the model returned an array of shape {shape} {where}: {h} x {w} is not the window's size divided by "
            f"one whole factor (factors {rows / max(h, 1):g} and {cols / max(w, 1):g}); {DENSE_EXPECTED}"
        )
    if array.dtype.kind == "f":
        with np.errstate(over="ignore"):  # a tensor's array is the model's own (the runner copies one sharing
            array = array.astype(np.float32, copy=not isinstance(out, torch.Tensor))  # the input): kept as it is
        if not np.isfinite(array).all():
            bad = int(np.isfinite(array.reshape(n, -1)).all(axis=1).argmin())
            raise ModelOutputError(
                f"the model returned NaN or inf in the scores of window {windows[bad]} (image {bad} {where}); scores "
                "must be finite numbers: check the model's weights and the preprocessing of its input"
            )
    else:
        array = array.astype(np.int64)
    return list(array)


def predict(
    model: Any,
    wins: WindowSequence,
    *,
    batch_size: int = 8,
    device: Any = "cpu",
    workers: int = 1,
    method: Literal["thread", "process"] = "thread",
    preprocess: Preprocess | Callable[[Any], Any] | None = None,
    progress: bool = True,
) -> PredictionSequence:
    """Map a dense model (segmentation) over windows, lazily; nothing runs here.

    Parameters
    ----------
    model
        A callable on a float batch ``(N, C, H, W)`` (an ``nn.Module``, a TorchScript module, a
        function, or a ``"pkg.module:factory"`` string) returning a tensor ``(N, K, h, w)`` of class
        scores or logits, or ``(N, h, w)`` of labels (integers) or one score (floats). ``h, w`` are
        ``H, W`` divided by one whole factor: the output grid is that much coarser.
    wins, batch_size, device, workers, method, preprocess, progress
        As in :func:`lazytiles.detect`.

    Returns
    -------
    PredictionSequence
        One :class:`Prediction` per window.

    Raises
    ------
    InvalidArgumentError
        A bad argument (checked here, before anything runs).

    Examples
    --------
    >>> import numpy as np, lazytiles as lt
    >>> from lazytiles.detection.models import ColourSegmenter
    >>> image = np.zeros((3, 64, 64), np.uint8)
    >>> image[:, 10:20, 40:50] = np.array([230, 40, 40])[:, None, None]   # a red square
    >>> preds = lt.predict(ColourSegmenter(), lt.windows(lt.ArraySource(image), size=32), progress=False)
    >>> p = preds[1]                                               # runs window 1 only
    >>> p.window, p.data.shape, int(p.data.argmax(axis=0).sum())  # 4 classes; 100 red pixels
    (Window(col_off=32, row_off=0, width=32, height=32), (4, 32, 32), 100)
    """
    model, spec, options = model_options(
        model,
        wins,
        batch_size=batch_size,
        device=device,
        workers=workers,
        method=method,
        preprocess=preprocess,
        progress=progress,
    )
    return PredictionSequence(SharedModel(model, spec, options), wins)


class PredictionSequence(ModelSequence[Prediction]):
    """One :class:`Prediction` per window, computed on demand. Made by :func:`predict`.

    ``preds[i]`` runs the model on window ``i`` alone; slices and index arrays give lazy
    sub-sequences sharing the model. Iterating runs the streaming pipeline of ``lt.detect``;
    :meth:`outcomes` is the same pass, tolerant of unreadable windows.
    """

    _verb = "predict"

    def _parse(self, out: Any, n: int, windows: Sequence[int]) -> list[Any]:
        return parse_dense(out, n, windows, self._wins.size)

    def _convert(self, index: int, window: PixelWindow, result: Any) -> Prediction:
        src = self._wins.source
        factor = int(window.width) // int(result.shape[-1])
        transform = src.transform @ Affine.translation(window.col_off, window.row_off) @ Affine.scale(factor)
        result.flags.writeable = False
        return Prediction(index=index, window=window, transform=transform, crs=src.crs, data=result)


__all__ = ["DENSE_EXPECTED", "Prediction", "PredictionSequence", "parse_dense", "predict"]
