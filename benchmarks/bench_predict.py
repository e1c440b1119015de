"""Writing a segmentation raster: ``lt.write_raster`` vs the usual way (one in-memory array, written at the end).

The data: a 3-band uint8 DEFLATE COG of imagery-like content (``_measure.write_cog``; 16384 px square
by default) in a temporary directory; 512-px windows with stride 384 (``edge="pad"``, a regular grid);
a dense model whose three class scores are the bands plus a small ramp across the window, so a
pixel's class depends on which window it is taken from (the stitch matters); ``lt.predict`` with
batches of 8 on the CPU for both cases.

Cases, each in its own process (so peak RSS is its own), run alternately ``--repeat`` times (the fastest
run is shown, and the throughput ratio of each interleaved pair):

- the usual way: predict every window, write the argmax of its valid middle (the window minus half the
  overlap on each inner side) into one ``(H, W)`` uint8 array, write the GeoTIFF at the end;
- lazytiles: ``lt.write_raster(preds, path, blend="center")``: each 256-px block written as soon as
  the last window touching it is done.

For this grid "the window whose centre is nearest" is exactly the valid middle, so both files must be
equal pixel for pixel; the script checks it. Prints windows/s, the throughput ratio (target >= 1) and
peak RSS (target for lazytiles on 16384²: <= 500 MB; the usual way holds the whole label raster). Both
cases share the streaming pipeline's memory (torch, batches in flight); ``--malloc glibc`` shows what
glibc's dynamic mmap threshold adds to it (the heap it keeps after large arrays are freed).

``--flat SIZE [SIZE ...]``: a single-class output of each size (131072 px square: the VRT case), to show
peak RSS does not grow with the raster. The source is synthetic (one 1024-px tile, repeated: no file to
read), the windows 1024 px with no overlap, the model one score per pixel; lazytiles only (the usual way
would need SIZE² bytes). Each size in its own process; prints seconds, windows/s, peak RSS and the file.

    python benchmarks/bench_predict.py             # 16384 x 16384, 1849 windows
    python benchmarks/bench_predict.py --quick     # 2048 x 2048: a smoke test for the test suite
    python benchmarks/bench_predict.py --flat 16384 131072
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

SIZE, STRIDE, BLOCK = 512, 384, 256


def model() -> object:
    import torch

    class RampedBands(torch.nn.Module):
        """Scores (N, 3, H, W): each band plus a ramp across the window, a different one per class."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = x.shape[-1]
            ramp = torch.linspace(0, 0.08, w).view(1, 1, w)
            return torch.stack([x[:, 0] + ramp, x[:, 1] + ramp.flip(-1), x[:, 2] + 0.04], dim=1)

    return RampedBands()


def windows(scene: str) -> object:
    import lazytiles as lt

    return lt.windows(lt.open(scene), size=SIZE, stride=STRIDE, edge="pad")


def usual(scene: str, out: str) -> None:
    """Every window's valid middle into one in-memory label array; the file written at the end."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    import lazytiles as lt

    wins = windows(scene)
    src = wins.source
    height, width = src.height, src.width
    labels = np.zeros((height, width), np.uint8)  # the whole raster
    px = wins.pixel_windows()
    last_col, last_row = int(px[:, 0].max()), int(px[:, 1].max())
    m = (SIZE - STRIDE) // 2
    for p in lt.predict(model(), wins, batch_size=8, progress=False):
        c, r = int(p.window.col_off), int(p.window.row_off)
        top, left = (r + m if r else 0), (c + m if c else 0)
        bottom = height if r == last_row else min(r + SIZE - m, height)
        right = width if c == last_col else min(c + SIZE - m, width)
        labels[top:bottom, left:right] = p.data[:, top - r : bottom - r, left - c : right - c].argmax(axis=0)
    profile = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=1,
        dtype="uint8",
        crs=src.crs,
        transform=src.transform,
        tiled=True,
        blockxsize=BLOCK,
        blockysize=BLOCK,
        compress="deflate",
        BIGTIFF="IF_SAFER",
    )
    with rasterio.open(out, "w", **profile) as ds:
        for top in range(0, height, BLOCK * 8):
            rows = min(BLOCK * 8, height - top)
            ds.write(labels[None, top : top + rows], window=Window(0, top, width, rows))


def lazy(scene: str, out: str) -> None:
    import lazytiles as lt

    lt.write_raster(lt.predict(model(), windows(scene), batch_size=8, progress=False), out, block=BLOCK, progress=False)


CASES = {"the usual way": usual, "lazytiles write_raster": lazy}
FLAT_TILE = 1024


def flat_source(size: int) -> object:
    """A ``size``² one-band uint8 source whose every tile is the same 1024² array: no file, no decoding."""
    import numpy as np
    from affine import Affine
    from rasterio.crs import CRS

    from lazytiles.sources.base import TileSource

    class Flat(TileSource):
        def __init__(self) -> None:
            self.crs, self.transform = CRS.from_epsg(32633), Affine(0.5, 0, 500_000, 0, -0.5, 5_000_000)
            self.count, self.dtype, self.nodata = 1, np.dtype(np.uint8), None
            self.tile_shape, self.height, self.width = (FLAT_TILE, FLAT_TILE), size, size
            self._init_tiles(None)
            self._tile = np.full((1, FLAT_TILE, FLAT_TILE), 200, np.uint8)
            self._tile.flags.writeable = False

        @property
        def token(self) -> str:
            return f"flat:{size}"

        def _read_tile(self, key: object) -> np.ndarray:
            return self._tile

    return Flat()


def flat(size: int, out: str) -> dict[str, float]:
    """write_raster of a single-class output over a synthetic ``size``² source."""
    import torch

    import lazytiles as lt

    class OneClass(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 1, *x.shape[-2:]), 0.9)  # one score, >= 0.5 everywhere: class 1

    wins = lt.windows(flat_source(size), size=FLAT_TILE, stride=FLAT_TILE, edge="pad")
    lt.write_raster(lt.predict(OneClass(), wins, batch_size=4, progress=False), out, block=BLOCK, progress=False)
    return {"windows": len(wins), "bytes": os.path.getsize(out)}


def child(case: str, scene: str, out: str) -> None:
    import torch
    from _measure import cpu_seconds, own_peak_rss_mb

    torch.set_num_threads(1)
    start, cpu = time.perf_counter(), cpu_seconds()
    more = flat(int(scene), out) if case == "flat" else CASES[case](scene, out)
    took = {"seconds": time.perf_counter() - start, "cpu": cpu_seconds() - cpu, "rss": own_peak_rss_mb()}
    print(json.dumps({**took, **(more or {})}))


def bigtiff(path: Path) -> bool:
    """Whether ``path`` is a BigTIFF (64-bit offsets: past 4 GB), by its header."""
    with open(path, "rb") as f:
        return f.read(4) in (b"II+\x00", b"MM\x00+")


def run_flat(sizes: list[int], env: dict[str, str]) -> int:
    """The --flat cases: one process per size; peak RSS should not grow with the size."""
    print(f"\n{'size':>8}{'windows':>9}{'seconds':>9}{'windows/s':>11}{'peak RSS MB':>13}{'file MB':>9}  BigTIFF")
    with tempfile.TemporaryDirectory(prefix="bench-predict-flat-") as tmp:
        for size in sizes:
            out = Path(tmp) / f"flat-{size}.tif"
            command = [sys.executable, __file__, "--case", "flat", "--scene", str(size), "--out", str(out)]
            done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
            if done.returncode:
                print(done.stdout + done.stderr, file=sys.stderr)
                return 1
            r = json.loads(done.stdout.splitlines()[-1])
            print(
                f"{size:>8}{r['windows']:>9.0f}{r['seconds']:>9.1f}{r['windows'] / r['seconds']:>11.1f}"
                f"{r['rss']:>13.0f}{r['bytes'] / 1e6:>9.1f}  {'yes' if bigtiff(out) else 'no'}"
            )
            import rasterio

            with rasterio.open(out) as ds:
                corner = ds.read(1, window=((size - 300, size), (size - 300, size)))
                if ds.shape != (size, size) or not (corner == 1).all():
                    print(f"the {size}² file is not all class 1", file=sys.stderr)
                    return 1
            out.unlink()
    return 0


def same_pixels(a: Path, b: Path) -> bool:
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(a) as x, rasterio.open(b) as y:
        if (x.shape, x.transform, x.crs) != (y.shape, y.transform, y.crs):
            return False
        for top in range(0, x.height, 1024):
            w = Window(0, top, x.width, min(1024, x.height - top))
            if not np.array_equal(x.read(1, window=w), y.read(1, window=w)):
                return False
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=16384, help="scene width and height in px (default 16384)")
    p.add_argument("--quick", action="store_true", help="a 2048-px scene, one run: a smoke test")
    p.add_argument("--repeat", type=int, default=3, help="runs of each case, alternately; the fastest is shown")
    p.add_argument(
        "--malloc",
        choices=("fixed", "glibc"),
        default="fixed",
        help="fixed (default): MALLOC_MMAP_THRESHOLD_=1 MiB in both cases' processes, so peak RSS counts the "
        "arrays alive, not the heap glibc keeps after 25-MB batches are freed; glibc: its dynamic threshold",
    )
    p.add_argument("--flat", type=int, nargs="+", metavar="SIZE", help="single-class outputs of these sizes only")
    p.add_argument("--case", choices=[*sorted(CASES), "flat"], help=argparse.SUPPRESS)
    p.add_argument("--scene", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        child(args.case, args.scene, args.out)
        return 0
    env = dict(os.environ)
    if args.malloc == "fixed":
        env["MALLOC_MMAP_THRESHOLD_"] = str(2**20)
    if args.flat:
        return run_flat(args.flat, env)
    import rasterio
    import torch
    from _measure import write_cog

    import lazytiles as lt

    size = 2048 if args.quick else args.size
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        scene = write_cog(Path(tmp), size)
        n = len(windows(str(scene)))
        print(
            f"python {platform.python_version()}, torch {torch.__version__}, rasterio {rasterio.__version__}, "
            f"lazytiles {lt.__version__}, {os.cpu_count()} CPUs; scene {size} x {size} px, {n} windows of {SIZE} px, "
            f"stride {STRIDE}, 3 classes, blocks of {BLOCK} px; malloc: {args.malloc}"
        )
        results: dict[str, list[dict[str, float]]] = {case: [] for case in CASES}
        outputs = {case: Path(tmp) / f"{k}.tif" for k, case in enumerate(CASES)}
        for _ in range(1 if args.quick else args.repeat):  # alternately: a load that comes and goes hits both
            for case in CASES:
                done = subprocess.run(
                    [sys.executable, __file__, "--case", case, "--scene", str(scene), "--out", str(outputs[case])],
                    capture_output=True,
                    text=True,
                    check=False,
                    env=env,
                )
                if done.returncode:
                    print(done.stdout + done.stderr, file=sys.stderr)
                    return 1
                results[case].append(json.loads(done.stdout.splitlines()[-1]))
        pairs = [u["seconds"] / w["seconds"] for u, w in zip(*results.values())]  # each interleaved pair's ratio
        results = {case: [min(runs, key=lambda r: r["seconds"])] for case, runs in results.items()}  # the fastest
        base = results["the usual way"][0]["seconds"]
        print(f"\n{'case':<24}{'seconds':>9}{'windows/s':>11}{'ratio':>8}{'CPU s':>8}{'peak RSS MB':>13}")
        for case, (r,) in results.items():
            print(
                f"{case:<24}{r['seconds']:>9.1f}{n / r['seconds']:>11.1f}{base / r['seconds']:>7.2f}x"
                f"{r['cpu']:>8.1f}{r['rss']:>13.0f}"
            )
        print(
            f"ratio per interleaved pair: {', '.join(f'{r:.2f}' for r in pairs)} (median {statistics.median(pairs):.2f})"
        )
        same = same_pixels(*outputs.values())
        print(f"\nsame raster in every case: {'yes' if same else 'NO'}")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
