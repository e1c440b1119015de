"""The ``lazytiles`` command: a thin layer that parses arguments and calls ``lt.*``.

Each subcommand is two functions, ``<name>_arguments(parser)`` and ``run_<name>(args) -> int``, in a
module of this package (commands.py: info, windows, detect, demo; vector.py: polygons, evaluate;
options several share are in arguments.py), and one row of :data:`COMMANDS`; ``lazytiles detect
--runner`` picks a row of :data:`RUNNERS`. Adding a
subcommand or a runner touches only those places.

Exit codes: 0 done; 1 failed (a file missing, a tile server down, the demo finding the wrong
objects); 2 the command line is wrong (an unknown option, or a value lazytiles rejects). Errors print
one line, ``lazytiles: error: ...``, without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import InvalidArgumentError, LazyTilesError
from ..streams.command import run_worker, worker_arguments  # confluent_kafka is imported lazily inside
from .arguments import PROG, Parser, common, read_region
from .commands import (
    RUNNERS,
    demo_arguments,
    detect_arguments,
    info_arguments,
    run_demo,
    run_detect,
    run_info,
    run_windows,
    windows_arguments,
)
from .predict import predict_arguments, run_predict
from .vector import evaluate_arguments, polygons_arguments, run_evaluate, run_polygons


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, its arguments and what it runs (returning the exit code)."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {
    "demo": Command(
        "make the built-in sample, detect its objects, write GeoJSON, GeoPackage and a preview",
        demo_arguments,
        run_demo,
    ),
    "info": Command("describe a raster or tile service: CRS, size, bounds, tiles, overviews", info_arguments, run_info),
    "windows": Command(
        "count the windows a configuration gives; optionally draw them (--preview)", windows_arguments, run_windows
    ),
    "detect": Command("run a detector over a region, durably (--resume continues a run)", detect_arguments, run_detect),
    "predict": Command(
        "run a segmentation model over a region into one GeoTIFF, durably", predict_arguments, run_predict
    ),
    "polygons": Command(
        "vectorise a label raster into polygons joined across block seams (GeoPackage or GeoJSON)",
        polygons_arguments,
        run_polygons,
    ),
    "evaluate": Command(
        "score a run's or a file's objects against true polygons: precision, recall, F1, AP per class",
        evaluate_arguments,
        run_evaluate,
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
    from .. import __version__

    parser = Parser(prog=PROG, description="Huge tiled geospatial images as lazy sequences of windows.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    common_options = common()
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help, parents=[common_options])
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
