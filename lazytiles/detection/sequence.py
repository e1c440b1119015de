"""``lt.detect``: a model mapped over a window sequence — lazy when indexed, a pipeline when iterated.

``dets[i]`` reads window ``i`` and runs the model on it alone. Iterating runs the streaming pipeline of
:mod:`lazytiles.detection.pipeline`, in which reading, the model and post-processing overlap in bounded memory.
torch is imported by ``lt.detect``, not by ``import lazytiles``.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import shapely

from ..detections import Detections, partial_flags
from ..errors import InvalidArgumentError, TileFetchError
from ..windowing.sequence import WindowSequence
from .pipeline import _Pipeline
from .preprocess import Preprocess

if TYPE_CHECKING:
    import torch

    from .runner import ImageResult, ModelRunner

#: One window's outcome in a streaming pass: (window index, detections or None, error message or None).
Outcome = tuple[int, "Detections | None", "str | None"]


class _Shared:
    """What every slice of one ``lt.detect`` call shares: the model and its runner, made once."""

    def __init__(self, model: Any, spec: str | None, options: dict[str, Any]) -> None:
        self.model, self.spec, self.options = model, spec, options
        self._runner: ModelRunner | None = None
        self._lock = threading.Lock()
        self.last_pass: dict[str, Any] = {}

    def runner(self, wins: WindowSequence) -> ModelRunner:
        with self._lock:
            if self._runner is None:
                from .models import load_model
                from .runner import ModelRunner

                if self.spec is not None and self.model is None:
                    self.model = load_model(self.spec)
                src = wins.source
                self._runner = ModelRunner(
                    self.model,
                    device=self.options["device"],
                    preprocess=self.options["preprocess"],
                    count=src.count,
                    dtype=src.dtype,
                    window_shape=wins.size,
                )
            return self._runner


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
    spec = None
    if isinstance(model, str | os.PathLike):
        spec, model = os.fspath(model), None
    elif not callable(model):
        raise InvalidArgumentError(
            f"model must be callable on a float batch (N, C, H, W) (an nn.Module, a TorchScript module, a function) "
            f"or a 'pkg.module:factory' / TorchScript path string, got {type(model).__name__}"
        )
    if not isinstance(wins, WindowSequence):
        raise InvalidArgumentError(
            f"wins must be a lazytiles.WindowSequence (made by lt.windows), got {type(wins).__name__}"
        )
    for name, value, low in (("batch_size", batch_size, 1), ("workers", workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise InvalidArgumentError(f"{name} must be an integer >= {low}, got {value!r}")
    if method not in ("thread", "process"):
        raise InvalidArgumentError(f"method must be 'thread' or 'process', got {method!r}")
    if method == "process" and not workers:
        raise InvalidArgumentError("method='process' needs workers >= 1 reader processes")
    if preprocess is None:
        preprocess = Preprocess()
    elif not (isinstance(preprocess, Preprocess) or callable(preprocess)):
        raise InvalidArgumentError(
            f"preprocess must be an lt.Preprocess(...) or a callable on the batch tensor, got {preprocess!r}"
        )
    if isinstance(preprocess, Preprocess):
        preprocess.affine(wins.source.dtype, len(preprocess.bands or range(wins.source.count)))  # checks lengths
    if not isinstance(score_threshold, int | float | np.integer | np.floating) or math.isnan(score_threshold):
        raise InvalidArgumentError(f"score_threshold must be a number, got {score_threshold!r}")
    device = check_device(device)
    options = dict(
        batch_size=int(batch_size),
        device=device,
        workers=int(workers),
        method=method,
        preprocess=preprocess,
        score_threshold=float(score_threshold),
        progress=bool(progress),
    )
    return DetectionSequence(_Shared(model, spec, options), wins)


def check_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device`` this process can use, or an error saying what to pass."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise InvalidArgumentError(
            f"device={device!r} is not a torch device ({err}); use 'cpu', 'cuda', 'cuda:1' or a torch.device"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(
            f"device={device!r}, but torch.cuda.is_available() is False in this process (torch "
            f"{torch.__version__}); use device='cpu', or install a CUDA build of torch"
        )
    return dev


class DetectionSequence(Sequence[Detections]):
    """One :class:`~lazytiles.Detections` per window, computed on demand. Made by :func:`detect`.

    ``dets[i]`` runs the model on window ``i`` alone; slices and index arrays give lazy
    sub-sequences (``dets[10:20]``, ``dets[np.array([...])]``) sharing the model. Iterating runs the
    streaming pipeline (see the module docstring); :meth:`outcomes` is the same pass, tolerant of
    unreadable windows. ``len(dets) == len(dets.windows)``.
    """

    def __init__(self, shared: _Shared, wins: WindowSequence) -> None:
        self._shared = shared
        self._wins = wins

    @property
    def windows(self) -> WindowSequence:
        """The windows the model runs over."""
        return self._wins

    @property
    def model(self) -> Any:
        """The model (loaded from its spec string at first use when one was given)."""
        if self._shared.model is None:
            self._shared.runner(self._wins)
        return self._shared.model

    @property
    def options(self) -> dict[str, Any]:
        """The keyword arguments ``lt.detect`` was given (batch_size, device, workers, ...)."""
        return dict(self._shared.options)

    def __len__(self) -> int:
        return len(self._wins)

    @overload
    def __getitem__(self, key: int | np.integer) -> Detections: ...
    @overload
    def __getitem__(self, key: slice | list[int] | tuple[int, ...] | np.ndarray) -> DetectionSequence: ...
    def __getitem__(self, key: Any) -> Detections | DetectionSequence:
        if isinstance(key, slice | list | tuple | np.ndarray):
            return DetectionSequence(self._shared, self._wins[key])
        w = self._wins[key]  # reads the window; raises IndexError / TypeError as a list would
        runner = self._shared.runner(self._wins)
        tensor, buffer = runner.new_buffer(1)
        runner.fill(buffer, 0, w.data)
        (result,) = runner.run(tensor, [w.index])
        return self._to_detections(w.index, w.window, result)

    def _to_detections(self, index: int, window: Any, result: ImageResult) -> Detections:
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

    # -- streaming ---------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Detections]:
        with contextlib.closing(self._stream(())) as stream:  # a break or GC here stops the pipeline now
            for _, dets, _ in stream:
                assert dets is not None  # nothing is tolerated: a window that cannot be read raised
                yield dets

    def outcomes(
        self, *, tolerate: tuple[type[BaseException], ...] = (TileFetchError,)
    ) -> Generator[Outcome, None, None]:
        """Stream ``(window index, Detections | None, error message | None)`` per window, in order.

        Like iterating, but a window that raises one of ``tolerate`` (default: tiles that cannot be
        read, after the source's retries) yields ``(index, None, message)`` instead of ending the
        pass; other errors (a model bug) still raise. ``index`` is the window's :attr:`Window.index`,
        so a later run can retry just those: ``lt.detect(model, wins[failed])``.

        Examples
        --------
        >>> import numpy as np, lazytiles as lt
        >>> from lazytiles.detection.models import BlobDetector
        >>> wins = lt.windows(lt.ArraySource(np.zeros((1, 64, 64), np.uint8)), size=32)
        >>> [(i, len(d), err) for i, d, err in lt.detect(BlobDetector(), wins, progress=False).outcomes()]
        [(0, 0, None), (1, 0, None), (2, 0, None), (3, 0, None)]
        """
        return self._stream(tuple(tolerate))

    def stats(self) -> dict[str, Any]:
        """Timings of the last streaming pass: ``windows``, ``batches``, ``seconds`` (wall),
        ``model_seconds`` (the model thread busy: copy to the device, preprocessing there, the model,
        output checks),
        ``model_busy`` (their ratio), ``wait_seconds`` (the model thread waiting for windows)."""
        return dict(self._shared.last_pass)

    def _stream(self, tolerate: tuple[type[BaseException], ...]) -> Generator[Outcome, None, None]:
        if not len(self._wins):
            return
        from tqdm.auto import tqdm

        opts = self._shared.options
        pipe = _Pipeline(self._shared.runner(self._wins), self._wins, opts, tolerate)
        bar = tqdm(total=len(self._wins), unit="win", desc="detect") if opts["progress"] else None
        try:
            pipe.start()
            while (batch := pipe.next()) is not None:
                for index, window, result, error in batch:
                    if result is None:  # the window could not be read
                        yield index, None, error
                    else:
                        yield index, self._to_detections(index, window, result), None
                if bar is not None:
                    bar.update(len(batch))
        finally:
            pipe.close()
            if bar is not None:
                bar.close()
            self._shared.last_pass = pipe.stats()

    # -- pickling and display ----------------------------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        shared = self._shared
        model = None if shared.spec is not None else shared.model
        return (_restore, (model, shared.spec, shared.options, self._wins))

    def __repr__(self) -> str:
        what = self._shared.spec or type(self._shared.model).__name__
        return f"<DetectionSequence: {what} over {len(self)} windows, batch_size={self._shared.options['batch_size']}>"


def _restore(model: Any, spec: str | None, options: dict[str, Any], wins: WindowSequence) -> DetectionSequence:
    return DetectionSequence(_Shared(model, spec, options), wins)


__all__ = ["DetectionSequence", "Outcome", "detect"]
