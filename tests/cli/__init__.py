"""Tests of lazytiles.cli."""
