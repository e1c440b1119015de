"""Apache Beam transforms: the detection pipeline as a distributed job, with a global seam-aware merge.

Install with ``pip install lazytiles[beam]``; ``import lazytiles`` does not import Beam, this package
does. The job, on any Beam runner (the DirectRunner locally, Dataflow, Flink or Spark)::

    index ranges          DetectWindows                 MergeDetections                    sinks
    (shard_ranges)  ->    setup: load the model   ->    cells with a halo, then     ->     GeoJSON, GeoPackage,
    Create, Reshuffle     shard: lt.detect over         coarser cells for what            the run store's
                          wins[start:stop]              crosses a cell's edge              ``detections`` layer
                          ├─ WindowDetections           (one GroupByKey per level)
                          └─ DeadLetter (index, reason) ──────────────────────────────>   run store: failed

Only recipes (the pickled :class:`~lazytiles.WindowSequence`: the source's path and the window plan),
index ranges and detections travel between workers; never pixels, never open handles.

Shards
    :func:`shard_ranges` cuts the sequence, in its cache-aware order, into ranges of whole window rows
    of one strip: each shard reads a compact block of tiles and, through its worker's tile cache,
    fetches each of them once.

The merge
    :class:`MergeDetections` gives exactly what ``lt.merge(lt.detect(model, wins))`` gives, without
    collecting every box on one worker: boxes are keyed by square cells of the area, each with a
    halo; a group of matching boxes that lies inside a cell is merged there, and the groups that
    reach a cell's edge go on to coarser cells, level by level (one ``GroupByKey`` each), until one
    last cell takes what lies on the seams of the largest cells. :mod:`lazytiles.merging.cells` has the
    algorithm, in plain numpy, and why it is exact.

Resuming
    :func:`detect_region` records every window in the run store of :func:`lazytiles.detect_region`
    (a GeoPackage) as it is done or fails; run it again and only the missing and failed windows are
    detected, the others are read back from the store. The store must be a path every worker can
    open: a local disk for the DirectRunner, a shared POSIX file system on a cluster.

Modules
    :mod:`lazytiles.beam.shards` cuts the sequence into shards (:func:`shard_ranges`; no Beam, no I/O);
    :mod:`lazytiles.beam.transforms` has the transforms and their ``DoFn`` classes (:class:`DetectWindows`,
    :class:`MergeDetections`, :class:`WriteDetections`) and the values that travel between them
    (:class:`WindowDetections`, :class:`DeadLetter`); :mod:`lazytiles.beam.job` is the whole job
    (:func:`detect_region`, :func:`to_pipeline_options`, :func:`run_cli`), on the run lifecycle of
    :mod:`lazytiles.runs.lifecycle`, whose :class:`~lazytiles.runs.lifecycle.SharedRun` lets one worker
    at a time write the run store. Import them all from here.
"""

from __future__ import annotations

from importlib import import_module

from ..errors import MissingDependencyError

try:  # the transforms and the job import Beam: check here, once, before them, and name the extra
    for _module in ("apache_beam", "apache_beam.options.pipeline_options", "apache_beam.utils.shared"):
        import_module(_module)
except ImportError as _err:
    raise MissingDependencyError(
        f"lazytiles.beam needs Apache Beam, which cannot be imported ({_err}); run `pip install lazytiles[beam]`"
    ) from _err

from .job import STORE_WAIT as STORE_WAIT
from .job import detect_region, run_cli, to_pipeline_options
from .prediction import PredictWindows, predict_raster
from .shards import SHARD_ROWS as SHARD_ROWS  # public constants, kept out of __all__ as before
from .shards import shard_ranges
from .transforms import (
    DEAD_LETTER,
    DETECTIONS,
    DeadLetter,
    DetectWindows,
    MergeDetections,
    WindowDetections,
    WriteDetections,
)

__all__ = [
    "DEAD_LETTER",
    "DETECTIONS",
    "DeadLetter",
    "DetectWindows",
    "MergeDetections",
    "PredictWindows",
    "WindowDetections",
    "WriteDetections",
    "detect_region",
    "predict_raster",
    "run_cli",
    "shard_ranges",
    "to_pipeline_options",
]
