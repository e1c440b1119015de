"""``lazytiles predict``: a dense (segmentation) model over a region, durably, into one GeoTIFF."""

from __future__ import annotations

import argparse
import time

from ..errors import InvalidArgumentError
from .arguments import SRC_HELP, positive_int, window_arguments, windows_from_args


def predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", nargs="+", help=SRC_HELP)
    p.add_argument("--model", required=True, help="'pkg.module:factory' or a TorchScript file (model.pt)")
    p.add_argument("--out", required=True, metavar="FILE", help="the raster to write (GeoTIFF; a COG by default)")
    window_arguments(p)
    g = p.add_argument_group("the raster (as in lt.write_raster)")
    g.add_argument(
        "--blend", choices=("center", "mean"), default="center", help="where windows overlap (default center)"
    )
    g.add_argument(
        "--output", choices=("labels", "scores"), default="labels", help="one band of classes, or K score bands"
    )
    g.add_argument("--dtype", help="the raster's dtype (default uint8 labels, float32 scores)")
    g.add_argument("--nodata", type=float, help="value of pixels no window covers, and the nodata tag")
    g.add_argument("--block", type=positive_int, default=256, help="GeoTIFF tile size in pixels (default 256)")
    g.add_argument("--no-overviews", dest="overviews", action="store_false", help="a plain tiled GeoTIFF, no COG")
    r = p.add_argument_group("running")
    r.add_argument("--batch-size", type=positive_int, default=8, help="windows per model call (default 8)")
    r.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps (default cpu)")
    r.add_argument("--workers", type=positive_int, default=1, help="reader threads (default 1)")
    r.add_argument("--resume", action="store_true", help="continue the run into --out (only unfinished blocks run)")
    r.add_argument("--force-new", action="store_true", help="start over: replace --out and its run")


def run_predict(args: argparse.Namespace) -> int:
    from ..detection.models import load_model
    from ..runs.prediction import predict_region

    if args.resume and args.force_new:
        raise InvalidArgumentError("--resume and --force-new contradict each other; pass one of them")
    nodata = args.nodata
    if nodata is not None and nodata.is_integer():
        nodata = int(nodata)
    wins = windows_from_args(args)
    start = time.perf_counter()
    out = predict_region(
        load_model(args.model),
        wins,
        args.out,
        resume=args.resume,
        force_new=args.force_new,
        blend=args.blend,
        output=args.output,
        dtype=args.dtype,
        nodata=nodata,
        block=args.block,
        overviews=args.overviews,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
        progress=args.progress,
    )
    seconds = time.perf_counter() - start
    import rasterio

    with rasterio.open(out) as ds:
        size = f"{ds.width} x {ds.height} px, {ds.count} band(s) {ds.dtypes[0]}, {ds.crs}"
    n = len(wins)
    print(f"windows  {n} in {seconds:.1f} s ({n / max(seconds, 1e-9):.1f} windows/s)")
    print(f"wrote    {out} ({size})")
    return 0


__all__ = ["predict_arguments", "run_predict"]
