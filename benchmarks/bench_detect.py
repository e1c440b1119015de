"""Pipeline throughput: ``lt.detect`` vs a naive loop vs ``torch.utils.data.DataLoader(num_workers=2)``.

Writes a 3-band uint8 DEFLATE COG (512-px blocks) of coloured blobs on a noisy background to a
temporary directory, then detects the blobs in 512-px windows (overlap 0.25) with a CPU model whose
time per window is just above a window's read time (``--model-ratio``, calibrated first and
printed): :class:`~lazytiles.detection.models.BlobDetector` at an eighth of the resolution plus a matrix
product sized to taste (one compute-bound kernel that releases the GIL, as a CNN's convolutions
do). The model gets one torch thread and the reading the other core: the CPU stand-in for a GPU
pipeline, in which the device computes while the host reads. On a busy machine every thread
competes for the same cores and the overlap cannot show: run it on an otherwise idle one.

Cases (each over a fresh tile cache, after the file is in the OS page cache; each run ``--repeat``
times, interleaved, the fastest counting):

- naive loop: read ``--batch-size`` windows with rasterio, run the model on them, repeat;
- DataLoader: ``DataLoader(wins, batch_size=..., num_workers=2, collate_fn=lt.collate)``;
- lazytiles: ``lt.detect(model, wins, batch_size=...)`` with its defaults (one reader thread in
  window order; the source decodes the next windows' blocks on its read-ahead threads).

Prints windows/s, the ratio to the naive loop, and the fraction of wall time the model was busy
(targets: >= 90 % for lazytiles when the model is the bottleneck, >= 1.5x the naive loop on 2 cores),
and checks that every case found the same boxes in every window.

    python benchmarks/bench_detect.py             # 8192 x 8192, 441 windows, batches of 8, best of 3
    python benchmarks/bench_detect.py --quick     # 1024 x 1024, a smoke test for the test suite
    python benchmarks/bench_detect.py --durable   # also: a durable run (out=) vs in memory
    python benchmarks/bench_detect.py --batch-size 1 --torch-threads 2 --workers 2   # other settings
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
import torch
from rasterio.windows import Window as PixelWindow

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lazytiles as lt
from lazytiles.detection.models import BlobDetector

WORKERS = 2  # DataLoader workers
DETECT_OPTIONS: dict[str, Any] = {}  # lt.detect's own defaults unless --workers says otherwise


def write_scene(directory: Path, size: int, seed: int = 0) -> Path:
    """A COG of coloured rectangles (about one per 120 x 120 px) over low noise; returns its path."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (3, size, size), dtype=np.uint8)
    for top in range(4, size - 40, 120):
        for left in range(4, size - 40, 120):
            r, c = top + int(rng.integers(0, 70)), left + int(rng.integers(0, 70))
            h, w = (int(v) for v in rng.integers(6, 45, 2))
            image[int(rng.integers(0, 3)), r : r + h, c : c + w] = 220
    plain = directory / "scene_plain.tif"
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=rasterio.transform.from_origin(500_000, 6_000_000, 1, 1),
    )
    with rasterio.open(plain, "w", **profile) as ds:
        ds.write(image)
    path = directory / "scene.tif"
    rasterio.shutil.copy(plain, path, driver="COG", compress="DEFLATE", blocksize=512)
    plain.unlink()
    return path


class BusyDetector(torch.nn.Module):
    """The blob detector on the image at an eighth of its resolution (boxes scaled back), plus an
    ``n`` x ``n`` matrix product per image whose result is discarded: one compute-bound kernel that
    releases the GIL, as a CNN's convolutions do, and whose cost is dialled finely through ``n`` so
    the model takes just longer than reading a window."""

    def __init__(self, n: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("work", torch.rand(n, n) if n else torch.zeros(0, 0))
        self.blobs = BlobDetector(threshold=0.5, min_area=4)
        self.n = n

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        for _ in range(len(x) if self.n else 0):
            torch.mm(self.work, self.work)
        found = self.blobs(torch.nn.functional.avg_pool2d(x, 8))
        for out in found:
            out["boxes"] = out["boxes"] * 8
        return found


class Timed:
    """Wraps a model and adds up the time spent in it."""

    def __init__(self, model: Callable[[torch.Tensor], Any]) -> None:
        self.model, self.seconds = model, 0.0

    def __call__(self, x: torch.Tensor) -> Any:
        start = time.perf_counter()
        out = self.model(x)
        self.seconds += time.perf_counter() - start
        return out


def to_float(batch: torch.Tensor) -> torch.Tensor:
    return batch.to(torch.float32).mul_(1 / 255)


def boxes_by_window(outputs: Iterable[tuple[int, dict[str, torch.Tensor]]], windows: np.ndarray) -> dict[int, set]:
    """{window index: {(x0, y0, x1, y1, label) in source pixels}} from raw model outputs."""
    found: dict[int, set] = {}
    for index, out in outputs:
        col, row = windows[index][:2]
        found[index] = {
            (int(b[0]) + col, int(b[1]) + row, int(b[2]) + col, int(b[3]) + row, int(lab))
            for b, lab in zip(out["boxes"].tolist(), out["labels"].tolist())
        }
    return found


def naive(path: Path, windows: np.ndarray, model: Timed, batch: int) -> dict[int, set]:
    """Read ``batch`` windows with rasterio, run the model on them, repeat: nothing overlaps."""
    outputs = []
    with rasterio.open(path) as ds:
        for first in range(0, len(windows), batch):
            idx = range(first, min(first + batch, len(windows)))
            data = np.stack([ds.read(window=PixelWindow(*windows[i])) for i in idx])
            with torch.inference_mode():
                outs = model(to_float(torch.from_numpy(data)))
            outputs += zip(idx, outs)
    return boxes_by_window(outputs, windows)


def dataloader(wins: lt.WindowSequence, windows: np.ndarray, model: Timed, batch: int) -> dict[int, set]:
    loader = torch.utils.data.DataLoader(wins, batch_size=batch, num_workers=WORKERS, collate_fn=lt.collate)
    outputs = []
    for images, indices in loader:
        with torch.inference_mode():
            outs = model(to_float(images))
        outputs += zip(indices.tolist(), outs)
    return boxes_by_window(outputs, windows)


def lazytiles_detect(wins: lt.WindowSequence, model: Timed, batch: int) -> tuple[dict[int, set], dict[str, Any]]:
    dets = lt.detect(model, wins, batch_size=batch, progress=False, **DETECT_OPTIONS)
    found = {}
    for i, d in enumerate(dets):
        found[i] = {(*(int(v) for v in b), int(lab)) for b, lab in zip(d.boxes, d.labels)}
    return found, dets.stats()


def durable_run(model: Any, wins: lt.WindowSequence, directory: Path, batch: int) -> list[dict[str, Any]] | None:
    """Hook for the durable-run comparison: ``lt.detect_region(model, wins, out=...)`` vs in memory.

    Returns None while lazytiles has no ``detect_region``; otherwise one row per case,
    ``{"case": name, "seconds": s, "found": merged Detections}``: the in-memory
    ``lt.merge(lt.detect(...))`` first, then the durable run into a fresh GeoPackage. The durable-run
    work may refine the cases (resume after a kill, commit intervals); the table prints whatever is here.
    """
    if not hasattr(lt, "detect_region"):
        return None
    rows = []
    start = time.perf_counter()
    found = lt.merge(lt.detect(model, wins, batch_size=batch, progress=False, **DETECT_OPTIONS), progress=False)
    rows.append({"case": "detect + merge, in memory", "seconds": time.perf_counter() - start, "found": found})
    start = time.perf_counter()
    found = lt.detect_region(
        model, wins, out=str(directory / "run.gpkg"), batch_size=batch, progress=False, **DETECT_OPTIONS
    )
    rows.append({"case": "detect_region(out=.gpkg)", "seconds": time.perf_counter() - start, "found": found})
    return rows


def calibrate(path: Path, windows: np.ndarray, ratio: float, batch: int) -> tuple[int, float, float]:
    """(matrix size n, read seconds per window, model seconds per window at that n), at ``batch``."""
    sample = windows[: min(len(windows), max(4 * batch, 16))]
    reads = []
    for _ in range(3):  # the fastest of three: timings on a busy machine only ever come out slower
        with rasterio.open(path) as ds:  # a new dataset: GDAL's block cache does not know it yet
            start = time.perf_counter()
            data = [ds.read(window=PixelWindow(*w)) for w in sample]
            reads.append((time.perf_counter() - start) / len(sample))
    read = min(reads)
    x = to_float(torch.from_numpy(np.stack(data)))

    def per_window(model: torch.nn.Module) -> float:
        times = []
        with torch.inference_mode():
            model(x[:batch])  # warm up
            for _ in range(3):
                start = time.perf_counter()
                for first in range(0, len(x), batch):
                    model(x[first : first + batch])
                times.append((time.perf_counter() - start) / len(x))
        return min(times)

    base = per_window(BusyDetector(0))
    extra = ratio * read - base  # what the matrix product must add, per window
    if extra <= 0:
        return 0, read, base
    n = 256
    for _ in range(4):  # a matrix product costs about n**3: refine n from what it measures
        added = max(per_window(BusyDetector(n)) - base, 1e-6)
        n = max(16, round(n * (extra / added) ** (1 / 3)))
    return n, read, per_window(BusyDetector(n))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small scene: a smoke test, not a measurement")
    parser.add_argument("--size", type=int, default=None, help="scene width and height in pixels")
    parser.add_argument("--model-ratio", type=float, default=1.2, help="model time / read time per window")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads for the model")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per model call, in every case")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case, interleaved; the fastest counts")
    parser.add_argument("--workers", type=int, default=None, help="lt.detect reader threads (default: lt.detect's)")
    parser.add_argument("--durable", action="store_true", help="also time a durable run (out=) vs in memory")
    args = parser.parse_args(argv)
    size = args.size or (1024 if args.quick else 8192)
    if args.quick:
        args.repeat = 1
    batch = args.batch_size
    if args.workers is not None:
        DETECT_OPTIONS["workers"] = args.workers
    torch.set_num_threads(args.torch_threads)

    with tempfile.TemporaryDirectory(prefix="bench_detect_") as tmp:
        directory = Path(tmp)
        path = write_scene(directory, size)
        wins = lt.windows(lt.open(str(path), cache=lt.TileCache()), size=512, overlap=0.25)
        windows = wins.pixel_windows()
        with rasterio.open(path) as ds:  # put the file in the OS page cache for every case alike
            ds.read()
        depth, read_s, model_s = calibrate(path, windows, args.model_ratio, batch)

        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(
            f"# python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
            f"rasterio {rasterio.__version__} (GDAL {rasterio.__gdal_version__}), {cpus} CPUs, "
            f"torch threads {torch.get_num_threads()}"
        )
        print(
            f"# scene {size} x {size} x 3 uint8 COG (DEFLATE, 512-px blocks), {len(wins)} windows of 512 px, "
            f"overlap 0.25; batch {batch}, lt.detect {DETECT_OPTIONS or 'defaults'}; model: BlobDetector + {depth}x{depth} matmul, "
            f"{model_s * 1e3:.1f} ms/window vs read {read_s * 1e3:.1f} ms/window (ratio {model_s / read_s:.2f}; "
            f"a perfect overlap would be {(model_s + read_s) / max(model_s, read_s):.2f}x the naive loop)"
        )

        def case(name: str, run: Callable[[Timed], Any]) -> dict[int, set]:
            model = Timed(BusyDetector(depth))
            start = time.perf_counter()
            result = run(model)
            seconds = time.perf_counter() - start
            found = result[0] if isinstance(result, tuple) else result
            best = timings.get(name)
            if best is None or seconds < best[0]:  # the fastest run counts: a busy machine only slows
                timings[name] = (seconds, model.seconds / seconds)
            return found

        def fresh() -> lt.WindowSequence:  # a new tile cache for each run
            return lt.windows(lt.open(str(path), cache=lt.TileCache()), size=512, overlap=0.25)

        cases: dict[str, Callable[[Timed], Any]] = {
            "naive loop": lambda m: naive(path, windows, m, batch),
            "DataLoader(num_workers=2)": lambda m: dataloader(fresh(), windows, m, batch),
            "lazytiles detect": lambda m: lazytiles_detect(fresh(), m, batch),
        }
        timings: dict[str, tuple[float, float]] = {}
        results: dict[str, dict[int, set]] = {}
        for _ in range(args.repeat):  # interleaved, so a slow spell of the machine hits every case
            for name, run in cases.items():
                results[name] = case(name, run)
        rows = [(name, *timings[name]) for name in cases]
        durable = durable_run(BusyDetector(depth), wins, directory, batch) if args.durable else None

        baseline = rows[0][1]
        print(f"{'case':<28} | {'windows/s':>9} | {'vs naive':>8} | {'model busy':>10}")
        for name, seconds, busy in rows:
            print(f"{name:<28} | {len(wins) / seconds:9.2f} | {baseline / seconds:7.2f}x | {busy:10.1%}")
        for row in durable or []:
            seconds = row["seconds"]
            print(f"{row['case']:<28} | {len(wins) / seconds:9.2f} | {baseline / seconds:7.2f}x | {'':>10}")
        if durable:
            same_merge = all(row["found"] == durable[0]["found"] for row in durable)
            print(
                f"durable and in-memory runs merge to the same boxes: {'yes' if same_merge else 'NO'} "
                f"({len(durable[0]['found'])} objects)"
            )
        reference = results["naive loop"]
        same = all(found == reference for found in results.values())
        boxes = sum(map(len, reference.values()))
        print(f"same detections in every case: {'yes' if same else 'NO'} ({boxes} boxes in {len(wins)} windows)")
        return 0 if same and (not durable or same_merge) else 1


if __name__ == "__main__":
    sys.exit(main())
