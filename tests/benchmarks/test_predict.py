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


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_predict_flat_writes_each_size_all_class_one():
    done = subprocess.run(
        [sys.executable, str(BENCH), "--flat", "2048", "3072"], capture_output=True, text=True, timeout=280, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr  # nonzero when a file is not all class 1
    rows = [line.split() for line in done.stdout.splitlines() if line.strip().startswith(("2048", "3072"))]
    assert [(r[0], r[1], r[-1]) for r in rows] == [("2048", "4", "no"), ("3072", "9", "no")]
