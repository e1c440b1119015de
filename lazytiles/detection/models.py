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
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InvalidArgumentError

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
    >>> from lazytiles.detection.models import BlobDetector
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
            for bx, sc, lab in zip(*(torch.split(values, counts) for values in (boxes, scores, classes)))
        ]


class BandMeanClassifier(nn.Module):
    """A tiny window classifier: class logits ``(N, C)`` are ``sharpness`` times each band's mean.

    With RGB input the predicted label is the dominant colour of the window (0 red, 1 green,
    2 blue). An example of the classifier contract, used by the tests and notebooks.

    Examples
    --------
    >>> import torch
    >>> from lazytiles.detection.models import BandMeanClassifier
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


class ColourSegmenter(nn.Module):
    """A tiny segmentation model: per-class colour thresholds, as one-hot class scores.

    Class 0 is the background; class ``k + 1`` holds the pixels within ``tolerance`` (on every band,
    on the 0..1 input scale) of ``colours[k]``. The defaults are the built-in sample's colours (red,
    green, blue: :data:`lazytiles.testing.sample.COLOURS` / 255), so on the sample this model is
    perfect. ``factor`` > 1 averages the scores over ``factor`` x ``factor`` pixels: an output grid
    that much coarser. Plain torch, no parameters; an example of the dense-model contract of
    :func:`lazytiles.predict`.

    Returns (from ``forward``): scores ``(N, 1 + len(colours), H / factor, W / factor)`` float32.

    Examples
    --------
    >>> import torch
    >>> from lazytiles.detection.models import ColourSegmenter
    >>> image = torch.full((1, 3, 2, 2), 0.3)
    >>> image[0, :, 0, 1] = torch.tensor([0.9, 0.16, 0.16])      # one red pixel
    >>> ColourSegmenter()(image).argmax(dim=1).tolist()
    [[[0, 1], [0, 0]]]
    """

    def __init__(
        self,
        colours: tuple[tuple[float, float, float], ...] = (
            (230 / 255, 40 / 255, 40 / 255),
            (40 / 255, 220 / 255, 60 / 255),
            (40 / 255, 90 / 255, 235 / 255),
        ),
        tolerance: float = 0.15,
        factor: int = 1,
    ) -> None:
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise InvalidArgumentError(f"factor must be a whole number >= 1, got {factor!r}")
        self.colours: Tensor
        self.register_buffer("colours", torch.tensor(colours, dtype=torch.float32).view(1, -1, 3, 1, 1))
        self.tolerance = float(tolerance)
        self.factor = factor

    def extra_repr(self) -> str:
        return f"classes={1 + self.colours.shape[1]}, tolerance={self.tolerance}, factor={self.factor}"

    def forward(self, images: Tensor) -> Tensor:
        bands = self.colours.shape[2]
        hit = (images[:, None, :bands] - self.colours.to(images.dtype)).abs().amax(dim=2) <= self.tolerance
        scores = torch.cat([~hit.any(dim=1, keepdim=True), hit], dim=1).to(torch.float32)
        if self.factor > 1:
            scores = nn.functional.avg_pool2d(scores, self.factor)
        return scores


def blob_detector() -> BlobDetector:
    """The demo detector with its defaults, for ``--model lazytiles.detection.models:blob_detector``."""
    return BlobDetector()


def window_classifier() -> BandMeanClassifier:
    """The example window classifier, for ``--model lazytiles.detection.models:window_classifier``."""
    return BandMeanClassifier()


def colour_segmenter() -> ColourSegmenter:
    """The demo segmentation model with its defaults, for ``--model lazytiles.detection.models:colour_segmenter``."""
    return ColourSegmenter()


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
    >>> from lazytiles.detection.models import load_model
    >>> load_model("lazytiles.detection.models:blob_detector")
    BlobDetector(threshold=0.5, min_area=4, connectivity=8)
    """
    text = os.fspath(spec)
    if os.path.isfile(text):
        return _load_file(text)
    module_name, colon, attr = text.partition(":")
    if not colon or not module_name or not attr or os.sep in module_name or text.lower().endswith(_SCRIPT_SUFFIXES):
        raise InvalidArgumentError(
            f"model {text!r} is neither an existing TorchScript file nor 'package.module:factory'; check the "
            "path, or name a function or class that returns the model, e.g. 'lazytiles.detection.models:blob_detector'"
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
            # torch.jit.load has no annotations
            return torch.jit.load(path, map_location="cpu")  # type: ignore[no-untyped-call]
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
    >>> from lazytiles.detection.models import BlobDetector, describe_model
    >>> d = describe_model(BlobDetector())
    >>> d["kind"], d["class"], d["parameters"]
    ('module', 'lazytiles.detection.models.BlobDetector', 0)
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


__all__ = [
    "BandMeanClassifier",
    "BlobDetector",
    "ColourSegmenter",
    "blob_detector",
    "colour_segmenter",
    "describe_model",
    "load_model",
    "window_classifier",
]
