"""A durable detection run in its own process, for tests/test_runs.py: killed, resumed, or holding the lock.

Usage: ``python run_child.py SCENE.tif OUT.gpkg [--kill-at-read K | --signal-at-read K | --block-at-read K]``.

The windows come from :class:`HookedSource`, a RasterSource with the same token (so the same run recipe
as ``lt.open(SCENE.tif)``) that can act on its K-th tile read: SIGKILL its own process, print ``READ K``
(the test kills it from outside when it sees the line), or print ``BLOCKED`` and wait for a line on
stdin (the test holds the run's lock meanwhile). A kill inside a commit is asked for with the store's
``LAZYTILES_TEST_KILL_AT_COMMIT`` environment variable. Prints ``DONE <boxes>`` when the run ends.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

import lazytiles as lt
from lazytiles.detection.models import BlobDetector

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
    args = p.parse_args(argv)
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
