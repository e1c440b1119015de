"""The errors and warnings lazytiles raises on purpose.

Every error derives from :class:`LazyTilesError` and also from the built-in exception it means, so an
existing ``except ValueError:`` or ``except OSError:`` keeps working. Each takes one message string
that names the bad value and the fix; errors cross process boundaries by pickling, so the cause's text
is part of the message, not only of ``__cause__``.
"""

from __future__ import annotations

import numbers
from typing import TypeGuard


class LazyTilesError(Exception):
    """Root of every error lazytiles raises on purpose."""


class InvalidArgumentError(LazyTilesError, ValueError):
    """An argument has a value lazytiles cannot use."""


class IndexTypeError(LazyTilesError, TypeError):
    """A sequence was indexed with something that is not an integer, slice or integer array."""


class WindowIndexError(LazyTilesError, IndexError):
    """A window index is out of range."""


class CRSError(InvalidArgumentError):
    """A coordinate reference system is unknown or missing where one is needed."""


class BoundsError(InvalidArgumentError):
    """Bounds or a region do not intersect the source, or are missing where they are required."""


class SourceNotFoundError(LazyTilesError, FileNotFoundError):
    """A source path does not exist."""


class SourceOpenError(LazyTilesError, OSError):
    """A source exists but could not be opened as a raster or tile service."""


class TileFetchError(LazyTilesError, OSError):
    """A tile could not be read, after retries."""


class TileMissingError(TileFetchError):
    """A tile is absent from its source (HTTP 404/204) and the source was asked to raise."""


class CacheTooSmallError(InvalidArgumentError):
    """A tile cache cannot hold even one tile of a source."""


class FrozenError(LazyTilesError, AttributeError):
    """An attribute of an immutable value (:class:`~lazytiles.Detections`) was set or deleted."""


class ModelOutputError(LazyTilesError, TypeError):
    """A model returned something other than what ``lt.detect`` expects."""


class MissingDependencyError(LazyTilesError, ImportError):
    """An optional package a feature needs is not installed; the message names the ``pip install``."""


class WorkerError(LazyTilesError, RuntimeError):
    """An item could not be produced by a worker thread or process; the message names the index."""


class RunStoreError(LazyTilesError, OSError):
    """A run store cannot be created, opened or written."""


class RecipeMismatchError(InvalidArgumentError):
    """A run store was made by a different recipe than the one asked to resume it."""


class RunLockedError(RunStoreError):
    """Another process is writing to the same run store."""


class StreamError(LazyTilesError, OSError):
    """A message broker (Kafka) could not be reached, or messages were not confirmed as delivered."""


class LazyTilesWarning(UserWarning):
    """Root of every warning lazytiles issues."""


class FailedWindowsWarning(LazyTilesWarning):
    """Some windows of a run could not be read; its result leaves them out until a resume retries them."""


def is_int(value: object) -> TypeGuard[int]:
    """Whether ``value`` is an integer (``int``, a numpy integer, any ``numbers.Integral``) and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> TypeGuard[float]:
    """Whether ``value`` is a real number (``int``, ``float``, a numpy number, any ``numbers.Real``), not a bool.

    Argument checks use these two before comparing a value, so a bool never passes for a number.
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


__all__ = [
    "BoundsError",
    "CRSError",
    "CacheTooSmallError",
    "FailedWindowsWarning",
    "FrozenError",
    "IndexTypeError",
    "InvalidArgumentError",
    "LazyTilesError",
    "LazyTilesWarning",
    "MissingDependencyError",
    "ModelOutputError",
    "RecipeMismatchError",
    "RunLockedError",
    "RunStoreError",
    "SourceNotFoundError",
    "SourceOpenError",
    "StreamError",
    "TileFetchError",
    "TileMissingError",
    "WindowIndexError",
    "WorkerError",
]
