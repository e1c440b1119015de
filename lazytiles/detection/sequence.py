"""``lt.detect``: a model mapped over a window sequence — lazy when indexed, a pipeline when iterated.

``dets[i]`` reads window ``i`` and runs the model on it alone. Iterating runs the streaming pipeline of
:mod:`lazytiles.detection.pipeline`, in which reading, the model and post-processing overlap in bounded memory.
torch is imported by ``lt.detect``, not by ``import lazytiles``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import shapely

from ..detections import Detections, partial_flags
from ..errors import InvalidArgumentError
from ..windowing.sequence import WindowSequence
from .mapped import ModelSequence, SharedModel, model_options
from .preprocess import Preprocess

if TYPE_CHECKING:
    from .runner import ImageResult

#: One window's outcome in a streaming pass: (window index, detections or None, error message or None).
Outcome = tuple[int, "Detections | None", "str | None"]


def detect(
    model: Any,
    wins: WindowSequence,
    *,
    batch_size: int = 8,
    device: Any = "cpu",
    workers: int = 1,
    method: Literal["thread", "process"] = "thread",
    preprocess: Preprocess | Callable[[Any], Any] | None = None,
    score_threshold: float = 0.0,
    progress: bool = True,
) -> DetectionSequence:
    """Map a detector (or a window classifier) over windows, lazily; nothing runs here.

    Parameters
    ----------
    model
        A callable on a float batch ``(N, C, H, W)`` — an ``nn.Module`` (put in eval mode and moved to
        ``device`` at first use), a TorchScript module, any function — or a string that
        :func:`lazytiles.detection.models.load_model` loads (``"pkg.module:factory"`` or a TorchScript file).
        It returns, per image, a dict with ``boxes`` (K, 4) ``x0, y0, x1, y1`` in window pixels,
        ``scores`` (K,) and ``labels`` (K,) (torchvision's convention), and optionally ``masks``
        (K, 1, h, w) probabilities in window pixels (Mask R-CNN's): each, cut at 0.5, becomes the
        object's outline (``Detections.shapes``), merged across seams by ``lt.merge``. A *window classifier* returns
        a tensor instead: ``(N,)`` scores, used as they are (label 0), or ``(N, K)`` class logits,
        whose softmax maximum is the score and argmax the label; its box is the whole window.
    wins
        The windows (``lt.windows(...)``, or any slice or index array of them).
    batch_size
        Windows per model call when iterating; random access runs batches of one.
    device
        Where the model runs: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``. On CUDA, host
        batches are pinned and copied with ``non_blocking``; every call runs in ``torch.inference_mode``.
    workers
        Readers that read windows ahead of the model when iterating. 1 (default): one reader thread
        walks the windows in order while the source decodes the next windows' tiles on its own
        read-ahead threads (and frees each tile after its last window) — the fastest for lazytiles
        sources. More: that many threads read windows by index concurrently. 0: read on the model
        thread.
    method
        ``"thread"`` (default): reader threads copy each window straight into the host batch; right
        for lazytiles sources, whose decoding releases the GIL. ``"process"``: ``workers`` processes
        read windows through :func:`lazytiles.prefetch` (for sources that hold the GIL); scripts need
        the ``if __name__ == "__main__":`` guard.
    preprocess
        A :class:`Preprocess` (default ``Preprocess()``: uint8 / 255, uint16 / 65535, floats as they
        are), or a callable taking the raw batch tensor on the device (source dtype, all bands) and
        returning the model's input.
    score_threshold
        Boxes scoring below it are dropped.
    progress
        Show a progress bar (tqdm, on stderr) while iterating.

    Returns
    -------
    DetectionSequence
        One :class:`~lazytiles.Detections` per window, in source pixel coordinates.

    Raises
    ------
    InvalidArgumentError
        A bad argument (checked here, before anything runs).

    Examples
    --------
    >>> import numpy as np, lazytiles as lt
    >>> from lazytiles.detection.models import BlobDetector
    >>> image = np.zeros((3, 512, 512), np.uint8)
    >>> image[0, 300:320, 100:140] = 255                         # one red 20 x 40 blob
    >>> wins = lt.windows(lt.ArraySource(image), size=256)
    >>> dets = lt.detect(BlobDetector(), wins, progress=False)   # runs nothing yet
    >>> dets[2].boxes                                            # runs the model on window 2 only
    array([[100., 300., 140., 320.]])
    >>> [len(d) for d in dets]                                   # the streaming pass
    [0, 0, 1, 0]
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
    if not isinstance(score_threshold, int | float | np.integer | np.floating) or math.isnan(score_threshold):
        raise InvalidArgumentError(f"score_threshold must be a number, got {score_threshold!r}")
    options["score_threshold"] = float(score_threshold)
    return DetectionSequence(SharedModel(model, spec, options), wins)


class DetectionSequence(ModelSequence[Detections]):
    """One :class:`~lazytiles.Detections` per window, computed on demand. Made by :func:`detect`.

    ``dets[i]`` runs the model on window ``i`` alone; slices and index arrays give lazy
    sub-sequences (``dets[10:20]``, ``dets[np.array([...])]``) sharing the model. Iterating runs the
    streaming pipeline (see the module docstring); :meth:`outcomes` is the same pass, tolerant of
    unreadable windows. ``len(dets) == len(dets.windows)``.
    """

    _verb = "detect"

    def _parse(self, out: Any, n: int, windows: Sequence[int]) -> list[Any]:
        from .runner import parse_outputs

        return parse_outputs(out, n, windows)

    def _convert(self, index: int, window: Any, result: ImageResult) -> Detections:
        boxes, scores, labels, shapes = result
        src = self._wins.source
        col, row, width, height = int(window.col_off), int(window.row_off), int(window.width), int(window.height)
        if boxes is None:  # a window classifier: the box is the window
            boxes = np.array([[0.0, 0.0, width, height]])
            partial = np.zeros(1, dtype=bool)
        else:
            partial = partial_flags(boxes, window, self._wins._grid_area())
        keep = scores >= self._shared.options["score_threshold"]
        if not keep.all():
            boxes, scores, labels, partial = boxes[keep], scores[keep], labels[keep], partial[keep]
            shapes = None if shapes is None else shapes[keep]
        if shapes is not None:  # window pixels to source pixels
            shapes = shapely.transform(shapes, lambda xy: xy + np.array([col, row], dtype=np.float64))
        return Detections(
            boxes + np.array([col, row, col, row], dtype=np.float64),
            scores,
            labels,
            np.full(len(scores), index, dtype=np.int64),
            partial=partial,
            shapes=shapes,
            transform=src.transform,
            crs=src.crs,
        )


__all__ = ["DetectionSequence", "Outcome", "detect"]
