"""The Kafka worker's loop: one job at a time from the consumer, run durably, then committed.

:class:`JobLoop` polls the job topic, pauses the consumer while a job runs (in a thread of its own,
:func:`~lazytiles.streams.guard.supervise`), publishes each batch of windows and waits for the broker
before the batch is committed to the job's run store, sends jobs that cannot run to the dead-letter
topic, and commits a job's offset only when it is finished. :func:`lazytiles.streams.worker.worker`
sets it up.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import LazyTilesError, RunLockedError, SourceOpenError, StreamError
from ..merging.rule import MergeRule
from ..runs.lifecycle import RunLifecycle
from ..runs.recipe import DetectOptions
from ..runs.store import WindowResult
from ..sources.http import redact
from ..windowing.sequence import windows
from .deadletters import dead_letter_message
from .guard import Attempts, supervise
from .kafka import Sender, confluent_module, message_recipe
from .messages import JobError, done_message, object_messages, parse_job, window_message
from .policy import JobRefused, Limits, Policy
from .sources import each_source, open_job_source, source_text

log = logging.getLogger(__name__)

__all__ = ["JobLoop", "WorkerReport"]


@dataclass
class WorkerReport:
    """What a :func:`~lazytiles.streams.worker.worker` did before it stopped."""

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


class JobLoop:
    """One job at a time from the consumer: run it durably, publish its results, commit its offset."""

    def __init__(
        self,
        consumer: Any,
        sender: Sender,
        *,
        results: str,
        dead_letter: str,
        workdir: str,
        policy: Policy,
        attempts: Attempts,
        device: Any,
        workers: int,
        merged: bool,
        stop: threading.Event,
        poll_interval: float,
    ) -> None:
        self.consumer, self.sender = consumer, sender
        self.results, self.dead_letter = results, dead_letter
        self.workdir, self.device, self.workers, self.merged = workdir, device, workers, merged
        self.policy, self.attempts = policy, attempts
        self.stop, self.poll_interval = stop, poll_interval
        self.group = _Group()
        self.models: dict[str, Any] = {}

    # -- the loop ------------------------------------------------------------------------------------

    def run(self, poll_interval: float) -> WorkerReport:
        ck = confluent_module()
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
                    self.consumer.commit(
                        offsets=[ck.TopicPartition(msg.topic(), msg.partition(), msg.offset() + 1)], asynchronous=False
                    )
                except ck.KafkaException as err:
                    log.warning(
                        "job at %s[%d]@%d finished but its offset was not committed (%s); it may run "
                        "again, sending the same results",
                        msg.topic(),
                        msg.partition(),
                        msg.offset(),
                        err,
                    )
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
            ck = confluent_module()
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
            return self.reject(
                msg,
                JobRefused(
                    f"the job ended its worker's process {count - 1} times (--max-attempts "
                    f"{self.attempts.max_attempts}); check its model and size before sending it again"
                ),
            )
        if len(value) > limits.max_job_bytes:
            return self.reject(
                msg,
                JobRefused(
                    f"the job message is {len(value)} bytes, over this worker's limit of {limits.max_job_bytes}; the "
                    f"operator raises it with {Limits.flag('max_job_bytes')}"
                ),
            )
        try:
            job = parse_job(value)
        except JobError as err:
            return self.reject(msg, err)
        log.info("job %r (%s[%d]@%d): starting", job.id, msg.topic(), msg.partition(), msg.offset())
        outcome = supervise(lambda: self.run_job(job), self.serve, interval=self.poll_interval, stop=self.stop)
        if outcome is None:
            log.info("job %r: done", job.id)
            return "done"
        if isinstance(outcome, _Abandon):
            log.info(
                "job %r: stopped between batches (%s); it stays on the topic",
                job.id,
                "shutting down" if self.stop.is_set() else "its partition moved to another worker",
            )
            return "abandoned"
        if isinstance(outcome, StreamError):
            raise outcome
        if isinstance(outcome, RunLockedError):
            log.warning("job %r: %s; trying again shortly", job.id, redact(str(outcome)))
            return "retry"
        return self.reject(msg, outcome, job.id)  # a job that cannot run (model, source, recipe...): a dead letter

    def reject(self, msg: Any, err: BaseException, job_id: str | None = None) -> str:
        reason = " ".join(str(err).split())
        if not isinstance(err, LazyTilesError):  # from job code: say what it was
            reason = f"{type(err).__name__} raised by the job" + (f": {reason}" if reason else "")
        reason = redact(reason)[:4096]
        log.warning(
            "job %s at %s[%d]@%d goes to %s: %s",
            repr(job_id) if job_id else "(unreadable)",
            msg.topic(),
            msg.partition(),
            msg.offset(),
            self.dead_letter,
            reason,
        )
        key, value = dead_letter_message(
            reason,
            type(err).__name__,
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
            key=msg.key(),
            value=msg.value(),
        )
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
        for one in each_source(job.source):
            self.policy.source(one)
        limits.check("max_batch_size", job.batch_size, "batch_size")
        limits.check("max_window_size", max(job.size if isinstance(job.size, tuple) else (job.size,)), "window size")
        if job.zoom is not None:
            limits.check("max_zoom", job.zoom, "zoom")
        src = open_job_source(job.source, job.zoom)
        if job.res is not None:
            src = src.at(res=job.res, crs=job.crs)
        region_crs = "EPSG:4326" if job.region else None
        bounds, bounds_crs = job.bounds, job.bounds_crs
        if bounds is None and job.region is not None:  # count over the region's bounding box, before filtering
            from shapely.geometry import shape

            bounds, bounds_crs = shape(job.region).bounds, region_crs
        grid = windows(src, job.size, overlap=job.overlap, bounds=bounds, bounds_crs=bounds_crs)
        limits.check("max_windows", len(grid), "the number of windows")
        wins = (
            grid
            if job.region is None
            else windows(
                src,
                job.size,
                overlap=job.overlap,
                bounds=job.bounds,
                bounds_crs=job.bounds_crs,
                region=job.region,
                region_crs=region_crs,
            )
        )
        model = self.model(spec)
        options = DetectOptions(batch_size=job.batch_size, device=self.device, workers=self.workers)
        dets = options.detect(model, wins)
        run = RunLifecycle(wins, os.path.join(self.workdir, f"{job.slug}.gpkg"), options)
        with run.open(model, {"worker": True, "job": job.id, "device": str(self.device)}):
            public = {**job.to_dict(), "source": source_text(job.source)}
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
                key, value = window_message(
                    r.detections,
                    run_id=job.id,
                    window_index=r.index,
                    source=source_text(job.source),
                    recipe=shared,
                    window=r.window,
                )
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
                f"source {source_text(job.source)!r}: none of the job's {total} windows could be read (window {first}: "
                f"{reason}); check that it is reachable, then send the job again (its run store retries them)"
            )
        found = run.merge(rule)  # into the store too, so lt.open_run(store).result() has them, as after detect_region
        if self.merged:
            for key, value in object_messages(found, run_id=job.id, source=source_text(job.source), recipe=shared):
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
