"""The Beam benchmark keeps working (``--quick``); it asserts agreement, never a time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("apache_beam")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_beam.py"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_beam_quick_runs_and_every_case_agrees():
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=280, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    out = done.stdout
    for case in ("local, in memory", "local, durable", "beam, 1 worker", "beam, 2 workers", "start-up, 2 workers"):
        assert f"\n{case} " in out
    assert "same merged detections in every case: yes" in out
    assert "ms per window" in out and "tiles/shard" in out and "merge shuffle" in out
