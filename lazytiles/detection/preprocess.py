"""``Preprocess``: how window pixels become a model's float input (band selection, scale, mean, std).

:func:`lazytiles.detect` takes one; the model runner applies it; a run's recipe records it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import InvalidArgumentError

#: Default ``scale`` by source dtype when ``Preprocess.scale`` is None; other dtypes are left as they are.
DEFAULT_SCALE = {"uint8": 1 / 255, "uint16": 1 / 65535}

FloatDtype = Literal["float32", "float16", "bfloat16", "float64"]


def _floats(value: Any, what: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    items = (value,) if isinstance(value, numbers.Real) else tuple(value)
    if not items or not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in items):
        raise InvalidArgumentError(f"{what} must be a number or a sequence of numbers (one per band), got {value!r}")
    return tuple(float(v) for v in items)


def _bands(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    bands: tuple[Any, ...] = (value,) if isinstance(value, int | np.integer) else tuple(value)
    if not bands or not all(isinstance(b, int | np.integer) and not isinstance(b, bool) and b >= 0 for b in bands):
        raise InvalidArgumentError(f"bands must be 0-based band indices, e.g. (0, 1, 2), got {value!r}")
    return tuple(int(b) for b in bands)


@dataclass(frozen=True)
class Preprocess:
    """How window pixels become the model's float input: band selection, then ``(x * scale - mean) / std``.

    Band selection happens on the host while the batch is assembled. The conversion to float happens
    once: on a GPU after the copy (so 8-bit pixels cross the bus, a quarter of the bytes); on a CPU
    while reader threads copy each window into the batch, so the model's thread only runs the model.

    Parameters
    ----------
    scale
        Multiplier applied first. Default (None): by the source's dtype — uint8 ``1/255``, uint16
        ``1/65535`` (so 0..1), any other dtype 1 (float sources are left as they are).
    mean, std
        Per band (after ``bands``), on the scaled values; a single number applies to every band.
        Default: no centring, no division.
    bands
        0-based source bands fed to the model, in order, e.g. ``(2, 1, 0)`` for BGR or ``(0, 1, 2)``
        to drop an alpha band. Default: all bands.
    dtype
        The model's input dtype: ``"float32"`` (default), ``"float16"``, ``"bfloat16"`` or ``"float64"``.

    Examples
    --------
    >>> import lazytiles as lt
    >>> lt.Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), bands=(0, 1, 2)).bands
    (0, 1, 2)
    """

    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    bands: tuple[int, ...] | None = None
    dtype: FloatDtype = "float32"

    def __post_init__(self) -> None:
        scale = self.scale
        if scale is not None and not (
            isinstance(scale, int | float | np.integer | np.floating) and math.isfinite(scale)
        ):
            raise InvalidArgumentError(f"scale must be a finite number or None, got {self.scale!r}")
        object.__setattr__(self, "mean", _floats(self.mean, "mean"))
        object.__setattr__(self, "std", _floats(self.std, "std"))
        if self.std is not None and min(self.std) <= 0:
            raise InvalidArgumentError(f"std must be positive, got {self.std!r}")
        object.__setattr__(self, "bands", _bands(self.bands))
        if self.dtype not in ("float32", "float16", "bfloat16", "float64"):
            raise InvalidArgumentError(
                f"dtype must be 'float32', 'float16', 'bfloat16' or 'float64', got {self.dtype!r}"
            )

    def affine(self, src_dtype: Any, channels: int) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
        """Per-band ``(multiplier, offset)`` equal to the preprocessing, or None where it is a no-op."""
        scale = DEFAULT_SCALE.get(np.dtype(src_dtype).name, 1.0) if self.scale is None else float(self.scale)

        def per_band(values: tuple[float, ...] | None, default: float, what: str) -> np.ndarray:
            if values is None:
                return np.full(channels, default)
            if len(values) not in (1, channels):
                raise InvalidArgumentError(
                    f"Preprocess({what}={values!r}) has {len(values)} values, but the model gets {channels} bands; "
                    "give one value per band, or a single number"
                )
            return np.broadcast_to(np.asarray(values, dtype=np.float64), (channels,))

        mean, std = per_band(self.mean, 0.0, "mean"), per_band(self.std, 1.0, "std")
        mul, add = scale / std, -mean / std
        return (
            None if np.all(mul == 1) else tuple(mul.tolist()),
            None if np.all(add == 0) else tuple(add.tolist()),
        )


__all__ = ["DEFAULT_SCALE", "FloatDtype", "Preprocess"]
