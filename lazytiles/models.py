"""Models for ``lt.detect``: built-in examples, loading by name, and a stable identity for run recipes.

The contract a model follows is in :func:`lazytiles.detect`: a callable on a float batch ``(N, C, H,
W)`` returning, per image, a dict with ``boxes`` (K, 4) xyxy in window pixels, ``scores`` (K,) and
``labels`` (K,) (torchvision's convention), or, for a window classifier, a tensor of ``(N,)`` scores
or ``(N, K)`` class logits. Everything here is plain torch: no torchvision, no downloads.

Importing this module imports torch.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

import torch
from torch import Tensor, nn

from .errors import InvalidArgumentError, LazyTilesError, ModelOutputError, WorkerError

if TYPE_CHECKING:
    from .detect import Preprocess

# -- built-in examples ---------------------------------------------------------------------------


class BlobDetector(nn.Module):
    """Finds bright or coloured blobs: a threshold, then connected components, in plain torch ops.

    A pixel is foreground when its brightest band exceeds ``threshold``; 8-connected (or
    4-connected) foreground pixels form a blob. Blobs are labelled on the foreground pixels only
    (work grows with the foreground, not the image) by min-label hooking and pointer jumping, a
    parallel connected-components algorithm that needs O(log blob size) rounds of gathers and
    scatters. Runs on CPU and CUDA; has no learnable parameters.

    Parameters
    ----------
    threshold
        Brightness a pixel must exceed, on the model's input scale (0..1 after the default
        preprocessing of 8- and 16-bit images).
    min_area
        Blobs with fewer pixels are ignored (noise).
    connectivity
        8 (default: diagonal neighbours join a blob) or 4.

    Returns (from ``forward``)
    --------------------------
    One dict per image: ``boxes`` (K, 4) float32 ``x0, y0, x1, y1`` in pixels with ``x1``/``y1``
    exclusive (a blob covering columns 10..19 has ``x0 = 10, x1 = 20``); ``scores`` (K,) the blob's
    mean brightness; ``labels`` (K,) int64 the band with the highest mean inside the blob (0 = red,
    1 = green, 2 = blue for RGB). Blobs come in order of their first pixel (row by row).

    Examples
    --------
    >>> import torch
    >>> from lazytiles.models import BlobDetector
    >>> image = torch.zeros(1, 3, 32, 32)
    >>> image[0, 1, 4:10, 20:28] = 0.9                   # a green 6 x 8 blob
    >>> out = BlobDetector(threshold=0.5)(image)
    >>> out[0]["boxes"].tolist(), out[0]["labels"].tolist()
    ([[20.0, 4.0, 28.0, 10.0]], [1])
    """

    def __init__(self, threshold: float = 0.5, min_area: int = 4, connectivity: int = 8) -> None:
        super().__init__()
        if connectivity not in (4, 8):
            raise InvalidArgumentError(f"connectivity must be 4 or 8, got {connectivity!r}")
        if not min_area >= 1:
            raise InvalidArgumentError(f"min_area must be a positive number of pixels, got {min_area!r}")
        self.threshold = float(threshold)
        self.min_area = int(min_area)
        self.connectivity = int(connectivity)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, min_area={self.min_area}, connectivity={self.connectivity}"

    def _edges(self, flat: Tensor, n: int, h: int, w: int) -> tuple[Tensor, Tensor]:
        """Pairs of foreground pixels (indices into ``flat``) that touch: right and down neighbours,
        and the two lower diagonals for 8-connectivity; each pair once."""
        index = torch.full((n * h * w,), -1, dtype=torch.int64, device=flat.device)
        index[flat] = torch.arange(len(flat), device=flat.device)
        y, x = (flat // w) % h, flat % w
        steps = [(0, 1), (1, 0)] + ([(1, 1), (1, -1)] if self.connectivity == 8 else [])
        first, second = [], []
        for dy, dx in steps:
            inside = (y + dy < h) & (x + dx >= 0) & (x + dx < w)
            here = inside.nonzero().squeeze(1)
            there = index[flat[here] + dy * w + dx]
            touching = there >= 0
            first.append(here[touching])
            second.append(there[touching])
        return torch.cat(first), torch.cat(second)

    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        n, c, h, w = images.shape
        bright = images.amax(dim=1)  # (N, H, W)
        mask = bright > self.threshold
        flat = mask.view(-1).nonzero().squeeze(1)  # foreground pixels, row-major
        a, b = self._edges(flat, n, h, w)
        # connected components by min-label hooking and pointer jumping (Shiloach-Vishkin style):
        # every pixel ends up pointing at the first pixel of its blob, in O(log size) rounds
        parent = torch.arange(len(flat), device=images.device)
        while True:
            pa, pb = parent[a], parent[b]
            low = torch.minimum(pa, pb)
            hooked = parent.scatter_reduce(0, pa, low, "amin").scatter_reduce(0, pb, low, "amin")
            while True:
                jumped = hooked[hooked]
                if torch.equal(jumped, hooked):
                    break
                hooked = jumped
            if torch.equal(hooked, parent):
                break
            parent = hooked

        is_root = parent == torch.arange(len(flat), device=images.device)
        blob = (torch.cumsum(is_root, 0) - 1)[parent]  # blob number of each foreground pixel
        k = int(is_root.sum())
        image_of = flat[is_root] // (h * w)
        y, x = (flat // w) % h, flat % w
        area = torch.bincount(blob, minlength=k)
        big = torch.full((k,), h + w, dtype=torch.int64, device=images.device)
        small = torch.full((k,), -1, dtype=torch.int64, device=images.device)
        x0 = big.scatter_reduce(0, blob, x, "amin")
        y0 = big.scatter_reduce(0, blob, y, "amin")
        x1 = small.scatter_reduce(0, blob, x, "amax") + 1
        y1 = small.scatter_reduce(0, blob, y, "amax") + 1
        pixels = images.reshape(n, c, h * w)[flat // (h * w), :, flat % (h * w)]  # (P, C), no image copy
        colour = torch.zeros((k, c), dtype=images.dtype, device=images.device).index_add_(0, blob, pixels)
        brightness = torch.zeros((k,), dtype=images.dtype, device=images.device)
        brightness.index_add_(0, blob, bright.view(-1)[flat])

        keep = area >= self.min_area
        image_of = image_of[keep]
        boxes = torch.stack([x0, y0, x1, y1], dim=1)[keep].to(torch.float32)
        scores = (brightness[keep] / area[keep].to(images.dtype)).to(torch.float32)
        classes = colour[keep].argmax(dim=1).to(torch.int64)
        counts = torch.bincount(image_of, minlength=n).tolist()
        return [
            {"boxes": bx, "scores": sc, "labels": lab}
            for bx, sc, lab in zip(boxes.split(counts), scores.split(counts), classes.split(counts))
        ]


class BandMeanClassifier(nn.Module):
    """A tiny window classifier: class logits ``(N, C)`` are ``sharpness`` times each band's mean.

    With RGB input the predicted label is the dominant colour of the window (0 red, 1 green,
    2 blue). An example of the classifier contract, used by the tests and notebooks.

    Examples
    --------
    >>> import torch
    >>> from lazytiles.models import BandMeanClassifier
    >>> BandMeanClassifier()(torch.tensor([[[[0.1]], [[0.8]], [[0.2]]]])).argmax(dim=1).tolist()
    [1]
    """

    def __init__(self, sharpness: float = 10.0) -> None:
        super().__init__()
        self.sharpness = float(sharpness)

    def extra_repr(self) -> str:
        return f"sharpness={self.sharpness}"

    def forward(self, images: Tensor) -> Tensor:
        return images.mean(dim=(2, 3)) * self.sharpness


def blob_detector() -> BlobDetector:
    """The demo detector with its defaults, for ``--model lazytiles.models:blob_detector``."""
    return BlobDetector()


def window_classifier() -> BandMeanClassifier:
    """The example window classifier, for ``--model lazytiles.models:window_classifier``."""
    return BandMeanClassifier()


# -- loading by name -----------------------------------------------------------------------------

_SCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit", ".pt2")


def load_model(spec: str | os.PathLike[str]) -> Any:
    """A model from ``"pkg.module:factory"`` (calls ``factory()``) or a TorchScript file path.

    A ``.pt2`` file is loaded with ``torch.export.load``; any other file with ``torch.jit.load``
    (onto the CPU; ``lt.detect`` moves it to its device). Used by the command line, Beam and Kafka
    workers, which rebuild the model from this string in each process.

    Parameters
    ----------
    spec
        ``"package.module:attribute"`` — a factory called with no arguments (a class, a function),
        or an existing model object — or the path of a saved TorchScript / ``torch.export`` file.

    Raises
    ------
    InvalidArgumentError
        The spec is neither an existing file nor an importable ``module:attribute``.

    Examples
    --------
    >>> from lazytiles.models import load_model
    >>> load_model("lazytiles.models:blob_detector")
    BlobDetector(threshold=0.5, min_area=4, connectivity=8)
    """
    text = os.fspath(spec)
    if os.path.isfile(text):
        return _load_file(text)
    module_name, colon, attr = text.partition(":")
    if not colon or not module_name or not attr or os.sep in module_name or text.lower().endswith(_SCRIPT_SUFFIXES):
        raise InvalidArgumentError(
            f"model {text!r} is neither an existing TorchScript file nor 'package.module:factory'; check the "
            "path, or name a function or class that returns the model, e.g. 'lazytiles.models:blob_detector'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise InvalidArgumentError(
            f"model {text!r}: module {module_name!r} cannot be imported ({err}); install it or fix the name"
        ) from err
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise InvalidArgumentError(
                f"model {text!r}: {module_name!r} has no attribute {attr!r}; check the name after the colon"
            ) from None
    if isinstance(obj, nn.Module):
        return obj
    if not callable(obj):
        raise InvalidArgumentError(f"model {text!r} names a {type(obj).__name__}, not a factory or a model")
    model = obj()
    if not callable(model):
        raise InvalidArgumentError(
            f"model {text!r}: {attr}() returned a {type(model).__name__}, not a callable model; the factory "
            "must return the model (an nn.Module or any callable on a float batch)"
        )
    return model


def _load_file(path: str) -> Any:
    try:
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript loading; it still works
            warnings.simplefilter("ignore", DeprecationWarning)
            if path.lower().endswith(".pt2"):
                return torch.export.load(path).module()
            return torch.jit.load(path, map_location="cpu")
    except (RuntimeError, ValueError, OSError) as err:
        raise InvalidArgumentError(
            f"model file {path!r} could not be loaded as TorchScript ({err}); save it with "
            "torch.jit.save(torch.jit.script(model), path), or pass 'package.module:factory'"
        ) from err


# -- identity --------------------------------------------------------------------------------------


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _state_sha256(module: nn.Module) -> tuple[str, int]:
    digest = hashlib.sha256()
    n = 0
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        n += t.numel()
        digest.update(f"{name}:{t.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest(), n


def describe_model(model: Any) -> dict[str, Any]:
    """A stable identity of a model, as plain values, for run recipes (equal in every process).

    ``kind`` is ``"torchscript"``, ``"module"`` or ``"callable"``; ``class`` the model's class;
    modules add ``parameters`` (the number of values in the state dict) and ``sha256`` over the
    state dict's names, shapes, dtypes and bytes plus the module's printed configuration (so
    ``BlobDetector(threshold=0.4)`` and ``BlobDetector(threshold=0.5)`` differ). A spec string adds
    ``spec``; a file path adds ``file`` (its name) and ``file_sha256``.

    Examples
    --------
    >>> from lazytiles.models import BlobDetector, describe_model
    >>> d = describe_model(BlobDetector())
    >>> d["kind"], d["class"], d["parameters"]
    ('module', 'lazytiles.models.BlobDetector', 0)
    >>> d == describe_model(BlobDetector()) != describe_model(BlobDetector(threshold=0.4))
    True
    """
    if isinstance(model, str | os.PathLike):
        text = os.fspath(model)
        if os.path.isfile(text):
            out = describe_model(_load_file(text))
            out.update(file=os.path.basename(text), file_sha256=_file_sha256(text))
            return out
        out = describe_model(load_model(text))
        out["spec"] = text
        return out
    if isinstance(model, torch.jit.ScriptModule):
        digest, n = _state_sha256(model)
        code = hashlib.sha256(str(getattr(model, "code", "")).encode()).hexdigest()
        name = getattr(model, "original_name", type(model).__name__)
        return {"kind": "torchscript", "class": name, "parameters": n, "sha256": digest, "code_sha256": code}
    cls = type(model)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if isinstance(model, nn.Module):
        digest, n = _state_sha256(model)
        config = hashlib.sha256(repr(model).encode()).hexdigest()
        combined = hashlib.sha256(f"{digest}:{config}".encode()).hexdigest()
        return {"kind": "module", "class": name, "parameters": n, "sha256": combined}
    if hasattr(model, "__qualname__") and hasattr(model, "__module__"):  # a function
        name = f"{model.__module__}.{model.__qualname__}"
    return {"kind": "callable", "class": name}

# -- calling a model on a batch of windows -------------------------------------------------------

#: What a model must return; quoted by every ModelOutputError.
EXPECTED = (
    "expected one dict per image with 'boxes' (K, 4) xyxy window pixels, 'scores' (K,) and 'labels' (K,) "
    "(torchvision's convention), or, for a window classifier, a tensor of (N,) scores or (N, K) class logits"
)

#: Per image: boxes (K, 4) float64 in window pixels (None: the whole window), scores, labels.
ImageResult = tuple["np.ndarray | None", np.ndarray, np.ndarray]


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
        value = value.detach()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        return value.cpu().numpy()
    return np.asarray(value)


def parse_outputs(out: Any, n: int, windows: Sequence[int]) -> list[ImageResult]:
    """Check a model's output for a batch of ``n`` images and convert it to numpy, per image.

    Raises :class:`~lazytiles.ModelOutputError` naming what came back and what is expected.
    """
    where = f"for the batch of windows {_span(windows)}"
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Mapping) and isinstance(out[1], list):
        out = out[1]  # a scripted torchvision detector returns (losses, detections)
    if isinstance(out, Tensor | np.ndarray):
        scores = _to_numpy(out)
        if scores.ndim == 2 and scores.shape[1] == 1:
            scores = scores[:, 0]
        if scores.ndim == 1 and len(scores) == n:
            return [(None, scores[i : i + 1].astype(np.float32), np.zeros(1, np.int64)) for i in range(n)]
        if scores.ndim == 2 and len(scores) == n and scores.shape[1] > 1:
            logits = scores.astype(np.float64)
            prob = np.exp(logits - logits.max(axis=1, keepdims=True))
            prob /= prob.sum(axis=1, keepdims=True)
            labels = prob.argmax(axis=1)
            best = prob[np.arange(n), labels].astype(np.float32)
            return [(None, best[i : i + 1], labels[i : i + 1].astype(np.int64)) for i in range(n)]
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
        results.append((boxes.astype(np.float64), scores.astype(np.float32), labels.astype(np.int64)))
    return results


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


class ModelRunner:
    """Runs a model on batches of windows: host buffers, preprocessing, the copy to the device, the call.

    Made once per :class:`~lazytiles.detect.DetectionSequence` (by :func:`lazytiles.detect`); it puts
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
    ) -> None:
        from .detect import Preprocess

        if isinstance(model, nn.Module):
            model.eval()
            model.to(device)
        self.model = model
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

    def run(self, batch: Tensor, windows: Sequence[int]) -> list[ImageResult]:
        """Run the model on a host batch of windows ``windows`` (their indices, for messages)."""
        with torch.inference_mode():
            if self.cuda:
                x = batch.to(self.device, non_blocking=True)
                copied = torch.cuda.Event()
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
            results = parse_outputs(out, len(windows), windows)
            if self.cuda:
                copied.synchronize()  # the pinned buffer may be refilled only after its copy finished
        return results


__all__ = [
    "EXPECTED",
    "BandMeanClassifier",
    "BlobDetector",
    "ModelRunner",
    "blob_detector",
    "describe_model",
    "load_model",
    "parse_outputs",
    "window_classifier",
]
