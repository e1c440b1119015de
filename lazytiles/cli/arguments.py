"""Options shared by several subcommands: the window options, sizes, fractions and the region file."""

from __future__ import annotations

import argparse
import os
from typing import Any, NoReturn

from ..errors import InvalidArgumentError, SourceNotFoundError

PROG = "lazytiles"


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line (and exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


# -- shared options -------------------------------------------------------------------------------------


def common() -> Parser:
    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    common.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return common


def size(text: str) -> int | tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size in pixels: give 512, or rows,cols as 512,256"
        ) from None
    if len(values) not in (1, 2) or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in pixels: give 512, or rows,cols as 512,256")
    return values[0] if len(values) == 1 else (values[0], values[1])


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a fraction such as 0.25") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"overlap must be in [0, 1), got {text}; for a step in pixels use --stride")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def resolution(text: str) -> float | tuple[float, float]:
    try:
        values = [float(p) for p in text.lower().replace("x", ",").split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(0 < v < float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a pixel size: give 0.5, or x,y as 0.5,0.6 (CRS units)")
    return values[0] if len(values) == 1 else (values[0], values[1])


def grid_arguments(g: argparse._ActionsContainer) -> None:
    """``--res``, ``--crs`` and ``--resampling``: read the source on another grid (``src.at``)."""
    g.add_argument("--res", type=resolution, help="read at this pixel size (units of --crs): 0.5 or x,y")
    g.add_argument("--crs", help="with --res: the grid's CRS, e.g. EPSG:32631 (default: the source's)")
    g.add_argument("--resampling", default="bilinear", help="with --res: GDAL resampling (default bilinear)")


def at_grid(src: Any, args: argparse.Namespace) -> Any:
    """``src`` on the grid of ``--res``/``--crs`` (``src.at``), or as it is without ``--res``."""
    if args.res is None:
        if args.crs is not None:
            raise InvalidArgumentError(f"--crs {args.crs} needs --res too: the pixel size in that CRS's units")
        return src
    return src.at(res=args.res, crs=args.crs, resampling=args.resampling)


def window_arguments(p: argparse.ArgumentParser, *, size_required: bool = False) -> None:
    g = p.add_argument_group("windows (as in lt.windows)")
    g.add_argument("--zoom", type=int, help="zoom level of a tile-URL template {z}/{x}/{y}")
    grid_arguments(g)
    g.add_argument("--size", type=size, default=512, help="window size in pixels: 512 or rows,cols (default 512)")
    step = g.add_mutually_exclusive_group()
    step.add_argument(
        "--overlap", type=fraction, default=None, help="fraction of --size shared by neighbours (default 0.25)"
    )
    step.add_argument("--stride", type=size, help="step between windows in pixels, instead of --overlap")
    g.add_argument(
        "--bounds",
        nargs=4,
        type=float,
        metavar=("LEFT", "BOTTOM", "RIGHT", "TOP"),
        help="area of interest, in --bounds-crs",
    )
    g.add_argument(
        "--bounds-crs", help="CRS of --bounds, e.g. EPSG:4326 (default: the source's); a --region file has its own"
    )
    g.add_argument(
        "--region", metavar="FILE", help="keep windows overlapping the shapes in this GeoJSON/GeoPackage/... file"
    )
    g.add_argument(
        "--edge", choices=("shift", "pad", "drop"), default="shift", help="partial windows at the edge (default shift)"
    )
    g.add_argument("--skip-empty", action="store_true", help="leave out windows the source's metadata says are empty")
    g.add_argument("--asset", default="visual", help="asset of each item of a STAC file SRC (default visual)")


#: Help of the SRC arguments of info, windows and detect.
SRC_HELP = (
    "a raster (GeoTIFF, COG, VRT, /vsicurl/ URL), a tile-URL template (with --zoom), several rasters "
    "(one mosaic, the first on top) or a STAC item / collection / catalog file (.json)"
)


def open_sources(args: argparse.Namespace) -> Any:
    """The source the SRC arguments name: one raster or tile service, a mosaic of several, or a STAC file."""
    from ..sources import open as open_source
    from ..sources.scenes import mosaic
    from ..sources.stac import open_stac

    paths = args.src
    if len(paths) == 1 and paths[0].lower().endswith(".json"):
        return open_stac(paths[0], asset=args.asset)
    if len(paths) == 1:
        return open_source(paths[0], zoom=args.zoom)
    return mosaic([open_source(p, zoom=args.zoom) for p in paths])


def read_region(path: str) -> tuple[Any, str | None]:
    """The union of the geometries in a vector file (GeoJSON, GeoPackage, Shapefile...), and its CRS."""
    import pyogrio.errors
    import pyogrio.raw
    import shapely

    if not os.path.exists(path):
        raise SourceNotFoundError(
            f"no such region file: {path!r}; check the path (relative paths are from {os.getcwd()!r})"
        )
    try:
        meta, _, wkb, _ = pyogrio.raw.read(path)
    except pyogrio.errors.DataSourceError as err:
        raise InvalidArgumentError(
            f"--region {path!r} is not a vector file GDAL reads (GeoJSON, GeoPackage, ...): {err}"
        ) from err
    geometries = [g for g in shapely.from_wkb(wkb) if g is not None and not g.is_empty]
    if not geometries:
        raise InvalidArgumentError(f"--region {path!r} holds no geometry; put the area's polygon in it")
    return shapely.union_all(geometries), meta.get("crs")


def windows_from_args(args: argparse.Namespace) -> Any:
    from ..windowing.sequence import windows

    src = at_grid(open_sources(args), args)
    bounds = None if args.bounds is None else tuple(args.bounds)
    region = region_crs = None
    if args.region is not None:
        region, file_crs = read_region(args.region)
        region_crs = file_crs or args.bounds_crs  # the file's own CRS (GeoJSON: lon/lat) comes first
    overlap = 0.0 if args.stride is not None else (0.25 if args.overlap is None else args.overlap)
    return windows(
        src,
        args.size,
        overlap=overlap,
        stride=args.stride,
        bounds=bounds,
        bounds_crs=args.bounds_crs,
        region=region,
        region_crs=region_crs,
        edge=args.edge,
        skip_empty=args.skip_empty,
    )


__all__ = [
    "PROG",
    "SRC_HELP",
    "Parser",
    "at_grid",
    "common",
    "fraction",
    "grid_arguments",
    "open_sources",
    "positive_int",
    "read_region",
    "resolution",
    "size",
    "window_arguments",
    "windows_from_args",
]
