"""The detection pipeline benchmark keeps working (``--quick``); it asserts agreement, never a time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_detect.py"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bench_detect_quick_runs_and_every_case_agrees():
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=220, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for case in ("naive loop", "DataLoader(num_workers=2)", "lazytiles detect"):
        assert f"\n{case} " in out
    assert "same detections in every case: yes" in out
    assert "model busy" in out and "windows/s" in out
