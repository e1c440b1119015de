"""The ``lazytiles`` command: a thin layer that parses arguments and calls ``lt.*``.

Each subcommand is two functions, ``_<name>_arguments(parser)`` and ``_run_<name>(args) -> int``, and
one row of :data:`COMMANDS`; ``lazytiles detect --runner`` picks a row of :data:`RUNNERS`. Adding a
subcommand or a runner touches only those places.

Exit codes: 0 done; 1 failed (a file missing, a tile server down, the demo finding the wrong
objects); 2 the command line is wrong (an unknown option, or a value lazytiles rejects). Errors print
one line, ``lazytiles: error: ...``, without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from .errors import InvalidArgumentError, LazyTilesError, SourceNotFoundError
from .streams.command import run_worker, worker_arguments  # confluent_kafka is imported lazily inside

PROG = "lazytiles"


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line (and exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


# -- shared options -------------------------------------------------------------------------------------


def _common() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    common.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return common


def _size(text: str) -> int | tuple[int, int]:
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


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a fraction such as 0.25") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"overlap must be in [0, 1), got {text}; for a step in pixels use --stride")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _window_arguments(p: argparse.ArgumentParser, *, size_required: bool = False) -> None:
    g = p.add_argument_group("windows (as in lt.windows)")
    g.add_argument("--zoom", type=int, help="zoom level of a tile-URL template {z}/{x}/{y}")
    g.add_argument("--size", type=_size, default=512, help="window size in pixels: 512 or rows,cols (default 512)")
    step = g.add_mutually_exclusive_group()
    step.add_argument(
        "--overlap", type=_fraction, default=None, help="fraction of --size shared by neighbours (default 0.25)"
    )
    step.add_argument("--stride", type=_size, help="step between windows in pixels, instead of --overlap")
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


def _windows_from_args(args: argparse.Namespace) -> Any:
    from .sources import open as open_source
    from .windowing.sequence import windows

    src = open_source(args.src, zoom=args.zoom)
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
    )


# -- info ----------------------------------------------------------------------------------------------------

#: Keys of a source's ``info()`` that ``lazytiles info`` shows in rows of its own, or leaves out (kind, path).
_INFO_SHOWN = frozenset(
    {"source", "crs", "width", "height", "count", "dtype", "nodata", "resolution", "bounds", "lonlat_bounds"}
    | {"tile_shape", "tiles", "overviews", "kind", "path"}
)


def _info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a raster (GeoTIFF, COG, VRT, /vsicurl/ URL) or a tile-URL template")
    p.add_argument("--zoom", type=int, help="zoom level of a tile-URL template")
    p.add_argument("--json", action="store_true", help="print the description as JSON")


def _run_info(args: argparse.Namespace) -> int:
    from .display.jupyter import lonlat_bounds
    from .sources import open as open_source

    src = open_source(args.src, zoom=args.zoom)
    info = src.describe()
    info["kind"] = type(src).__name__
    if src.needs_area:
        info.pop("bounds", None)
    else:
        info["lonlat_bounds"] = lonlat_bounds(info["bounds"], src.crs)
    if args.json:
        print(json.dumps(info, default=list))
        return 0
    th, tw = info["tile_shape"]
    rows = [
        ("source", repr(src)),
        ("crs", info["crs"]),
        (
            "size",
            f"{info['width']} x {info['height']} px, {info['count']} band(s) {info['dtype']}, nodata {info['nodata']}",
        ),
        ("resolution", "{:.6g} x {:.6g} (CRS units per pixel)".format(*info["resolution"])),
    ]
    if "bounds" in info:
        rows.append(("bounds", "(" + ", ".join(f"{v:.2f}" for v in info["bounds"]) + f")  {info['crs']}"))
        if info["lonlat_bounds"] is not None:
            rows.append(("lon/lat", "(" + ", ".join(f"{v:.6f}" for v in info["lonlat_bounds"]) + ")"))
    else:
        rows.append(("bounds", f"the whole world at zoom {args.zoom}; give windows/detect --bounds"))
    rows.append(("tiles", f"{src.grid.rows} x {src.grid.cols} of {th} x {tw} px ({info['tiles']} tiles)"))
    if "overviews" in info:
        rows.append(("overviews", ", ".join(map(str, info["overviews"])) or "none"))
    for key in sorted(set(info) - _INFO_SHOWN):
        rows.append((key, info[key]))  # what a source kind adds (zoom, url, ...)
    _print_rows(rows)
    return 0


def _print_rows(rows: Sequence[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


# -- windows -------------------------------------------------------------------------------------------------


def _windows_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a raster or a tile-URL template (with --zoom)")
    _window_arguments(p)
    p.add_argument("--preview", metavar="PNG", help="write an overview of the region with the windows drawn")
    p.add_argument(
        "--max-size", type=_positive_int, default=1024, help="longest side of --preview in pixels (default 1024)"
    )


def _run_windows(args: argparse.Namespace) -> int:
    wins = _windows_from_args(args)
    h, w = wins.size
    sh, sw = wins.stride
    n_rows, n_cols = wins.plan.shape
    area = wins.area
    src = wins.source
    crs = None if src.crs is None else src.crs.to_string()
    kept = "" if len(wins) == n_rows * n_cols else f" (of a {n_rows} x {n_cols} grid, kept by --region)"
    rows = [
        ("windows", f"{len(wins)}{kept}"),
        ("grid", f"{n_rows} rows x {n_cols} cols"),
        ("size", f"{h} x {w} px"),
        ("stride", f"{sh} x {sw} px (overlap {1 - sh / h:.0%} x {1 - sw / w:.0%})"),
        (
            "area",
            f"col_off={int(area.col_off)}, row_off={int(area.row_off)}, "
            f"width={int(area.width)}, height={int(area.height)} px",
        ),
        ("bounds", "(" + ", ".join(f"{v:.2f}" for v in wins.bounds) + f")  {crs}"),
        ("tiles", f"{_tiles_in(wins)} of {src.tile_shape[0]} x {src.tile_shape[1]} px"),
    ]
    if args.preview:
        image = wins.preview(max_size=args.max_size)
        image.save(args.preview)
        rows.append(("preview", f"{args.preview} ({image.width} x {image.height} px)"))
    _print_rows(rows)
    return 0


def _tiles_in(wins: Any) -> int:
    """Tiles under the windows' area (no I/O)."""
    from rasterio.windows import Window

    area = wins.area
    rows, cols = wins.source.grid.tiles_under(Window(area.col_off, area.row_off, area.width, area.height))
    return len(rows) * len(cols)


# -- detect --------------------------------------------------------------------------------------------------


def _detect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a raster or a tile-URL template (with --zoom)")
    p.add_argument("--model", required=True, help="'pkg.module:factory' or a TorchScript file (model.pt)")
    p.add_argument(
        "--out", required=True, metavar="FILE", help="run store (GeoPackage) for per-window and merged results"
    )
    _window_arguments(p)
    g = p.add_argument_group("running")
    g.add_argument("--batch-size", type=_positive_int, default=8, help="windows per model call (default 8)")
    g.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps (default cpu)")
    g.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="reader threads (default 1: one reader in window order while the source decodes tiles ahead)",
    )
    g.add_argument("--resume", action="store_true", help="continue the run stored in --out (only missing windows run)")
    g.add_argument("--force-new", action="store_true", help="start over: replace the run stored in --out")
    g.add_argument("--runner", choices=sorted(RUNNERS), default="local", help="where the run happens (default local)")
    g.add_argument("--geojson", metavar="FILE", help="also write the merged detections as GeoJSON (lon/lat)")


def _run_detect(args: argparse.Namespace) -> int:
    if args.resume and args.force_new:
        raise InvalidArgumentError("--resume and --force-new contradict each other; pass one of them")
    wins = _windows_from_args(args)
    start = time.perf_counter()
    found = RUNNERS[args.runner](args, wins)
    seconds = time.perf_counter() - start
    _print_found(found, len(wins), seconds, [args.out] + ([args.geojson] if args.geojson else []))
    return 0


def _detect_local(args: argparse.Namespace, wins: Any) -> Any:
    """Run in this process with ``lt.detect_region``: results are stored as windows finish."""
    from .detection.models import load_model
    from .runs.run import detect_region

    model = load_model(args.model)
    options = dict(
        resume=args.resume,
        force_new=args.force_new,
        geojson=args.geojson,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
        progress=args.progress,
    )
    return detect_region(model, wins, args.out, **{k: v for k, v in options.items() if v is not None})


#: ``--runner`` choices: a function (args, windows) that runs the model over the windows, writes
#: ``--out`` (and ``--geojson`` if given) and returns the merged lt.Detections.
RUNNERS: dict[str, Callable[[argparse.Namespace, Any], Any]] = {"local": _detect_local}


def _detect_beam(args: argparse.Namespace, wins: Any) -> Any:
    """Run as an Apache Beam job (``pip install lazytiles[beam]``); Beam's options follow ``--``."""
    from .beam import run_cli

    return run_cli(args, wins)


RUNNERS["beam"] = _detect_beam


def _print_found(found: Any, n_windows: int, seconds: float, outputs: Sequence[str]) -> None:
    import numpy as np

    labels, counts = np.unique(found.labels, return_counts=True)
    by_label = ", ".join(f"label {int(a)}: {int(b)}" for a, b in zip(labels, counts)) or "none"
    _print_rows(
        [
            ("windows", f"{n_windows} in {seconds:.1f} s ({n_windows / max(seconds, 1e-9):.1f} windows/s)"),
            ("objects", f"{len(found)} ({by_label})"),
            ("wrote", ", ".join(outputs)),
        ]
    )


# -- demo ----------------------------------------------------------------------------------------------------


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="lazytiles-demo", metavar="DIR", help="where to write (default ./lazytiles-demo)")


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    report = run_demo(args.out, progress=args.progress, echo=print)
    return 0 if report.ok else 1


# -- the command ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, its arguments and what it runs (returning the exit code)."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {
    "demo": Command(
        "make the built-in sample, detect its objects, write GeoJSON, GeoPackage and a preview",
        _demo_arguments,
        _run_demo,
    ),
    "info": Command(
        "describe a raster or tile service: CRS, size, bounds, tiles, overviews", _info_arguments, _run_info
    ),
    "windows": Command(
        "count the windows a configuration gives; optionally draw them (--preview)", _windows_arguments, _run_windows
    ),
    "detect": Command(
        "run a detector over a region, durably (--resume continues a run)", _detect_arguments, _run_detect
    ),
    "worker": Command(
        "take region jobs from a Kafka topic, publish each window's detections to another "
        "(pip install lazytiles[kafka])",
        worker_arguments,
        run_worker,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lazytiles`` command."""
    from . import __version__

    parser = _Parser(prog=PROG, description="Huge tiled geospatial images as lazy sequences of windows.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    common = _common()
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help, parents=[common])
        command.arguments(p)
        p.set_defaults(run=command.run)
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, LazyTilesError | OSError) else f"{type(err).__name__}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lazytiles`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)  # `detect ... --runner beam -- BEAM_OPTIONS`
    args = parser.parse_args(argv[:cut])
    args.runner_options = argv[cut + 1 :]
    if args.runner_options and getattr(args, "runner", None) != "beam":
        parser.error(
            f"options after '--' ({' '.join(args.runner_options)}) are Beam's; they need 'detect --runner beam'"
        )
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # the command line's last resort: one line, or the traceback with --debug
        if args.debug:
            raise
        code = 2 if isinstance(err, InvalidArgumentError) else 1
        hint = "" if isinstance(err, LazyTilesError | OSError) else " (a bug? run with --debug for the traceback)"
        print(f"{PROG}: error: {_one_line(err)}{hint}", file=sys.stderr)
        return code


__all__ = ["COMMANDS", "RUNNERS", "Command", "build_parser", "main", "read_region"]
