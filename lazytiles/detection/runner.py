"""Calling a model on a batch of windows: host buffers, preprocessing, the call, and the output checks.

:func:`lazytiles.detect` makes one :class:`ModelRunner` per detection sequence; :func:`parse_outputs`
checks what the model returned against the contract :func:`lazytiles.detect` states (:data:`EXPECTED`)
and turns it into numpy arrays, per image.

Importing this module imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InvalidArgumentError, LazyTilesError, ModelOutputError, WorkerError
from .masks import mask_shapes
from .preprocess import Preprocess

#: What a model must return; quoted by every ModelOutputError.
EXPECTED = (
    "expected one dict per image with 'boxes' (K, 4) xyxy window pixels, 'scores' (K,) and 'labels' (K,) "
    "(torchvision's convention), or, for a window classifier, a tensor of (N,) scores or (N, K) class logits"
)

#: Per image: boxes (K, 4) float64 in window pixels (None: the whole window), scores, labels, and the
#: objects' outlines in window pixels when the model gave ``masks`` (else None).
ImageResult = tuple["np.ndarray | None", np.ndarray, np.ndarray, "np.ndarray | None"]

#: Checks a model's output for a batch: ``parse(out, n, windows)`` -> one result per image, or a ModelOutputError.
Parse = Callable[[Any, int, Sequence[int]], list[Any]]


def _span(windows: Sequence[int]) -> str:
    items = list(windows)
    if len(items) <= 6:
        return f"[{', '.join(map(str, items))}]"
    return f"[{items[0]}, {items[1]}, ..., {items[-1]}] ({len(items)} windows)"


def _describe(value: Any) -> str:
    if isinstance(value, Tensor | np.ndarray):
        return f"a {type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {sorted(map(str, value))}"
    if isinstance(value, list | tuple):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        tensor = value.detach()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        return tensor.cpu().numpy()
    array: np.ndarray = np.asarray(value)
    return array


def _float32(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # a score beyond float32 becomes inf, which _check_finite reports
        return values.astype(np.float32)


def _check_finite(what: str, values: np.ndarray, windows: Sequence[int], first: int = 0) -> None:
    """Raise :class:`~lazytiles.ModelOutputError` naming the window of the first image (axis 0 of ``values``,
    image ``first`` of the batch onwards) whose ``what`` has a NaN or an infinity."""
    if values.dtype.kind not in "fc" or np.isfinite(values).all():
        return
    row = np.isfinite(values.reshape(len(values), -1)).all(axis=1).argmin()
    found = [name for name, test in (("NaN", np.isnan), ("inf", np.isinf)) if test(values[row]).any()]
    image = first + int(row)
    raise ModelOutputError(
        f"the model returned {' and '.join(found)} in the {what} of window {windows[image]} (image {image} of the "
        f"batch of windows {_span(windows)}); boxes, scores and logits must be finite numbers: check the model's "
        "weights and the preprocessing of its input"
    )


def parse_outputs(out: Any, n: int, windows: Sequence[int]) -> list[ImageResult]:
    """Check a model's output for a batch of ``n`` images and convert it to numpy, per image.

    Raises :class:`~lazytiles.ModelOutputError` naming what came back and what is expected, or, when
    a box, score or logit is NaN or infinite, naming the window; either way before any image's result
    of the batch is returned.
    """
    where = f"for the batch of windows {_span(windows)}"
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Mapping) and isinstance(out[1], list):
        out = out[1]  # a scripted torchvision detector returns (losses, detections)
    if isinstance(out, Tensor | np.ndarray):
        scores = _to_numpy(out)
        if scores.ndim == 2 and scores.shape[1] == 1:
            scores = scores[:, 0]
        if scores.ndim == 1 and len(scores) == n:
            scores = _float32(scores)
            _check_finite("scores", scores, windows)
            return [(None, scores[i : i + 1], np.zeros(1, np.int64), None) for i in range(n)]
        if scores.ndim == 2 and len(scores) == n and scores.shape[1] > 1:
            _check_finite("class logits", scores, windows)
            logits = scores.astype(np.float64)
            prob = np.exp(logits - logits.max(axis=1, keepdims=True))
            prob /= prob.sum(axis=1, keepdims=True)
            labels = prob.argmax(axis=1)
            best = prob[np.arange(n), labels].astype(np.float32)
            return [(None, best[i : i + 1], labels[i : i + 1].astype(np.int64), None) for i in range(n)]
        raise ModelOutputError(f"the model returned {_describe(out)} {where} of {n} images; {EXPECTED}")
    if not isinstance(out, list | tuple) or len(out) != n:
        raise ModelOutputError(f"the model returned {_describe(out)} {where} of {n} images; {EXPECTED}")
    results: list[ImageResult] = []
    for i, item in enumerate(out):
        if not isinstance(item, Mapping):
            raise ModelOutputError(
                f"the model returned {_describe(out)} {where}, and item {i} is {_describe(item)}; {EXPECTED}"
            )
        missing = [key for key in ("boxes", "scores", "labels") if key not in item]
        if missing:
            raise ModelOutputError(
                f"the model returned, for image {i} {where}, {_describe(item)}: {missing} missing; {EXPECTED}"
            )
        boxes, scores, labels = (_to_numpy(item[key]) for key in ("boxes", "scores", "labels"))
        k = len(scores) if scores.ndim == 1 else -1
        if boxes.size == 0 and k == 0:
            boxes = boxes.reshape(0, 4)
        if k < 0 or boxes.shape != (k, 4) or labels.shape != (k,):
            raise ModelOutputError(
                f"the model returned, for image {i} {where}, boxes of shape {tuple(boxes.shape)}, scores of shape "
                f"{tuple(scores.shape)} and labels of shape {tuple(labels.shape)}; {EXPECTED}"
            )
        boxes, scores = boxes.astype(np.float64), _float32(scores)
        for what, values in (("boxes", boxes), ("scores", scores), ("labels", labels)):
            _check_finite(what, values[None], windows, i)
        masks = item.get("masks")
        shapes = None if masks is None else mask_shapes(masks, k, _to_numpy, f"for image {i} {where}")
        results.append((boxes, scores, labels.astype(np.int64), shapes))
    return results


def _shares(a: Tensor, b: Tensor) -> bool:
    """Whether tensors ``a`` and ``b`` lie in the same memory (a view of the other, or of one storage)."""
    return bool(a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr())


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


class ModelRunner:
    """Runs a model on batches of windows: host buffers, preprocessing, the copy to the device, the call,
    and ``parse`` on what it returned (default :func:`parse_outputs`, the detection contract).

    Made once per :class:`~lazytiles.detection.sequence.DetectionSequence` (by :func:`lazytiles.detect`); it puts
    an ``nn.Module`` in eval mode on ``device``. Where the one conversion to float happens depends on
    the device: on a GPU, after the copy (8-bit pixels cross the bus, a quarter of the bytes); on the
    CPU, while each window is copied into the batch on a reader thread (:meth:`fill`), so the model's
    thread does nothing but run the model. Buffers are filled by reader threads, one slot each, and
    :meth:`run` is called from one thread per buffer.
    """

    def __init__(
        self,
        model: Any,
        *,
        device: torch.device,
        preprocess: Preprocess | Callable[[Tensor], Tensor],
        count: int,
        dtype: np.dtype,
        window_shape: tuple[int, int],
        parse: Parse = parse_outputs,
    ) -> None:
        if isinstance(model, nn.Module):
            model.eval()
            model.to(device)
        self.model = model
        self.parse = parse
        self.device = device
        self.cuda = device.type == "cuda"
        self.src_dtype = np.dtype(dtype)
        self.custom: Callable[[Tensor], Tensor] | None = None
        pre = preprocess if isinstance(preprocess, Preprocess) else Preprocess()
        if not isinstance(preprocess, Preprocess):
            self.custom = preprocess
        self.bands: tuple[int, ...] | None = None if self.custom is not None else pre.bands
        if self.bands is not None and max(self.bands) >= count:
            raise InvalidArgumentError(
                f"Preprocess(bands={self.bands!r}) selects band {max(self.bands)}, but the source has {count} "
                f"bands (0..{count - 1}); bands are 0-based indices"
            )
        channels = count if self.bands is None else len(self.bands)
        self.shape = (channels, *window_shape)
        self.float_dtype = getattr(torch, pre.dtype)
        scale, offset = pre.affine(self.src_dtype, channels) if self.custom is None else (None, None)
        # convert on the host while filling (CPU; numpy has no bfloat16), else on the device
        self.host_float = self.custom is None and not self.cuda and pre.dtype != "bfloat16"
        # unsigned 16/32-bit travel to a GPU as their signed bit pattern and are widened there
        self._wire = {"uint16": np.int16, "uint32": np.int32}.get(self.src_dtype.name) if self.cuda else None
        if self.host_float:
            self.buffer_dtype = np.dtype(pre.dtype)
        else:
            self.buffer_dtype = self.src_dtype if self._wire is None else np.dtype(self._wire)
        self._mul = None if scale is None else np.asarray(scale, dtype=self.buffer_dtype)
        self._add = None if offset is None else np.asarray(offset, dtype=self.buffer_dtype)
        self._scale: Tensor | None = None
        self._offset: Tensor | None = None
        if not self.host_float and scale is not None:
            self._scale = torch.tensor(scale, dtype=self.float_dtype, device=device).view(1, -1, 1, 1)
        if not self.host_float and offset is not None:
            self._offset = torch.tensor(offset, dtype=self.float_dtype, device=device).view(1, -1, 1, 1)

    # -- host side -------------------------------------------------------------------------------

    def new_buffer(self, n: int) -> tuple[Tensor, np.ndarray]:
        """A host batch of ``n`` windows (pinned for CUDA): the tensor, and a numpy view to fill."""
        tensor = torch.empty((n, *self.shape), dtype=_torch_dtype(self.buffer_dtype), pin_memory=self.cuda)
        view = tensor.numpy()
        return tensor, view if self._wire is None else view.view(self.src_dtype)

    def fill(self, buffer: np.ndarray, slot: int, data: np.ndarray) -> None:
        """Copy one window's pixels into ``buffer[slot]``: the model's bands, as floats on a CPU."""
        bands = range(len(data)) if self.bands is None else self.bands
        if not self.host_float:
            if self.bands is None:
                np.copyto(buffer[slot], data)
            else:
                for j, b in enumerate(bands):
                    np.copyto(buffer[slot, j], data[b])
            return
        for j, b in enumerate(bands):
            out = buffer[slot, j]
            if self._mul is None:
                np.copyto(out, data[b], casting="unsafe")
            else:  # one pass: read the source dtype, write the product as float
                np.multiply(data[b], self._mul[j], out=out, casting="unsafe")
            if self._add is not None:
                out += self._add[j]

    # -- device side -----------------------------------------------------------------------------

    def _prepare(self, x: Tensor) -> Tensor:
        if self.custom is not None:
            return self.custom(x)
        if self.host_float:
            return x  # converted while filling
        if self._wire is not None:  # undo the signed view: widen, then keep the low bits
            wide = torch.int32 if self._wire is np.int16 else torch.int64
            x = x.to(wide).bitwise_and_((1 << (8 * self.src_dtype.itemsize)) - 1)
        if self._scale is None and self._offset is None:
            return x if x.dtype == self.float_dtype else x.to(self.float_dtype)
        y = x.to(self.float_dtype, copy=True)  # the one conversion; the rest happens in place
        if self._scale is not None:
            y.mul_(self._scale)
        if self._offset is not None:
            y.add_(self._offset)
        return y

    def run(self, batch: Tensor, windows: Sequence[int]) -> list[Any]:
        """Run the model on a host batch of windows ``windows`` (their indices, for messages)."""
        with torch.inference_mode():
            if self.cuda:
                x = batch.to(self.device, non_blocking=True)
                # torch.cuda.Event.__new__ has no annotations
                copied = torch.cuda.Event()  # type: ignore[no-untyped-call]
                copied.record()
            else:
                x = batch
            x = self._prepare(x)
            try:
                out = self.model(x)
            except LazyTilesError:
                raise
            except Exception as err:  # broad on purpose: any model bug is reported with its windows
                raise WorkerError(
                    f"the model raised {type(err).__name__} on the batch of windows {_span(windows)}: {err}"
                ) from err
            if isinstance(out, Tensor) and out.device == x.device and _shares(out, x):
                out = out.clone()  # the batch is refilled while the results are used: parse may keep views
            results = self.parse(out, len(windows), windows)
            if self.cuda:
                copied.synchronize()  # the pinned buffer may be refilled only after its copy finished
        return results


__all__ = ["EXPECTED", "ImageResult", "ModelRunner", "Parse", "parse_outputs"]
