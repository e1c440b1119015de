"""Throughput of one full window pass: serial vs ``lt.prefetch`` on threads and on processes.

Uses the read benchmark's scene (``_measure.cached_cog``: a 3-band uint8 DEFLATE COG in 512-px blocks
with overviews, 8192 x 8192 by default, kept between runs in ``--data-dir``), then runs one pass of
512-px windows with stride 256 per case, a crc32 of each window, each case in a fresh Python process
with its own ``lt.TileCache(max_bytes=256 MiB)``, interleaved ``--repeat`` times. Prints the best
and median windows/s, their ratios to the serial pass, the CPU seconds spent (consumer and workers:
on a busy machine a steadier measure than wall time), peak RSS (of the consumer and, for process
workers, of the largest worker) and the most tile-cache bytes held. Every case must produce the same
checksum. Also prints what the progress bar costs per item.

``--wait-ms`` makes the consumer also wait that long after each window's checksum, without using a core,
as a loop feeding a GPU waits for it: where the checksum alone keeps every core busy, this is the case
``lt.prefetch`` is for.

    python benchmarks/bench_prefetch_quick.py               # 8192 x 8192, 961 windows
    python benchmarks/bench_prefetch_quick.py --size 16384  # 3969 windows
    python benchmarks/bench_prefetch_quick.py --size 16384 --wait-ms 1   # a consumer waiting 1 ms a window
    python benchmarks/bench_prefetch_quick.py --quick       # 2048 x 2048, 49 windows (a smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from _measure import best_and_median, cached_cog, data_dir, fold, run_child, window_crc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lazytiles, also in the children

CASES = {
    "serial": None,
    "prefetch threads, 2 workers": dict(workers=2, method="thread"),
    "prefetch threads, 4 workers": dict(workers=4, method="thread"),
    "prefetch processes, 2 workers": dict(workers=2, method="process"),
}


def run_case(path: str, name: str, wait_ms: float = 0.0) -> dict:
    import lazytiles as lt

    options = CASES[name]
    src = lt.open(path, cache=lt.TileCache(max_bytes=256 * 2**20))
    wins = lt.windows(src, size=512, stride=256)
    cpu0 = _cpu_seconds()
    start = time.perf_counter()
    seq = wins if options is None else lt.prefetch(wins, progress=False, **options)
    checksum = 0
    count = 0
    most_cached = 0
    for w in seq:
        checksum = fold(checksum, window_crc(w.data))
        if wait_ms:
            time.sleep(wait_ms / 1000)
        if count % 64 == 0:
            most_cached = max(most_cached, src.cache.stats()["nbytes"])
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
        rss_mb=_peak_rss_mb(os.getpid()),
        worker_rss_mb=worker_rss,
        cached_mb=most_cached / 2**20,
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
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs per case: best and median")
    parser.add_argument("--data-dir", default=None, help="keep the scene here between runs")
    parser.add_argument("--wait-ms", type=float, default=0.0, help="the consumer also waits this long a window")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # a child run: one case, JSON out
        print(json.dumps(run_case(args.path, args.case, args.wait_ms)))
        return
    size = 2048 if args.quick else args.size
    import lazytiles as lt

    print(
        f"lazytiles {lt.__version__}, python {platform.python_version()}, numpy {np.__version__}, "
        f"rasterio {rasterio.__version__} (GDAL {rasterio.__gdal_version__}), {os.cpu_count()} CPUs"
    )
    start = time.perf_counter()
    path, written = cached_cog(data_dir(args.data_dir), size)
    how = f"written in {time.perf_counter() - start:.1f} s" if written else "kept from an earlier run"
    print(
        f"scene: {size} x {size} x 3 uint8, DEFLATE, 512-px blocks, {path.stat().st_size / 2**20:.0f} MiB "
        f"on disk ({how}); windows 512 px, stride 256, crc32 of each"
        + (f" and a {args.wait_ms:g} ms wait" if args.wait_ms else "")
        + "; lt.TileCache(max_bytes=256 MiB)"
    )
    runs: dict[str, list[dict]] = {name: [] for name in CASES}
    for _ in range(1 if args.quick else args.repeat):  # interleaved
        for name in CASES:
            out = run_child([__file__, "--case", name, "--path", str(path), "--wait-ms", str(args.wait_ms)])
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    print(
        f"{'case':32} | {'windows':>7} | {'windows/s best / median':>23} | {'ratio':>11} | "
        f"{'CPU s':>5} | {'peak RSS MB':>11} | {'worker RSS MB':>13} | most cached MB"
    )
    rates = {name: best_and_median([r["windows"] / r["seconds"] for r in rs]) for name, rs in runs.items()}
    serial = rates["serial"]
    for name, rs in runs.items():
        r = min(rs, key=lambda run: run["seconds"])
        top, mid = rates[name]
        child = f"{max(x['worker_rss_mb'] for x in rs):.0f}" if r["worker_rss_mb"] else "-"
        print(
            f"{name:32} | {r['windows']:7d} | {top:10.1f} / {mid:10.1f} | {top / serial[0]:4.2f} / {mid / serial[1]:4.2f} | "
            f"{r['cpu_seconds']:5.2f} | {max(x['rss_mb'] for x in rs):11.0f} | {child:>13} | {r['cached_mb']:.0f}"
        )
    sums = {r["checksum"] for rs in runs.values() for r in rs}
    if len(sums) != 1:
        raise SystemExit(f"cases disagree on the pixels: checksums {sums}")
    print(f"all cases read the same pixels (checksum {sums.pop()}); ratio: best / median to the serial pass's")
    print(f"progress bar: {progress_cost() * 1e6:.2f} us per item")


if __name__ == "__main__":
    main()
