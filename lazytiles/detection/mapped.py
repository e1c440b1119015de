"""A model mapped over a window sequence, lazily: what ``lt.detect`` and ``lt.predict`` share.

``seq[i]`` reads window ``i`` and runs the model on it alone; iterating runs the streaming pipeline
of :mod:`lazytiles.detection.pipeline`, in which reading, the model and post-processing overlap in
bounded memory. :class:`ModelSequence` is that sequence, whatever the model returns; its subclasses
(:class:`~lazytiles.DetectionSequence`, :class:`~lazytiles.PredictionSequence`) say how a model's
output is checked (``_parse``) and what one window's result becomes (``_convert``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import numpy as np

from ..errors import InvalidArgumentError, TileFetchError
from ..windowing.sequence import WindowSequence
from .pipeline import Reduce, _Pipeline
from .preprocess import Preprocess

if TYPE_CHECKING:
    import torch
    from rasterio.windows import Window as PixelWindow

    from .runner import ModelRunner, Parse

T = TypeVar("T")
Self = TypeVar("Self", bound="ModelSequence[Any]")


class SharedModel:
    """What every slice of one ``lt.detect`` / ``lt.predict`` call shares: the model and its runner, made once."""

    def __init__(self, model: Any, spec: str | None, options: dict[str, Any]) -> None:
        self.model, self.spec, self.options = model, spec, options
        self._runner: ModelRunner | None = None
        self._lock = threading.Lock()
        self.last_pass: dict[str, Any] = {}

    def runner(self, wins: WindowSequence, parse: Parse) -> ModelRunner:
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
                    parse=parse,
                )
            return self._runner


def model_options(
    model: Any,
    wins: WindowSequence,
    *,
    batch_size: Any,
    device: Any,
    workers: Any,
    method: Any,
    preprocess: Any,
    progress: Any,
) -> tuple[Any, str | None, dict[str, Any]]:
    """Check what ``lt.detect`` and ``lt.predict`` share: ``(model or None, its spec string or None, options)``."""
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
    options = dict(
        batch_size=int(batch_size),
        device=check_device(device),
        workers=int(workers),
        method=method,
        preprocess=preprocess,
        progress=bool(progress),
    )
    return model, spec, options


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


class ModelSequence(Sequence[T], Generic[T]):
    """One result per window, computed on demand: the common part of ``lt.detect`` and ``lt.predict``.

    ``seq[i]`` runs the model on window ``i`` alone; slices and index arrays give lazy sub-sequences
    sharing the model. Iterating runs the streaming pipeline; :meth:`outcomes` is the same pass,
    tolerant of unreadable windows. ``len(seq) == len(seq.windows)``.
    """

    #: The progress bar's label.
    _verb = "run"

    def __init__(self, shared: SharedModel, wins: WindowSequence) -> None:
        self._shared = shared
        self._wins = wins

    # -- what a subclass says ----------------------------------------------------------------------

    def _parse(self, out: Any, n: int, windows: Sequence[int]) -> list[Any]:
        """A model's output for a batch of ``n`` windows, checked, as one result per window."""
        raise NotImplementedError

    def _convert(self, index: int, window: PixelWindow, result: Any) -> T:
        """One window's checked result as what the sequence holds."""
        raise NotImplementedError

    # -- what it is --------------------------------------------------------------------------------

    @property
    def windows(self) -> WindowSequence:
        """The windows the model runs over."""
        return self._wins

    @property
    def model(self) -> Any:
        """The model (loaded from its spec string at first use when one was given)."""
        if self._shared.model is None:
            self._runner()
        return self._shared.model

    @property
    def options(self) -> dict[str, Any]:
        """The keyword arguments the sequence was made with (batch_size, device, workers, ...)."""
        return dict(self._shared.options)

    def _runner(self) -> ModelRunner:
        return self._shared.runner(self._wins, self._parse)

    def __len__(self) -> int:
        return len(self._wins)

    @overload
    def __getitem__(self, key: int | np.integer) -> T: ...
    @overload
    def __getitem__(self: Self, key: slice | list[int] | tuple[int, ...] | np.ndarray) -> Self: ...
    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice | list | tuple | np.ndarray):
            return type(self)(self._shared, self._wins[key])
        w = self._wins[key]  # reads the window; raises IndexError / TypeError as a list would
        runner = self._runner()
        tensor, buffer = runner.new_buffer(1)
        runner.fill(buffer, 0, w.data)
        (result,) = runner.run(tensor, [w.index])
        return self._convert(w.index, w.window, result)

    # -- streaming ---------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[T]:
        with contextlib.closing(self._stream(())) as stream:  # a break or GC here stops the pipeline now
            for _, item, _ in stream:
                assert item is not None  # nothing is tolerated: a window that cannot be read raised
                yield item

    def outcomes(
        self,
        *,
        tolerate: tuple[type[BaseException], ...] = (TileFetchError,),
        progress: bool | None = None,
        reduce: Reduce | None = None,
    ) -> Generator[tuple[int, T | None, str | None], None, None]:
        """Stream ``(window index, result | None, error message | None)`` per window, in order.

        Like iterating, but a window that raises one of ``tolerate`` (default: tiles that cannot be
        read, after the source's retries) yields ``(index, None, message)`` instead of ending the
        pass; other errors (a model bug) still raise. ``index`` is the window's :attr:`Window.index`,
        so a later run can retry just those: ``seq[failed]`` over the same windows. ``progress``
        overrides the progress-bar option the sequence was made with. ``reduce(index, result)``, when
        given, runs on the model thread on each window's checked result (for ``lt.predict``, its array)
        and its return value is what the pass carries on: a smaller one keeps less memory in flight.

        Examples
        --------
        >>> import numpy as np, lazytiles as lt
        >>> from lazytiles.detection.models import BlobDetector
        >>> wins = lt.windows(lt.ArraySource(np.zeros((1, 64, 64), np.uint8)), size=32)
        >>> [(i, len(d), err) for i, d, err in lt.detect(BlobDetector(), wins, progress=False).outcomes()]
        [(0, 0, None), (1, 0, None), (2, 0, None), (3, 0, None)]
        """
        return self._stream(tuple(tolerate), progress=progress, reduce=reduce)

    def stats(self) -> dict[str, Any]:
        """Timings of the last streaming pass: ``windows``, ``batches``, ``seconds`` (wall),
        ``model_seconds`` (the model thread busy: copy to the device, preprocessing there, the model,
        output checks), ``model_busy`` (their ratio), ``wait_seconds`` (the model thread waiting for windows)."""
        return dict(self._shared.last_pass)

    def _stream(
        self,
        tolerate: tuple[type[BaseException], ...],
        *,
        progress: bool | None = None,
        reduce: Reduce | None = None,
    ) -> Generator[tuple[int, T | None, str | None], None, None]:
        if not len(self._wins):
            return
        from tqdm.auto import tqdm

        opts = self._shared.options
        pipe = _Pipeline(self._runner(), self._wins, opts, tolerate, reduce)
        show = opts["progress"] if progress is None else progress
        bar = tqdm(total=len(self._wins), unit="win", desc=self._verb) if show else None
        try:
            pipe.start()
            while (batch := pipe.next()) is not None:
                for index, window, result, error in batch:
                    if result is None:  # the window could not be read
                        yield index, None, error
                    else:
                        yield index, self._convert(index, window, result), None
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
        return (_restore, (type(self), model, shared.spec, shared.options, self._wins))

    def __repr__(self) -> str:
        what = self._shared.spec or type(self._shared.model).__name__
        return (
            f"<{type(self).__name__}: {what} over {len(self)} windows, batch_size={self._shared.options['batch_size']}>"
        )


def _restore(
    kind: Callable[[SharedModel, WindowSequence], T],
    model: Any,
    spec: str | None,
    options: dict[str, Any],
    wins: WindowSequence,
) -> T:
    return kind(SharedModel(model, spec, options), wins)


Method = Literal["thread", "process"]

__all__ = ["Method", "ModelSequence", "SharedModel", "check_device", "model_options"]
