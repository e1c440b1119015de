"""The durability benchmark keeps working: ``--quick`` runs as a script and every case agrees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_runs.py"


@pytest.mark.timeout(300)
def test_bench_runs_quick_runs_and_every_case_gives_the_same_detections():
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "same merged detections in every case: yes" in out
    for case in ("in memory: merge(detect(...))", "durable: detect_region(out=)", "resume a finished run", "replay"):
        assert case in out
    assert "durability overhead:" in out and "time inside the run store" in out
