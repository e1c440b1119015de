"""Tests of lazytiles.benchmarks (the scripts in benchmarks/ keep working)."""
