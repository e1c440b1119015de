"""Tests of lazytiles.windowing."""
