"""Read throughput and memory: one pass of 512-px windows (stride 256) over a COG, lazytiles vs rasterio.

Writes a 3-band uint8 COG (512-px blocks, DEFLATE) of imagery-like content (smooth terrain, fields,
roads, sensor noise; it compresses about 2:1) to a temporary directory, reads it once so it is in
the OS page cache, then runs each case in its own process (so peak RSS is per case) on the same
windows, in row-major order:

- ``naive rasterio, GDAL_CACHEMAX=64MB``: ``ds.read(window=w)`` per window, one handle;
- ``naive rasterio, default cache``: the same with GDAL's default block cache (5 % of RAM);
- ``floor``: read each 512-px block once with rasterio (64 MB cache), no windows, no mosaic: the
  decode cost;
- ``lazytiles, one consumer``: ``for w in lt.windows(lt.open(cog), 512, stride=256)``: one thread
  consumes the windows while the source decodes the blocks of the next ones on its read-ahead
  threads (the default for local files);
- ``lazytiles, readahead=0``: the same with ``lt.windows(..., readahead=0)``: everything on one thread;
- ``lazytiles, GDAL cache uncapped``: the default pass with ``gdal_cache_bytes=None``, to show what
  capping GDAL's block cache saves;
- ``lazytiles prefetch threads`` / ``processes``: ``lt.prefetch(wins, workers=2, method=...)``.

Window cases check they saw the same pixels (a checksum over every window). Prints an environment
line, then ``case | windows/s | ratio vs naive-64MB | ratio vs floor | peak RSS`` rows, where peak
RSS is that of the case's process tree (sampled every 20 ms; workers included) and, in brackets, the
case process's own ``ru_maxrss``. Targets: lazytiles >= 1.25x naive (64 MB), >= 0.9x the floor,
peak RSS <= 400 MB.

Then a VRT 16 times as wide and high as the COG (131072 px a side for an 8192-px COG; 256
references to the COG, 512-px blocks) is read serially by lazytiles for ``--vrt-windows`` windows,
printing RSS every tenth of the way. Target: RSS flat and <= 500 MB over the first 20 000 windows.

    python benchmarks/bench_read.py              # 8192 x 8192 COG, 961 windows; VRT 131072^2, 20 000 windows
    python benchmarks/bench_read.py --quick      # 1024 x 1024 COG, 9 windows; VRT 16384^2, 1 000 windows
    python benchmarks/bench_read.py --size 16384 --cases lazytiles-serial,naive-64MB
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _measure import checksum, own_peak_rss_mb, window_offsets, write_cog

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]

CASES = [
    "naive-64MB",
    "naive-default",
    "floor",
    "lazytiles-serial",
    "lazytiles-serial-noreadahead",
    "lazytiles-serial-uncapped",
    "lazytiles-index-loop",
    "lazytiles-prefetch-threads",
    "lazytiles-prefetch-processes",
]
LABELS = {
    "naive-64MB": "naive rasterio, GDAL_CACHEMAX=64MB",
    "naive-default": "naive rasterio, default GDAL cache",
    "floor": "floor: each block decoded once",
    "lazytiles-serial": "lazytiles, one consumer (block read-ahead)",
    "lazytiles-serial-noreadahead": "lazytiles, readahead=0 (one thread)",
    "lazytiles-serial-uncapped": "lazytiles, GDAL cache uncapped",
    "lazytiles-index-loop": "lazytiles, wins[i] in an index loop",
    "lazytiles-prefetch-threads": "lazytiles lt.prefetch, 2 threads",
    "lazytiles-prefetch-processes": "lazytiles lt.prefetch, 2 processes",
}
WORKERS = 2
SIZE, STRIDE, BLOCK = 512, 256, 512


# -- data ------------------------------------------------------------------------------------------


def write_vrt(cog: Path, repeat: int) -> Path:
    """A VRT of ``repeat`` x ``repeat`` copies of ``cog`` side by side, in 512-px blocks.

    Each column of copies names the COG by its own hard link: GDAL caches blocks per dataset name,
    so a row of the VRT holds ``repeat`` different datasets, as a raster that wide would (with one
    name, the 64 MB cache of the naive reader would hold a whole row of the COG's blocks).
    """
    import rasterio

    with rasterio.open(cog) as ds:
        w, h, crs, gt = ds.width, ds.height, ds.crs.to_wkt(), ds.transform.to_gdal()
    names = []
    for c in range(repeat):
        link = cog.with_name(f"{cog.stem}_{c:02d}{cog.suffix}")
        try:
            os.link(cog, link)
        except OSError:  # no hard links here: a symbolic one
            os.symlink(cog.name, link)
        names.append(link.name)
    bands = []
    for b in (1, 2, 3):
        sources = "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="1">{names[c]}</SourceFilename>'
            f'<SourceBand>{b}</SourceBand><SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
            f'<DstRect xOff="{c * w}" yOff="{r * h}" xSize="{w}" ySize="{h}"/></SimpleSource>\n'
            for r in range(repeat)
            for c in range(repeat)
        )
        bands.append(
            f'<VRTRasterBand dataType="Byte" band="{b}" blockXSize="{BLOCK}" blockYSize="{BLOCK}">\n{sources}</VRTRasterBand>'
        )
    xml = (
        f'<VRTDataset rasterXSize="{w * repeat}" rasterYSize="{h * repeat}">\n<SRS>{crs}</SRS>\n'
        f"<GeoTransform>{', '.join(map(str, gt))}</GeoTransform>\n" + "\n".join(bands) + "\n</VRTDataset>\n"
    )
    path = cog.with_name(f"scene_x{repeat}.vrt")
    path.write_text(xml)
    return path


# -- one case, in its own process ------------------------------------------------------------------


def run_case(case: str, cog: str, limit: int | None = None) -> dict[str, Any]:
    """Run one case in this process (on the first ``limit`` windows) and return its measurements."""
    if case in ("naive-64MB", "floor"):  # the floor keeps no blocks: a big cache would only add page faults
        os.environ["GDAL_CACHEMAX"] = str(64 * 2**20)  # before GDAL reads it
    import rasterio
    from rasterio.windows import Window

    if case.startswith("lazytiles"):  # imported before the clock starts, as rasterio is
        sys.path.insert(0, str(ROOT))
        import lazytiles as lt
    with rasterio.open(cog) as ds:
        height, width = ds.height, ds.width
    offsets = window_offsets(height, width)[:limit]
    total = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    if case.startswith("naive"):
        with rasterio.open(cog) as ds:
            for r, c in offsets:
                total += checksum(ds.read(window=Window(c, r, SIZE, SIZE)))
        n = len(offsets)
    elif case == "floor":
        with rasterio.open(cog) as ds:
            n_blocks = 0
            for _, bw in ds.block_windows(1):
                total += checksum(ds.read(window=bw))
                n_blocks += 1
        n = len(offsets)  # windows/s: the pass's windows over the time of decoding each block once
    else:
        open_options = {"gdal_cache_bytes": None} if case == "lazytiles-serial-uncapped" else {}
        window_options = {"readahead": 0} if case == "lazytiles-serial-noreadahead" else {}
        wins = lt.windows(lt.open(cog, **open_options), SIZE, stride=STRIDE, **window_options)
        assert [(int(r), int(c)) for c, r, _, _ in wins.pixel_windows()] == offsets, "not row-major"
        n = len(wins)
        if case.startswith("lazytiles-serial"):
            for w in wins:
                total += checksum(w.data)
        elif case == "lazytiles-index-loop":
            for i in range(len(wins)):
                total += checksum(wins[i].data)
        else:
            method = "thread" if case.endswith("threads") else "process"
            with lt.prefetch(wins, workers=WORKERS, method=method, progress=False) as pre:
                for w in pre:
                    total += checksum(w.data)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "case": case,
        "seconds": seconds,
        "cpu": cpu,
        "windows": n,
        "checksum": total,
        "self_rss_mb": own_peak_rss_mb(),
    }


def run_vrt(vrt: str, n_windows: int, every: int) -> dict[str, Any]:
    """Read the first ``n_windows`` windows of the VRT serially; RSS every ``every`` windows."""
    import psutil

    sys.path.insert(0, str(ROOT))
    import lazytiles as lt

    me = psutil.Process()
    src = lt.open(vrt)
    wins = lt.windows(src, SIZE, stride=STRIDE)
    series = []
    start = time.perf_counter()
    for k, _ in enumerate(wins[:n_windows], start=1):
        if k % every == 0 or k == 1:
            series.append((k, me.memory_info().rss / 1e6, src.cache.stats()["nbytes"] / 1e6))
    seconds = time.perf_counter() - start
    return {
        "windows": min(n_windows, len(wins)),
        "total_windows": len(wins),
        "strip": wins.plan.strip,
        "columns": len(wins.plan.cols),
        "seconds": seconds,
        "series": series,
        "tiles_read": src.stats()["tiles_read"],
    }


def in_subprocess(args: list[str]) -> tuple[dict[str, Any], float]:
    """Run this script with ``args`` in a child; its JSON result and the peak RSS (MB) of its process tree."""
    import psutil

    proc = subprocess.Popen([sys.executable, str(HERE), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak, done = 0.0, threading.Event()

    def sample() -> None:
        nonlocal peak
        parent = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [parent, *parent.children(recursive=True)]
                rss = 0
                for p in tree:
                    try:
                        rss += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak = max(peak, rss / 1e6)
            except psutil.Error:
                return
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join(5)
    if proc.returncode != 0:
        raise RuntimeError(f"case {args} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    return json.loads(out.decode().strip().splitlines()[-1]), peak


# -- the report -------------------------------------------------------------------------------------


def environment(cog: Path, n_windows: int) -> str:
    import numpy as np
    import rasterio

    sys.path.insert(0, str(ROOT))
    import lazytiles as lt

    with rasterio.open(cog) as ds:
        shape = f"{ds.width}x{ds.height}x{ds.count} {ds.dtypes[0]}, {ds.block_shapes[0][0]}-px blocks, {ds.compression.name}"
    return (
        f"# lazytiles {lt.__version__}, rasterio {rasterio.__version__}, GDAL {rasterio.__gdal_version__}, "
        f"numpy {np.__version__}, python {platform.python_version()}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs\n# COG {shape}, {cog.stat().st_size / 1e6:.0f} MB; {n_windows} windows of "
        f"{SIZE} px, stride {STRIDE} px"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small COG and VRT, few windows (test suite)")
    parser.add_argument("--size", type=int, default=None, help="COG side in pixels (default 8192, quick 1024)")
    parser.add_argument("--vrt-windows", type=int, default=None, help="windows read from the VRT (default 20000)")
    parser.add_argument("--vrt-repeat", type=int, default=16, help="VRT side in COG sides (default 16)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    parser.add_argument("--no-vrt", action="store_true", help="skip the VRT memory run")
    parser.add_argument(
        "--repeat", type=int, default=None, help="runs per case, interleaved; the fastest counts (default 3, quick 1)"
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    parser.add_argument("--vrt", help=argparse.SUPPRESS)
    parser.add_argument("--cog", help=argparse.SUPPRESS)
    parser.add_argument("--every", type=int, default=2000, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.case:
        print(json.dumps(run_case(args.case, args.cog, args.limit)))
        return 0
    if args.vrt:
        print(json.dumps(run_vrt(args.vrt, args.vrt_windows, args.every)))
        return 0

    size = args.size or (1024 if args.quick else 8192)
    vrt_windows = args.vrt_windows or (1000 if args.quick else 20000)
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; choose from {', '.join(CASES)}")
    sys.path.insert(0, str(ROOT))
    import lazytiles as lt

    if not hasattr(lt, "prefetch"):
        print("# lt.prefetch is not available in this checkout (lazytiles/prefetch.py): prefetch cases skipped")
        cases = [c for c in cases if "prefetch" not in c]

    with tempfile.TemporaryDirectory(prefix="bench_read_") as tmp:
        start = time.perf_counter()
        cog = write_cog(Path(tmp), size)
        cog.read_bytes()  # into the OS page cache, so every case starts alike
        n_windows = len(window_offsets(size, size))
        print(environment(cog, n_windows))
        print(f"# data written in {time.perf_counter() - start:.1f} s; each case runs in its own process")
        results: dict[str, dict[str, Any]] = {}
        repeat = args.repeat or (1 if args.quick else 3)
        for _ in range(repeat):  # interleaved, so a busy spell on the machine hits every case alike
            for case in cases:
                result, peak = in_subprocess(["--case", case, "--cog", str(cog)])
                result["peak_mb"] = peak
                best = results.get(case)
                if best is None or result["seconds"] < best["seconds"]:
                    results[case] = {**result, "peak_mb": max(peak, best["peak_mb"]) if best else peak}
                else:
                    best["peak_mb"] = max(peak, best["peak_mb"])
        print(f"# fastest of {repeat} runs per case; CPU s is that run's user + system time, all threads")
        print_table(results)
        if not args.no_vrt:
            vrt = write_vrt(cog, args.vrt_repeat)
            every = max(1, vrt_windows // 10)
            result, peak = in_subprocess(["--vrt", str(vrt), "--vrt-windows", str(vrt_windows), "--every", str(every)])
            print_vrt(result, peak, size * args.vrt_repeat)
            if "naive-64MB" in cases:  # a tile row no longer fits in GDAL's 64 MB: blocks are decoded again
                naive, naive_peak = in_subprocess(
                    ["--case", "naive-64MB", "--cog", str(vrt), "--limit", str(vrt_windows)]
                )
                ours, theirs = result["windows"] / result["seconds"], naive["windows"] / naive["seconds"]
                print(
                    f"# same {naive['windows']} VRT windows: lazytiles {ours:.1f} windows/s, naive rasterio "
                    f"(GDAL_CACHEMAX=64MB) {theirs:.1f} windows/s, peak RSS {naive_peak:.0f} MB: {ours / theirs:.2f}x"
                )
    return 0


def print_table(results: dict[str, dict[str, Any]]) -> None:
    sums = {r["checksum"] for c, r in results.items() if c != "floor"}
    if len(sums) > 1:
        raise SystemExit(f"cases disagree on the pixels: checksums {sums}")
    if sums:
        print(f"# every window case read the same pixels (checksum {sums.pop()})")

    def rate(case: str) -> float | None:
        r = results.get(case)
        return None if r is None else r["windows"] / r["seconds"]

    naive, floor = rate("naive-64MB"), rate("floor")
    print(
        f"{'case':40} | {'windows/s':>9} | {'vs naive-64MB':>13} | {'vs floor':>8} | {'CPU s':>6} | peak RSS MB (own)"
    )
    print(f"{'-' * 40}-|-{'-' * 9}-|-{'-' * 13}-|-{'-' * 8}-|-{'-' * 6}-|-{'-' * 18}")
    for case, r in results.items():
        wps = r["windows"] / r["seconds"]
        vs_naive = f"{wps / naive:.2f}x" if naive else "-"
        vs_floor = f"{wps / floor:.2f}x" if floor else "-"
        print(
            f"{LABELS[case]:40} | {wps:9.1f} | {vs_naive:>13} | {vs_floor:>8} | {r['cpu']:6.2f} | "
            f"{r['peak_mb']:6.0f} ({r['self_rss_mb']:.0f})"
        )
    best = max((c for c in results if c.startswith("lazytiles") and "uncapped" not in c), key=rate, default=None)
    if best and naive and floor:
        ok = rate(best) >= 1.25 * naive and rate(best) >= 0.9 * floor
        print(
            f"# best lazytiles case: {LABELS[best]}: {rate(best) / naive:.2f}x naive (target >= 1.25x), "
            f"{rate(best) / floor:.2f}x floor (target >= 0.9x): {'met' if ok else 'NOT met'}"
        )
    serial = results.get("lazytiles-serial")
    if serial and "naive-64MB" in results and "floor" in results:  # steadier than wall time on a busy machine
        cpu = serial["cpu"]
        print(
            f"# CPU time: lazytiles {cpu:.2f} s, naive (64 MB) {results['naive-64MB']['cpu']:.2f} s "
            f"({results['naive-64MB']['cpu'] / cpu:.2f}x), floor {results['floor']['cpu']:.2f} s "
            f"({results['floor']['cpu'] / cpu:.2f}x)"
        )
    if serial:
        print(
            f"# lazytiles (one consumer) peak RSS {serial['peak_mb']:.0f} MB (target <= 400 MB): "
            f"{'met' if serial['peak_mb'] <= 400 else 'NOT met'}"
        )


def print_vrt(result: dict[str, Any], peak: float, side: int) -> None:
    print(
        f"# VRT {side}x{side} ({result['total_windows']} windows, {result['columns']} a row, strips of "
        f"{result['strip']}): first {result['windows']} windows in {result['seconds']:.1f} s, "
        f"{result['tiles_read']} tiles read"
    )
    print(f"{'windows':>8} | {'RSS MB':>7} | tile cache MB")
    for k, rss, cached in result["series"]:
        print(f"{k:8d} | {rss:7.0f} | {cached:7.0f}")
    steady = [rss for k, rss, _ in result["series"][len(result["series"]) // 2 :]]
    flat = max(steady) - min(steady) <= 0.1 * max(steady) if steady else False
    print(
        f"# VRT peak RSS {peak:.0f} MB (target <= 500 MB): {'met' if peak <= 500 else 'NOT met'}; "
        f"second half {'flat' if flat else 'NOT flat'}"
    )


if __name__ == "__main__":
    sys.exit(main())
