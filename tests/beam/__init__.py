"""Tests of lazytiles.beam."""
