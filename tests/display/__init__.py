"""Tests of lazytiles.display."""
