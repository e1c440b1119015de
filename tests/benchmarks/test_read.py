"""The read benchmark keeps working (``--quick``): every case runs and sees the same pixels; no time is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_read.py"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_read_quick_runs_every_case_and_they_agree():
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=280, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for case in (
        "naive rasterio, GDAL_CACHEMAX=64MB",
        "naive rasterio, default GDAL cache",
        "floor: each block decoded once",
        "lazytiles, one consumer (block read-ahead)",
        "lazytiles, readahead=0 (one thread)",
        "lazytiles, GDAL cache uncapped",
        "lazytiles, wins[i] in an index loop",
        "lazytiles lt.prefetch, 2 threads",
        "lazytiles lt.prefetch, 2 processes",
    ):
        assert f"\n{case}" in out, case
    assert "# every window case read the same pixels" in out
    assert "windows/s" in out and "peak RSS" in out
    assert "# VRT 16384x16384" in out and "\n    1000 |" in out  # RSS printed along the VRT pass
