"""Tests of lazytiles.detection."""
