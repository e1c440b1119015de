"""One index rule for every lazytiles sequence: exactly a list's, plus integer arrays."""

from __future__ import annotations

import operator
from typing import SupportsIndex, overload

import numpy as np

from ..errors import IndexTypeError, WindowIndexError

Positions = range | np.ndarray  # which items of an underlying sequence a view holds


@overload
def select(positions: Positions, key: int, what: str = ...) -> int: ...
@overload
def select(positions: Positions, key: object, what: str = ...) -> int | Positions: ...
def select(positions: Positions, key: object, what: str = "window") -> int | Positions:
    """``positions[key]`` with the rules and errors of a list, plus integer (and boolean) arrays.

    An int gives one position; a slice, an integer array or a boolean mask gives a new ``Positions``
    (slices of a ``range`` stay ranges, so nested slices never build arrays).
    """
    n = len(positions)
    if isinstance(key, slice):
        return positions[key]
    if isinstance(key, list | tuple):  # as an array, so [1.5] or ["a"] fail below instead of truncating
        key = np.asarray(key) if len(key) else np.zeros(0, np.int64)
    if isinstance(key, np.ndarray) and key.ndim == 1 and key.dtype.kind == "b":
        if len(key) != n:
            raise WindowIndexError(f"boolean mask of length {len(key)} does not match the {n} {what}s")
        return np.asarray(positions)[key]
    if isinstance(key, np.ndarray) and key.ndim == 1 and key.dtype.kind in "iu":
        if key.size and not (-n <= key.min() and key.max() < n):
            bad = key[(key < -n) | (key >= n)][0]
            raise WindowIndexError(f"index {int(bad)} in the index array is out of range for {n} {what}s")
        return np.asarray(positions)[key]
    try:
        if not isinstance(key, SupportsIndex):
            raise TypeError(key)
        i = operator.index(key)  # what a list accepts: int, np.int64, bool
    except TypeError:
        kind = type(key).__name__
        if isinstance(key, np.ndarray):
            kind = f"{key.ndim}-d ndarray of {key.dtype}"
        raise IndexTypeError(
            f"{what} indices must be integers, slices or 1-d integer/boolean arrays, not {kind}"
        ) from None
    if not -n <= i < n:
        raise WindowIndexError(f"{what} index {i} is out of range for {n} {what}s")
    return int(positions[i])
