"""A run's recipe: what makes its raw detections what they are, and the check that a resumed run has the same.

:func:`run_recipe` turns a model, windows and preprocessing into flat JSON values, stored once in the run
store (:mod:`lazytiles.runs.store`) or carried by a Kafka result; :func:`check_recipe` compares a stored recipe
with a new one and names the first difference, with a hint at what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RecipeMismatchError
from ..windowing.sequence import WindowSequence


def _source_identity(src: Any) -> str:
    token = str(src.token)
    path = getattr(src, "path", None)
    if isinstance(path, str) and os.path.exists(path):  # the same file from another working directory
        token = token.replace(path, os.path.realpath(path), 1)
    return token


def _window_table(wins: WindowSequence) -> tuple[np.ndarray, np.ndarray]:
    """(indices, pixel windows ``(N, 4)``) of ``wins``, in its order; no I/O."""
    return np.asarray(wins.indices, dtype=np.int64), np.asarray(wins.pixel_windows(), dtype=np.int64).reshape(-1, 4)


def _preprocess_identity(preprocess: Any) -> str:
    from ..detection.preprocess import Preprocess

    if preprocess is None:
        preprocess = Preprocess()
    if isinstance(preprocess, Preprocess):
        return repr(preprocess)
    name = getattr(preprocess, "__qualname__", type(preprocess).__qualname__)
    return f"callable {getattr(preprocess, '__module__', '?')}.{name}"


def run_recipe(
    model: Any,
    wins: WindowSequence,
    *,
    preprocess: Any = None,
    score_threshold: float = 0.0,
    indices: np.ndarray | None = None,
    rects: np.ndarray | None = None,
) -> dict[str, Any]:
    """What makes a run's raw detections what they are, as flat JSON values: ``{"windows.size": ...}``.

    The source (its identity and georeferencing), the windows (size, stride, area, count and a SHA-256
    of every window's index and pixel window, which covers bounds, region and edge rule), the model
    (:func:`lazytiles.detection.models.describe_model`), the preprocessing, the score threshold and the
    lazytiles version. Batch size, device and workers are not in it: they change speed, not results.
    """
    from .. import __version__
    from ..detection.models import describe_model

    if indices is None or rects is None:
        indices, rects = _window_table(wins)
    src = wins.source
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(indices, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(rects, dtype="<i8").tobytes())
    area = wins.area
    recipe: dict[str, Any] = {
        "lazytiles.version": __version__,
        "source": _source_identity(src),
        "source.crs": None if src.crs is None else src.crs.to_wkt(),
        "source.transform": list(src.transform)[:6],
        "source.shape": [int(src.count), int(src.height), int(src.width)],
        "source.dtype": np.dtype(src.dtype).name,
        "source.nodata": None if src.nodata is None else repr(float(src.nodata)),
        "windows.size": list(wins.size),
        "windows.stride": list(wins.stride),
        "windows.area": [int(area.col_off), int(area.row_off), int(area.width), int(area.height)],
        "windows.count": len(indices),
        "windows.sha256": digest.hexdigest(),
    }
    for key, value in describe_model(model).items():
        if key not in ("spec", "file"):  # how the model was named, not what it is
            recipe[f"model.{key}"] = value
    recipe["preprocess"] = _preprocess_identity(preprocess)
    recipe["score_threshold"] = float(score_threshold)
    return json.loads(json.dumps(recipe))


_HINTS = {
    "lazytiles.version": "the store was made by another lazytiles version",
    "source": "another source (an lt.ArraySource gets a random identity unless made with token=...)",
    "windows.sha256": "other windows: same size, stride and count, so the bounds, region or edge rule changed",
    "model": "another model (other weights, settings or class)",
    "preprocess": "other preprocessing",
}


def _short(value: Any, limit: int = 100) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else f"{text[: limit // 2 - 2]}...{text[-(limit // 2 - 1):]}"


def check_recipe(path: Path, stored: dict[str, Any], given: dict[str, Any]) -> None:
    """Raise :class:`RecipeMismatchError` naming the first parameter where ``given`` differs."""
    keys = list(stored) + [k for k in given if k not in stored]
    order = {k: i for i, k in enumerate(given)}
    differ = sorted(
        (k for k in keys if json.dumps(stored.get(k)) != json.dumps(given.get(k))), key=lambda k: order.get(k, len(order))
    )
    if not differ:
        return
    first = differ[0]
    hint = _HINTS.get(first) or _HINTS.get(first.split(".")[0], "")
    more = f" (also different: {', '.join(differ[1:6])}{', ...' if len(differ) > 6 else ''})" if len(differ) > 1 else ""
    raise RecipeMismatchError(
        f"run store {str(path)!r} was made by a different recipe: {first} is {_short(stored.get(first))} there "
        f"but {_short(given.get(first))} now{' — ' + hint if hint else ''}{more}. To continue it, call with the "
        "same source, windows and model; to start over in its place pass force_new=True (CLI: --force-new), "
        "or choose another out= path"
    )


__all__ = ["check_recipe", "run_recipe"]
