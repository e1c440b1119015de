"""The mosaic benchmark keeps working (``--quick``): every case runs, skip_empty drops no window with
data, and the same-CRS part equals the VRT; no time is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_mosaic.py"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_mosaic_quick_runs_every_case():
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=280, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for case in ("\nvrt ", "\nlazytiles ", "\nlazytiles-skip-empty "):
        assert case in done.stdout, case
    assert "windows equal the VRT's" in done.stdout and "windows/s" in done.stdout
