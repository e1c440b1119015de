"""The cost of Apache Beam: the detection job on the DirectRunner vs the same job in one process.

Writes the built-in sample scene (:mod:`lazytiles.testing.sample`: a 3-band uint8 COG in 256-px blocks, one
coloured object per 256 x 256 px, a third of them on 128-px seams) to a temporary directory and detects
its objects in 512-px windows (overlap 0.25) with the built-in ``BlobDetector``
(``"lazytiles.detection.models:blob_detector"``, cheap, so the fixed costs of a job show at their worst).

Cases, run alternately ``--repeat`` times, each over a fresh tile cache and a new run store:

- local, in memory: ``lt.merge(lt.detect(MODEL, wins))``;
- local, durable: ``lt.detect_region(MODEL, wins, out=...)`` (store, merge, ``detections`` layer);
- beam, 1 worker: ``lazytiles.beam.detect_region(MODEL, wins, out=...)`` on the DirectRunner in this
  process — the same durable job as a Beam pipeline (shards, detect, record, merge by cells, write);
- beam, 2 workers: the same with ``--direct_num_workers=2 --direct_running_mode=multi_processing``;
- the start-up of each runner: an empty pipeline, its fixed cost.

Prints the best and median seconds of each case, the Beam/durable ratio, the per-window overhead after
the start-up, and checks that every case gives exactly the same merged detections. Then, measured on
the same detections, what the README's scaling estimate rests on: the tiles each shard fetches, and
the merge's shuffle per level (box records, bytes) with small cells, against the paper formula.

    python benchmarks/bench_beam.py             # 8192 x 8192, 441 windows, 3 repeats
    python benchmarks/bench_beam.py --quick     # 1024 x 1024, 256-px windows, one repeat (a smoke test)
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Beam's worker processes import lazytiles too
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

import apache_beam as beam

import lazytiles as lt
from lazytiles import beam as lb
from lazytiles.merging.cells import RECORD, CellGrid, merge_in_cells
from lazytiles.testing.sample import make_sample

MODEL = "lazytiles.detection.models:blob_detector"
TWO_WORKERS = ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
ONE_WORKER = ["--runner=DirectRunner"]


def empty_pipeline(flags: list[str]) -> None:
    with beam.Pipeline(options=lb.to_pipeline_options(flags)) as p:
        _ = p | beam.Create([1, 2]) | beam.Map(lambda x: x)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def shard_tiles(wins: lt.WindowSequence, shard_size: int | None) -> tuple[int, float, int, int]:
    """(shards, mean tiles fetched per shard, tiles fetched by all shards, tiles under the area); no I/O."""
    shards = lb.shard_ranges(wins, shard_size)
    per_shard = [len({k for i in range(a, b) for k in wins.tiles(i)}) for a, b in shards]
    every = len({k for i in range(len(wins)) for k in wins.tiles(i)})
    return len(shards), float(np.mean(per_shard)), int(sum(per_shard)), every


def shuffle(per_window: list[lt.Detections], wins: lt.WindowSequence, cell: float, fanin: int) -> list[dict[str, int]]:
    grid = CellGrid.for_area(wins.area, cell=cell, fanin=fanin, margin=1.0)
    rects = wins.pixel_windows()
    items = ((k, rects[k], d) for k, d in enumerate(per_window))
    return merge_in_cells(items, grid, lt.MergeRule())[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small scene, one repeat: a smoke test")
    parser.add_argument("--size", type=int, default=None, help="scene width and height in pixels (multiple of 256)")
    parser.add_argument(
        "--window", type=int, default=None, help="window size in pixels (default 512; 256 with --quick)"
    )
    parser.add_argument("--repeat", type=int, default=None, help="alternating runs of each case (default 3)")
    args = parser.parse_args(argv)
    size = args.size or (1024 if args.quick else 8192)
    window = args.window or (256 if args.quick else 512)
    repeat = args.repeat or (1 if args.quick else 3)
    logging.getLogger("apache_beam").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sample = make_sample(tmp / "scene", size=size, tiles=False)

        def windows() -> lt.WindowSequence:
            return lt.windows(lt.open(sample.cog, cache=lt.TileCache()), size=window, overlap=0.25)

        wins = windows()
        print(
            f"python {platform.python_version()}, apache-beam {beam.__version__}, lazytiles {lt.__version__}, "
            f"{os.cpu_count()} CPUs; scene {size} x {size} px ({len(sample.boxes)} objects), {len(wins)} windows of "
            f"{window} px (overlap 0.25), model {MODEL}"
        )
        runs = iter(range(10**6))

        def out() -> Path:
            return tmp / f"run{next(runs)}.gpkg"

        cases: dict[str, Callable[[], Any]] = {
            "local, in memory": lambda: lt.merge(lt.detect(MODEL, windows(), progress=False), progress=False),
            "local, durable": lambda: lt.detect_region(MODEL, windows(), out(), progress=False),
            "beam, 1 worker": lambda: lb.detect_region(MODEL, windows(), out(), pipeline_options=ONE_WORKER),
            "beam, 2 workers": lambda: lb.detect_region(MODEL, windows(), out(), pipeline_options=TWO_WORKERS),
            "start-up, 1 worker": lambda: empty_pipeline(ONE_WORKER),
            "start-up, 2 workers": lambda: empty_pipeline(TWO_WORKERS),
        }
        cases["local, in memory"]()  # warm up: imports, the model, the OS page cache
        empty_pipeline(ONE_WORKER)
        seconds: dict[str, list[float]] = {name: [] for name in cases}
        results: dict[str, Any] = {}
        for _ in range(repeat):
            for name, run in cases.items():
                took, found = timed(run)
                seconds[name].append(took)
                if found is not None:
                    results[name] = found

        worker_start, _ = timed(
            lambda: subprocess.run(
                [sys.executable, "-c", "import lazytiles.beam, lazytiles.detection.models"],
                check=True,
                capture_output=True,
            )
        )
        reference = results["local, in memory"]
        same = all(r == reference and np.array_equal(r.partial, reference.partial) for r in results.values())
        print(f"\n{'case':<22} {'best s':>8} {'median s':>9} {'/ durable':>10}")
        durable = min(seconds["local, durable"])
        for name, values in seconds.items():
            print(f"{name:<22} {min(values):8.2f} {statistics.median(values):9.2f} {min(values) / durable:10.2f}")
        for workers, startup in (("1 worker", "start-up, 1 worker"), ("2 workers", "start-up, 2 workers")):
            extra = min(seconds[f"beam, {workers}"]) - min(seconds[startup]) - durable
            print(
                f"beam, {workers}: overhead after start-up {extra:+.2f} s, {1000 * extra / len(wins):+.1f} ms per window"
            )
        print(f"a worker process's imports (torch, lazytiles, Beam), once per worker: {worker_start:.2f} s")
        print(f"same merged detections in every case: {'yes' if same else 'NO'} ({len(reference)} objects)")

        print("\ntiles fetched per shard (no I/O; tiles of 256 px):")
        print(f"{'shard_size':<12} {'shards':>7} {'tiles/shard':>12} {'fetched':>8} {'tiles':>6} {'ratio':>6}")
        for shard_size in (None, 1, 16):
            n, mean, fetched, every = shard_tiles(wins, shard_size)
            label = "8 rows" if shard_size is None else str(shard_size)
            print(f"{label:<12} {n:7d} {mean:12.1f} {fetched:8d} {every:6d} {fetched / every:6.2f}")

        per_window = list(lt.detect(MODEL, windows(), progress=False))
        raw = sum(len(d) for d in per_window)
        sizes = np.concatenate([d.boxes[:, 2:] - d.boxes[:, :2] for d in per_window if len(d)])
        mean_side = float(sizes.mean())
        print(f"\nmerge shuffle ({raw} raw boxes, mean side {mean_side:.0f} px; {RECORD.itemsize} bytes a record):")
        print(
            f"{'cell px':<8} {'level':>5} {'cells':>6} {'records':>8} {'/ raw':>6} {'KiB':>7} {'merged':>7} {'paper':>6}"
        )
        for cell in (window * 2, window * 4):
            stats = shuffle(per_window, wins, cell, 4)
            grid = CellGrid.for_area(wins.area, cell=cell, fanin=4, margin=1.0)
            for s in stats:
                side = grid.side(s["level"])
                paper = (1 + (mean_side + 2 * grid.halo) / side) ** 2 if s["level"] == 0 else float("nan")
                print(
                    f"{cell:<8} {s['level']:5d} {s['cells']:6d} {s['records']:8d} {s['records'] / raw:6.3f} "
                    f"{s['records'] * RECORD.itemsize / 1024:7.1f} {s['merged']:7d} {paper:6.3f}"
                )
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
