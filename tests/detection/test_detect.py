"""lt.detect: laziness, the streaming pipeline against random access, the model contract, failures."""

from __future__ import annotations

import gc
import pickle
import threading

import numpy as np
import pytest
import torch
from conftest import UTM_10M, CountingSource
from rasterio.windows import Window as PixelWindow

import lazytiles as lt
from lazytiles.cache import TileKey
from lazytiles.detection.models import BandMeanClassifier, BlobDetector
from lazytiles.sources.base import FetchPool

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """torch's intra-op threads spin against each other on a busy 2-core machine; one is faster here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: Sources' own tile read-ahead pools live as long as their source (like a connection pool); the
#: threads a detection pass starts must not outlive it.
SOURCE_POOLS = FetchPool.THREAD_PREFIX


def lazytiles_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("lazytiles") and not t.name.startswith(SOURCE_POOLS)]


def rect_scene(height: int = 640, width: int = 768, seed: int = 0):
    """A uint8 RGB image of non-touching coloured rectangles, many across window seams, and their boxes."""
    rng = np.random.default_rng(seed)
    image = np.zeros((3, height, width), np.uint8)
    rects = []
    for top in range(3, height - 30, 37):
        for left in range(5, width - 30, 41):
            h, w = (int(v) for v in rng.integers(3, 30, 2))
            band = int(rng.integers(0, 3))
            image[band, top : top + h, left : left + w] = 200
            rects.append((left, top, left + w, top + h, band))
    return image, rects


def expected_in_window(rects, window: PixelWindow, area: PixelWindow, min_area: int = 4):
    """Brute force: each rectangle clipped to the window, in source pixels, with its partial flag."""
    c0, r0 = window.col_off, window.row_off
    c1, r1 = c0 + window.width, r0 + window.height
    out = set()
    for x0, y0, x1, y1, band in rects:
        cx0, cy0, cx1, cy1 = max(x0, c0), max(y0, r0), min(x1, c1), min(y1, r1)
        if cx1 <= cx0 or cy1 <= cy0 or (cx1 - cx0) * (cy1 - cy0) < min_area:
            continue
        inner_left, inner_top = c0 > area.col_off, r0 > area.row_off
        inner_right, inner_bottom = c1 < area.col_off + area.width, r1 < area.row_off + area.height
        partial = (
            (inner_left and cx0 <= c0 + 1)
            or (inner_right and cx1 >= c1 - 1)
            or (inner_top and cy0 <= r0 + 1)
            or (inner_bottom and cy1 >= r1 - 1)
        )
        out.add((cx0, cy0, cx1, cy1, band, partial))
    return out


def as_set(d: lt.Detections):
    return {(*map(int, b), int(lab), bool(p)) for b, lab, p in zip(d.boxes, d.labels, d.partial)}


class CountingModel(torch.nn.Module):
    """The blob detector, recording the batch size of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = BlobDetector()
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(len(x))
        return self.inner(x)


@pytest.fixture
def scene():
    image, rects = rect_scene()
    src = CountingSource(image, transform=UTM_10M, crs="EPSG:32633", tile_shape=128)
    return src, rects


def test_nothing_runs_until_indexed_and_then_only_that_window(scene):
    src, rects = scene
    wins = lt.windows(src, size=192, overlap=0.25)
    model = CountingModel()
    dets = lt.detect(model, wins, progress=False)
    assert len(dets) == len(wins) == 25 and not model.calls and not src.reads
    d = dets[17]
    assert model.calls == [1]
    assert {(k.row, k.col) for k in src.reads} == {(k.row, k.col) for k in wins.tiles(17)}
    assert isinstance(d, lt.Detections) and set(d.window_index) == {17}
    assert as_set(d) == expected_in_window(rects, wins.pixel_window(17), wins.area)
    assert d.transform == UTM_10M and d.crs == src.crs


@pytest.mark.parametrize("batch_size, workers", [(1, 0), (3, 2), (7, 1), (64, 3)])
def test_streaming_equals_random_access_and_the_brute_force_truth(scene, batch_size, workers):
    src, rects = scene
    wins = lt.windows(src, size=(160, 192), overlap=0.3, edge="shift")
    dets = lt.detect(BlobDetector(), wins, batch_size=batch_size, workers=workers, progress=False)
    streamed = list(dets)
    assert len(streamed) == len(wins)
    for i, d in enumerate(streamed):
        assert as_set(d) == expected_in_window(rects, wins.pixel_window(i), wins.area)
        one = dets[i]
        assert d == one and np.array_equal(d.partial, one.partial)
        assert set(d.window_index) <= {i}
    stats = dets.stats()
    assert stats["windows"] == len(wins) and stats["batches"] == -(-len(wins) // batch_size)
    assert 0 < stats["model_seconds"] <= stats["seconds"]


def test_batches_do_not_divide_the_length_and_all_windows_are_read_once(scene):
    src, _ = scene
    wins = lt.windows(src, size=128)  # 5 x 6 = 30 windows, one tile each
    model = CountingModel()
    out = list(lt.detect(model, wins, batch_size=8, progress=False))
    assert len(out) == 30 and model.calls == [8, 8, 8, 6]
    assert len(src.reads) == 30 and max(src.reads.values()) == 1


def test_slices_and_index_arrays_run_over_their_windows_only(scene):
    src, rects = scene
    wins = lt.windows(src, size=192, overlap=0.25)
    model = CountingModel()
    dets = lt.detect(model, wins, batch_size=4, progress=False)
    todo = np.array([19, 3, 4, 11])
    sub = dets[todo]
    assert isinstance(sub, lt.DetectionSequence) and len(sub) == 4 and not model.calls
    assert list(sub.windows.indices) == todo.tolist()
    results = list(lt.detect(model, wins[todo], batch_size=3, progress=False))
    assert model.calls == [3, 1]
    for i, d in zip(todo, results):
        assert as_set(d) == expected_in_window(rects, wins.pixel_window(int(i)), wins.area)
        assert set(d.window_index) <= {int(i)}
    # a view's windows keep the partial flags they have in the whole grid (a view's edge is not the area's)
    assert results == [dets[int(i)] for i in todo] and list(lt.detect(model, wins[3:5], progress=False)) == results[1:3]
    assert list(dets[23:]) == [dets[23], dets[24]] and dets[-1] == dets[24]


def test_outcomes_tolerates_unreadable_windows_and_iteration_raises(scene):
    src, _ = scene

    class Flaky(lt.ArraySource):
        def _read_tile(self, key: TileKey):
            if (key.row, key.col) == (1, 2):
                raise lt.TileFetchError(f"tile {key} failed: HTTP Error 500")
            return super()._read_tile(key)

    flaky = Flaky(src.array, transform=UTM_10M, crs="EPSG:32633", tile_shape=128)
    wins = lt.windows(flaky, size=128)  # window k covers tile k: tile (1, 2) is window 8
    dets = lt.detect(BlobDetector(), wins, batch_size=4, progress=False)
    outcomes = list(dets.outcomes())
    assert [i for i, _, _ in outcomes] == list(range(30))
    bad = [(i, err) for i, d, err in outcomes if err is not None]
    assert len(bad) == 1 and bad[0][0] == 8 and "HTTP Error 500" in bad[0][1] and "window 8" in bad[0][1]
    assert all(isinstance(d, lt.Detections) for i, d, _ in outcomes if i != 8)
    good = lt.detect(BlobDetector(), lt.windows(src, size=128), progress=False)
    assert all(d == good[i] for i, d, _ in outcomes if i != 8)
    with pytest.raises(lt.TileFetchError, match=r"window 8 .* HTTP Error 500"):
        list(dets)
    assert not lazytiles_threads()
    with pytest.raises(OSError, match="window 8"):
        dets[8]


def test_a_bug_while_reading_surfaces_with_its_window_even_in_outcomes(scene):
    src, _ = scene

    class Buggy(lt.ArraySource):
        def _read_tile(self, key: TileKey):
            if (key.row, key.col) == (2, 3):
                raise ZeroDivisionError("division by zero in a decoder")
            return super()._read_tile(key)

    wins = lt.windows(Buggy(src.array, tile_shape=128), size=128)  # tile (2, 3) is window 15
    dets = lt.detect(BlobDetector(), wins, batch_size=4, workers=2, progress=False)
    for run in (lambda: list(dets), lambda: list(dets.outcomes())):
        with pytest.raises(
            lt.WorkerError, match="reading window 15 failed: ZeroDivisionError: division by zero"
        ) as info:
            run()
        assert isinstance(info.value.__cause__, ZeroDivisionError)
        assert not lazytiles_threads()


def test_an_exception_in_the_model_names_the_windows_and_leaves_no_thread(scene):
    src, _ = scene
    wins = lt.windows(src, size=128)

    def model(x):
        if model.calls == 2:
            raise ValueError("boom")
        model.calls += 1
        return BlobDetector()(x)

    model.calls = 0
    before = set(threading.enumerate())
    with pytest.raises(
        lt.WorkerError, match=r"the model raised ValueError on the batch of windows \[8, 9, 10, 11\]: boom"
    ) as info:
        for _ in lt.detect(model, wins, batch_size=4, workers=2, progress=False):
            pass
    assert isinstance(info.value, RuntimeError) and isinstance(info.value.__cause__, ValueError)
    assert not lazytiles_threads() and set(threading.enumerate()) <= before
    model.calls = 2
    with pytest.raises(lt.WorkerError, match=r"on the batch of windows \[17\]: boom"):
        lt.detect(model, wins, progress=False)[17]


def test_a_wrong_output_fails_on_the_first_batch_with_both_shapes_named(scene):
    src, _ = scene
    wins = lt.windows(src, size=128)
    calls = []

    def model(x):
        calls.append(len(x))
        return [{"boxes": torch.zeros(2, 5), "scores": torch.zeros(2), "labels": torch.zeros(2)} for _ in x]

    with pytest.raises(
        lt.ModelOutputError, match=r"boxes of shape \(2, 5\).*expected one dict per image with 'boxes' \(K, 4\)"
    ):
        list(lt.detect(model, wins, batch_size=8, progress=False))
    assert calls == [8] and not lazytiles_threads()

    def dict_model(x):
        return {"boxes": torch.zeros(len(x), 0, 4)}

    with pytest.raises(
        TypeError, match=r"returned a dict with keys \['boxes'\] for the batch of windows \[0, 1, \.\.\., 7\]"
    ):
        next(iter(lt.detect(dict_model, wins, batch_size=8, progress=False)))


class InverseBrightness(torch.nn.Module):
    """One box per window, scaled by 1 / the window's mean brightness: a black window gets an infinite box."""

    def forward(self, x):
        mean = x.float().mean(dim=(1, 2, 3))
        box, label = torch.tensor([0.0, 0.0, 8.0, 8.0]), torch.zeros(1, dtype=torch.int64)
        return [{"boxes": (box / m)[None], "scores": m[None], "labels": label} for m in mean]


def test_an_infinite_box_fails_naming_its_window_before_anything_of_its_batch_is_returned():
    image = np.full((3, 512, 512), 100, np.uint8)
    image[:, 128:256, 384:512] = 0  # window 7 of the 4 x 4 is black
    wins = lt.windows(lt.ArraySource(image, tile_shape=128), size=128)
    returned = []
    message = r"inf in the boxes of window 7 \(image 3 of the batch of windows \[4, 5, 6, 7\]\); .* must be finite"
    with pytest.raises(lt.ModelOutputError, match=message):
        for d in lt.detect(InverseBrightness(), wins, batch_size=4, progress=False):
            returned.extend(d.window_index.tolist())
    assert returned == [0, 1, 2, 3] and not lazytiles_threads()
    with pytest.raises(lt.ModelOutputError, match=r"window 7 "):
        lt.detect(InverseBrightness(), wins, progress=False)[7]


def test_break_and_garbage_collection_stop_every_worker(scene):
    src, _ = scene
    dets = lt.detect(BlobDetector(), lt.windows(src, size=64), batch_size=2, workers=3, progress=False)
    for k, _ in enumerate(dets):
        assert lazytiles_threads()
        if k == 3:
            break
    assert not lazytiles_threads()
    it = iter(dets)
    next(it)
    assert lazytiles_threads()
    del it
    gc.collect()
    assert not lazytiles_threads()
    it = dets.outcomes()
    next(it)
    it.close()
    assert not lazytiles_threads()


def test_window_classifiers_box_the_whole_window(scene):
    src, _ = scene
    wins = lt.windows(src, size=128, overlap=0.5)
    for d, w in zip(lt.detect(BandMeanClassifier(), wins, progress=False), wins):
        assert len(d) == 1 and not d.partial.any()
        c, r = w.window.col_off, w.window.row_off
        assert d.boxes.tolist() == [[c, r, c + 128, r + 128]]
        means = w.data.reshape(3, -1).mean(axis=1) / 255
        assert d.labels[0] == means.argmax()
        prob = np.exp(10 * means - (10 * means).max())
        assert d.scores[0] == pytest.approx(prob.max() / prob.sum(), rel=1e-5)
    truth = np.array([w.data.mean() / 255 for w in wins], np.float32)
    cut = float(np.median(truth))
    scores = lt.detect(lambda x: x.mean(dim=(1, 2, 3)), wins, score_threshold=cut, progress=False)
    kept = [len(d) for d in scores]
    assert kept == [int(t >= cut) for t in truth] and 0 < sum(kept) < len(wins)


def test_preprocess_and_score_threshold_reach_the_model(scene):
    src, _ = scene
    wins = lt.windows(src, size=128)
    seen = []

    def model(x):
        seen.append(x.clone())
        return torch.zeros(len(x))

    pre = lt.Preprocess(bands=(2, 0), mean=(0.5, 0.0), std=(0.5, 2.0))
    list(lt.detect(model, wins[:3], preprocess=pre, batch_size=3, progress=False))
    x = seen[0]
    assert x.shape == (3, 2, 128, 128) and x.dtype == torch.float32
    raw = np.stack([w.data for w in wins[:3]]).astype(np.float64) / 255
    np.testing.assert_allclose(x[:, 0].numpy(), (raw[:, 2] - 0.5) / 0.5, rtol=1e-6)
    np.testing.assert_allclose(x[:, 1].numpy(), raw[:, 0] / 2.0, rtol=1e-6)
    seen.clear()
    lt.detect(model, wins, preprocess=lambda t: t[:, :1].double() * 2, progress=False)[4]
    assert seen[0].dtype == torch.float64 and seen[0].max() == 2 * int(wins[4].data[0].max())


def test_arguments_are_checked_when_detect_is_called(scene):
    src, _ = scene
    wins = lt.windows(src, size=128)
    with pytest.raises(lt.InvalidArgumentError, match="batch_size must be an integer >= 1, got 0"):
        lt.detect(BlobDetector(), wins, batch_size=0)
    with pytest.raises(ValueError, match="workers must be an integer >= 0, got -1"):
        lt.detect(BlobDetector(), wins, workers=-1)
    with pytest.raises(lt.InvalidArgumentError, match="model must be callable"):
        lt.detect(42, wins)
    with pytest.raises(lt.InvalidArgumentError, match="wins must be a lazytiles.WindowSequence"):
        lt.detect(BlobDetector(), [np.zeros((3, 8, 8))])
    with pytest.raises(
        lt.InvalidArgumentError, match=r"Preprocess\(mean=\(0.1, 0.2\)\) has 2 values, but the model gets 3 bands"
    ):
        lt.detect(BlobDetector(), wins, preprocess=lt.Preprocess(mean=(0.1, 0.2)))
    with pytest.raises(lt.InvalidArgumentError, match="device='gpu7' is not a torch device"):
        lt.detect(BlobDetector(), wins, device="gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(lt.InvalidArgumentError, match=r"torch.cuda.is_available\(\) is False"):
            lt.detect(BlobDetector(), wins, device="cuda")
    with pytest.raises(lt.InvalidArgumentError, match="std must be positive"):
        lt.Preprocess(std=(1.0, 0.0))


def test_detection_sequences_pickle_as_recipes(scene):
    src, rects = scene
    wins = lt.windows(src, size=192, overlap=0.25)
    for model in (BlobDetector(), "lazytiles.detection.models:blob_detector"):
        dets = lt.detect(model, wins, batch_size=4, progress=False)[5:9]
        want = list(dets)
        copy = pickle.loads(pickle.dumps(dets))
        assert len(copy) == 4 and copy.options["batch_size"] == 4
        assert list(copy) == want and copy[2] == want[2]
    assert isinstance(copy.model, BlobDetector)
    assert len(pickle.dumps(dets)) < 10_000 + src.array.nbytes


def test_progress_bar_and_repr(scene, capsys):
    src, _ = scene
    dets = lt.detect("lazytiles.detection.models:blob_detector", lt.windows(src, size=320), progress=True)
    assert "lazytiles.detection.models:blob_detector over 6 windows" in repr(dets)
    assert len(list(dets)) == 6
    assert "6/6" in capsys.readouterr().err


@pytest.mark.slow
def test_process_readers_give_the_same_detections(tmp_path):
    from conftest import write_tif

    image, _ = rect_scene(384, 384)
    path = write_tif(tmp_path / "scene.tif", image, block=(128, 128))
    wins = lt.windows(lt.open(str(path)), size=128, overlap=0.25)
    by_thread = list(lt.detect(BlobDetector(), wins, progress=False))
    by_process = list(lt.detect(BlobDetector(), wins, method="process", workers=2, progress=False))
    assert by_process == by_thread and sum(map(len, by_thread)) > 20
    assert not lazytiles_threads()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_detections(scene):
    src, _ = scene
    wins = lt.windows(src, size=192, overlap=0.25)
    on_cpu = list(lt.detect(BlobDetector(), wins, batch_size=4, progress=False))
    dets = lt.detect(BlobDetector(), wins, batch_size=4, device="cuda", progress=False)
    assert list(dets) == on_cpu and dets[7] == on_cpu[7]
    pre = lt.Preprocess(bands=(1, 2, 0), mean=0.1, std=0.9)
    want = list(lt.detect(BlobDetector(threshold=0.3), wins[:6], preprocess=pre, progress=False))
    assert list(lt.detect(BlobDetector(threshold=0.3), wins[:6], preprocess=pre, device="cuda", progress=False)) == want
    assert not lazytiles_threads()
