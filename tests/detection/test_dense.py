"""lt.predict: laziness, the streaming pass against random access, the dense-model contract."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
import torch
from affine import Affine
from numpy.testing import assert_array_equal

import lazytiles as lt
from lazytiles.detection.models import ColourSegmenter
from lazytiles.testing.sample import COLOURS, sample_scene

pytestmark = pytest.mark.timeout(60)


class Counting(torch.nn.Module):
    """A dense model returning band 0 times 10 as one score per pixel, counting its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x[:, 0] * 10


@pytest.fixture
def ramp_wins():
    image = (np.arange(96 * 128, dtype=np.uint32).reshape(1, 96, 128) % 251).astype(np.uint8)
    return image, lt.windows(lt.ArraySource(image, transform=Affine(2, 0, 100, 0, -2, 500)), size=32, overlap=0.5)


def test_nothing_runs_until_indexed_and_then_only_that_window(ramp_wins):
    image, wins = ramp_wins
    model = Counting()
    preds = lt.predict(model, wins, progress=False)
    assert len(preds) == len(wins) and model.calls == 0
    p = preds[7]
    assert model.calls == 1
    c, r = int(p.window.col_off), int(p.window.row_off)
    np.testing.assert_allclose(p.data, image[0, r : r + 32, c : c + 32] / 255 * 10, rtol=1e-6)
    assert p.transform == Affine(2, 0, 100 + 2 * c, 0, -2, 500 - 2 * r) and p.factor == 1
    assert not p.data.flags.writeable


def test_streaming_equals_random_access_in_batches(ramp_wins):
    _, wins = ramp_wins
    model = Counting()
    preds = lt.predict(model, wins, batch_size=4, workers=2, progress=False)
    streamed = list(preds)
    assert model.calls == -(-len(wins) // 4)
    assert [p.index for p in streamed] == list(range(len(wins)))
    for i in (0, 5, len(wins) - 1):
        assert_array_equal(streamed[i].data, preds[i].data)
    sub = preds[3:6]
    assert isinstance(sub, lt.PredictionSequence) and [p.index for p in sub] == [3, 4, 5]


class Band0(torch.nn.Module):
    """Returns a view of its input batch: the pipeline refills that batch, so the runner must copy it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def test_an_output_sharing_the_input_batch_is_copied(ramp_wins):
    image, wins = ramp_wins
    streamed = list(lt.predict(Band0(), wins, batch_size=4, workers=2, progress=False))
    for p in streamed:
        c, r = int(p.window.col_off), int(p.window.row_off)
        np.testing.assert_allclose(p.data, image[0, r : r + 32, c : c + 32] / 255, rtol=1e-6)


def test_reduce_runs_on_each_result_before_it_is_queued(ramp_wins):
    _, wins = ramp_wins
    preds = lt.predict(Counting(), wins, batch_size=4, progress=False)
    seen = []

    def reduce(index, data):
        seen.append((index, threading.current_thread().name))
        return data > 5

    out = list(preds.outcomes(reduce=reduce))
    assert [i for i, _ in seen] == [i for i, _, _ in out] == list(range(len(wins)))
    assert {name for _, name in seen} == {"lazytiles-model"}
    assert_array_equal(out[4][1].data, preds[4].data > 5)


def test_a_coarser_output_grid_scales_the_transform():
    pixels, _, _ = sample_scene(size=128, objects=2)
    wins = lt.windows(lt.ArraySource(pixels, transform=Affine(1, 0, 0, 0, -1, 0)), size=64)
    p = lt.predict(ColourSegmenter(factor=4), wins, progress=False)[3]
    assert p.data.shape == (4, 16, 16) and p.factor == 4
    assert p.transform == Affine(4, 0, 64, 0, -4, -64)


def test_the_segmenter_knows_the_sample_colours():
    assert ColourSegmenter().colours.view(-1, 3).mul(255).round().tolist() == [list(c) for c in COLOURS.values()]


@pytest.mark.parametrize(
    ("out", "match"),
    [
        (lambda x: x[:, 0, :, :30], r"shape \(1, 32, 30\).*not the window's size divided by one whole factor"),
        (lambda x: x[:, :, :16, :8], r"shape \(1, 1, 16, 8\).*factors 2 and 4"),
        (lambda x: x[:, 0, 0, 0], r"shape \(1,\)"),
        (lambda x: x[:, 0] / 0, r"NaN or inf in the scores of window 0"),
        (lambda x: [x], r"returned a list"),
    ],
)
def test_bad_outputs_name_the_shape_and_factor(ramp_wins, out, match):
    _, wins = ramp_wins
    with pytest.raises(lt.ModelOutputError, match=match):
        lt.predict(out, wins, progress=False)[0]


def test_labels_stay_integers_and_the_sequence_pickles(ramp_wins):
    _, wins = ramp_wins
    preds = lt.predict(ColourSegmenter(), wins, progress=False)
    back = pickle.loads(pickle.dumps(preds))
    assert_array_equal(back[2].data, preds[2].data)
    labels = lt.predict(lambda x: (x[:, 0] > 0.5).to(torch.int32), wins, progress=False)[2]
    assert labels.data.dtype == np.int64 and labels.labels


def test_bad_arguments_fail_where_the_sequence_is_made(ramp_wins):
    _, wins = ramp_wins
    with pytest.raises(lt.InvalidArgumentError, match="batch_size must be an integer >= 1, got 0"):
        lt.predict(Counting(), wins, batch_size=0)
    with pytest.raises(lt.InvalidArgumentError, match="wins must be a lazytiles.WindowSequence"):
        lt.predict(Counting(), [1, 2])
