"""Tests of lazytiles.runs."""
