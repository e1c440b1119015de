"""Tests of lazytiles.merging."""
