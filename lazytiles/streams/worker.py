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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgumentError, LazyTilesError, RunLockedError, SourceOpenError, StreamError
from ..merging.rule import MergeRule
from ..runs.lifecycle import RunLifecycle
from ..runs.recipe import DetectOptions
from ..runs.store import WindowResult
from ..sources import open as open_source
from ..sources.http import redact
from ..windowing.sequence import windows
from .guard import Attempts, supervise
from .kafka import _confluent, _Sender, _settings, message_recipe
from .messages import JobError, dead_letter_message, done_message, object_messages, parse_job, window_message
from .policy import JobRefused, Limits, Policy

log = logging.getLogger(__name__)

__all__ = ["WorkerReport", "worker"]


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
                 policy: Policy, attempts: Attempts, device: Any, workers: int, merged: bool,
                 stop: threading.Event, poll_interval: float) -> None:  # fmt: skip
        self.consumer, self.sender = consumer, sender
        self.results, self.dead_letter = results, dead_letter
        self.workdir, self.device, self.workers, self.merged = workdir, device, workers, merged
        self.policy, self.attempts = policy, attempts
        self.stop, self.poll_interval = stop, poll_interval
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

    def serve(self) -> None:
        """While a job runs (in its own thread): serve rebalances and the poll interval from the
        consumer's thread; never start another job."""
        msg = self.consumer.poll(0)
        if msg is not None and not msg.error():  # a partition assigned mid-job slipped through: put it back
            ck = _confluent()
            tp = ck.TopicPartition(msg.topic(), msg.partition(), msg.offset())
            self.consumer.seek(tp)
            self.consumer.pause([tp])

    def check(self) -> None:
        """In the job's thread, between batches: stop if the worker stops or the partition moved."""
        if self.stop.is_set() or self.group.lost:
            raise _Abandon()

    # -- one job ---------------------------------------------------------------------------------------

    def handle(self, msg: Any) -> str:
        """Run one job message: ``"done"``, ``"dead"`` (sent to the dead-letter topic), ``"abandoned"``
        or ``"retry"``."""
        where = (msg.topic(), msg.partition(), msg.offset())
        count = self.attempts.start(*where)
        try:
            status = self.attempt(msg, count)
        except StreamError:
            raise
        except BaseException as err:  # a failure of the worker's own, e.g. the dead-letter topic refusing
            log.error("job at %s[%d]@%d: %s", *where, redact(f"{type(err).__name__}: {err}"))
            raise StreamError(f"the worker could not settle the job at {where[0]}[{where[1]}]@{where[2]}") from err
        self.attempts.end(*where)
        return status

    def attempt(self, msg: Any, count: int) -> str:
        value = msg.value() or b""
        limits = self.policy.limits
        if count > self.attempts.max_attempts:
            return self.reject(msg, JobRefused(
                f"the job ended its worker's process {count - 1} times (--max-attempts {self.attempts.max_attempts}); "
                "check its model and size before sending it again"))  # fmt: skip
        if len(value) > limits.max_job_bytes:
            return self.reject(msg, JobRefused(
                f"the job message is {len(value)} bytes, over this worker's limit of {limits.max_job_bytes}; the "
                f"operator raises it with {Limits.flag('max_job_bytes')}"))  # fmt: skip
        try:
            job = parse_job(value)
        except JobError as err:
            return self.reject(msg, err)
        log.info("job %r (%s[%d]@%d): starting", job.id, msg.topic(), msg.partition(), msg.offset())
        outcome = supervise(lambda: self.run_job(job), self.serve, interval=self.poll_interval, stop=self.stop)
        if outcome is None:
            log.info("job %r: done", job.id)
            return "done"
        err = outcome
        if isinstance(err, _Abandon):
            log.info("job %r: stopped between batches (%s); it stays on the topic", job.id,
                     "shutting down" if self.stop.is_set() else "its partition moved to another worker")  # fmt: skip
            return "abandoned"
        if isinstance(err, StreamError):
            raise err
        if isinstance(err, RunLockedError):
            log.warning("job %r: %s; trying again shortly", job.id, redact(str(err)))
            return "retry"
        return self.reject(msg, err, job.id)  # a job that cannot run (model, source, recipe...): a dead letter

    def reject(self, msg: Any, err: BaseException, job_id: str | None = None) -> str:
        reason = " ".join(str(err).split())
        if not isinstance(err, LazyTilesError):  # from job code: say what it was
            reason = f"{type(err).__name__} raised by the job" + (f": {reason}" if reason else "")
        reason = redact(reason)[:4096]
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
        """Check the job against the policy, plan it within the limits, then run it durably."""
        limits = self.policy.limits
        spec = self.policy.model(job.model)
        self.policy.source(job.source)
        limits.check("max_batch_size", job.batch_size, "batch_size")
        limits.check("max_window_size", max(job.size if isinstance(job.size, tuple) else (job.size,)), "window size")
        if job.zoom is not None:
            limits.check("max_zoom", job.zoom, "zoom")
        src = open_source(job.source, zoom=job.zoom)
        region_crs = "EPSG:4326" if job.region else None
        bounds, bounds_crs = job.bounds, job.bounds_crs
        if bounds is None and job.region is not None:  # count over the region's bounding box, before filtering
            from shapely.geometry import shape

            bounds, bounds_crs = shape(job.region).bounds, region_crs
        grid = windows(src, job.size, overlap=job.overlap, bounds=bounds, bounds_crs=bounds_crs)
        limits.check("max_windows", len(grid), "the number of windows")
        wins = grid if job.region is None else windows(
            src, job.size, overlap=job.overlap, bounds=job.bounds, bounds_crs=job.bounds_crs, region=job.region,
            region_crs=region_crs)  # fmt: skip
        model = self.model(spec)
        options = DetectOptions(batch_size=job.batch_size, device=self.device, workers=self.workers)
        dets = options.detect(model, wins)
        run = RunLifecycle(wins, os.path.join(self.workdir, f"{job.slug}.gpkg"), options)
        with run.open(model, {"worker": True, "job": job.id, "device": str(self.device)}):
            public = {**job.to_dict(), "source": redact(job.source)}
            if job.region is not None:
                public["region"] = {"sha256": job.region_sha256}
            shared = _redacted(message_recipe(run.recipe, job=public))
            self.record(job, shared, run, dets)
            self.finish(job, shared, run, MergeRule())

    def record(self, job: Any, shared: dict[str, Any], run: RunLifecycle, dets: Any) -> None:
        """Stream the windows still to do; each batch is delivered, then committed, then the group served."""
        with run.recorder(batch_size=job.batch_size, deliver=functools.partial(self.deliver, job, shared)) as record:
            with contextlib.closing(run.outcomes(dets)) as outcomes:
                for position, outcome in outcomes:
                    if record.add(position, outcome):
                        self.check()
            if record.flush():
                self.check()

    def deliver(self, job: Any, shared: dict[str, Any], batch: list[WindowResult]) -> None:
        """Publish a batch of windows and wait for the broker's confirmation (then they are committed)."""
        for r in batch:
            if r.detections is not None:
                key, value = window_message(r.detections, run_id=job.id, window_index=r.index, source=redact(job.source),
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
                f"source {redact(job.source)!r}: none of the job's {total} windows could be read (window {first}: "
                f"{reason}); check that it is reachable, then send the job again (its run store retries them)"
            )
        found = run.merge(rule)  # into the store too, so lt.open_run(store).result() has them, as after detect_region
        if self.merged:
            for key, value in object_messages(found, run_id=job.id, source=redact(job.source), recipe=shared):
                self.sender.send(self.results, key, value)
        key, value = done_message(job.id, windows=total, failed=failed, objects=len(found) if self.merged else None)
        self.sender.send(self.results, key, value)
        self.sender.confirm(f"job {job.id!r}: sending its results to {self.results!r}")


def _redacted(value: Any) -> Any:
    """``value`` with every string in it passed through :func:`~lazytiles.sources.http.redact`."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    return value


def worker(
    *,
    bootstrap: str,
    jobs: str,
    results: str,
    dead_letter: str,
    group: str = "lazytiles-worker",
    workdir: str | os.PathLike[str] = "lazytiles-jobs",
    allow_models: Sequence[str] = (),
    allow_sources: Sequence[str] = (),
    limits: Limits | None = None,
    max_attempts: int = 3,
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
    allow_models, allow_sources, limits
        What jobs may ask for (see :mod:`lazytiles.streams.policy`): model specs (``NAME=SPEC`` too;
        none: lazytiles' built-in models only), source prefixes (at least one) and :class:`Limits`.
    max_attempts
        A job whose run ended the worker's process this many times is dead-lettered when met again.
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
    try:
        policy = Policy.from_flags(allow_models, allow_sources, limits)
    except JobError as err:
        raise InvalidArgumentError(str(err)) from None
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InvalidArgumentError(f"workers={workers!r} must be an integer >= 0 (0: read in the model's thread)")
    from ..detection.sequence import check_device

    check_device(device)  # a device this host has, checked before the first job rather than failing every job
    for name, value in (("jobs", jobs), ("results", results), ("dead_letter", dead_letter), ("group", group)):
        if not isinstance(value, str) or not value:
            raise InvalidArgumentError(f"{name} must be a non-empty name, got {value!r}")
    workdir = os.fspath(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as err:
        raise InvalidArgumentError(f"workdir={workdir!r} cannot be created ({err.strerror}); choose a writable directory") from err
    attempts = Attempts(os.path.join(workdir, "attempts"), max_attempts)
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
    loop = _Worker(consumer, sender, results=results, dead_letter=dead_letter, workdir=workdir, policy=policy,
                   attempts=attempts, device=device, workers=workers, merged=merged, stop=stop,
                   poll_interval=poll_interval)  # fmt: skip
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
