"""Vectorising a label raster: lt.polygons (block by block, seams joined) against one whole-raster trace.

The raster is an N x N uint8 label raster (512 px tiles, nodata 0) of 48 px cells of classes 0..4, so
almost every object crosses block seams. The usual way reads the whole band and traces it with one
``rasterio.features.shapes``: memory grows with the raster. lt.polygons reads one row of blocks at
a time and holds only the objects touching its lower edge. Each side runs in its own process (peak
RSS is its own), with GDAL's block cache at 64 MB; both must give the same objects (class, bounds and
area of each).

    python benchmarks/bench_polygons.py             # 16384 x 16384
    python benchmarks/bench_polygons.py --size 32768
    python benchmarks/bench_polygons.py --quick     # 2048 x 2048: what the tests run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CELL, TILE = 48, 512


def write_labels(path: Path, size: int, seed: int = 0) -> None:
    """The label raster, written one row of tiles at a time."""
    import numpy as np
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 5, (size // CELL + 1, size // CELL + 1)).astype(np.uint8)
    profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint8", nodata=0, tiled=True,
                   blockxsize=TILE, blockysize=TILE, compress="deflate", crs="EPSG:32633",
                   transform=Affine(0.5, 0, 500_000, 0, -0.5, 6_000_000))  # fmt: skip
    cols = np.arange(size) // CELL
    with rasterio.open(path, "w", **profile) as ds:
        for r0 in range(0, size, TILE):
            rows = np.arange(r0, min(r0 + TILE, size)) // CELL
            ds.write(coarse[rows][:, cols], 1, window=Window(0, r0, size, len(rows)))


def run_one(way: str, path: str, out: str) -> None:
    """Trace ``path`` the ``way`` given (``lazytiles`` or ``whole``); write seconds, peak RSS, objects to ``out``."""
    import shapely
    from _measure import own_peak_rss_mb

    t = time.perf_counter()
    if way == "lazytiles":
        import lazytiles as lt

        found = lt.polygons(path)
        geoms, labels = list(found.shapes), found.labels.tolist()
    else:
        import rasterio
        from rasterio.features import shapes

        with rasterio.open(path) as ds:
            band, valid = ds.read(1), ds.read_masks(1) > 0
        traced = [(shapely.geometry.shape(g), int(v)) for g, v in shapes(band, mask=valid)]
        geoms, labels = [g for g, _ in traced], [v for _, v in traced]
    seconds = time.perf_counter() - t
    keys = sorted((lab, *g.bounds, round(g.area, 6)) for g, lab in zip(geoms, labels))
    Path(out).write_text(json.dumps({"seconds": seconds, "rss_mb": own_peak_rss_mb(), "objects": keys}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_one(*args.child)
        return
    size = 2048 if args.quick else args.size
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "labels.tif"
        write_labels(path, size)
        env = {**os.environ, "GDAL_CACHEMAX": "64", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        results = {}
        for way, name in (("whole", "whole raster"), ("lazytiles", "lazytiles")):
            out = Path(tmp) / f"{way}.json"
            cmd = [sys.executable, __file__, "--child", way, str(path), str(out)]
            subprocess.run(cmd, check=True, env=env, cwd=Path(__file__).parent)
            results[name] = json.loads(out.read_text())
    print(f"label raster {size} x {size}, {TILE} px tiles, {CELL} px cells of 5 classes")
    print(f"{'case':<14}{'seconds':>9}{'peak RSS MB':>13}{'objects':>9}")
    for way, r in results.items():
        print(f"{way:<14}{r['seconds']:9.2f}{r['rss_mb']:13.0f}{len(r['objects']):9d}")
    same = results["lazytiles"]["objects"] == results["whole raster"]["objects"]
    print(f"same objects (class, bounds, area): {same}")


if __name__ == "__main__":
    main()
