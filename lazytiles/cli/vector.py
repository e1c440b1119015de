"""The subcommands polygons and evaluate: each is ``<name>_arguments(parser)`` and ``run_<name>(args)``."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from ..errors import LazyTilesError
from .arguments import positive_int

# -- polygons ------------------------------------------------------------------------------------------------


def polygons_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("raster", help="a label raster (e.g. what `lazytiles predict` wrote)")
    p.add_argument("--out", required=True, help="the file to write: .gpkg (GeoPackage) or .geojson (lon/lat)")
    p.add_argument("--classes", type=int, nargs="+", help="the label values to vectorise (default: all but nodata)")
    p.add_argument("--min-area", type=float, default=0.0, help="drop objects smaller than this many pixels")
    p.add_argument("--band", type=positive_int, default=1, help="the band holding the labels (default 1)")


def run_polygons(args: argparse.Namespace) -> int:
    from ..outputs.vectorize import polygons

    found = polygons(args.raster, classes=args.classes, min_area=args.min_area, band=args.band)
    if str(args.out).lower().endswith((".geojson", ".json")):
        found.to_geojson(args.out)
    else:
        found.to_gpkg(args.out, layer="polygons")
    counts = ", ".join(f"{int(k)}: {int((found.labels == k).sum())}" for k in sorted(set(found.labels.tolist())))
    print(f"{len(found)} polygons (by class {{{counts}}}) -> {args.out}")
    return 0


# -- evaluate ------------------------------------------------------------------------------------------------


def evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("found", metavar="RUN_OR_FILE", help="a run store (lazytiles detect --out) or a vector file")
    p.add_argument("truth", metavar="TRUTH", help="a vector file of true polygons (class in a label/class column)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU at which a found object matches a true one")
    p.add_argument("--match", choices=("box", "polygon"), default="box", help="compare boxes or outlines")
    p.add_argument("--label-column", help="the truth file's class column (default: label, else class)")
    p.add_argument("--json", action="store_true", help="print the table(s) as JSON")


def _found(path: str) -> tuple[Any, Any]:
    """(found objects, windows or None) of a run store, else of a vector file."""
    from ..runs.run import open_run

    try:
        run = open_run(path)
    except LazyTilesError:
        from ..outputs.truth import read_truth

        return read_truth(path, None, None), None
    with run:
        result = run.result()
        return (run.merge() if result is None else result), run.window_table


def run_evaluate(args: argparse.Namespace) -> int:
    from ..outputs.evaluation import evaluate

    found, windows = _found(args.found)
    result = evaluate(found, args.truth, args.iou, args.match, windows=windows, label_column=args.label_column)
    if args.json:

        def clean(rows: Any) -> Any:
            return None if rows is None else [{k: _json(v) for k, v in r.items()} for r in rows]

        print(json.dumps({"classes": clean(result.table), "seams": clean(result.seams)}))
    else:
        print(repr(result))
    return 0


def _json(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


__all__ = ["evaluate_arguments", "polygons_arguments", "run_evaluate", "run_polygons"]
