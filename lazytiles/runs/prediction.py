"""``lt.predict_region``: a dense model over a region, durably, into one GeoTIFF (a COG).

Finished output blocks are committed to a block store beside the raster
(:mod:`lazytiles.runs.blockstore`) as they finish. A killed run, called again, runs only the windows
that touch blocks not yet stored, then writes the raster from the stored blocks, so the file is the
same however often the run was interrupted. The store remembers the run's recipe (the source, the
windows, the model, the preprocessing — :mod:`lazytiles.runs.recipe` — and the raster's options);
resuming with another is a :class:`~lazytiles.RecipeMismatchError`. The finished raster carries the
recipe in its ``LAZYTILES_RECIPE`` tag, so calling again on a finished run does nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..detection.dense import predict
from ..errors import InvalidArgumentError, RunStoreError
from ..merging.window_table import WindowTable
from ..outputs.blocks import Blend, BlockKey
from ..outputs.raster import BlockWriter, Layout, Output, partial_path, write_blocks
from ..windowing.sequence import WindowSequence
from .blockstore import BlockStore, store_path
from .lifecycle import check_bool
from .recipe import DetectOptions, check_recipe, run_recipe

log = logging.getLogger(__name__)

#: The GeoTIFF tag holding a finished raster's recipe.
RECIPE_TAG = "LAZYTILES_RECIPE"


def predict_region(
    model: Any,
    wins: WindowSequence,
    out: str | os.PathLike[str] = "pred.tif",
    *,
    resume: bool = True,
    force_new: bool = False,
    blend: Blend = "center",
    output: Output = "labels",
    dtype: Any = None,
    nodata: float | None = None,
    block: int = 256,
    overviews: bool = True,
    batch_size: int = 8,
    device: Any = "cpu",
    workers: int = 1,
    preprocess: Any = None,
    commit_interval: float = 1.0,
    progress: bool = True,
) -> Path:
    """Predict over a region durably: store each output block as it finishes, then write one raster.

    Eager. Runs ``lt.predict(model, wins)`` and stitches the predictions as
    :func:`lazytiles.write_raster` does, committing each finished block to ``out + ".blocks"``; then
    writes ``out`` from the stored blocks — a Cloud-Optimized GeoTIFF with overviews (nearest for
    labels, average for scores; tiles of ``block`` px, at least 128) unless ``overviews=False`` — and
    deletes the store. Killed at any
    point and called again with the same arguments, it runs only the windows touching blocks not yet
    stored; the final file is the same as an uninterrupted run's. Called on a finished run, it checks
    the recipe and returns. A window whose tiles cannot be read (after the source's retries) stops the
    run with its error, the blocks finished so far kept: run again to continue.

    Parameters
    ----------
    model, wins, batch_size, device, workers, preprocess
        As in :func:`lazytiles.predict`.
    out
        The raster to write (its directory must exist).
    resume
        Continue the run of an existing block store, or accept a finished ``out`` of the same recipe
        (default). False: an existing ``out`` or store is an error.
    force_new
        Start again, replacing ``out`` and its block store.
    blend, output, dtype, nodata, block
        As in :func:`lazytiles.write_raster`; part of the recipe.
    overviews
        Write a COG with overviews (default), or a plain tiled GeoTIFF.
    commit_interval
        Seconds between commits of finished blocks, at most; 0 commits after every window that
        finishes one. A kill loses at most this much work.
    progress
        Show a progress bar (tqdm) over the windows run.

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    RecipeMismatchError
        ``out`` or its store holds a run of another recipe; the message names what differs.
    RunLockedError
        Another process is running into ``out``.
    RunStoreError
        ``out`` exists and is not a finished prediction run (or ``resume=False``).

    Examples
    --------
    >>> import pathlib, tempfile, numpy as np, rasterio, lazytiles as lt
    >>> from lazytiles.detection.models import ColourSegmenter
    >>> image = np.zeros((3, 512, 512), np.uint8)
    >>> image[:, 300:340, 100:140] = np.array([230, 40, 40])[:, None, None]
    >>> src = lt.ArraySource(image, transform=rasterio.Affine(1, 0, 0, 0, -1, 0), crs="EPSG:3857", token="demo")
    >>> wins = lt.windows(src, size=128, overlap=0.25, edge="pad")
    >>> out = lt.predict_region(ColourSegmenter(), wins, pathlib.Path(tempfile.mkdtemp()) / "pred.tif", progress=False)
    >>> with rasterio.open(out) as ds:
    ...     int((ds.read(1) == 1).sum()), ds.overviews(1)
    (1600, [2])
    """
    if not isinstance(out, str | os.PathLike):
        raise InvalidArgumentError(f"out must be the path of a .tif file, got {type(out).__name__} {out!r}")
    check_bool("resume", resume)
    check_bool("force_new", force_new)
    check_bool("overviews", overviews)
    if isinstance(commit_interval, bool) or not isinstance(commit_interval, int | float) or not commit_interval >= 0:
        raise InvalidArgumentError(f"commit_interval must be a number of seconds >= 0, got {commit_interval!r}")
    preds = predict(
        model, wins, batch_size=batch_size, device=device, workers=workers, preprocess=preprocess, progress=progress
    )
    src = wins.source
    table = WindowTable.of(wins)
    if table.has_duplicates():
        raise InvalidArgumentError("wins holds some windows more than once; a run predicts each window once")
    writer = BlockWriter(
        table, (src.height, src.width), blend=blend, output=output, dtype=dtype, nodata=nodata, block=block
    )
    recipe = run_recipe(model, wins, DetectOptions(preprocess=preprocess), table)
    del recipe["score_threshold"]
    written = {"blend": blend, "output": output, "dtype": writer.dtype_option, "nodata": nodata, "block": block}
    recipe.update({f"raster.{k}": v for k, v in written.items()}, **{"raster.overviews": overviews})
    out = Path(out)
    if out.is_dir():
        raise RunStoreError(f"out={str(out)!r} is a directory; give the path of a .tif file")
    if out.exists() and not store_path(out).exists() and not force_new:  # a finished run, or another file
        if not resume:
            raise RunStoreError(
                f"{str(out)!r} already exists; pass resume=True (CLI: --resume) to accept a finished run of the "
                "same recipe, force_new=True (CLI: --force-new) to replace it, or choose another out= path "
                "(nothing was changed)"
            )
        check_recipe(out, finished_recipe(out), recipe)
        return out
    with BlockStore.open(store_path(out)) as store:
        stored = store.meta()
        if force_new:
            store.clear()
            out.unlink(missing_ok=True)
            stored = {}
        if stored and not resume:
            raise RunStoreError(
                f"{str(store.path)!r} holds a run into {str(out)!r}; pass resume=True (CLI: --resume) to continue it, "
                "force_new=True (CLI: --force-new) to start again, or choose another out= path (nothing was changed)"
            )
        if stored:
            check_recipe(store.path, stored["recipe"], recipe)
        else:
            store.set_meta({"recipe": recipe})
        _run(preds, writer, store, stored.get("layout"), float(commit_interval))
        _write_raster(store, writer, src, out, json.dumps(recipe), overviews)
    store_path(out).unlink(missing_ok=True)
    return out


def _run(preds: Any, writer: BlockWriter, store: BlockStore, layout: Any, interval: float) -> None:
    """Predict the windows touching blocks not stored yet; commit finished blocks every ``interval`` s."""
    todo = np.arange(len(writer.table))
    if layout is not None:
        writer.start(Layout(**layout))
        assert writer.plan is not None and writer.stitcher is not None
        done = store.done()
        for key in done:
            writer.stitcher.remaining[key] = 0
        left = [key for key in writer.plan.touching if key not in done]
        todo = np.unique(np.concatenate([writer.plan.touching[k] for k in left] + [np.empty(0, np.int64)]))
        todo = todo.astype(np.int64)
        log.info(
            "%s: %d of %d blocks stored; running %d windows", store.path, len(done), len(done) + len(left), len(todo)
        )
    if not len(todo):
        return
    pending: list[tuple[BlockKey, np.ndarray]] = []
    last = time.monotonic()
    with contextlib.closing(preds[todo].outcomes(tolerate=())) as stream:
        for position, (_, prediction, _) in zip(todo.tolist(), stream):
            fresh = writer.layout is None
            assert prediction is not None  # nothing is tolerated: a window that cannot be read raised
            pending += writer.add(position, prediction)
            if fresh and writer.layout is not None:
                store.set_meta({"layout": vars(writer.layout)})
            if pending and time.monotonic() - last >= interval:
                store.commit(pending)
                pending, last = [], time.monotonic()
    store.commit(pending)


def _write_raster(store: BlockStore, writer: BlockWriter, src: Any, out: Path, recipe: str, overviews: bool) -> None:
    """``out`` from the blocks stored (then a COG with overviews), written beside it and moved into place."""
    if writer.layout is None:
        writer.start(Layout(**store.meta()["layout"]))
    raster_from_blocks(store.blocks(), writer, src, out, tags={RECIPE_TAG: recipe}, overviews=overviews)


def raster_from_blocks(
    blocks: Iterable[tuple[BlockKey, np.ndarray]],
    writer: BlockWriter,
    src: Any,
    out: Path,
    *,
    tags: dict[str, str],
    overviews: bool,
) -> None:
    """Write ``out`` from finished ``blocks`` of ``writer``'s layout (one at a time), with ``tags``; then, with
    ``overviews``, make it a COG (overviews nearest for labels, average for scores). Written beside ``out``
    and moved into place."""
    import rasterio
    import rasterio.shutil
    from rasterio.errors import NotGeoreferencedWarning

    temp, cog = partial_path(out), out.with_name(f".{out.name}.cog.partial")
    try:
        with warnings.catch_warnings():  # a source without georeferencing gives a file without it
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(temp, "w", **writer.profile(src.transform, src.crs)) as ds:
                for key, array in blocks:
                    write_blocks(ds, writer, [(key, array)])
                if tags:
                    ds.update_tags(**tags)
            if overviews:
                resampling = "NEAREST" if writer.output == "labels" else "AVERAGE"
                rasterio.shutil.copy(
                    temp,
                    cog,
                    driver="COG",
                    BLOCKSIZE=max(writer.block, 128),  # GDAL's COG driver's least
                    COMPRESS="DEFLATE",
                    OVERVIEW_RESAMPLING=resampling,
                )
                os.replace(cog, out)
            else:
                os.replace(temp, out)
    finally:
        temp.unlink(missing_ok=True)
        cog.unlink(missing_ok=True)


def finished_recipe(path: Path) -> dict[str, Any]:
    """The recipe of a raster ``predict_region`` finished; :class:`~lazytiles.RunStoreError` for any other file."""
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as ds:
            text = ds.tags().get(RECIPE_TAG)
    except RasterioIOError:
        text = None
    try:
        recipe = json.loads(text) if text is not None else None
    except ValueError:
        recipe = None
    if not isinstance(recipe, dict):
        raise RunStoreError(
            f"{str(path)!r} exists and is not a raster lazytiles.predict_region finished; nothing was changed: pass "
            "force_new=True (CLI: --force-new) to replace it, or choose another out= path"
        )
    return recipe


__all__ = ["RECIPE_TAG", "finished_recipe", "predict_region", "raster_from_blocks"]
