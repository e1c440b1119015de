"""The subcommands info, windows, detect and demo: each is ``<name>_arguments(parser)`` and ``run_<name>(args)``."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InvalidArgumentError
from .arguments import (
    SRC_HELP,
    at_grid,
    grid_arguments,
    open_sources,
    positive_int,
    window_arguments,
    windows_from_args,
)

# -- info ----------------------------------------------------------------------------------------------------

#: Keys of a source's ``info()`` that ``lazytiles info`` shows in rows of its own, or leaves out (kind, path).
_INFO_SHOWN = frozenset(
    {"source", "crs", "width", "height", "count", "dtype", "nodata", "resolution", "bounds", "lonlat_bounds"}
    | {"tile_shape", "tiles", "overviews", "kind", "path"}
)


def info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", nargs="+", help=SRC_HELP)
    p.add_argument("--zoom", type=int, help="zoom level of a tile-URL template")
    p.add_argument("--asset", default="visual", help="asset of each item of a STAC file SRC (default visual)")
    grid_arguments(p)
    p.add_argument("--json", action="store_true", help="print the description as JSON")


def run_info(args: argparse.Namespace) -> int:
    from ..display.jupyter import lonlat_bounds

    src = at_grid(open_sources(args), args)
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


def windows_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", nargs="+", help=SRC_HELP)
    window_arguments(p)
    p.add_argument("--preview", metavar="PNG", help="write an overview of the region with the windows drawn")
    p.add_argument(
        "--max-size", type=positive_int, default=1024, help="longest side of --preview in pixels (default 1024)"
    )


def run_windows(args: argparse.Namespace) -> int:
    wins = windows_from_args(args)
    h, w = wins.size
    sh, sw = wins.stride
    n_rows, n_cols = wins.plan.shape
    area = wins.area
    src = wins.source
    crs = None if src.crs is None else src.crs.to_string()
    kept = "" if len(wins) == n_rows * n_cols else f" (of a {n_rows} x {n_cols} grid, kept by --region or --skip-empty)"
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


def detect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", nargs="+", help=SRC_HELP)
    p.add_argument("--model", required=True, help="'pkg.module:factory' or a TorchScript file (model.pt)")
    p.add_argument(
        "--out", required=True, metavar="FILE", help="run store (GeoPackage) for per-window and merged results"
    )
    window_arguments(p)
    g = p.add_argument_group("running")
    g.add_argument("--batch-size", type=positive_int, default=8, help="windows per model call (default 8)")
    g.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps (default cpu)")
    g.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="reader threads (default 1: one reader in window order while the source decodes tiles ahead)",
    )
    g.add_argument("--resume", action="store_true", help="continue the run stored in --out (only missing windows run)")
    g.add_argument("--force-new", action="store_true", help="start over: replace the run stored in --out")
    g.add_argument("--runner", choices=sorted(RUNNERS), default="local", help="where the run happens (default local)")
    g.add_argument("--geojson", metavar="FILE", help="also write the merged detections as GeoJSON (lon/lat)")


def run_detect(args: argparse.Namespace) -> int:
    if args.resume and args.force_new:
        raise InvalidArgumentError("--resume and --force-new contradict each other; pass one of them")
    wins = windows_from_args(args)
    start = time.perf_counter()
    found = RUNNERS[args.runner](args, wins)
    seconds = time.perf_counter() - start
    _print_found(found, len(wins), seconds, [args.out] + ([args.geojson] if args.geojson else []))
    return 0


def _detect_local(args: argparse.Namespace, wins: Any) -> Any:
    """Run in this process with ``lt.detect_region``: results are stored as windows finish."""
    from ..detection.models import load_model
    from ..runs.run import detect_region

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
    from ..beam import run_cli

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


def demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="lazytiles-demo", metavar="DIR", help="where to write (default ./lazytiles-demo)")


def run_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    report = run_demo(args.out, progress=args.progress, echo=print)
    return 0 if report.ok else 1


# -- the command ---------------------------------------------------------------------------------------------
