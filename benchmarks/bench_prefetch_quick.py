"""Throughput of one full window pass: serial vs ``lt.prefetch`` on threads and on processes.

Writes a 3-band uint8 DEFLATE GeoTIFF in 512-px blocks (8192 x 8192 by default) to a temporary
directory, then runs one pass of 512-px windows with stride 256 per case, each case in a fresh Python
process with its own tile cache (the fastest of ``--repeat`` runs). Prints windows/s, the ratio to
the serial pass, the CPU seconds spent (consumer and workers: on a busy machine a steadier measure
than wall time) and peak RSS (of the consumer and, for process workers, of the largest worker).
Every case must produce the same checksum. Also prints what the progress bar costs per item.

    python benchmarks/bench_prefetch_quick.py            # 8192 x 8192, 961 windows
    python benchmarks/bench_prefetch_quick.py --quick    # 2048 x 2048, 49 windows (a smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

CASES = {
    "serial": None,
    "prefetch threads, 2 workers": dict(workers=2, method="thread"),
    "prefetch threads, 4 workers": dict(workers=4, method="thread"),
    "prefetch processes, 2 workers": dict(workers=2, method="process"),
}


def write_scene(path: Path, size: int) -> Path:
    """A textured scene (smooth gradients plus noise: DEFLATE compresses it about 2:1), written by strips."""
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        crs="EPSG:3857",
        transform=rasterio.transform.from_origin(0, size, 1, 1),
    )
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as ds:
        for r0 in range(0, size, 512):
            r, c = np.mgrid[r0 : r0 + 512, 0:size]
            base = (r // 3 + c // 5) % 256 + (np.sin(c / 97.0) * 40).astype(np.int64)
            for b in range(3):
                band = (base * (b + 1) + rng.integers(0, 24, base.shape)) % 256
                ds.write(band.astype(np.uint8), b + 1, window=rasterio.windows.Window(0, r0, size, 512))
    return path


def run_case(path: str, name: str) -> dict:
    import lazytiles as lt

    options = CASES[name]
    wins = lt.windows(lt.open(path, cache=lt.TileCache()), size=512, stride=256)
    cpu0 = _cpu_seconds()
    start = time.perf_counter()
    seq = wins if options is None else lt.prefetch(wins, progress=False, **options)
    checksum = 0
    count = 0
    for w in seq:
        checksum += int(w.data[:, ::61, ::61].sum(dtype=np.int64))
        count += 1
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu0
    worker_rss = 0.0
    if options is not None:
        for pid in seq._engine.pids():  # forkserver workers are not our children: ask /proc
            worker_rss = max(worker_rss, _peak_rss_mb(pid))
            cpu += _cpu_seconds(pid)
        seq.close()
    return dict(
        windows=count,
        seconds=seconds,
        checksum=checksum,
        cpu_seconds=cpu,
        rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        worker_rss_mb=worker_rss,
    )


def _cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def progress_cost(n: int = 200_000) -> float:
    """Seconds per item that progress=True adds to iterating a prefetched list."""

    import contextlib

    times = {}
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):  # the bar draws here
        times = _time_passes(n)
    return (times[True] - times[False]) / n


def _time_passes(n: int) -> dict[bool, float]:
    import lazytiles as lt

    times = {}
    for progress in (False, True):
        best = float("inf")
        for _ in range(3):
            with lt.prefetch(list(range(n)), workers=1, ahead=0, progress=progress) as pre:
                start = time.perf_counter()
                for _ in pre:
                    pass
                best = min(best, time.perf_counter() - start)
        times[progress] = best
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 2048 x 2048 scene")
    parser.add_argument("--size", type=int, default=8192, help="scene width and height in pixels")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the fastest is shown")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # a child run: one case, JSON out
        print(json.dumps(run_case(args.path, args.case)))
        return
    size = 2048 if args.quick else args.size
    import lazytiles as lt

    print(
        f"lazytiles {lt.__version__}, python {platform.python_version()}, numpy {np.__version__}, "
        f"rasterio {rasterio.__version__} (GDAL {rasterio.__gdal_version__}), {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = write_scene(Path(tmp) / "scene.tif", size)
        print(
            f"scene: {size} x {size} x 3 uint8, DEFLATE, 512-px blocks, {path.stat().st_size / 2**20:.0f} MiB "
            f"on disk (written in {time.perf_counter() - start:.1f} s); windows 512 px, stride 256"
        )
        print(
            f"{'case':32} | {'windows':>7} | {'seconds':>7} | {'windows/s':>9} | {'ratio':>5} | "
            f"{'CPU s':>5} | {'peak RSS MB':>11} | {'worker RSS MB':>13}"
        )
        results = {}
        for name in CASES:
            runs = []
            for _ in range(1 if args.quick else args.repeat):
                done = subprocess.run(
                    [sys.executable, __file__, "--case", name, "--path", str(path)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = results[name] = min(runs, key=lambda run: run["seconds"])
            rate = r["windows"] / r["seconds"]
            ratio = rate / (results["serial"]["windows"] / results["serial"]["seconds"])
            child = f"{r['worker_rss_mb']:.0f}" if r["worker_rss_mb"] else "-"
            print(
                f"{name:32} | {r['windows']:7d} | {r['seconds']:7.2f} | {rate:9.1f} | {ratio:5.2f} | "
                f"{r['cpu_seconds']:5.2f} | {r['rss_mb']:11.0f} | {child:>13}"
            )
        sums = {r["checksum"] for r in results.values()}
        if len(sums) != 1:
            raise SystemExit(f"cases disagree on the pixels: checksums {sums}")
        print(f"all cases read the same pixels (checksum {sums.pop()})")
    print(f"progress bar: {progress_cost() * 1e6:.2f} us per item")


if __name__ == "__main__":
    main()
