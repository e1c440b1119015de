"""The Kafka worker: region jobs from a topic, results to another (``lazytiles worker``).

Each job runs with its own durable run store; a window counts as done only after the broker has
confirmed its message, and the job's offset is committed only after all its messages were, so a
worker killed mid-job leaves the job to another worker of its group. See :mod:`lazytiles.streams.kafka`
for the delivery guarantees and :mod:`lazytiles.streams.messages` for the message formats. :func:`worker`
checks its options and joins the group; :class:`~lazytiles.streams.loop.JobLoop` runs the jobs.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InvalidArgumentError
from .guard import Attempts
from .kafka import Sender, client_settings, confluent_module
from .loop import JobLoop, WorkerReport
from .messages import JobError
from .policy import Limits, Policy

log = logging.getLogger(__name__)

__all__ = ["worker"]


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
    ck = confluent_module()
    try:
        policy = Policy.from_flags(allow_models, allow_sources, limits)
    except JobError as err:
        raise InvalidArgumentError(str(err)) from None
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InvalidArgumentError(f"workers={workers!r} must be an integer >= 0 (0: read in the model's thread)")
    from ..detection.mapped import check_device

    check_device(device)  # a device this host has, checked before the first job rather than failing every job
    for name, value in (("jobs", jobs), ("results", results), ("dead_letter", dead_letter), ("group", group)):
        if not isinstance(value, str) or not value:
            raise InvalidArgumentError(f"{name} must be a non-empty name, got {value!r}")
    workdir = os.fspath(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as err:
        raise InvalidArgumentError(
            f"workdir={workdir!r} cannot be created ({err.strerror}); choose a writable directory"
        ) from err
    attempts = Attempts(os.path.join(workdir, "attempts"), max_attempts)
    stop = stop or threading.Event()
    sender = Sender(bootstrap, config, timeout)
    settings = client_settings(
        bootstrap,
        config,
        **{
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
        },
    )
    settings.update(consumer_config or {})
    try:
        consumer = ck.Consumer(settings)
    except ck.KafkaException as err:
        raise InvalidArgumentError(f"cannot make a Kafka consumer for {bootstrap!r}: {err}") from err
    loop = JobLoop(
        consumer,
        sender,
        results=results,
        dead_letter=dead_letter,
        workdir=workdir,
        policy=policy,
        attempts=attempts,
        device=device,
        workers=workers,
        merged=merged,
        stop=stop,
        poll_interval=poll_interval,
    )
    # torch takes seconds to import: do it while the group is being joined, not when the first job arrives
    threading.Thread(target=importlib.import_module, args=("lazytiles.detection.models",), daemon=True).start()
    consumer.subscribe(
        [jobs], on_assign=loop.group.on_assign, on_revoke=loop.group.on_revoke, on_lost=loop.group.on_lost
    )
    log.info(
        "worker: group %r takes jobs from %r on %s; results to %r, bad jobs to %r",
        group,
        jobs,
        bootstrap,
        results,
        dead_letter,
    )
    try:
        return loop.run(poll_interval)
    finally:
        consumer.close()  # leave the group now: its partitions move at once
        log.info("worker: stopped")
