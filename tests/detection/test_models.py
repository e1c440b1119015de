"""The built-in models, loading models by name, their identity, and the output contract checks."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch

import lazytiles as lt
from lazytiles.detection.models import (
    BandMeanClassifier,
    BlobDetector,
    blob_detector,
    describe_model,
    load_model,
    window_classifier,
)
from lazytiles.detection.runner import ModelRunner, parse_outputs


@pytest.fixture(autouse=True)
def one_torch_thread():
    """torch's intra-op threads spin against each other on a busy 2-core machine; one is faster here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def blob_scene(n_images: int = 2, size: int = 96, seed: int = 0):
    """Images with non-touching coloured rectangles on a grid, and the exact box of each, per image."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n_images, 3, size, size), np.float32)
    truth = []
    for i in range(n_images):
        boxes = []
        for top in range(2, size - 20, 24):
            for left in range(2, size - 20, 24):
                if rng.random() < 0.3:
                    continue
                h, w = rng.integers(2, 20, 2)
                band = int(rng.integers(0, 3))
                images[i, band, top : top + h, left : left + w] = rng.uniform(0.6, 1.0)
                boxes.append((left, top, left + w, top + h, band, h * w))
        truth.append(boxes)
    return images, truth


def test_blob_detector_finds_every_rectangle_exactly():
    images, truth = blob_scene()
    out = BlobDetector(threshold=0.5, min_area=1)(torch.from_numpy(images))
    assert len(out) == len(truth)
    for got, want in zip(out, truth):
        got_set = {(*map(int, b.tolist()), int(lab)) for b, lab in zip(got["boxes"], got["labels"])}
        assert got_set == {(x0, y0, x1, y1, band) for x0, y0, x1, y1, band, _ in want}
        assert got["boxes"].dtype == torch.float32 and got["labels"].dtype == torch.int64
        assert ((got["scores"] > 0.6) & (got["scores"] <= 1.0)).all()


def test_blob_detector_min_area_threshold_and_batching():
    images, truth = blob_scene(n_images=3, seed=1)
    det = BlobDetector(threshold=0.5, min_area=40)
    batch = det(torch.from_numpy(images))
    for i, want in enumerate(truth):
        single = det(torch.from_numpy(images[i : i + 1]))[0]
        assert torch.equal(single["boxes"], batch[i]["boxes"])  # images do not see each other
        assert len(batch[i]["boxes"]) == sum(area >= 40 for *_, area in want)
    assert all(len(o["boxes"]) == 0 for o in BlobDetector(threshold=1.0)(torch.from_numpy(images)))


def test_blob_detector_connectivity_and_odd_shapes():
    image = torch.zeros(1, 1, 12, 12)
    image[0, 0, 2, 2] = image[0, 0, 3, 3] = 1.0  # diagonal neighbours
    image[0, 0, 6:11, 8] = image[0, 0, 10, 4:9] = 1.0  # an L: one blob, bounding box over both arms
    eight = BlobDetector(min_area=1)(image)[0]["boxes"].tolist()
    four = BlobDetector(min_area=1, connectivity=4)(image)[0]["boxes"].tolist()
    assert sorted(eight) == [[2, 2, 4, 4], [4, 6, 9, 11]]
    assert sorted(four) == [[2, 2, 3, 3], [3, 3, 4, 4], [4, 6, 9, 11]]
    with pytest.raises(lt.InvalidArgumentError, match="connectivity must be 4 or 8, got 6"):
        BlobDetector(connectivity=6)


def test_blob_detector_serpentine_blob_converges():
    image = torch.zeros(1, 1, 20, 20)
    for r in range(0, 20, 4):  # a snake whose geodesic length is far beyond its bounding box
        image[0, 0, r, :19] = 1.0
        image[0, 0, r : r + 4, 18 if r % 8 == 0 else 0] = 1.0
    out = BlobDetector(min_area=1, connectivity=4)(image)[0]
    assert out["boxes"].tolist() == [[0.0, 0.0, 19.0, 20.0]]


def test_window_classifier_example():
    x = torch.zeros(2, 3, 4, 4)
    x[0, 2] = 0.9
    x[1, 0] = 0.5
    assert BandMeanClassifier()(x).argmax(dim=1).tolist() == [2, 0]


def test_load_model_by_factory_and_errors(tmp_path):
    assert isinstance(load_model("lazytiles.detection.models:blob_detector"), BlobDetector)
    assert isinstance(load_model("lazytiles.detection.models:BandMeanClassifier"), BandMeanClassifier)
    with pytest.raises(
        lt.InvalidArgumentError, match=r"module 'no_such_pkg.mod' cannot be imported \(No module named 'no_such_pkg'\)"
    ):
        load_model("no_such_pkg.mod:factory")
    with pytest.raises(lt.InvalidArgumentError, match="has no attribute 'nope'"):
        load_model("lazytiles.detection.models:nope")
    with pytest.raises(ValueError, match="neither an existing TorchScript file nor 'package.module:factory'"):
        load_model(str(tmp_path / "missing.pt"))
    with pytest.raises(lt.InvalidArgumentError, match="returned a str, not a callable model"):
        load_model("platform:system")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(lt.InvalidArgumentError, match="could not be loaded as TorchScript"):
        load_model(bad)


class ScaledMean(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) * self.weight


def test_torchscript_file_loads_and_has_a_file_identity(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript
        scripted = torch.jit.script(ScaledMean())
    path = tmp_path / "model.pt"
    scripted.save(str(path))
    model = load_model(str(path))
    x = torch.rand(2, 3, 5, 5)
    assert torch.allclose(model(x), ScaledMean()(x))
    d = describe_model(str(path))
    assert d["kind"] == "torchscript" and d["class"] == "ScaledMean" and d["parameters"] == 3
    assert d["file"] == "model.pt" and len(d["file_sha256"]) == 64
    assert describe_model(model)["sha256"] == d["sha256"]


def test_describe_model_is_stable_and_tells_models_apart():
    a, b = ScaledMean(), ScaledMean()
    assert describe_model(a) == describe_model(b) == describe_model(pickle.loads(pickle.dumps(a)))
    with torch.no_grad():
        b.weight[1] = 2.5
    assert describe_model(a)["sha256"] != describe_model(b)["sha256"]
    assert describe_model(BlobDetector(threshold=0.4)) != describe_model(BlobDetector())
    spec = describe_model("lazytiles.detection.models:window_classifier")
    assert spec["spec"] == "lazytiles.detection.models:window_classifier"
    assert spec["class"] == "lazytiles.detection.models.BandMeanClassifier"
    assert describe_model(np.mean) == {"kind": "callable", "class": "numpy.mean"}


def test_factories_return_fresh_models():
    assert blob_detector() is not blob_detector()
    assert isinstance(window_classifier(), BandMeanClassifier)


# -- the output contract ---------------------------------------------------------------------------


def test_parse_outputs_accepts_the_three_shapes():
    dets = [
        {"boxes": torch.tensor([[1.0, 2, 3, 4]]), "scores": torch.tensor([0.5]), "labels": torch.tensor([7])},
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    (b0, s0, l0, m0), (b1, s1, l1, m1) = parse_outputs(dets, 2, [0, 1])
    assert m0 is None and m1 is None  # no masks, no outlines
    assert b0.tolist() == [[1, 2, 3, 4]] and l0.tolist() == [7] and b1.shape == (0, 4)
    scores = parse_outputs(torch.tensor([0.25, 0.75]), 2, [0, 1])
    assert [(b, s.tolist(), lab.tolist(), m) for b, s, lab, m in scores] == [
        (None, [0.25], [0], None),
        (None, [0.75], [0], None),
    ]
    logits = parse_outputs(torch.tensor([[0.0, np.log(3.0)], [np.log(4.0), 0.0]]), 2, [0, 1])
    assert [(round(float(s[0]), 6), int(lab[0])) for _, s, lab, _ in logits] == [(0.75, 1), (0.8, 0)]
    # a scripted torchvision detector returns (losses, detections)
    assert parse_outputs(({}, dets), 2, [0, 1])[0][0].tolist() == [[1, 2, 3, 4]]


@pytest.mark.parametrize(
    "out, message",
    [
        ({"boxes": torch.zeros(0, 4)}, r"returned a dict with keys \['boxes'\] for the batch of windows \[3, 4\] of 2"),
        ([{}], r"returned a list of 1 items for the batch of windows \[3, 4\] of 2 images"),
        (torch.zeros(2, 4, 4), r"returned a Tensor of shape \(2, 4, 4\)"),
        ([torch.zeros(4), torch.zeros(4)], r"item 0 is a Tensor of shape \(4,\)"),
        ([{"boxes": torch.zeros(1, 4), "scores": torch.zeros(1)}] * 2, r"\['labels'\] missing"),
        (
            [{"boxes": torch.zeros(4), "scores": torch.zeros(1), "labels": torch.zeros(1)}] * 2,
            r"boxes of shape \(4,\), scores of shape \(1,\) and labels of shape \(1,\)",
        ),
    ],
)
def test_parse_outputs_names_what_came_back_and_what_is_expected(out, message):
    with pytest.raises(lt.ModelOutputError, match=message) as info:
        parse_outputs(out, 2, [3, 4])
    assert "expected one dict per image with 'boxes' (K, 4)" in str(info.value)
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize(
    ("out", "message"),
    [
        (torch.tensor([0.5, np.nan]), r"NaN in the scores of window 4 \(image 1 of the batch of windows \[3, 4\]\)"),
        (torch.tensor([[0.0, 1.0], [-np.inf, 0.0]]), r"inf in the class logits of window 4 "),
        (np.array([1e300, 0.5]), r"inf in the scores of window 3 "),  # beyond float32
        (
            [
                {"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.zeros(1)},
                {"boxes": torch.tensor([[0, np.nan, np.inf, 1]]), "scores": torch.ones(1), "labels": torch.zeros(1)},
            ],
            r"NaN and inf in the boxes of window 4 ",
        ),
        (
            [{"boxes": torch.zeros(1, 4), "scores": torch.tensor([np.inf]), "labels": torch.zeros(1)}] * 2,
            r"inf in the scores of window 3 \(image 0",
        ),
        (
            [{"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([np.nan])}] * 2,
            r"NaN in the labels of window 3 ",
        ),
    ],
)
def test_non_finite_outputs_name_the_window_and_what_was_not_finite(out, message):
    with pytest.raises(lt.ModelOutputError, match=message + r".*must be finite numbers"):
        parse_outputs(out, 2, [3, 4])


def test_runner_preprocessing_defaults_and_bands():
    def runner(dtype, preprocess, count=3):
        return ModelRunner(
            lambda x: x,
            device=torch.device("cpu"),
            preprocess=preprocess,
            count=count,
            dtype=np.dtype(dtype),
            window_shape=(2, 2),
        )

    r = runner("uint8", lt.Preprocess())
    tensor, buf = r.new_buffer(1)
    r.fill(buf, 0, np.full((3, 2, 2), 255, np.uint8))
    assert torch.equal(r._prepare(tensor), torch.ones(1, 3, 2, 2))
    r = runner("uint16", lt.Preprocess(bands=(2, 0), mean=0.5, std=(0.5, 0.25)))
    tensor, buf = r.new_buffer(1)
    data = np.stack([np.full((2, 2), 65535), np.zeros((2, 2)), np.zeros((2, 2))]).astype(np.uint16)
    r.fill(buf, 0, data)
    x = r._prepare(tensor)
    assert x.shape == (1, 2, 2, 2) and x.dtype == torch.float32
    assert x[0, :, 0, 0].tolist() == [(0 - 0.5) / 0.5, (1 - 0.5) / 0.25]
    r = runner("float32", lt.Preprocess())
    tensor, buf = r.new_buffer(1)
    assert r._prepare(tensor) is tensor  # floats go to the model as they are: no copy
    r = runner("int16", lt.Preprocess(dtype="float64"))
    tensor, buf = r.new_buffer(1)
    r.fill(buf, 0, np.full((3, 2, 2), -3, np.int16))
    assert r._prepare(tensor).dtype == torch.float64 and r._prepare(tensor).flatten()[0].item() == -3.0
    r = runner("uint8", lt.Preprocess(dtype="bfloat16", scale=0.5))  # numpy has no bfloat16: torch converts
    tensor, buf = r.new_buffer(1)
    r.fill(buf, 0, np.full((3, 2, 2), 3, np.uint8))
    assert r._prepare(tensor).dtype == torch.bfloat16 and r._prepare(tensor).flatten()[0].item() == 1.5
    r = runner("uint16", lambda t: t.float() + 1)  # a callable sees the raw batch
    tensor, buf = r.new_buffer(1)
    r.fill(buf, 0, np.full((3, 2, 2), 7, np.uint16))
    assert tensor.dtype == torch.uint16 and r._prepare(tensor).flatten()[0].item() == 8.0
    with pytest.raises(lt.InvalidArgumentError, match=r"selects band 3, but the source has 3 bands"):
        runner("uint8", lt.Preprocess(bands=(0, 3)))
