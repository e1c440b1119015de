"""The polygons benchmark keeps working: ``--quick`` runs as a script and both ways give the same objects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_polygons.py"


@pytest.mark.timeout(120)
def test_bench_polygons_quick_runs_and_agrees_with_the_whole_raster_trace():
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "same objects (class, bounds, area): True" in done.stdout
    assert "whole raster" in done.stdout and "lazytiles" in done.stdout
