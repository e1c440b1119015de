"""A durable detection run in its own process, for tests/runs/test_runs.py: killed, resumed, or holding the lock.

Usage: ``python run_child.py SCENE.tif OUT.gpkg [--kill-at-read K | --signal-at-read K | --block-at-read K |
--kill-at-commit N[:after]]``.

The windows come from :class:`HookedSource`, a RasterSource with the same token (so the same run recipe
as ``lt.open(SCENE.tif)``) that can act on its K-th tile read: SIGKILL its own process, print ``READ K``
(the test kills it from outside when it sees the line), or print ``BLOCKED`` and wait for a line on
stdin (the test holds the run's lock meanwhile). :func:`kill_at_commit` hooks the run store's commits
the same way: SIGKILL inside the N-th one. Prints ``DONE <boxes>`` when the run ends.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import sys
import threading
from typing import Any

import lazytiles as lt
from lazytiles.detection.models import BlobDetector
from lazytiles.runs.store import RunStore

#: The run every test uses: windows of SIZE px overlapping by OVERLAP, BATCH windows per model call
#: and per commit.
SIZE, OVERLAP, BATCH = 96, 0.25, 2


def model() -> BlobDetector:
    return BlobDetector(threshold=0.5, min_area=4)


class HookedSource(lt.RasterSource):
    """A RasterSource that can kill its process, signal, or block at its ``at``-th tile read."""

    def __init__(self, path: str, *, action: str | None = None, at: int = 0, **options: Any) -> None:
        super().__init__(path, **options)
        self._action, self._at = action, at
        self._reads = 0
        self._reads_lock = threading.Lock()

    def _read_tile(self, key: Any) -> Any:
        with self._reads_lock:
            self._reads += 1
            n = self._reads
        if n == self._at:
            if self._action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif self._action == "signal":
                print(f"READ {n}", flush=True)
            elif self._action == "block":
                print("BLOCKED", flush=True)
                sys.stdin.readline()
        return super()._read_tile(key)


def kill_at_commit(spec: str) -> None:
    """SIGKILL this process inside the N-th run-store commit that records windows: just before SQLite
    runs its COMMIT (``"N"``, the transaction half done), or right after the commit returns (``"N:after"``).

    Wraps :meth:`RunStore.commit`, and traces the statements of every SQLite connection made from now on.
    """
    n, _, when = spec.partition(":")
    at, after = int(n), when == "after"
    state = {"commits": 0, "armed": False}

    def trace(statement: str) -> None:
        if state["armed"] and statement == "COMMIT":
            os.kill(os.getpid(), signal.SIGKILL)

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        con = real_connect(*args, **kwargs)
        con.set_trace_callback(trace)
        return con

    def commit(store: RunStore, results: Any) -> None:
        state["commits"] += bool(results)
        hit = bool(results) and state["commits"] == at
        state["armed"] = hit and not after
        real_commit(store, results)
        if hit:  # after (with "before" the process is dead by now)
            os.kill(os.getpid(), signal.SIGKILL)

    real_connect, real_commit = sqlite3.connect, RunStore.commit
    sqlite3.connect = connect  # type: ignore[assignment]
    RunStore.commit = commit  # type: ignore[method-assign]


def windows(src: lt.TileSource) -> lt.WindowSequence:
    return lt.windows(src, size=SIZE, overlap=OVERLAP)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("scene")
    p.add_argument("out")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--kill-at-read", type=int)
    g.add_argument("--signal-at-read", type=int)
    g.add_argument("--block-at-read", type=int)
    g.add_argument("--kill-at-commit", metavar="N[:after]")
    args = p.parse_args(argv)
    if args.kill_at_commit:
        kill_at_commit(args.kill_at_commit)
    action, at = None, 0
    for name in ("kill", "signal", "block"):
        value = getattr(args, f"{name}_at_read")
        if value is not None:
            action, at = name, value
    src = HookedSource(args.scene, action=action, at=at, cache=lt.TileCache(max_bytes=64 * 2**20))
    found = lt.detect_region(
        model(), windows(src), out=args.out, batch_size=BATCH, workers=2, commit_interval=0, progress=False
    )
    print(f"DONE {len(found)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
