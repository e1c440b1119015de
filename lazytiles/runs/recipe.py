"""A run's recipe: what makes its raw detections what they are, and the check that a resumed run has the same.

:class:`DetectOptions` are the options a run hands to ``lt.detect``; :func:`run_recipe` turns a model,
windows and those options into flat JSON values, stored once in the run store
(:mod:`lazytiles.runs.store`) or carried by a Kafka result; :func:`check_recipe` compares a stored
recipe with a new one and names the first difference, with a hint at what changed.

A recipe holds no secrets: credentials in URLs (userinfo, ``api_key=``, ``token=``, signatures) are
masked (:func:`masked`), so they are not part of a run's identity either: a run resumed with another
key for the same tiles is the same run. Nor does the lazytiles patch version change a recipe: a store
made by 0.1.0 resumes under 0.1.1; another minor or major version is another recipe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..detection.preprocess import Preprocess
from ..detection.sequence import DetectionSequence, detect
from ..errors import RecipeMismatchError
from ..merging.window_table import WindowTable
from ..sources.http import redact
from ..windowing.sequence import WindowSequence


@dataclass(frozen=True)
class DetectOptions:
    """The options a run hands to :func:`lazytiles.detect`, as one value.

    ``preprocess`` and ``score_threshold`` change the detections, so they are part of the run's
    recipe; ``batch_size``, ``device`` and ``workers`` change only the speed, so each session records
    them. They are checked by :meth:`detect`, as ``lt.detect`` checks them.

    Examples
    --------
    >>> DetectOptions(batch_size=4).session()
    {'batch_size': 4, 'device': 'cpu', 'workers': 1}
    """

    batch_size: int = 8
    device: Any = "cpu"
    workers: int = 1
    preprocess: Preprocess | Callable[[Any], Any] | None = None
    score_threshold: float = 0.0

    @classmethod
    def of(cls, dets: DetectionSequence) -> DetectOptions:
        """The options the lazy result of ``lt.detect`` was made with."""
        given = dets.options
        return cls(**{f.name: given[f.name] for f in dataclasses.fields(cls)})

    def kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of ``lt.detect`` (shallow: ``preprocess`` stays as it is)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def detect(self, model: Any, wins: WindowSequence) -> DetectionSequence:
        """``lt.detect(model, wins, ...)`` with these options and no progress bar: checks them, runs nothing."""
        return detect(model, wins, progress=False, **self.kwargs())

    def session(self) -> dict[str, Any]:
        """What a session records of how it ran: batch size, device, reader workers."""
        return {"batch_size": self.batch_size, "device": str(self.device), "workers": self.workers}


def masked(value: Any) -> Any:
    """``value`` (JSON values: text, lists, dicts) with credentials in URLs masked in every string
    (:func:`lazytiles.sources.http.redact`).

    >>> masked({"source": "xyz:https://t.example/{z}/{x}/{y}.png?api_key=s3cret", "n": [1, "u:p@x"]})
    {'source': 'xyz:https://t.example/{z}/{x}/{y}.png?api_key=***', 'n': [1, 'u:p@x']}
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {masked(k): masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [masked(v) for v in value]
    return value


def _source_identity(src: Any) -> str:
    token = str(src.token)
    path = getattr(src, "path", None)
    if isinstance(path, str) and os.path.exists(path):  # the same file from another working directory
        token = token.replace(path, os.path.realpath(path), 1)
    return redact(token)


def _preprocess_identity(preprocess: Any) -> str:
    if preprocess is None:
        preprocess = Preprocess()
    if isinstance(preprocess, Preprocess):
        return repr(preprocess)
    name = getattr(preprocess, "__qualname__", type(preprocess).__qualname__)
    return f"callable {getattr(preprocess, '__module__', '?')}.{name}"


def run_recipe(
    model: Any,
    wins: WindowSequence,
    options: DetectOptions = DetectOptions(),
    table: WindowTable | None = None,
) -> dict[str, Any]:
    """What makes a run's raw detections what they are, as flat JSON values: ``{"windows.size": ...}``.

    The source (its identity and georeferencing), the windows (size, stride, area, count and a SHA-256
    of every window's index and pixel window, which covers bounds, region and edge rule), the model
    (:func:`lazytiles.detection.models.describe_model`), the preprocessing, the score threshold and the
    lazytiles version. Batch size, device and workers are not in it: they change speed, not results.
    Credentials in the source's URL are masked (see the module's docstring).
    ``table`` is ``wins``' :class:`~lazytiles.merging.window_table.WindowTable`, when made already.
    """
    from .. import __version__
    from ..detection.models import describe_model

    table = WindowTable.of(wins) if table is None else table
    src = wins.source
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(table.indices, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(table.rects, dtype="<i8").tobytes())
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
        "windows.count": len(table),
        "windows.sha256": digest.hexdigest(),
    }
    for key, value in describe_model(model).items():
        if key not in ("spec", "file"):  # how the model was named, not what it is
            recipe[f"model.{key}"] = value
    recipe["preprocess"] = _preprocess_identity(options.preprocess)
    recipe["score_threshold"] = float(options.score_threshold)
    described: dict[str, Any] = masked(json.loads(json.dumps(recipe)))
    return described


_HINTS = {
    "lazytiles.version": "the store was made by another minor or major lazytiles version",
    "source": "another source (an lt.ArraySource gets a random identity unless made with token=...)",
    "windows.sha256": "other windows: same size, stride and count, so the bounds, region or edge rule changed",
    "model": "another model (other weights, settings or class)",
    "preprocess": "other preprocessing",
}


def _short(value: Any, limit: int = 100) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else f"{text[: limit // 2 - 2]}...{text[-(limit // 2 - 1) :]}"


_RELEASE = re.compile(r"(\d+)\.(\d+)")


def _compared(key: str, value: Any) -> str:
    """What of a recipe's value is compared: JSON, credentials masked; of the lazytiles version, only
    major.minor (a patch release changes no result)."""
    if key == "lazytiles.version" and isinstance(value, str) and (m := _RELEASE.match(value)):
        return f"{m[1]}.{m[2]}"
    return json.dumps(masked(value), sort_keys=True)


def check_recipe(path: Path, stored: dict[str, Any], given: dict[str, Any]) -> None:
    """Raise :class:`RecipeMismatchError` naming the first parameter where ``given`` differs from
    ``stored`` in what changes results (see the module's docstring)."""
    stored, given = masked(stored), masked(given)
    keys = list(stored) + [k for k in given if k not in stored]
    order = {k: i for i, k in enumerate(given)}
    differ = sorted(
        (k for k in keys if _compared(k, stored.get(k)) != _compared(k, given.get(k))),
        key=lambda k: order.get(k, len(order)),
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


__all__ = ["DetectOptions", "check_recipe", "masked", "run_recipe"]
