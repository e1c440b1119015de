"""The cost of durability: ``lt.detect_region(model, wins, out=...)`` vs the same run in memory.

Same data and model as ``benchmarks/bench_detect.py``: a 3-band uint8 DEFLATE COG of coloured blobs
(512-px blocks; 8192 px square by default, so that a run lasts long enough to measure a few percent on a
busy machine, and a durable run's fixed cost — creating and closing the store, about 0.05 s — counts as
it would in a real run) in a temporary directory, 512-px windows with overlap 0.25, and the CPU model whose time
per window is ``--model-ratio`` times the read time (BlobDetector plus a matrix product, calibrated
first, printed); one torch thread for the model, ``lt.detect``'s default reading.

Cases, run alternately ``--repeat`` times, each over a fresh tile cache and a new store:

- in memory: ``lt.merge(lt.detect(model, wins, ...))``;
- durable: ``lt.detect_region(model, wins, out="run.gpkg", ...)`` — every window's raw detections
  committed to the GeoPackage (WAL, ``synchronous=NORMAL``, a commit per second), then merged from
  the store and written as the ``detections`` layer;
- resume of the finished run (opens, checks the recipe, merges, rewrites the layer; no model);
- replay: ``lt.open_run(out).merge()``.

Prints the best and median wall seconds and the median CPU seconds (all threads) of each case, the
durable/in-memory ratio (target: <= 1.05), the time spent inside the run store, and checks that every
case gives exactly the same merged detections.

    python benchmarks/bench_runs.py             # 8192 x 8192, 441 windows, 5 repeats
    python benchmarks/bench_runs.py --size 4096 # bench_detect's default scene: 121 windows
    python benchmarks/bench_runs.py --quick     # 1024 x 1024, one repeat: a smoke test for the test suite
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_detect import BusyDetector, calibrate, write_scene

import lazytiles as lt


class StoreTimer:
    """Adds up the wall and CPU (thread) seconds spent inside the run store's methods and in making the
    run's recipe: the work that durability adds, measured directly, which a busy machine blurs far less
    than end-to-end times."""

    METHODS = (
        "create",
        "resume",
        "start_writing",
        "begin_session",
        "commit",
        "raw",
        "done",
        "failed",
        "write_merged",
        "end_session",
        "close",
    )

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.commits = 0
        for name in self.METHODS:
            self._wrap(name)
        import lazytiles.runs.lifecycle

        recipe = lazytiles.runs.lifecycle.run_recipe

        def timed_recipe(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return recipe(*args, **kwargs)
            finally:
                self.wall += time.perf_counter() - wall
                self.cpu += time.thread_time() - cpu

        lazytiles.runs.lifecycle.run_recipe = timed_recipe

    def _wrap(self, name: str) -> None:
        from lazytiles.runs.store import RunStore

        original = RunStore.__dict__[name]
        func = original.__func__ if isinstance(original, classmethod) else original
        timer = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return func(*args, **kwargs)
            finally:
                timer.wall += time.perf_counter() - wall
                timer.cpu += time.thread_time() - cpu
                timer.commits += name == "commit"

        setattr(RunStore, name, classmethod(timed) if isinstance(original, classmethod) else timed)

    def reset(self) -> tuple[float, float, int]:
        out = (self.wall, self.cpu, self.commits)
        self.wall = self.cpu = 0.0
        self.commits = 0
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small scene, one repeat: a smoke test")
    parser.add_argument("--size", type=int, default=None, help="scene width and height in pixels")
    parser.add_argument("--repeat", type=int, default=None, help="alternating runs of each case (default 5)")
    parser.add_argument("--model-ratio", type=float, default=1.2, help="model time / read time per window")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads for the model")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per model call")
    args = parser.parse_args(argv)
    size = args.size or (1024 if args.quick else 8192)
    repeat = args.repeat or (1 if args.quick else 5)
    batch = args.batch_size
    torch.set_num_threads(args.torch_threads)

    with tempfile.TemporaryDirectory(prefix="bench_runs_") as tmp:
        directory = Path(tmp)
        path = write_scene(directory, size)

        def wins() -> lt.WindowSequence:  # a fresh tile cache per run
            return lt.windows(lt.open(str(path), cache=lt.TileCache()), size=512, overlap=0.25)

        windows = wins().pixel_windows()
        with rasterio.open(path) as ds:  # the file in the OS page cache for every case alike
            ds.read()
        depth, read_s, model_s = calibrate(path, windows, args.model_ratio, batch)
        model = BusyDetector(depth)
        n = len(windows)

        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(
            f"# python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
            f"rasterio {rasterio.__version__} (GDAL {rasterio.__gdal_version__}), {cpus} CPUs, "
            f"torch threads {torch.get_num_threads()}"
        )
        print(
            f"# scene {size} x {size} x 3 uint8 COG (DEFLATE, 512-px blocks), {n} windows of 512 px, overlap 0.25; "
            f"batch {batch}; model: BlobDetector + {depth}x{depth} matmul, {model_s * 1e3:.1f} "
            f"ms/window vs read {read_s * 1e3:.1f} ms/window; {repeat} alternating repeats"
        )

        def in_memory(k: int) -> lt.Detections:
            dets = lt.detect(model, wins(), batch_size=batch, progress=False)
            return lt.merge(dets, progress=False)

        timer = StoreTimer()
        store_costs: list[tuple[float, float, int]] = []

        def durable(k: int) -> lt.Detections:
            timer.reset()
            found = lt.detect_region(model, wins(), out=directory / f"run{k}.gpkg", batch_size=batch, progress=False)
            store_costs.append(timer.reset())
            return found

        def resume(k: int) -> lt.Detections:
            return lt.detect_region(model, wins(), out=directory / f"run{k}.gpkg", batch_size=batch, progress=False)

        def replay(k: int) -> lt.Detections:
            with lt.open_run(directory / f"run{k}.gpkg") as run:
                return run.merge()

        cases: dict[str, Callable[[int], lt.Detections]] = {
            "in memory: merge(detect(...))": in_memory,
            "durable: detect_region(out=)": durable,
            "resume a finished run": resume,
            "replay: open_run().merge()": replay,
        }
        seconds: dict[str, list[float]] = {name: [] for name in cases}
        cpu_seconds: dict[str, list[float]] = {name: [] for name in cases}
        results: dict[str, Any] = {}
        for k in range(repeat):
            for name, run in cases.items():
                start, cpu = time.perf_counter(), time.process_time()
                results[name] = run(k)
                seconds[name].append(time.perf_counter() - start)
                cpu_seconds[name].append(time.process_time() - cpu)

        store = directory / "run0.gpkg"
        with lt.open_run(store) as r:
            raw = r.summary()["raw_detections"]
        print(
            f"{'case':<31} | {'best s':>7} | {'median s':>8} | {'windows/s':>9} | {'vs in memory':>13} | "
            f"{'CPU s (median)':>14} | {'CPU vs in memory':>16}"
        )
        first = next(iter(cases))
        base_best, base_median = min(seconds[first]), statistics.median(seconds[first])
        base_cpu = statistics.median(cpu_seconds[first])
        for name, times in seconds.items():
            best, median = min(times), statistics.median(times)
            cpu = statistics.median(cpu_seconds[name])
            print(
                f"{name:<31} | {best:7.2f} | {median:8.2f} | {n / best:9.2f} | "
                f"{best / base_best:5.3f} / {median / base_median:5.3f} | {cpu:14.2f} | {cpu / base_cpu:16.3f}"
            )
        reference = results["in memory: merge(detect(...))"]
        same = all(
            found == reference and np.array_equal(found.partial, reference.partial) for found in results.values()
        )
        ratio_best = min(seconds["durable: detect_region(out=)"]) / base_best
        ratio_median = statistics.median(seconds["durable: detect_region(out=)"]) / base_median
        paired = statistics.median(
            d / m for d, m in zip(seconds["durable: detect_region(out=)"], seconds["in memory: merge(detect(...))"])
        )
        print(
            f"durability overhead: {ratio_best - 1:+.1%} (best of {repeat}), {ratio_median - 1:+.1%} (median), "
            f"{paired - 1:+.1%} (median of the {repeat} back-to-back pairs); target <= +5%"
        )
        wall = statistics.median(c[0] for c in store_costs)
        cpu = statistics.median(c[1] for c in store_costs)
        print(
            f"time inside the run store per durable run (median): {wall:.3f} s wall, {cpu:.3f} s CPU, "
            f"{store_costs[0][2]} commits = {wall / base_median:.1%} / {cpu / base_median:.1%} of the in-memory run"
        )
        print(
            f"same merged detections in every case: {'yes' if same else 'NO'} ({len(reference)} objects from {raw} raw "
            f"boxes in {n} windows; store {store.stat().st_size / 1024:.0f} KiB)"
        )
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
