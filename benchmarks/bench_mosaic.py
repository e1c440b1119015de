"""Many scenes as one source: ``lt.mosaic`` of 16 overlapping scenes in two CRSs vs a GDAL VRT.

Writes an imagery-like base scene (EPSG:32633, 1 m), cuts it into a 4 x 4 grid of scenes that overlap
their right and lower neighbours by 1/32 of the base's size, and writes each as a tiled GeoTIFF (512-px
blocks, DEFLATE, nodata 0); the four scenes of the right column are reprojected to EPSG:32634 (nearest),
so the mosaic has scenes in two CRSs. Then, each case in its own process (so peak RSS is per case),
the same 512-px windows (stride 256) of the mosaic's grid are read in row-major order:

- ``vrt``: what users do without lazytiles: the EPSG:32634 scenes warped onto the mosaic's grid first
  (``gdalwarp -tap``, done here with ``rasterio.warp.reproject``; its time is printed apart), then a VRT
  of all 16 written as ``gdalbuildvrt`` writes it (ComplexSource per scene, NODATA 0, later sources on
  top, the same grid as the mosaic) and read with ``ds.read(window=w)`` on one handle;
- ``lazytiles``: ``for w in lt.windows(lt.mosaic(paths, order="last"), 512, stride=256)`` on the
  scenes as they are (EPSG:32634 ones warped tile by tile, through the shared cache);
- ``lazytiles-skip-empty``: the same with ``skip_empty=True`` (windows outside every footprint left
  out at plan time).

Prints ``case | windows | windows/s | scene files opened | scene tiles read | peak RSS``, and how many
windows of the lazytiles pass equal the VRT's bit for bit (the same-CRS part must; the warped scenes
differ where the two warps pick different neighbours).

    python benchmarks/bench_mosaic.py            # 8192 x 8192 base, 16 scenes of ~2300 px
    python benchmarks/bench_mosaic.py --quick    # 1024 x 1024 base
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from _measure import checksum, own_peak_rss_mb, write_cog

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
CASES = ["vrt", "lazytiles", "lazytiles-skip-empty"]
OTHER_CRS = "EPSG:32634"


def make_scenes(directory: Path, size: int) -> dict[str, Any]:
    """The 16 scene files, the pre-warped copies of the other-CRS ones, and the VRT; returns their paths."""
    import numpy as np
    import rasterio
    import rasterio.warp
    from rasterio.windows import Window

    import lazytiles as lt

    base = write_cog(directory, size)
    cell, over = size // 4, size // 32
    profile = dict(driver="GTiff", count=3, dtype="uint8", nodata=0, tiled=True, blockxsize=512, blockysize=512)
    profile["compress"] = "deflate"
    paths = []
    with rasterio.open(base) as ds:
        for i in range(4):
            for j in range(4):
                h, w = min(cell + over, size - i * cell), min(cell + over, size - j * cell)
                win = Window(j * cell, i * cell, w, h)
                data = ds.read(window=win)
                data[data == 0] = 1  # 0 is nodata
                transform, crs = ds.window_transform(win), ds.crs
                if j == 3:  # the right column in the other CRS
                    with warnings.catch_warnings():  # rasterio multiplies Affines with *
                        warnings.simplefilter("ignore", PendingDeprecationWarning)
                        left, bottom, right, top = rasterio.windows.bounds(win, ds.transform)
                        t2, w2, h2 = rasterio.warp.calculate_default_transform(
                            crs, OTHER_CRS, w, h, left, bottom, right, top
                        )
                    warped = np.zeros((3, h2, w2), np.uint8)
                    rasterio.warp.reproject(
                        data,
                        warped,
                        src_transform=transform,
                        src_crs=crs,
                        dst_transform=t2,
                        dst_crs=OTHER_CRS,
                        dst_nodata=0,
                    )
                    data, transform, crs = warped, t2, OTHER_CRS
                path = directory / f"scene_{i}{j}.tif"
                with rasterio.open(
                    path, "w", height=data.shape[1], width=data.shape[2], crs=crs, transform=transform, **profile
                ) as out:
                    out.write(data)
                paths.append(str(path))
    mosaic = lt.mosaic(paths)
    start = time.perf_counter()
    vrt_inputs = []
    for path in paths:  # what gdalwarp -tap does before gdalbuildvrt: the other CRS onto the mosaic's grid
        with rasterio.open(path) as src:
            if src.crs == mosaic.crs:
                vrt_inputs.append(path)
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PendingDeprecationWarning)
                left, bottom, right, top = rasterio.warp.transform_bounds(
                    src.crs, mosaic.crs, *src.bounds, densify_pts=21
                )
            inv = ~mosaic.transform
            c0, r0 = (int(np.floor(v)) for v in inv @ (left, top))
            c1, r1 = (int(np.ceil(v)) for v in inv @ (right, bottom))
            out_t = mosaic.transform @ lt.sources.scenes.Affine.translation(c0, r0)
            warped = np.zeros((3, r1 - r0, c1 - c0), np.uint8)
            rasterio.warp.reproject(
                src.read(),
                warped,
                src_transform=src.transform,
                src_crs=src.crs,
                src_nodata=0,
                dst_transform=out_t,
                dst_crs=mosaic.crs,
                dst_nodata=0,
            )
            target = directory / f"warped_{Path(path).name}"
            with rasterio.open(
                target, "w", height=r1 - r0, width=c1 - c0, crs=mosaic.crs, transform=out_t, **profile
            ) as out:
                out.write(warped)
            vrt_inputs.append(str(target))
    prewarp = time.perf_counter() - start
    vrt = directory / "mosaic.vrt"
    vrt.write_text(vrt_xml(vrt_inputs, mosaic))
    windows = [[int(v) for v in row] for row in lt.windows(mosaic, 512, stride=256).pixel_windows()]
    return {"paths": paths, "vrt": str(vrt), "prewarp_seconds": prewarp, "windows": windows}


def vrt_xml(paths: list[str], mosaic: Any) -> str:
    """A VRT of ``paths`` (all on ``mosaic``'s grid) as ``gdalbuildvrt`` writes one: later files on top."""
    import rasterio

    t = mosaic.transform
    bands = []
    for b in (1, 2, 3):
        sources = []
        for path in paths:
            with rasterio.open(path) as ds:
                c, r = (round(v) for v in ~t @ (ds.transform.c, ds.transform.f))
                sources.append(
                    f'<ComplexSource><SourceFilename relativeToVRT="0">{path}</SourceFilename>'
                    f"<SourceBand>{b}</SourceBand>"
                    f'<SourceProperties RasterXSize="{ds.width}" RasterYSize="{ds.height}" DataType="Byte" '
                    f'BlockXSize="512" BlockYSize="512"/>'
                    f'<SrcRect xOff="0" yOff="0" xSize="{ds.width}" ySize="{ds.height}"/>'
                    f'<DstRect xOff="{c}" yOff="{r}" xSize="{ds.width}" ySize="{ds.height}"/>'
                    f"<NODATA>0</NODATA></ComplexSource>"
                )
        bands.append(
            f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>0</NoDataValue>{"".join(sources)}</VRTRasterBand>'
        )
    geo = f"{t.c!r}, {t.a!r}, 0.0, {t.f!r}, 0.0, {t.e!r}"
    return (
        f'<VRTDataset rasterXSize="{mosaic.width}" rasterYSize="{mosaic.height}">'
        f"<SRS>{mosaic.crs.to_wkt()}</SRS><GeoTransform>{geo}</GeoTransform>{''.join(bands)}</VRTDataset>"
    )


def open_scene_files() -> int:
    """Distinct scene files this process holds open (GDAL handles, lazytiles' per-thread handles)."""
    names = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith(".tif"):
            names.add(target)
    return len(names)


def run_case(case: str, setup: dict[str, Any]) -> dict[str, Any]:
    import lazytiles as lt

    start = time.perf_counter()
    sums: list[int] = []
    if case == "vrt":
        import rasterio

        windows = [tuple(row) for row in setup["windows"]]  # the mosaic's windows, planned by the parent
        with rasterio.open(setup["vrt"]) as ds:
            for c, r, w, h in windows:
                sums.append(checksum(ds.read(window=rasterio.windows.Window(c, r, w, h))))
            opened, tiles = open_scene_files(), None
        keys = windows
    else:
        mosaic = lt.mosaic(setup["paths"], order="last")
        wins = lt.windows(mosaic, 512, stride=256, skip_empty=case.endswith("skip-empty"))
        keys = [tuple(int(v) for v in row) for row in wins.pixel_windows()]
        sums = [checksum(w.data) for w in wins]
        opened = open_scene_files()
        tiles = sum(int(s.stats()["tiles_read"]) for s in mosaic.scenes)
        tiles += sum(
            int(p.level_source.stats()["tiles_read"])
            for p, _, _ in mosaic._placed
            if hasattr(p, "level_source") and p.level_source not in mosaic.scenes
        )
    seconds = time.perf_counter() - start
    return {
        "case": case,
        "windows": len(sums),
        "seconds": seconds,
        "opened": opened,
        "tiles": tiles,
        "rss": own_peak_rss_mb(),
        "sums": dict(zip(map(str, keys), sums)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--quick", action="store_true", help="a 1024-px base")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, json.loads(args.setup))))
        return 0
    size = 1024 if args.quick else args.size
    with tempfile.TemporaryDirectory() as tmp:
        setup = make_scenes(Path(tmp), size)
        print(
            f"# base {size}x{size} px, 16 scenes (4 in {OTHER_CRS}); pre-warp for the VRT {setup['prewarp_seconds']:.2f} s"
        )
        print(f"{'case':<22} | windows | windows/s | scene files open | scene tiles read | peak RSS")
        results = {}
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        for case in CASES:
            done = subprocess.run(
                [sys.executable, str(HERE), "--case", case, "--setup", json.dumps(setup)],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            if done.returncode:
                print(done.stderr, file=sys.stderr)
                return 1
            r = results[case] = json.loads(done.stdout.splitlines()[-1])
            tiles = "-" if r["tiles"] is None else str(r["tiles"])
            print(
                f"{case:<22} | {r['windows']:>7} | {r['windows'] / r['seconds']:>9.1f} | {r['opened']:>16} | "
                f"{tiles:>16} | {r['rss']:.0f} MB"
            )
        vrt, lazy = results["vrt"]["sums"], results["lazytiles"]["sums"]
        same = sum(vrt[k] == v for k, v in lazy.items())
        skipped = set(lazy) - set(results["lazytiles-skip-empty"]["sums"])
        print(f"# {same} of {len(lazy)} windows equal the VRT's (checksums); skip_empty left out {len(skipped)}")
        if any(results["lazytiles"]["sums"][k] != 0 for k in skipped):
            print("# ERROR: skip_empty left out a window with data")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
