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
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _measure import (
    DATA_ENV,
    best_and_median,
    cached_cog,
    data_dir,
    fold,
    own_peak_rss_mb,
    run_child,
    window_crc,
    window_offsets,
)

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
    "floor": "floor: each block decoded once, 2 threads",
    "lazytiles-serial": "lazytiles, one consumer (block read-ahead)",
    "lazytiles-serial-noreadahead": "lazytiles, readahead=0 (one thread)",
    "lazytiles-serial-uncapped": "lazytiles, GDAL cache uncapped",
    "lazytiles-index-loop": "lazytiles, wins[i] in an index loop",
    "lazytiles-prefetch-threads": "lazytiles lt.prefetch, 2 threads",
    "lazytiles-prefetch-processes": "lazytiles lt.prefetch, 2 processes",
}
WORKERS = 2
SIZE, STRIDE, BLOCK = 512, 256, 512
CACHE_BYTES = 256 * 2**20  # lt.TileCache(max_bytes=...) of every lazytiles case


# -- data ------------------------------------------------------------------------------------------


def write_vrt(cog: Path, repeat: int, directory: Path) -> Path:
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
        link = directory / f"{cog.stem}_{c:02d}{cog.suffix}"
        try:
            os.link(cog, link)
        except OSError:  # no hard links here (another file system): a symbolic one
            os.symlink(cog.resolve(), link)
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
    path = directory / f"scene_x{repeat}.vrt"
    path.write_text(xml)
    return path


# -- one case, in its own process ------------------------------------------------------------------


def run_case(case: str, cog: str, limit: int | None = None) -> dict[str, Any]:
    """Run one case in this process (on the first ``limit`` windows) and return its measurements."""
    if case in ("naive-64MB", "floor"):  # the floor keeps its blocks itself: GDAL's cache would only copy them
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
    extra: dict[str, Any] = {}
    start, cpu_start = time.perf_counter(), time.process_time()
    if case.startswith("naive"):
        with rasterio.open(cog) as ds:
            for r, c in offsets:
                total = fold(total, window_crc(ds.read(window=Window(c, r, SIZE, SIZE))))
        n = len(offsets)
    elif case == "floor":
        total, extra = decode_once_floor(cog, offsets)
        n = len(offsets)
    else:
        open_options: dict[str, Any] = {"cache": lt.TileCache(max_bytes=CACHE_BYTES)}
        if case == "lazytiles-serial-uncapped":
            open_options["gdal_cache_bytes"] = None
        window_options = {"readahead": 0} if case == "lazytiles-serial-noreadahead" else {}
        src = lt.open(cog, **open_options)
        wins = lt.windows(src, SIZE, stride=STRIDE, **window_options)
        assert [(int(r), int(c)) for c, r, _, _ in wins.pixel_windows()] == offsets[: len(wins)], "not row-major"
        if limit is not None:
            wins = wins[:limit]
        n = len(wins)
        most_cached = 0
        if case.startswith("lazytiles-serial"):
            for k, w in enumerate(wins):
                total = fold(total, window_crc(w.data))
                if k % 64 == 0:
                    most_cached = max(most_cached, src.cache.stats()["nbytes"])
        elif case == "lazytiles-index-loop":
            for i in range(len(wins)):
                total = fold(total, window_crc(wins[i].data))
                if i % 64 == 0:
                    most_cached = max(most_cached, src.cache.stats()["nbytes"])
        else:
            method = "thread" if case.endswith("threads") else "process"
            with lt.prefetch(wins, workers=WORKERS, method=method, progress=False) as pre:
                for k, w in enumerate(pre):
                    total = fold(total, window_crc(w.data))
                    if k % 64 == 0:
                        most_cached = max(most_cached, src.cache.stats()["nbytes"])
        extra = {"tiles_read": src.stats()["tiles_read"], "cached_mb": most_cached / 1e6}
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "case": case,
        "seconds": seconds,
        "cpu": cpu,
        "windows": n,
        "checksum": total,
        "self_rss_mb": own_peak_rss_mb(),
        **extra,
    }


def decode_once_floor(cog: str, offsets: list[tuple[int, int]]) -> tuple[int, dict[str, Any]]:
    """The least work a pass can do, timed in two parts: each block decoded once on two threads (one
    GDAL handle and one reused buffer each), and each window copied out of decoded blocks and
    checksummed on one thread (the blocks of two rows at a time, decoded outside the clock). The
    floor's time is the decode time plus half the copy time: the two cores' share of the pass's
    CPU work when the copying overlaps the decoding. Returns the checksum and the times."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(cog) as ds:
        height, width, count = ds.height, ds.width, ds.count
    rows, cols = -(-height // BLOCK), -(-width // BLOCK)
    local = threading.local()

    def decode(rc: tuple[int, int]) -> None:
        if not hasattr(local, "ds"):
            local.ds, local.out = rasterio.open(cog), np.empty((count, BLOCK, BLOCK), np.uint8)
        r, c = rc
        local.ds.read(window=Window(c * BLOCK, r * BLOCK, BLOCK, BLOCK), out=local.out)

    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        for _ in pool.map(decode, [(r, c) for r in range(rows) for c in range(cols)]):
            pass
    decode_s = time.perf_counter() - start

    blocks: dict[tuple[int, int], Any] = {}
    copy_s, total = 0.0, 0
    with rasterio.open(cog) as ds:
        for r0, c0 in offsets:
            needed = range(r0 // BLOCK, (r0 + SIZE - 1) // BLOCK + 1)
            for key in [k for k in blocks if k[0] < needed[0]]:
                del blocks[key]
            for br in needed:
                if (br, 0) not in blocks:
                    for bc in range(cols):
                        blocks[br, bc] = ds.read(window=Window(bc * BLOCK, br * BLOCK, BLOCK, BLOCK))
            start = time.perf_counter()
            out = np.empty((count, SIZE, SIZE), np.uint8)
            for br in needed:
                for bc in range(c0 // BLOCK, (c0 + SIZE - 1) // BLOCK + 1):
                    ra, rb = max(r0, br * BLOCK), min(r0 + SIZE, (br + 1) * BLOCK)
                    ca, cb = max(c0, bc * BLOCK), min(c0 + SIZE, (bc + 1) * BLOCK)
                    out[:, ra - r0 : rb - r0, ca - c0 : cb - c0] = blocks[br, bc][
                        :, ra - br * BLOCK : rb - br * BLOCK, ca - bc * BLOCK : cb - bc * BLOCK
                    ]
            total = fold(total, window_crc(out))
            copy_s += time.perf_counter() - start
    return total, {"decode_s": decode_s, "copy_s": copy_s, "floor_s": decode_s + copy_s / 2}


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
        "self_rss_mb": own_peak_rss_mb(),
    }


def warm_page_cache(path: Path) -> None:
    """Read ``path`` once, a chunk at a time, so every case finds it in the OS page cache (and this
    process, whose RSS its children start from, stays small)."""
    with open(path, "rb") as f:
        while f.read(2**24):
            pass


def in_subprocess(args: list[str]) -> tuple[dict[str, Any], float]:
    """Run this script with ``args`` in a child; its JSON result and the child's peak RSS (MB, its VmHWM)."""
    result = json.loads(run_child([str(HERE), *args]).strip().splitlines()[-1])
    return result, result["self_rss_mb"]


# -- the report -------------------------------------------------------------------------------------


def environment(cog: Path, n_windows: int) -> str:
    import numpy as np
    import rasterio

    sys.path.insert(0, str(ROOT))
    import lazytiles as lt

    with rasterio.open(cog) as ds:
        shape = (
            f"{ds.width}x{ds.height}x{ds.count} {ds.dtypes[0]}, {ds.block_shapes[0][0]}-px blocks, "
            f"{ds.compression.name}, overviews {ds.overviews(1)}"
        )
    return (
        f"# lazytiles {lt.__version__}, rasterio {rasterio.__version__}, GDAL {rasterio.__gdal_version__}, "
        f"numpy {np.__version__}, python {platform.python_version()}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs\n# COG {shape}, {cog.stat().st_size / 1e6:.0f} MB; {n_windows} windows of "
        f"{SIZE} px, stride {STRIDE} px; crc32 of every window; lazytiles: lt.TileCache(max_bytes=256 MiB)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small COG and VRT, few windows (test suite)")
    parser.add_argument("--size", type=int, default=None, help="COG side in pixels (default 8192, quick 1024)")
    parser.add_argument(
        "--data-dir",
        default=None,
        help=f"keep the generated COG here between runs (default ${DATA_ENV}, else lazytiles-bench in the temp dir)",
    )
    parser.add_argument("--vrt-windows", type=int, default=None, help="windows read from the VRT (default 20000)")
    parser.add_argument("--vrt-repeat", type=int, default=16, help="VRT side in COG sides (default 16)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    parser.add_argument("--no-vrt", action="store_true", help="skip the VRT memory run")
    parser.add_argument("--repeat", type=int, default=None, help="interleaved runs per case (default 3, quick 1)")
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

    start = time.perf_counter()
    cog, written = cached_cog(data_dir(args.data_dir), size)
    warm_page_cache(cog)
    n_windows = len(window_offsets(size, size))
    print(environment(cog, n_windows))
    how = f"written in {time.perf_counter() - start:.1f} s" if written else "kept from an earlier run"
    print(f"# COG {how} ({cog.parent}); each case runs in its own process")
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    repeat = args.repeat or (1 if args.quick else 3)
    for _ in range(repeat):  # interleaved, so a busy spell on the machine hits every case alike
        for case in cases:
            result, peak = in_subprocess(["--case", case, "--cog", str(cog)])
            runs[case].append({**result, "peak_mb": peak})
    print(
        f"# {repeat} interleaved run{'s' * (repeat > 1)} per case: best and median; CPU s and peak RSS of the best run"
    )
    print_table(runs)
    if not args.no_vrt:
        with tempfile.TemporaryDirectory(prefix="bench_read_vrt_") as tmp:
            vrt = write_vrt(cog, args.vrt_repeat, Path(tmp))
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


def rate(run: dict[str, Any]) -> float:
    """Windows per second of one run (the floor's: over its decode-once time)."""
    return float(run["windows"] / run.get("floor_s", run["seconds"]))


def print_table(runs: dict[str, list[dict[str, Any]]]) -> None:
    sums = {r["checksum"] for case, rs in runs.items() for r in rs}
    if len(sums) > 1:
        raise SystemExit(f"cases disagree on the pixels: checksums {sums}")
    if sums:
        print(f"# every window case read the same pixels (crc32s folded: {sums.pop()})")
    best = {case: max(rs, key=rate) for case, rs in runs.items() if rs}
    rates = {case: best_and_median([rate(r) for r in rs]) for case, rs in runs.items() if rs}
    naive, floor = rates.get("naive-64MB"), rates.get("floor")

    def vs(case: str, other: tuple[float, float] | None) -> str:
        if other is None:
            return "-"
        return f"{rates[case][0] / other[0]:.2f}x / {rates[case][1] / other[1]:.2f}x"

    print(
        f"{'case':42} | {'windows/s best / median':>23} | {'vs naive-64MB':>13} | {'vs floor':>13} | "
        f"{'CPU s':>6} | peak RSS MB | most cached MB"
    )
    print(f"{'-' * 42}-|-{'-' * 23}-|-{'-' * 13}-|-{'-' * 13}-|-{'-' * 6}-|-{'-' * 11}-|-{'-' * 14}")
    for case, (top, mid) in rates.items():
        r = best[case]
        cached = f"{r['cached_mb']:.0f}" if "cached_mb" in r else "-"
        print(
            f"{LABELS[case]:42} | {top:10.1f} / {mid:10.1f} | {vs(case, naive):>13} | {vs(case, floor):>13} | "
            f"{r['cpu']:6.2f} | {max(x['peak_mb'] for x in runs[case]):11.0f} | {cached:>14}"
        )
    if "floor" in best:
        f = best["floor"]
        print(
            f"# floor (best run): decode once on 2 threads {f['decode_s']:.2f} s + copy and crc32 {f['copy_s']:.2f} s / 2"
        )
    print("# ratios: best / best and median / median; peak RSS: the most of any run of the case's process (VmHWM)")
    serial, pre = rates.get("lazytiles-serial"), rates.get("lazytiles-prefetch-threads")
    if serial and naive and floor:
        ok = serial[1] >= 1.25 * naive[1] and serial[1] >= 0.9 * floor[1]
        print(
            f"# plain pass: {vs('lazytiles-serial', naive)} naive (target >= 1.25x), "
            f"{vs('lazytiles-serial', floor)} floor (target >= 0.9x): {'met' if ok else 'NOT met'} (medians)"
        )
    if serial:
        peak = max(x["peak_mb"] for x in runs["lazytiles-serial"])
        print(f"# plain pass peak RSS {peak:.0f} MB (target <= 400 MB): {'met' if peak <= 400 else 'NOT met'}")
    if serial and pre:
        peak = max(x["peak_mb"] for x in runs["lazytiles-prefetch-threads"])
        ok = pre[1] >= serial[1] and peak <= 400
        print(
            f"# lt.prefetch(workers=2) vs plain: {vs('lazytiles-prefetch-threads', serial)}, peak RSS {peak:.0f} MB "
            f"(targets >= 1.00x, <= 400 MB): {'met' if ok else 'NOT met'} (medians)"
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
