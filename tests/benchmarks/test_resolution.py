"""The resolution benchmark keeps working (a small scene); it asserts agreement, never a time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_resolution.py"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_resolution_small_runs_and_reads_the_overview_pixels():
    done = subprocess.run(
        [sys.executable, str(BENCH), "--size", "2048", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    out = done.stdout
    for label in ("lazytiles src.at(res=...) 2x", "WarpedVRT, one handle 4x", "WarpedVRT on the overview 4x"):
        assert f"\n{label} " in out
    assert "2x coarser: 9 windows, lazytiles reads level 1" in out and "4x coarser: 1 windows" in out
    rows = {line.split("|")[0].strip(): line.split("|") for line in out.splitlines() if "|" in line}
    assert int(rows["lazytiles src.at(res=...) 4x"][2]) == 1  # one overview block, none of the 16 at full size
    assert "read the same pixels: yes" in out
