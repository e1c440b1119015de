"""Tests of lazytiles.streams (Kafka) against a real broker (a package, so its conftest does not shadow tests/conftest.py)."""
