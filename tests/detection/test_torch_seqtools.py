"""Interop: a WindowSequence works unchanged with torch's DataLoader and with seqtools combinators."""

from __future__ import annotations

import collections.abc

import numpy as np
import pytest
import seqtools
import torch
from conftest import ramp, write_tif
from numpy.testing import assert_array_equal

import lazytiles as lt


@pytest.fixture
def wins(tmp_path):
    """A RasterSource WindowSequence: 6 x 6 windows of 3 x 64 x 64 uint16, each pixel naming its position."""
    path = write_tif(tmp_path / "interop.tif", ramp(3, 300, 300, "uint16"), block=(64, 64))
    return lt.windows(lt.open(path), 64, overlap=0.25, edge="pad")


def serial(wins) -> list[np.ndarray]:
    return [w.data.copy() for w in wins]


def test_a_sequence_is_a_sequence_and_a_map_style_dataset(wins):
    assert isinstance(wins, collections.abc.Sequence)
    assert len(wins) == 36
    assert [w.index for w in wins[::-7]] == list(range(36))[::-7]
    ds: torch.utils.data.Dataset = wins  # map-style: __len__ and __getitem__ with ints
    assert torch.as_tensor(np.asarray(ds[0])).shape == (3, 64, 64)


def test_collate_stacks_windows_and_their_indices(wins):
    images, indices = lt.collate([wins[4], wins[1]])
    assert images.dtype == torch.uint16 and images.shape == (2, 3, 64, 64)
    assert indices.tolist() == [4, 1]
    assert_array_equal(images[0].numpy(), wins[4].data)


@pytest.mark.timeout(180)
def test_a_dataloader_with_two_workers_gives_the_serial_pixels(wins):
    expected = serial(wins)
    loader = torch.utils.data.DataLoader(wins, batch_size=4, num_workers=2, collate_fn=lt.collate)
    seen = []
    for images, indices in loader:
        for image, index in zip(images, indices.tolist()):
            assert_array_equal(image.numpy(), expected[index])
            seen.append(index)
    assert seen == list(range(36))


@pytest.mark.timeout(180)
def test_a_shuffled_dataloader_over_a_slice_reads_the_right_windows(wins):
    sub = wins[5:20]
    expected = {w.index: w.data.copy() for w in sub}
    loader = torch.utils.data.DataLoader(
        sub,
        batch_size=3,
        shuffle=True,
        num_workers=2,
        collate_fn=lt.collate,
        generator=torch.Generator().manual_seed(0),
    )
    seen = []
    for images, indices in loader:
        for image, index in zip(images, indices.tolist()):
            assert_array_equal(image.numpy(), expected[index])
            seen.append(index)
    assert sorted(seen) == list(range(5, 20))


def test_seqtools_smap_batch_and_collate_stay_lazy_and_exact(wins):
    expected = serial(wins)
    means = seqtools.smap(lambda w: float(w.data.mean()), wins)
    assert len(means) == 36 and means[7] == pytest.approx(expected[7].mean())
    batches = seqtools.batch(seqtools.smap(lambda w: w.data, wins), 4, collate_fn=np.stack)
    assert len(batches) == 9
    assert_array_equal(batches[8], np.stack(expected[32:]))
    pairs = seqtools.collate([wins, seqtools.smap(lambda w: w.index, wins)])
    w, i = pairs[11]
    assert i == 11 and w.index == 11


@pytest.mark.timeout(180)
@pytest.mark.parametrize("method", ["thread", "process"])
def test_seqtools_prefetch_gives_the_serial_pixels(wins, method):
    expected = serial(wins)
    pre = seqtools.prefetch(
        seqtools.smap(lambda w: (w.index, w.data), wins) if method == "thread" else wins,
        nworkers=2,
        method=method,
        max_buffered=4,
    )
    for k, item in enumerate(pre):
        index, data = item if method == "thread" else (item.index, item.data)
        assert index == k
        assert_array_equal(data, expected[k])


@pytest.mark.timeout(180)
@pytest.mark.parametrize("method", ["thread", "process"])
def test_lt_prefetch_gives_the_serial_pixels(wins, method):
    expected = serial(wins)
    with lt.prefetch(wins, workers=2, method=method, progress=False) as pre:
        assert [w.index for w in pre] == list(range(36))
        for k in (35, 3, 4, 5, 0):  # random access too
            assert_array_equal(pre[k].data, expected[k])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_spawned_dataloader_rebuilds_the_sequence_from_its_recipe(wins):
    # spawn pickles the dataset into each worker: a path and a plan, reopened there
    expected = serial(wins)
    loader = torch.utils.data.DataLoader(
        wins, batch_size=6, num_workers=2, collate_fn=lt.collate, multiprocessing_context="spawn"
    )
    for images, indices in loader:
        for image, index in zip(images, indices.tolist()):
            assert_array_equal(image.numpy(), expected[index])
