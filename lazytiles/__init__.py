"""lazytiles: huge tiled geospatial images as lazy, random-access sequences of sliding windows."""

import logging

from .cache import TileCache, TileKey
from .errors import (
    BoundsError,
    CacheTooSmallError,
    CRSError,
    FailedWindowsWarning,
    IndexTypeError,
    InvalidArgumentError,
    LazyTilesError,
    LazyTilesWarning,
    MissingDependencyError,
    ModelOutputError,
    RecipeMismatchError,
    ResultNotFoundError,
    RunLockedError,
    RunStoreError,
    SourceNotFoundError,
    SourceOpenError,
    StreamError,
    TileFetchError,
    TileMissingError,
    WindowIndexError,
    WorkerError,
)
from .sources import ArraySource, RasterSource, TileSource, open
from .sources.xyz import XYZSource
from .http import HttpClient
from .detections import Detections
from .detect import DetectionSequence, Preprocess, detect
from .merge import merge
from .runs import Run, detect_region, open_run
from .prefetch import Prefetched, prefetch
from .windows import Window, WindowSequence, collate, windows
from .display import show
from . import kafka

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ArraySource",
    "BoundsError",
    "CRSError",
    "CacheTooSmallError",
    "DetectionSequence",
    "Detections",
    "FailedWindowsWarning",
    "HttpClient",
    "IndexTypeError",
    "InvalidArgumentError",
    "LazyTilesError",
    "LazyTilesWarning",
    "MissingDependencyError",
    "ModelOutputError",
    "Prefetched",
    "Preprocess",
    "RasterSource",
    "RecipeMismatchError",
    "ResultNotFoundError",
    "Run",
    "RunLockedError",
    "RunStoreError",
    "SourceNotFoundError",
    "SourceOpenError",
    "StreamError",
    "TileCache",
    "TileFetchError",
    "TileKey",
    "TileMissingError",
    "TileSource",
    "Window",
    "WindowIndexError",
    "WindowSequence",
    "WorkerError",
    "XYZSource",
    "__version__",
    "collate",
    "detect",
    "detect_region",
    "kafka",
    "merge",
    "open",
    "open_run",
    "prefetch",
    "show",
    "windows",
]
