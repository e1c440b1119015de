"""A COG over HTTP (GDAL ``/vsicurl/``): one pass of 512-px windows (stride 256), lazytiles vs rasterio.

Writes a 3-band uint8 COG (512-px blocks, DEFLATE, imagery-like content) and serves it with HTTP range
requests from ``lazytiles.testing.tileserver`` in its own process, with ``--latency`` seconds before every
answer. Each case runs in its own process against a fresh server, over the same windows, row-major:

- ``naive rasterio``: ``rasterio.open("/vsicurl/" + url)`` and ``ds.read(window=w)`` per window,
  GDAL's default settings: what users write today;
- ``naive rasterio, tuned GDAL``: the same inside ``rasterio.Env`` with the options lazytiles sets
  for remote rasters (see ``lazytiles.sources.raster.REMOTE_GDAL_DEFAULTS``), to separate what the
  options give from what read-ahead gives;
- ``lazytiles, no read-ahead``: ``for w in lt.windows(lt.open("/vsicurl/" + url), ..., readahead=0)``;
- ``lazytiles``: the same with the default read-ahead (blocks of the next windows are read by a
  thread pool, one GDAL handle per thread, so many range requests are in flight).

Checks that every case saw the same pixels (a checksum over every window), and prints an environment
line and ``case | windows/s | vs naive | HTTP requests | CPU s | peak RSS`` rows (requests: as counted
by the server). Target: lazytiles >= 2x naive rasterio.

    python benchmarks/bench_vsicurl.py            # 8192 x 8192 COG, 20 ms latency, 961 windows
    python benchmarks/bench_vsicurl.py --quick    # 2048 x 2048 COG, 5 ms latency, 49 windows
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _measure import checksum, cpu_seconds, own_peak_rss_mb, window_offsets, write_cog

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

CASES = ["naive", "naive-tuned", "lazytiles-no-readahead", "lazytiles"]
LABELS = {
    "naive": "naive rasterio /vsicurl/",
    "naive-tuned": "naive rasterio, tuned GDAL options",
    "lazytiles-no-readahead": "lazytiles, readahead=0",
    "lazytiles": "lazytiles (read-ahead, 16 threads)",
}
SIZE, STRIDE, BLOCK = 512, 256, 512


def run_case(case: str, url: str) -> dict[str, Any]:
    import rasterio
    from rasterio.windows import Window

    path = "/vsicurl/" + url
    total = 0
    if case.startswith("naive"):
        env: dict[str, Any] = {}
        if case == "naive-tuned":
            from lazytiles.sources.raster import REMOTE_GDAL_DEFAULTS

            env = dict(REMOTE_GDAL_DEFAULTS)
        start, cpu0 = time.perf_counter(), cpu_seconds()
        with rasterio.Env(**env), rasterio.open(path) as ds:
            offsets = window_offsets(ds.height, ds.width)
            for r, c in offsets:
                total += checksum(ds.read(window=Window(c, r, SIZE, SIZE)))
        n = len(offsets)
    else:
        import lazytiles as lt

        options = {"readahead": 0} if case == "lazytiles-no-readahead" else {}
        start, cpu0 = time.perf_counter(), cpu_seconds()
        src = lt.open(path)
        wins = lt.windows(src, SIZE, stride=STRIDE, **options)
        if [(int(r), int(c)) for c, r, _, _ in wins.pixel_windows()] != window_offsets(src.height, src.width):
            raise SystemExit("lazytiles planned other windows than rasterio's loop")
        for w in wins:
            total += checksum(w.data)
        n = len(wins)
    seconds = time.perf_counter() - start
    return {
        "case": case,
        "seconds": seconds,
        "windows": n,
        "checksum": total,
        "cpu_s": cpu_seconds() - cpu0,
        "rss_mb": own_peak_rss_mb(),
    }


def run_served(directory: Path, latency: float, case: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen(
        [sys.executable, "-m", "lazytiles.testing.tileserver", str(directory), "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert server.stdout is not None
    url = server.stdout.readline().strip() + "/scene_cog.tif"
    try:
        done = subprocess.run([sys.executable, str(HERE), "--case", case, "--url", url], capture_output=True, text=True)
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"case {case} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["requests"] = json.loads(out.strip().splitlines()[-1])["requests"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2048-px COG, 5 ms latency (test suite)")
    parser.add_argument("--size", type=int, default=None, help="COG side in pixels (default 8192, quick 2048)")
    parser.add_argument("--latency", type=float, default=None, help="seconds per request (default 0.02)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per case, interleaved; the fastest is reported (default 3, quick 1)",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.url)))
        return 0

    import numpy as np
    import rasterio

    import lazytiles as lt

    size = args.size or (2048 if args.quick else 8192)
    latency = args.latency if args.latency is not None else (0.005 if args.quick else 0.02)
    cases = [c for c in args.cases.split(",") if c]
    with tempfile.TemporaryDirectory(prefix="bench_vsicurl_") as tmp:
        start = time.perf_counter()
        cog = write_cog(Path(tmp), size)
        print(
            f"# lazytiles {lt.__version__}, rasterio {rasterio.__version__}, GDAL {rasterio.__gdal_version__}, numpy "
            f"{np.__version__}, python {platform.python_version()}, {platform.system()} {platform.machine()}, "
            f"{os.cpu_count()} CPUs\n# COG {size}x{size}x3 uint8, {BLOCK}-px blocks, DEFLATE, "
            f"{cog.stat().st_size / 1e6:.0f} MB (written in {time.perf_counter() - start:.1f} s), served with "
            f"{latency * 1000:.0f} ms latency per request by a server in its own process; "
            f"{len(window_offsets(size, size))} windows of {SIZE} px, stride {STRIDE} px"
        )
        repeat = args.repeat or (1 if args.quick else 3)
        results: dict[str, dict[str, Any]] = {}
        for _ in range(repeat):  # interleaved, so a burst of load elsewhere hurts every case alike
            for case in cases:
                r = run_served(Path(tmp), latency, case)
                if case not in results or r["seconds"] < results[case]["seconds"]:
                    results[case] = r
        print(f"# fastest of {repeat} interleaved run{'s' * (repeat > 1)} per case")
    sums = {r["checksum"] for r in results.values()}
    naive = results.get("naive")
    naive_rate = naive["windows"] / naive["seconds"] if naive else None
    print(f"{'case':36} | {'windows/s':>9} | {'vs naive':>8} | {'requests':>8} | {'CPU s':>5} | peak RSS MB")
    print(f"{'-' * 36}-|-{'-' * 9}-|-{'-' * 8}-|-{'-' * 8}-|-{'-' * 5}-|-{'-' * 11}")
    for case, r in results.items():
        rate = r["windows"] / r["seconds"]
        vs = f"{rate / naive_rate:.2f}x" if naive_rate else "-"
        print(
            f"{LABELS[case]:36} | {rate:9.1f} | {vs:>8} | {r['requests']:8d} | {r['cpu_s']:5.2f} | {r['rss_mb']:6.0f}"
        )
    lazy = results.get("lazytiles")
    if lazy and naive_rate:
        ratio = lazy["windows"] / lazy["seconds"] / naive_rate
        print(
            f"# lazytiles vs naive rasterio /vsicurl/: {ratio:.2f}x (target >= 2x): {'met' if ratio >= 2 else 'NOT met'}"
        )
    print(f"# same pixels in every case: {len(sums) == 1}")
    return 0 if len(sums) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
