"""``lazytiles worker``: its options and the process around :func:`lazytiles.streams.worker.worker`."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any

from .policy import Limits
from .worker import worker

log = logging.getLogger(__name__)

__all__ = ["run_worker", "worker_arguments"]


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not KEY=VALUE (a librdkafka setting, e.g. session.timeout.ms=10000)"
        )
    return key.strip(), value.strip()


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def worker_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of ``lazytiles worker`` to an argparse parser."""
    add = p.add_argument
    add("--bootstrap", required=True, metavar="HOST:PORT", help="Kafka brokers, host:port[,host:port]")
    add("--jobs", required=True, metavar="TOPIC", help="topic to take job messages (JSON) from")
    add("--results", required=True, metavar="TOPIC", help="topic for per-window results (GeoJSON)")
    add("--dead-letter", required=True, metavar="TOPIC", help="topic for jobs that cannot run, with the reason")
    add("--group", default="lazytiles-worker", help="consumer group; workers of a group share the jobs")
    add(
        "--workdir",
        default="lazytiles-jobs",
        metavar="DIR",
        help="directory for the jobs' run stores; share it between restarts to resume (default ./lazytiles-jobs)",
    )
    add(
        "--allow-model",
        action="append",
        default=[],
        metavar="SPEC",
        help="a model jobs may name: pkg.module:factory, a model file, or NAME=SPEC (jobs then say NAME); "
        "repeatable; without it only lazytiles' built-in models",
    )
    add(
        "--allow-source",
        action="append",
        default=[],
        metavar="PREFIX",
        help="a URL prefix (https://tiles.example.com/) or local directory jobs may read; repeatable; at least one",
    )
    limits = Limits()
    for name, what in (
        ("max_windows", "windows per job"),
        ("max_batch_size", "a job's batch_size"),
        ("max_job_bytes", "bytes of a job message (larger ones are refused unread)"),
        ("max_window_size", "window size in pixels"),
        ("max_zoom", "XYZ zoom level"),
    ):
        add(
            Limits.flag(name),
            type=_positive,
            default=getattr(limits, name),
            metavar="N",
            help=f"most {what} (default {getattr(limits, name)})",
        )
    add(
        "--max-attempts",
        type=_positive,
        default=3,
        metavar="N",
        help="dead-letter a job that killed its worker this many times (default 3)",
    )
    add("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 (default cpu)")
    add(
        "--workers",
        type=int,
        default=1,
        help="reader threads (default 1: one reader in window order, tiles decoded ahead by the source)",
    )
    add("--merged", action="store_true", help="also publish each job's merged objects")
    add("--timeout", type=float, default=60.0, help="seconds for the broker to confirm a message (default 60)")
    add(
        "--config",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka setting for consumer and producer (repeatable)",
    )
    add(
        "--consumer-config",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka setting for the consumer only, e.g. session.timeout.ms=10000 (repeatable)",
    )


def run_worker(args: Any) -> int:
    """Run ``lazytiles worker`` from parsed arguments until SIGTERM or SIGINT; returns the exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s lazytiles worker %(process)d: %(message)s")
        logging.getLogger("pyogrio").setLevel(logging.WARNING)  # one line per empty layer the stores create
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("worker: %s received; stopping after the batch in flight", signal.Signals(signum).name)
        stop.set()

    limits = Limits(**{name: getattr(args, name) for name in vars(Limits())})
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        report = worker(
            bootstrap=args.bootstrap,
            jobs=args.jobs,
            results=args.results,
            dead_letter=args.dead_letter,
            group=args.group,
            workdir=args.workdir,
            allow_models=args.allow_model,
            allow_sources=args.allow_source,
            limits=limits,
            max_attempts=args.max_attempts,
            device=args.device,
            workers=args.workers,
            merged=args.merged,
            config=dict(args.config),
            consumer_config=dict(args.consumer_config),
            timeout=args.timeout,
            stop=stop,
        )
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    log.info(
        "worker: %d jobs done, %d dead-lettered, %d left for later", report.done, report.dead_lettered, report.abandoned
    )
    return 0
