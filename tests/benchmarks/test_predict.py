"""The prediction-raster benchmark keeps working (``--quick``); it asserts agreement, never a time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_predict.py"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_predict_quick_runs_and_both_cases_agree():
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=280, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for case in ("the usual way", "lazytiles write_raster"):
        assert f"\n{case} " in done.stdout
    assert "same raster in every case: yes" in done.stdout
    assert "windows/s" in done.stdout and "peak RSS MB" in done.stdout
