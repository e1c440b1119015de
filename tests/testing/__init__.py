"""Tests of lazytiles.testing."""
