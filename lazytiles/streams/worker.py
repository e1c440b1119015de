"""The Kafka worker: region jobs from a topic, results to another (``lazytiles worker``).

Each job runs with its own durable run store; a window counts as done only after the broker has
confirmed its message, and the job's offset is committed only after all its messages were, so a
worker killed mid-job leaves the job to another worker of its group. See :mod:`lazytiles.streams.kafka`
for the delivery guarantees and :mod:`lazytiles.streams.messages` for the message formats.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgumentError, RunLockedError, SourceOpenError, StreamError
from ..merging.rule import MergeRule
from ..runs.lifecycle import RunLifecycle
from ..runs.recipe import DetectOptions
from ..runs.store import WindowResult
from ..sources import open as open_source
from ..windowing.sequence import windows
from .kafka import _confluent, _Sender, _settings, message_recipe
from .messages import JobError, dead_letter_message, done_message, object_messages, parse_job, window_message

log = logging.getLogger(__name__)

__all__ = ["WorkerReport", "run_worker", "worker", "worker_arguments"]


# -- the worker -------------------------------------------------------------------------------------


@dataclass
class WorkerReport:
    """What a :func:`worker` did before it stopped."""

    done: int = 0
    dead_lettered: int = 0
    abandoned: int = 0


class _Abandon(Exception):
    """The current job stops between batches (shutdown, or its partition moved to another worker)."""


class _Group:
    """Rebalance callbacks: while a job runs, new partitions are paused, and losing the job's
    partition marks the job as no longer ours."""

    def __init__(self) -> None:
        self.busy: tuple[str, int] | None = None
        self.lost = False

    def on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        if self.busy is not None and partitions:
            consumer.incremental_assign(partitions)
            consumer.pause(partitions)

    def on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        if self.busy is not None and any((p.topic, p.partition) == self.busy for p in partitions):
            self.lost = True

    on_lost = on_revoke


class _Worker:
    def __init__(self, consumer: Any, sender: _Sender, *, results: str, dead_letter: str, workdir: str,
                 device: Any, workers: int, merged: bool, stop: threading.Event) -> None:  # fmt: skip
        self.consumer, self.sender = consumer, sender
        self.results, self.dead_letter = results, dead_letter
        self.workdir, self.device, self.workers, self.merged = workdir, device, workers, merged
        self.stop = stop
        self.group = _Group()
        self.models: dict[str, Any] = {}

    # -- the loop ------------------------------------------------------------------------------------

    def run(self, poll_interval: float) -> WorkerReport:
        ck = _confluent()
        report = WorkerReport()
        while not self.stop.is_set():
            msg = self.consumer.poll(poll_interval)
            if msg is None:
                continue
            if msg.error():
                if msg.error().fatal():
                    raise StreamError(f"the job consumer failed: {msg.error()}")
                log.warning("job consumer: %s", msg.error())
                continue
            here = ck.TopicPartition(msg.topic(), msg.partition())
            self.group.busy, self.group.lost = (msg.topic(), msg.partition()), False
            self.consumer.pause(self.consumer.assignment())
            try:
                status = self.handle(msg)
            finally:
                self.group.busy = None
            if status in ("done", "dead") and not self.group.lost:
                report.done += status == "done"
                report.dead_lettered += status == "dead"
                try:  # the job's offset: only now is it finished
                    self.consumer.commit(offsets=[ck.TopicPartition(msg.topic(), msg.partition(), msg.offset() + 1)],
                                         asynchronous=False)  # fmt: skip
                except ck.KafkaException as err:
                    log.warning("job at %s[%d]@%d finished but its offset was not committed (%s); it may run "
                                "again, sending the same results", msg.topic(), msg.partition(), msg.offset(), err)  # fmt: skip
            else:
                report.abandoned += status == "abandoned"
                if not self.group.lost:  # ours still: read it again (now, or after a restart)
                    here.offset = msg.offset()
                    self.consumer.seek(here)
                if status == "retry":
                    self.stop.wait(2.0)  # the job's store is busy; let its other writer finish
            self.consumer.resume(self.consumer.assignment())
        return report

    def keep_alive(self) -> None:
        """Between batches: serve rebalances and the poll interval; never start another job."""
        msg = self.consumer.poll(0)
        if msg is not None and not msg.error():  # a partition assigned mid-job slipped through: put it back
            ck = _confluent()
            tp = ck.TopicPartition(msg.topic(), msg.partition(), msg.offset())
            self.consumer.seek(tp)
            self.consumer.pause([tp])
        if self.stop.is_set() or self.group.lost:
            raise _Abandon()

    # -- one job ---------------------------------------------------------------------------------------

    def handle(self, msg: Any) -> str:
        """Run one job message: ``"done"``, ``"dead"`` (sent to the dead-letter topic), ``"abandoned"``
        or ``"retry"``."""
        where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
        try:
            job = parse_job(msg.value() or b"")
        except JobError as err:
            return self.reject(msg, err)
        log.info("job %r (%s): starting", job.id, where)
        try:
            self.run_job(job)
        except _Abandon:
            log.info("job %r: stopped between batches (%s); it stays on the topic", job.id,
                     "shutting down" if self.stop.is_set() else "its partition moved to another worker")  # fmt: skip
            return "abandoned"
        except StreamError:
            raise
        except RunLockedError as err:
            log.warning("job %r: %s; trying again shortly", job.id, err)
            return "retry"
        except Exception as err:  # a job that cannot run (bad model, source, recipe...): dead-letter it, go on
            return self.reject(msg, err, job.id)
        log.info("job %r: done", job.id)
        return "done"

    def reject(self, msg: Any, err: BaseException, job_id: str | None = None) -> str:
        reason = " ".join(str(err).split()) or type(err).__name__
        log.warning("job %s at %s[%d]@%d goes to %s: %s", repr(job_id) if job_id else "(unreadable)", msg.topic(),
                    msg.partition(), msg.offset(), self.dead_letter, reason)  # fmt: skip
        key, value = dead_letter_message(reason, type(err).__name__, topic=msg.topic(), partition=msg.partition(),
                                         offset=msg.offset(), key=msg.key(), value=msg.value())  # fmt: skip
        self.sender.send(self.dead_letter, key, value)
        self.sender.confirm(f"sending a bad job to dead-letter topic {self.dead_letter!r}")
        return "dead"

    def model(self, spec: str) -> Any:
        """The job's model, loaded once while consecutive jobs name the same one (only one is kept)."""
        if spec not in self.models:
            from ..detection.models import load_model

            self.models = {spec: load_model(spec)}
        return self.models[spec]

    def run_job(self, job: Any) -> None:
        model = self.model(job.model)
        src = open_source(job.source, zoom=job.zoom)
        wins = windows(src, job.size, overlap=job.overlap, bounds=job.bounds, bounds_crs=job.bounds_crs,
                       region=job.region, region_crs="EPSG:4326" if job.region else None)  # fmt: skip
        options = DetectOptions(batch_size=job.batch_size, device=self.device, workers=self.workers)
        dets = options.detect(model, wins)
        run = RunLifecycle(wins, os.path.join(self.workdir, f"{job.slug}.gpkg"), options)
        with run.open(model, {"worker": True, "job": job.id, "device": str(self.device)}):
            shared = message_recipe(run.recipe, job=job.to_dict())
            self.record(job, shared, run, dets)
            self.finish(job, shared, run, MergeRule())

    def record(self, job: Any, shared: dict[str, Any], run: RunLifecycle, dets: Any) -> None:
        """Stream the windows still to do; each batch is delivered, then committed, then the group served."""
        with run.recorder(batch_size=job.batch_size, deliver=functools.partial(self.deliver, job, shared)) as record:
            with contextlib.closing(run.outcomes(dets)) as outcomes:
                for position, outcome in outcomes:
                    if record.add(position, outcome):
                        self.keep_alive()
            if record.flush():
                self.keep_alive()

    def deliver(self, job: Any, shared: dict[str, Any], batch: list[WindowResult]) -> None:
        """Publish a batch of windows and wait for the broker's confirmation (then they are committed)."""
        for r in batch:
            if r.detections is not None:
                key, value = window_message(r.detections, run_id=job.id, window_index=r.index, source=job.source,
                                            recipe=shared, window=r.window)  # fmt: skip
                self.sender.send(self.results, key, value)
        self.sender.confirm(f"job {job.id!r}: sending windows {batch[0].index}..{batch[-1].index} to {self.results!r}")

    def finish(self, job: Any, shared: dict[str, Any], run: RunLifecycle, rule: MergeRule) -> None:
        """Every window is recorded: merge into the store, publish the objects (``merged``) and the
        ``done`` message. A job none of whose windows could be read fails."""
        failed = {i: reason for i, (reason, _) in run.failed().items()}
        total = len(run.table)
        if failed and len(failed) == total:
            first, reason = next(iter(failed.items()))
            raise SourceOpenError(
                f"source {job.source!r}: none of the job's {total} windows could be read (window {first}: "
                f"{reason}); check that it is reachable, then send the job again (its run store retries them)"
            )
        found = run.merge(rule)  # into the store too, so lt.open_run(store).result() has them, as after detect_region
        if self.merged:
            for key, value in object_messages(found, run_id=job.id, source=job.source, recipe=shared):
                self.sender.send(self.results, key, value)
        key, value = done_message(job.id, windows=total, failed=failed, objects=len(found) if self.merged else None)
        self.sender.send(self.results, key, value)
        self.sender.confirm(f"job {job.id!r}: sending its results to {self.results!r}")


def worker(
    *,
    bootstrap: str,
    jobs: str,
    results: str,
    dead_letter: str,
    group: str = "lazytiles-worker",
    workdir: str | os.PathLike[str] = "lazytiles-jobs",
    device: Any = "cpu",
    workers: int = 1,
    merged: bool = False,
    config: Mapping[str, Any] | None = None,
    consumer_config: Mapping[str, Any] | None = None,
    timeout: float = 60.0,
    stop: threading.Event | None = None,
    poll_interval: float = 0.5,
) -> WorkerReport:
    """Take region jobs from a topic and run them durably, until ``stop`` is set.

    Each job (a JSON message, see :mod:`lazytiles.streams.messages`) runs like :func:`lazytiles.detect_region`
    with its own run store, ``workdir/<job id>-<hash>.gpkg``, resumed if it exists. Each batch of
    windows is published to ``results`` (one message per window, key ``"{job id}:{window index}"``)
    and confirmed by the broker *before* it is committed to the store; when every window is done, a
    ``"{job id}:done"`` message follows, and only then is the job's offset committed. A worker killed
    mid-job leaves the job uncommitted: another worker of the ``group`` takes it, resumes the store if
    it shares ``workdir``, and sends any window again with the same key and bytes.

    A job that cannot run — not JSON, a missing or unknown field, a model that does not load, a source
    that cannot be opened, a model that fails — is sent to ``dead_letter`` with the reason and the
    original message, its offset committed, and the worker goes on. Setting ``stop`` ends the worker
    after the batch in flight (the job stays on the topic); the consumer is closed, so the group
    rebalances at once.

    Parameters
    ----------
    bootstrap
        Broker list, ``"host:port[,host:port]"``.
    jobs, results, dead_letter
        Topic names.
    group
        Consumer group: workers of one group share the jobs (one partition of ``jobs`` per worker at a time).
    workdir
        Directory for the run stores (created if missing).
    device, workers
        As in :func:`lazytiles.detect`.
    merged
        Also publish each job's merged objects (``"{job id}:merged:{k}"``) before its ``done`` message.
    config
        librdkafka settings for both the consumer and the producer (security, ...).
    consumer_config
        librdkafka settings for the consumer only (``session.timeout.ms``, ``max.poll.interval.ms``, ...).
    timeout
        Seconds a message may take to be confirmed; past it the worker stops with :class:`StreamError`.
    stop
        Set it to stop the worker (``lazytiles worker`` sets it on SIGTERM and SIGINT).
    poll_interval
        Seconds between checks of ``stop`` while idle.

    Returns
    -------
    WorkerReport
        Jobs done, dead-lettered and abandoned.

    Raises
    ------
    StreamError
        Results could not be delivered, or the consumer failed fatally; the job in hand is left uncommitted.
    """
    ck = _confluent()
    for name, value in (("jobs", jobs), ("results", results), ("dead_letter", dead_letter), ("group", group)):
        if not isinstance(value, str) or not value:
            raise InvalidArgumentError(f"{name} must be a non-empty name, got {value!r}")
    workdir = os.fspath(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as err:
        raise InvalidArgumentError(f"workdir={workdir!r} cannot be created ({err.strerror}); choose a writable directory") from err
    stop = stop or threading.Event()
    sender = _Sender(bootstrap, config, timeout)
    settings = _settings(
        bootstrap, config, **{"group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest",
                              "partition.assignment.strategy": "cooperative-sticky"},
    )  # fmt: skip
    settings.update(consumer_config or {})
    try:
        consumer = ck.Consumer(settings)
    except ck.KafkaException as err:
        raise InvalidArgumentError(f"cannot make a Kafka consumer for {bootstrap!r}: {err}") from err
    loop = _Worker(consumer, sender, results=results, dead_letter=dead_letter, workdir=workdir, device=device,
                   workers=workers, merged=merged, stop=stop)  # fmt: skip
    # torch takes seconds to import: do it while the group is being joined, not when the first job arrives
    threading.Thread(target=importlib.import_module, args=("lazytiles.detection.models",), daemon=True).start()
    consumer.subscribe([jobs], on_assign=loop.group.on_assign, on_revoke=loop.group.on_revoke,
                       on_lost=loop.group.on_lost)  # fmt: skip
    log.info("worker: group %r takes jobs from %r on %s; results to %r, bad jobs to %r", group, jobs, bootstrap,
             results, dead_letter)  # fmt: skip
    try:
        return loop.run(poll_interval)
    finally:
        consumer.close()  # leave the group now: its partitions move at once
        log.info("worker: stopped")


# -- the command ------------------------------------------------------------------------------------


def _key_value(text: str) -> tuple[str, str]:
    import argparse

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (a librdkafka setting, e.g. session.timeout.ms=10000)")
    return key.strip(), value.strip()


def worker_arguments(p: Any) -> None:
    """Add the options of ``lazytiles worker`` to an argparse parser."""
    p.add_argument("--bootstrap", required=True, metavar="HOST:PORT", help="Kafka brokers, host:port[,host:port]")
    p.add_argument("--jobs", required=True, metavar="TOPIC", help="topic to take job messages (JSON) from")
    p.add_argument("--results", required=True, metavar="TOPIC", help="topic for per-window results (GeoJSON)")
    p.add_argument("--dead-letter", required=True, metavar="TOPIC", help="topic for jobs that cannot run, with the reason")
    p.add_argument("--group", default="lazytiles-worker", help="consumer group; workers of a group share the jobs")
    p.add_argument("--workdir", default="lazytiles-jobs", metavar="DIR",
                   help="directory for the jobs' run stores; share it between restarts to resume (default ./lazytiles-jobs)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 (default cpu)")
    p.add_argument("--workers", type=int, default=1, help="reader threads (default 1: one reader in window order, tiles decoded ahead by the source)")
    p.add_argument("--merged", action="store_true", help="also publish each job's merged objects")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds for the broker to confirm a message (default 60)")
    p.add_argument("--config", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="librdkafka setting for consumer and producer (repeatable)")
    p.add_argument("--consumer-config", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="librdkafka setting for the consumer only, e.g. session.timeout.ms=10000 (repeatable)")


def run_worker(args: Any) -> int:
    """Run ``lazytiles worker`` from parsed arguments until SIGTERM or SIGINT; returns the exit code."""
    import signal

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s lazytiles worker %(process)d: %(message)s")
        logging.getLogger("pyogrio").setLevel(logging.WARNING)  # one line per empty layer the stores create
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("worker: %s received; stopping after the batch in flight", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        report = worker(
            bootstrap=args.bootstrap, jobs=args.jobs, results=args.results, dead_letter=args.dead_letter,
            group=args.group, workdir=args.workdir, device=args.device, workers=args.workers, merged=args.merged,
            config=dict(args.config), consumer_config=dict(args.consumer_config), timeout=args.timeout, stop=stop,
        )  # fmt: skip
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    log.info("worker: %d jobs done, %d dead-lettered, %d left for later", report.done, report.dead_lettered,
             report.abandoned)  # fmt: skip
    return 0

