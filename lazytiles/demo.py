"""``lazytiles demo``: the whole chain on the built-in sample, checked against the objects it holds.

It writes the sample (a COG and XYZ tiles, see :mod:`lazytiles.testing.sample`), serves the tiles from a
loopback HTTP server it starts and stops itself, and runs the built-in blob detector over both
sources in overlapping windows: the COG durably through ``lt.detect_region`` into
``detections.gpkg``, the tile server through ``lt.merge(lt.detect(...))`` in memory. Each result is
matched one to one against the true objects. Then the built-in segmentation model runs over the COG
through ``lt.predict_region`` into ``prediction.tif``, compared pixel by pixel with the true classes;
``lt.polygons`` traces that raster into ``polygons.gpkg``, and ``lt.evaluate`` matches those outlines
with the true ones (polygon IoU). The demo succeeds when every object is found exactly once, with
nothing extra, every pixel's class is right and every traced object is a true one (recall and
precision 1). Offline: nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

#: Window size and overlap of the demo (objects are at most 48 px; the overlap is 128 px).
SIZE, OVERLAP = 512, 0.25
#: IoU at which a found box counts as the true object.
MATCH_IOU = 0.5


@dataclass(frozen=True)
class Score:
    """How one source's detections compare with the truth."""

    source: str
    windows: int
    seconds: float
    megapixels: float
    found: int  # true objects matched by exactly one box
    expected: int
    extra: int  # boxes matching no true object (duplicates, false positives)
    min_iou: float

    @property
    def ok(self) -> bool:
        return self.found == self.expected and self.extra == 0


@dataclass(frozen=True)
class DemoReport:
    """What the demo did: a :class:`Score` per source, the files written, and the total wall time."""

    directory: Path
    scores: tuple[Score, ...]
    outputs: tuple[Path, ...]
    seconds: float
    seam_objects: int = 0
    pixel_accuracy: float = 0.0  #: of prediction.tif against the sample's true classes
    recall: float = 0.0  #: of polygons.gpkg's objects against the sample's true outlines
    precision: float = 0.0
    lines: tuple[str, ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        segmentation = self.pixel_accuracy == 1.0 and self.recall == 1.0 and self.precision == 1.0
        return bool(self.scores) and all(s.ok for s in self.scores) and segmentation


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), xyxy."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    iou: np.ndarray = np.zeros_like(inter)
    np.divide(inter, union, out=iou, where=union > 0)
    return iou


def match(
    found: np.ndarray, found_labels: np.ndarray, truth: np.ndarray, truth_labels: np.ndarray, iou: float = MATCH_IOU
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matches of found boxes to true boxes of the same label, best IoU first.

    Returns ``(pairs, ious)``: ``(K, 2)`` (found index, truth index) and their IoUs (all >= ``iou``).
    """
    m = iou_matrix(found, truth)
    m[np.asarray(found_labels)[:, None] != np.asarray(truth_labels)[None, :]] = 0
    pairs, ious = [], []
    used_f, used_t = set(), set()
    for flat in np.argsort(-m, axis=None, kind="stable"):
        i, j = divmod(int(flat), m.shape[1])
        if m[i, j] < iou:
            break
        if i in used_f or j in used_t:
            continue
        used_f.add(i)
        used_t.add(j)
        pairs.append((i, j))
        ious.append(m[i, j])
    return np.asarray(pairs, np.int64).reshape(-1, 2), np.asarray(ious, np.float64)


def to_grid(boxes: np.ndarray, src: Affine, dst: Affine) -> np.ndarray:
    """xyxy boxes in the pixel grid of transform ``src`` as pixels of ``dst`` (same CRS, no rotation)."""
    t = ~dst @ src
    x = np.stack([boxes[:, 0], boxes[:, 2]]) * t.a + t.c
    y = np.stack([boxes[:, 1], boxes[:, 3]]) * t.e + t.f
    return np.stack([x.min(0), y.min(0), x.max(0), y.max(0)], axis=1)


def seam_objects(boxes: np.ndarray, windows: np.ndarray) -> int:
    """How many boxes some window cuts: the box overlaps the window but does not fit inside it."""
    c, r, w, h = (windows[:, k][None, :] for k in range(4))
    x0, y0, x1, y1 = (boxes[:, k][:, None] for k in range(4))
    overlaps = (x0 < c + w) & (c < x1) & (y0 < r + h) & (r < y1)
    inside = (c <= x0) & (x1 <= c + w) & (r <= y0) & (y1 <= r + h)
    return int((overlaps & ~inside).any(axis=1).sum())


def score(name: str, found: Any, wins: Any, truth: Any, seconds: float) -> Score:
    """Compare merged detections of one source with the truth (boxes moved onto the source's grid)."""
    true_boxes = to_grid(truth.boxes, truth.transform, wins.source.transform)
    pairs, ious = match(found.boxes, found.labels, true_boxes, truth.labels)
    h, w = wins.size
    return Score(
        source=name,
        windows=len(wins),
        seconds=seconds,
        megapixels=len(wins) * h * w / 1e6,
        found=len(pairs),
        expected=len(truth),
        extra=len(found) - len(pairs),
        min_iou=float(ious.min()) if len(ious) else 0.0,
    )


@contextlib.contextmanager
def _serving(directory: Path) -> Iterator[str]:
    """A loopback tile server over ``directory`` for the ``with`` block; yields its URL template."""
    from .testing.tileserver import TileServer

    with TileServer(directory) as server:
        yield server.template("{z}/{x}/{y}.png")


def _table(scores: tuple[Score, ...]) -> list[str]:
    head = (
        f"  {'source':<8}{'windows':>8}{'time':>8}{'windows/s':>11}{'Mpx/s':>8}"
        f"{'found':>7}{'expected':>10}{'extra':>7}{'min IoU':>9}"
    )
    rows = [head]
    for s in scores:
        rows.append(
            f"  {s.source:<8}{s.windows:>8}{s.seconds:>7.1f}s{s.windows / max(s.seconds, 1e-9):>11.1f}"
            f"{s.megapixels / max(s.seconds, 1e-9):>8.1f}{s.found:>7}{s.expected:>10}{s.extra:>7}{s.min_iou:>9.3f}"
        )
    return rows


def run_demo(
    directory: str | Path = "lazytiles-demo",
    *,
    size: int = 2048,
    seed: int = 0,
    progress: bool = True,
    echo: Callable[[str], Any] | None = None,
) -> DemoReport:
    """Run the demo in ``directory``; ``echo`` receives each line of the report as it is made.

    Parameters
    ----------
    directory
        Where the sample and the results go (made if missing; earlier demo files are replaced).
    size, seed
        The sample scene's side in pixels and its random seed (see :func:`lazytiles.testing.sample.sample_scene`).
    progress
        Show progress bars.
    echo
        Called with each report line (``print`` on the command line); None: silent.

    Returns
    -------
    DemoReport
        ``report.ok`` is True when both sources found every object once and nothing else, every pixel of
        ``prediction.tif`` has its true class, and its polygons match the true outlines (recall and
        precision 1).
    """
    from .detection.models import BlobDetector, ColourSegmenter
    from .detection.sequence import detect
    from .display.jupyter import sequence_preview
    from .merging.streaming import merge
    from .outputs.evaluation import evaluate
    from .outputs.vectorize import polygons
    from .runs.prediction import predict_region
    from .runs.run import detect_region
    from .sources import open as open_source
    from .testing.sample import COLOURS, make_sample, sample_classes
    from .windowing.sequence import windows

    say = echo or (lambda line: None)
    lines: list[str] = []

    def emit(line: str) -> None:
        lines.append(line)
        say(line)

    start = time.perf_counter()
    directory = Path(directory)
    emit(f"lazytiles demo: the built-in sample in {directory}")
    sample = make_sample(directory, size=size, seed=seed)
    truth = sample.truth()
    west, south, east, north = sample.lonlat_bounds
    emit(
        f"  scene: {size} x {size} px RGB at zoom {sample.zoom} (EPSG:3857), lon {west:.4f}..{east:.4f}, "
        f"lat {south:.4f}..{north:.4f}; {len(truth)} objects"
    )
    tiles_dir = sample.tiles_dir
    assert tiles_dir is not None  # make_sample writes tiles unless given tiles=False
    zooms = sorted(int(p.name) for p in tiles_dir.iterdir() if p.name.isdigit())
    emit(
        f"  wrote {sample.cog.name} (COG with overviews) and {tiles_dir.name}/{{z}}/{{x}}/{{y}}.png "
        f"(zoom {zooms[0]}..{zooms[-1]})"
    )
    model = BlobDetector()
    scores = []

    # 1. the COG, durably: per-window results stored in a GeoPackage as they finish
    cog_wins = windows(open_source(sample.cog), SIZE, overlap=OVERLAP)
    seams = seam_objects(to_grid(truth.boxes, truth.transform, cog_wins.source.transform), cog_wins.pixel_windows())
    emit(f"  windows: {len(cog_wins)} of {SIZE} px, overlap {OVERLAP:.0%}; {seams} objects are cut by a window edge")
    gpkg = directory / "detections.gpkg"
    t = time.perf_counter()
    geojson = directory / "detections.geojson"
    found_cog = detect_region(model, cog_wins, gpkg, force_new=True, geojson=geojson, progress=progress)
    scores.append(score("COG", found_cog, cog_wins, truth, time.perf_counter() - t))

    # 2. the same pixels as XYZ tiles over HTTP from a loopback server, merged in memory
    with _serving(tiles_dir) as template:
        xyz = open_source(template, zoom=sample.zoom)
        xyz_wins = windows(xyz, SIZE, overlap=OVERLAP, bounds=sample.bounds, bounds_crs="EPSG:3857")
        t = time.perf_counter()
        found_xyz = merge(detect(model, xyz_wins, progress=progress), progress=False)
        scores.append(score("XYZ", found_xyz, xyz_wins, truth, time.perf_counter() - t))

    # 3. segmentation: the built-in colour model over the COG, into one raster, durably
    t = time.perf_counter()
    prediction = predict_region(
        ColourSegmenter(), cog_wins, directory / "prediction.tif", force_new=True, progress=progress
    )
    classes = sample_classes(size, seed=seed)
    accuracy = _pixel_accuracy(prediction, classes)
    predict_seconds = time.perf_counter() - t
    t = time.perf_counter()
    traced = polygons(prediction, classes=sorted(c + 1 for c in COLOURS))  # the ground (0) is no object
    shapes_gpkg = Path(traced.to_gpkg(directory / "polygons.gpkg", layer="polygons"))
    evaluation = evaluate(traced, sample.segments(classes), match="polygon")
    vector_seconds = time.perf_counter() - t

    preview = directory / "preview.png"
    sequence_preview(cog_wins, 1024, grid=True, detections=found_cog).save(preview)
    outputs = (geojson, gpkg, prediction, shapes_gpkg, preview)
    for line in _table(tuple(scores)):
        emit(line)
    emit(f"  segmentation: {prediction.name} in {predict_seconds:.1f} s, pixel accuracy {accuracy:.2%}")
    emit(
        f"  polygons: {len(traced)} objects traced into {shapes_gpkg.name} in {vector_seconds:.1f} s; against the "
        f"true outlines (polygon IoU >= {evaluation.iou:g}): recall {evaluation.recall:.2%}, "
        f"precision {evaluation.precision:.2%}"
    )
    for line in repr(evaluation.table).splitlines():
        emit(f"    {line}")
    seconds = time.perf_counter() - start
    scored = (seams, accuracy, evaluation.recall, evaluation.precision)
    report = DemoReport(directory, tuple(scores), outputs, seconds, *scored)
    emit(f"  wrote {', '.join(str(p) for p in outputs)}")
    verdict = (
        "every object found once, nothing extra, every pixel's class right, every outline true"
        if report.ok
        else "MISMATCH: found != expected, pixels misclassified, or outlines missed or extra"
    )
    emit(f"  {verdict}; {seconds:.1f} s in all")
    return DemoReport(directory, tuple(scores), outputs, seconds, *scored, tuple(lines))


def _pixel_accuracy(path: Path, truth: np.ndarray) -> float:
    """The share of pixels of the label raster ``path`` equal to ``truth``."""
    import rasterio

    with rasterio.open(path) as ds:
        labels = ds.read(1)
    return float((labels == truth).mean()) if labels.shape == truth.shape else 0.0


__all__ = ["DemoReport", "Score", "iou_matrix", "match", "run_demo", "seam_objects", "to_grid"]
