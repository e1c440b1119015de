"""The merge's values: MergeRule (the rule, checked once) and WindowTable (which windows, where)."""

from __future__ import annotations

import dataclasses
import inspect
import pickle

import numpy as np
import pytest

import lazytiles as lt
from lazytiles.merging.streaming import Merger, merge_by_rule
from lazytiles.merging.window_table import WindowTable


def test_a_merge_rule_is_frozen_checked_and_has_lt_merge_defaults():
    rule = lt.MergeRule(iou=1, margin=2)
    assert (rule.iou, rule.margin) == (1.0, 2.0) and type(rule.iou) is float and type(rule.margin) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.iou = 0.3  # type: ignore[misc]
    assert rule == lt.MergeRule(iou=1.0, margin=2.0) and hash(rule) == hash(lt.MergeRule(iou=1.0, margin=2.0))
    assert pickle.loads(pickle.dumps(rule)) == rule
    # the JSON a run store records, in this order
    assert list(rule.to_dict().items()) == [
        ("iou", 1.0),
        ("method", "union"),
        ("metric", "ios"),
        ("class_aware", True),
        ("margin", 2.0),
    ]
    defaults = {name: p.default for name, p in inspect.signature(lt.merge).parameters.items()}
    for name, value in lt.MergeRule().to_dict().items():
        assert defaults[name] == value, name
        assert inspect.signature(lt.detect_region).parameters[name].default == value, name
    for bad, message in (
        ({"iou": True}, r"iou must be a threshold in \(0, 1\], got True"),
        ({"method": "mean"}, "method must be 'union'.*got 'mean'"),
        ({"metric": "giou"}, "metric must be 'ios'.*got 'giou'"),
        ({"margin": float("inf")}, "margin must be a distance >= 0 in pixels, got inf"),
    ):
        with pytest.raises(lt.InvalidArgumentError, match=message):
            lt.MergeRule(**bad)
    with pytest.raises(ValueError, match="iou must be a threshold"):
        dataclasses.replace(rule, iou=0)  # a changed copy is checked too


def test_merging_by_a_rule_equals_merging_by_keywords():
    wins = lt.windows(lt.ArraySource(np.zeros((1, 256, 448), np.uint8)), 256, stride=192)
    left = lt.Detections([[150, 10, 256, 40]], [0.9], [1], [0], partial=[True])
    right = lt.Detections([[192, 10, 260, 40], [190, 12, 258, 41]], [0.7, 0.6], [1, 2], [1, 1], partial=[True, True])
    for options in ({}, {"iou": 0.3, "method": "nms"}, {"class_aware": False}, {"metric": "iou", "margin": 0.0}):
        expected = lt.merge([left, right], windows=wins, progress=False, **options)
        assert merge_by_rule([left, right], lt.MergeRule(**options), windows=wins, progress=False) == expected
        merger = Merger(wins, lt.MergeRule(**options))
        merger.add(left)
        merger.add(right)
        assert merger.result() == expected, options
    with pytest.raises(lt.InvalidArgumentError, match="rule must be an lt.MergeRule"):
        Merger(wins, {"iou": 0.3})  # type: ignore[arg-type]


def test_a_window_table_holds_the_indices_and_rectangles_of_its_windows():
    wins = lt.windows(lt.ArraySource(np.zeros((1, 300, 500), np.uint8)), 100, stride=80)
    part = wins[np.array([7, 2, 11])]
    table = WindowTable.of(part)
    assert table.indices.tolist() == [7, 2, 11]
    by_hand = [(int(w.window.col_off), int(w.window.row_off), 100, 100) for w in part]  # read, then ask each
    assert [table.rect(k) for k in range(3)] == by_hand == [tuple(r) for r in table.pixel_windows().tolist()]
    assert WindowTable.of(table) is table and len(table[1:]) == 2 and table[1:].indices.tolist() == [2, 11]
    with pytest.raises(ValueError, match="read-only"):
        table.indices[0] = 3
    boxes = table.lookup(np.array([11, -1, 7]))
    assert boxes[0].tolist() == [by_hand[2][0], by_hand[2][1], by_hand[2][0] + 100, by_hand[2][1] + 100]
    assert np.isnan(boxes[1]).all()
    with pytest.raises(lt.InvalidArgumentError, match="window_index=5, which is not one of the 3 windows given"):
        table.lookup(np.array([5]))
    table.last_position(np.array([[0.0, 0.0, 5.0, 5.0]]), 1.0)  # builds its spatial index
    again = pickle.loads(pickle.dumps(table))
    assert again.indices.tolist() == [7, 2, 11] and np.array_equal(again.rects, table.rects)
    assert len(pickle.dumps(table)) < 1000  # the index is made again, not pickled
    assert WindowTable([3, 4], [[0, 0, 1, 1], [1, 0, 1, 1]]).has_duplicates() is False
    assert WindowTable([3, 3], [[0, 0, 1, 1], [1, 0, 1, 1]]).has_duplicates() is True
    with pytest.raises(lt.InvalidArgumentError, match="one rectangle per index, got 2 indices and 1 rectangles"):
        WindowTable([3, 4], [[0, 0, 1, 1]])


def test_last_position_from_window_neighbours_equals_the_spatial_index():
    wins = lt.windows(lt.ArraySource(np.zeros((1, 700, 900), np.uint8)), 256, overlap=0.25)
    table = WindowTable.of(wins)
    rng = np.random.default_rng(3)
    positions = rng.integers(0, len(table), 400)
    rects = table.rects[positions]
    x0 = rects[:, 0] + rng.uniform(-20, 250, 400)  # most inside their window, some across its edge
    y0 = rects[:, 1] + rng.uniform(-20, 250, 400)
    boxes = np.stack([x0, y0, x0 + rng.uniform(0, 40, 400), y0 + rng.uniform(0, 40, 400)], axis=1)
    for reach in (0.0, 3.0, 70.0):
        assert np.array_equal(table.last_position(boxes, reach, positions), table.last_position(boxes, reach))
