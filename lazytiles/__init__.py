"""lazytiles: huge tiled geospatial images as lazy, random-access sequences of sliding windows."""

import logging

from .cache import TileCache, TileKey
from .detection.dense import Prediction, PredictionSequence, predict
from .detection.preprocess import Preprocess
from .detection.sequence import DetectionSequence, detect
from .detections import Detections
from .display.jupyter import show
from .errors import (
    BoundsError,
    CacheTooSmallError,
    CRSError,
    FailedWindowsWarning,
    FrozenError,
    IndexTypeError,
    InvalidArgumentError,
    LazyTilesError,
    LazyTilesWarning,
    MissingDependencyError,
    ModelOutputError,
    RecipeMismatchError,
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
from .merging.rule import MergeRule
from .merging.streaming import merge
from .outputs.evaluation import Evaluation, evaluate
from .outputs.raster import write_raster
from .outputs.vectorize import polygons
from .prefetching.sequence import Prefetched, prefetch
from .runs.prediction import predict_region
from .runs.run import Run, detect_region, open_run
from .sources import ArraySource, RasterSource, TileSource, open
from .sources.http import HttpClient
from .sources.scenes import MosaicSource, mosaic
from .sources.stac import open_stac
from .sources.warped import WarpedSource
from .sources.xyz import XYZSource
from .streams import kafka
from .windowing.sequence import Window, WindowSequence, collate, windows

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ArraySource",
    "BoundsError",
    "CRSError",
    "CacheTooSmallError",
    "DetectionSequence",
    "Detections",
    "Evaluation",
    "FailedWindowsWarning",
    "FrozenError",
    "HttpClient",
    "IndexTypeError",
    "InvalidArgumentError",
    "LazyTilesError",
    "LazyTilesWarning",
    "MergeRule",
    "MissingDependencyError",
    "ModelOutputError",
    "MosaicSource",
    "Prediction",
    "PredictionSequence",
    "Prefetched",
    "Preprocess",
    "RasterSource",
    "RecipeMismatchError",
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
    "WarpedSource",
    "Window",
    "WindowIndexError",
    "WindowSequence",
    "WorkerError",
    "XYZSource",
    "__version__",
    "collate",
    "detect",
    "detect_region",
    "evaluate",
    "kafka",
    "merge",
    "mosaic",
    "open",
    "open_run",
    "open_stac",
    "polygons",
    "predict",
    "predict_region",
    "prefetch",
    "show",
    "windows",
    "write_raster",
]
