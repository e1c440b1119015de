"""The merge benchmark keeps working: ``--quick`` runs as a script, and lt.merge agrees with the rule written
one box at a time (SAHI, an optional extra, is compared with when installed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_merge.py"


@pytest.mark.timeout(120)
def test_bench_merge_quick_runs_and_agrees_with_the_rule_one_box_at_a_time():
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "same result as lt.merge: True" in out
    assert "stream equals batch: True" in out
    assert "lt.merge vs truth (IoU >= 0.5): 2340/2340 found once, 0 duplicated, 0 boxes unmatched" in out
    assert "lt.merge, streaming" in out and "lt.merge, all boxes at once" in out and "median s" in out
