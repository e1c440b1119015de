"""A durable prediction run in its own process, for tests/runs/test_prediction.py: killed by its model.

Usage: ``python predict_child.py SCENE.tif OUT.tif [--kill-at-call N] [--blend B]``. The model,
:class:`ChildSegmenter`, SIGKILLs its process in its N-th call. Prints ``DONE <windows the model saw>``
when the run ends.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import torch

import lazytiles as lt
from lazytiles.detection.models import ColourSegmenter

#: The run every test uses: windows of SIZE px overlapping by OVERLAP, output blocks of BLOCK px.
SIZE, OVERLAP, BLOCK, BATCH = 64, 0.25, 32, 2


class ChildSegmenter(ColourSegmenter):
    """The colour segmenter, counting the windows it sees and killing its process in call ``at`` (0: never);
    neither is part of its state or printed configuration, so every child runs the same recipe."""

    def __init__(self, at: int = 0) -> None:
        super().__init__()
        self._at, self._calls, self.seen = at, 0, 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self._calls += 1
        self.seen += len(images)
        if self._calls == self._at:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(images)


def windows(src: lt.TileSource) -> lt.WindowSequence:
    return lt.windows(src, size=SIZE, overlap=OVERLAP, edge="pad")


def run(model: object, wins: lt.WindowSequence, out: str, **options: object) -> object:
    options = {"block": BLOCK, "batch_size": BATCH, "commit_interval": 0, "progress": False, **options}
    return lt.predict_region(model, wins, out, **options)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("scene")
    p.add_argument("out")
    p.add_argument("--kill-at-call", type=int)
    p.add_argument("--blend", default="center")
    args = p.parse_args(argv)
    src = lt.RasterSource(args.scene, cache=lt.TileCache(max_bytes=2**24))
    model = ChildSegmenter(args.kill_at_call or 0)
    run(model, windows(src), args.out, blend=args.blend)
    print(f"DONE {model.seen}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
