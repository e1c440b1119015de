"""select(): a list's index rules, plus integer arrays and boolean masks, checked against a list."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import lazytiles as lt
from lazytiles.windowing.index import select


def as_list(picked) -> list[int]:
    return [int(v) for v in picked]


@given(n=st.integers(0, 40), i=st.integers(-50, 50))
@example(n=0, i=0)
@example(n=3, i=-3)
@example(n=3, i=3)
def test_an_int_gives_what_a_list_gives_or_the_same_error(n, i):
    oracle = list(range(n))
    try:
        expected = oracle[i]
    except IndexError:
        with pytest.raises(IndexError, match=rf"window index {i} is out of range for {n} windows"):
            select(range(n), i)
        with pytest.raises(lt.WindowIndexError):
            select(np.arange(n), i)
    else:
        assert select(range(n), i) == expected
        assert select(np.arange(n), np.int64(i)) == expected


@given(n=st.integers(0, 40), data=st.data())
def test_nested_slices_match_a_list(n, data):
    outer = data.draw(st.slices(n))
    inner = data.draw(st.slices(len(range(n)[outer])))
    picked = select(select(range(n), outer), inner)
    assert isinstance(picked, range)  # slices of a range stay ranges: no arrays are built
    assert list(picked) == list(range(n))[outer][inner]


@given(n=st.integers(0, 40), data=st.data())
def test_slices_of_an_array_of_positions_match_a_list(n, data):
    positions = np.arange(n)[::-1] * 3
    key = data.draw(st.slices(n))
    assert as_list(select(positions, key)) == list(positions)[key]


@given(n=st.integers(1, 40), data=st.data())
def test_integer_arrays_pick_like_a_list_comprehension(n, data):
    idx = data.draw(st.lists(st.integers(-n, n - 1), max_size=20))
    oracle = list(range(n))
    expected = [oracle[i] for i in idx]
    assert as_list(select(range(n), np.array(idx, dtype=np.int64))) == expected
    assert as_list(select(range(n), idx)) == expected  # a list of ints is an integer array
    if all(i >= 0 for i in idx):
        assert as_list(select(range(n), np.array(idx, dtype=np.uint32))) == expected


@given(n=st.integers(0, 30), data=st.data())
def test_boolean_masks_keep_the_true_positions(n, data):
    mask = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    expected = [v for v, keep in zip(range(n), mask) if keep]
    assert as_list(select(range(n), np.array(mask, dtype=bool))) == expected
    if n:
        assert as_list(select(range(n), mask)) == expected


@given(n=st.integers(0, 20), bad=st.integers(1, 30))
def test_an_index_array_reaching_outside_raises_index_error(n, bad):
    with pytest.raises(IndexError, match=rf"index {n - 1 + bad} in the index array is out of range for {n} windows"):
        select(range(n), np.array([0, n - 1 + bad]) if n else np.array([n - 1 + bad]))
    with pytest.raises(lt.WindowIndexError, match=rf"index {-n - bad} in the index array"):
        select(range(n), [-n - bad])


def test_a_mask_of_the_wrong_length_is_an_index_error():
    with pytest.raises(lt.WindowIndexError, match="boolean mask of length 3 does not match the 4 windows"):
        select(range(4), np.array([True, False, True]))


def test_the_empty_array_and_empty_list_select_nothing():
    assert as_list(select(range(5), np.array([], dtype=np.int64))) == []
    assert as_list(select(range(5), [])) == []
    assert as_list(select(range(0), [])) == []


@pytest.mark.parametrize(
    ("key", "named"),
    [
        (1.0, "not float"),
        ("3", "not str"),
        (None, "not NoneType"),
        ((1, 2.5), "not 1-d ndarray of float64"),
        ([1.5], "not 1-d ndarray of float64"),
        (["a"], r"not 1-d ndarray of <U1"),
        (np.zeros((2, 2), dtype=np.int64), "not 2-d ndarray of int64"),
        (np.array([0.0, 1.0]), "not 1-d ndarray of float64"),
    ],
)
def test_bad_index_types_are_type_errors_that_name_the_type(key, named):
    with pytest.raises(TypeError, match=rf"window indices must be integers, slices or .*{named}"):
        select(range(5), key)
    with pytest.raises(lt.IndexTypeError):
        select(np.arange(5), key)


def test_ints_like_a_list_accepts_them_are_indices():
    assert select(range(10, 20), True) == 11  # a list accepts bools as 0/1
    assert select(range(10, 20), np.int8(-1)) == 19
    assert select(range(10, 20), np.array(3)) == 13  # a 0-d integer array is an int


def test_the_noun_in_messages_is_the_callers():
    with pytest.raises(lt.WindowIndexError, match="detection index 7 is out of range for 2 detections"):
        select(range(2), 7, what="detection")


def test_errors_are_the_builtins_and_the_root():
    for key, builtin in ((99, IndexError), ("x", TypeError)):
        with pytest.raises(builtin) as info:
            select(range(3), key)
        assert isinstance(info.value, lt.LazyTilesError)
