"""The remote-reading benchmarks keep working: ``--quick`` runs as a script and every case sees the same pixels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bench_xyz_quick_runs_and_every_case_reads_the_same_pixels():
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_xyz.py"), "--quick"], capture_output=True, text=True, timeout=230
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "same pixels in every case: True" in out
    for label in ("lazytiles, one consumer thread", "dict cache + 16-thread pool", "per-window fetch", "decode floor"):
        assert label in out
    assert "requests per unique tile" in out and "vs dict-pool" in out and "peak RSS" in out


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bench_vsicurl_quick_runs_and_every_case_reads_the_same_pixels():
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_vsicurl.py"), "--quick"], capture_output=True, text=True, timeout=230
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "same pixels in every case: True" in out
    assert "naive rasterio /vsicurl/" in out and "lazytiles (read-ahead" in out and "vs naive" in out
