"""Windows at 2x and 4x coarser resolution: lazytiles ``src.at(res=...)`` vs rasterio's WarpedVRT.

Writes (or reuses, with ``--data DIR``) a 3-band uint8 COG of imagery-like content with overviews
(2, 4, 8, ...; 512-px blocks, DEFLATE), reads it once into the OS page cache, then, for each factor,
reads the same 512-px windows (stride 256) of the coarser grid — the source's footprint at ``factor``
times its pixel size, bilinear — in row-major order, each case in its own process (so peak RSS is
per case), the cases interleaved over ``--repeat`` runs (the fastest counts):

- ``lazytiles``: ``for w in lt.windows(lt.open(cog).at(res=...), 512, stride=256)``: tiles warped
  from the overview GDAL's rule picks, each overview block read once;
- ``WarpedVRT``: ``WarpedVRT(rasterio.open(cog), transform=..., width=..., height=...)`` and
  ``vrt.read(window=w)`` per window on one handle — what torchgeo's ``RasterDataset(res=...)`` does
  per sample: GDAL warps from the full resolution;
- ``WarpedVRT on the overview``: the same over ``rasterio.open(cog, overview_level=k)``, the level
  lazytiles picks: GDAL at its best, and the pixels lazytiles must equal.

Prints ``case | windows/s | blocks read | peak RSS`` rows per factor. Blocks read are the source
blocks decoded: counted by lazytiles; for GDAL, the blocks under the scene at the level it reads
(a lower bound: its 64 MB block cache may decode some twice). Checks that lazytiles and the VRT on
the overview read the same pixels (a checksum over every window).

    python benchmarks/bench_resolution.py                     # 16384 x 16384 COG, 2x and 4x
    python benchmarks/bench_resolution.py --size 4096 --repeat 1
    python benchmarks/bench_resolution.py --data ~/bench-data  # keep the COG for the next run
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
CASES = ["lazytiles", "warpedvrt", "warpedvrt-overview"]
LABELS = {
    "lazytiles": "lazytiles src.at(res=...)",
    "warpedvrt": "WarpedVRT, one handle",
    "warpedvrt-overview": "WarpedVRT on the overview",
}
SIZE, STRIDE = 512, 256


def scene(directory: Path, size: int) -> Path:
    """The COG with overviews, written once per ``directory`` and size."""
    import rasterio.shutil

    path = directory / f"scene_{size}_ovr.tif"
    if not path.exists():
        plain = write_cog(directory, size)
        options = dict(driver="COG", compress="DEFLATE", blocksize=512, overviews="AUTO")
        rasterio.shutil.copy(plain, path.with_suffix(".part"), overview_resampling="average", **options)
        path.with_suffix(".part").rename(path)
        plain.unlink()
    return path


def grid(cog: str, factor: int) -> tuple[Any, Any, int, int, int]:
    """The coarser grid lazytiles makes (crs, transform, width, height) and the level it reads."""
    sys.path.insert(0, str(ROOT))
    import lazytiles as lt

    src = lt.open(cog)
    coarse = src.at(res=factor * src.transform.a)
    return coarse.crs, coarse.transform, coarse.width, coarse.height, coarse.level_index


def run_case(case: str, cog: str, factor: int) -> dict[str, Any]:
    """One case in this process: its time, checksum, blocks read and own peak RSS."""
    os.environ.setdefault("GDAL_CACHEMAX", str(64 * 2**20))  # GDAL's block cache as lazytiles caps it
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window

    sys.path.insert(0, str(ROOT))
    import lazytiles as lt

    crs, transform, width, height, level = grid(cog, factor)
    offsets = window_offsets(height, width, SIZE, STRIDE)
    total = 0
    start = time.perf_counter()
    if case == "lazytiles":
        src = lt.open(cog)
        coarse = src.at(res=factor * src.transform.a)
        for w in lt.windows(coarse, SIZE, stride=STRIDE):
            total += checksum(w.data)
        blocks = src.stats()["tiles_read"] + coarse.level_source.stats()["tiles_read"]
    else:
        opened = {"overview_level": level - 1} if case == "warpedvrt-overview" and level else {}
        with (
            rasterio.open(cog, **opened) as ds,
            WarpedVRT(
                ds, crs=crs, transform=transform, width=width, height=height, resampling=Resampling.bilinear
            ) as vrt,
        ):
            for r, c in offsets:
                total += checksum(vrt.read(window=Window(c, r, SIZE, SIZE)))
            bh, bw = ds.block_shapes[0]
            blocks = -(-ds.height // bh) * -(-ds.width // bw)
    return {
        "case": case,
        "seconds": time.perf_counter() - start,
        "windows": len(offsets),
        "checksum": total,
        "blocks": blocks,
        "level": level,
        "self_rss_mb": own_peak_rss_mb(),
    }


def in_subprocess(args: list[str]) -> tuple[dict[str, Any], float]:
    """Run this script with ``args`` in a child; its JSON result and the peak RSS (MB) of its process tree."""
    import psutil

    proc = subprocess.Popen([sys.executable, str(HERE), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak, done = 0.0, threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            me = psutil.Process(proc.pid)
            while not done.is_set():
                rss = 0
                for p in [me, *me.children(recursive=True)]:
                    try:
                        rss += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak = max(peak, rss / 1e6)
                done.wait(0.02)
        except psutil.Error:
            return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join(5)
    if proc.returncode != 0:
        raise RuntimeError(f"case {args} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    return json.loads(out.decode().strip().splitlines()[-1]), peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=16384, help="COG side in pixels (default 16384)")
    parser.add_argument("--factors", default="2,4", help="coarser by these factors (default 2,4)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case, interleaved; the fastest counts")
    parser.add_argument("--data", help="directory to keep the COG in between runs (default: a temporary one)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    parser.add_argument("--cog", help=argparse.SUPPRESS)
    parser.add_argument("--factor", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.cog, args.factor)))
        return 0

    import rasterio

    sys.path.insert(0, str(ROOT))
    import lazytiles as lt

    factors = [int(f) for f in args.factors.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_resolution_") as tmp:
        directory = Path(args.data).expanduser() if args.data else Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        cog = scene(directory, args.size)
        cog.read_bytes()  # into the OS page cache, so every case starts alike
        with rasterio.open(cog) as ds:
            overviews = ds.overviews(1)
        print(
            f"# lazytiles {lt.__version__}, rasterio {rasterio.__version__}, GDAL {rasterio.__gdal_version__}, "
            f"python {platform.python_version()}, {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs\n"
            f"# COG {args.size}^2 x 3 uint8, 512-px blocks, overviews {overviews}, {cog.stat().st_size / 1e6:.0f} MB "
            f"(ready in {time.perf_counter() - start:.0f} s); windows {SIZE} px, stride {STRIDE}, bilinear"
        )
        results: dict[tuple[int, str], dict[str, Any]] = {}
        for _ in range(args.repeat):  # interleaved, so a busy spell on the machine hits every case alike
            for factor in factors:
                for case in CASES:
                    result, peak = in_subprocess(["--case", case, "--cog", str(cog), "--factor", str(factor)])
                    best = results.get((factor, case))
                    result["peak_mb"] = max(peak, best["peak_mb"]) if best else peak
                    if best is None or result["seconds"] < best["seconds"]:
                        results[(factor, case)] = result
                    else:
                        best["peak_mb"] = result["peak_mb"]
        print(f"# fastest of {args.repeat} runs per case; peak RSS of the case's process")
        print(f"{'case':<32} | {'windows/s':>9} | {'blocks read':>11} | {'peak RSS MB':>11}")
        same = True
        for factor in factors:
            level = results[(factor, "lazytiles")]["level"]
            n = results[(factor, "lazytiles")]["windows"]
            print(f"# {factor}x coarser: {n} windows, lazytiles reads level {level} (0 = full resolution)")
            for case in CASES:
                r = results[(factor, case)]
                label = f"{LABELS[case]} {factor}x"
                print(f"{label:<32} | {r['windows'] / r['seconds']:9.1f} | {r['blocks']:11d} | {r['peak_mb']:11.0f}")
            same &= results[(factor, "lazytiles")]["checksum"] == results[(factor, "warpedvrt-overview")]["checksum"]
        print(f"lazytiles and WarpedVRT on the overview read the same pixels: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
