"""Tests of lazytiles.prefetching."""
