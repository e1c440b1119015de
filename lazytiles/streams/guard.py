"""What keeps a worker up whatever a job does: attempt counting across crashes, and a supervised job thread.

:class:`Attempts` counts, in the worker's directory, how often each message (topic, partition,
offset) was started. The count is written and synced *before* the job starts and removed when it
ends, so a job that kills its process (an abort, the OOM killer) leaves its count behind, and the
worker that meets it again after ``max_attempts`` dead-letters it instead of dying once more.

:func:`supervise` runs a job in a thread of its own and calls ``serve`` every ``interval`` seconds
while it runs: the worker's consumer is polled from the thread that owns it, so a slow job never
misses the group's poll deadline. Whatever the job raises — ``SystemExit``, ``KeyboardInterrupt``,
``RecursionError``, ``MemoryError`` — comes back as the result; nothing ends the worker.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..errors import InvalidArgumentError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Attempts:
    """Start counts of job messages, kept in ``directory`` (one small file per message started)."""

    def __init__(self, directory: str | os.PathLike[str], max_attempts: int) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise InvalidArgumentError(f"max_attempts={max_attempts!r} must be a positive integer")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_attempts = max_attempts

    def _path(self, topic: str, partition: int, offset: int) -> Path:
        name = hashlib.sha256(f"{topic}\0{partition}\0{offset}".encode()).hexdigest()[:32]
        return self.directory / name

    def start(self, topic: str, partition: int, offset: int) -> int:
        """Count one more start of the message and return the count (1 the first time)."""
        path = self._path(topic, partition, offset)
        try:
            before = int(path.read_text() or 0)
        except (OSError, ValueError):
            before = 0
        count = before + 1
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".attempt-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(str(count))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return count

    def end(self, topic: str, partition: int, offset: int) -> None:
        """The message's job ended without killing its worker: forget its count."""
        self._path(topic, partition, offset).unlink(missing_ok=True)


def supervise(
    job: Callable[[], T], serve: Callable[[], None], *, interval: float, stop: threading.Event, grace: float = 60.0
) -> T | BaseException:
    """Run ``job()`` in a thread; call ``serve()`` every ``interval`` s until it ends.

    Returns what ``job`` returned, or the exception (any ``BaseException``) it raised. After ``stop``
    is set, a job that does not end within ``grace`` seconds is left behind (a daemon thread) and a
    ``TimeoutError`` returned, so a hung job cannot keep the worker from shutting down.
    """
    outcome: list[T | BaseException] = []

    def target() -> None:
        try:
            outcome.append(job())
        except BaseException as err:  # everything: the worker stays up
            outcome.append(err)

    thread = threading.Thread(target=target, name="lazytiles-job", daemon=True)
    thread.start()
    stopped_at: float | None = None
    while True:
        thread.join(interval)
        if not thread.is_alive():
            return outcome[0]
        serve()
        if stop.is_set():
            stopped_at = stopped_at or time.monotonic()
            if time.monotonic() - stopped_at > grace:
                log.warning("the job in hand did not stop within %.0f s of the stop request; leaving it", grace)
                return TimeoutError(f"the job did not stop within {grace:.0f} s of the worker's stop request")
