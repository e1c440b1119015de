"""lt.polygons: a label raster traced block by block equals one whole-raster trace, object for object."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely
from conftest import UTM_10M, write_tif
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.features import shapes

import lazytiles as lt


def labels_scene(seed: int = 0, height: int = 96, width: int = 128) -> np.ndarray:
    """Blocky regions of classes 0..3 (8-px cells, so they cross block seams) with 5 % pixel noise:
    single pixels, diagonal contacts and ragged edges everywhere."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 4, (height // 8, width // 8), dtype=np.uint8)
    labels = np.kron(coarse, np.ones((8, 8), np.uint8))
    noise = rng.random(labels.shape) < 0.05
    labels[noise] = rng.integers(0, 4, int(noise.sum()), dtype=np.uint8)
    return labels


def truth(labels: np.ndarray, valid: np.ndarray) -> list[tuple[int, shapely.Geometry]]:
    """One whole-raster trace, each object's pieces united (there is one piece per object)."""
    by_object = [(int(v), shapely.geometry.shape(g)) for g, v in shapes(labels, mask=valid)]
    return sorted(
        ((v, shapely.union_all([g])) for v, g in by_object), key=lambda o: (o[1].bounds[1], o[1].bounds[0], o[0])
    )


def assert_objects_equal(found: lt.Detections, want: list[tuple[int, shapely.Geometry]]) -> None:
    assert len(found) == len(want)
    got = {}
    for label, shape, box in zip(found.labels.tolist(), found.shapes, found.boxes):
        assert shape.is_valid and shape.geom_type == "Polygon"
        np.testing.assert_array_equal(box, shape.bounds)
        got.setdefault((label, *shape.bounds), []).append(shape)
    for label, shape in want:
        candidates = got[(label, *shape.bounds)]
        match = [g for g in candidates if g.equals(shape)]
        assert match, f"object of class {label} at {shape.bounds} is missing or differs"
        candidates.remove(match[0])


@pytest.mark.parametrize("block", [None, 16, 7, (5, 13), (96, 128)])
def test_polygons_equal_a_whole_raster_trace(tmp_path, block):
    labels = labels_scene()
    path = write_tif(tmp_path / "labels.tif", labels[None], block=(16, 16), nodata=0)
    found = lt.polygons(path, block=block)
    assert_objects_equal(found, truth(labels, labels != 0))
    assert found.crs == rasterio.crs.CRS.from_epsg(32633) and found.transform == UTM_10M
    assert (found.scores == 1).all() and (found.window_index == -1).all()
    assert len(found) > 100  # the scene is busy: many objects cross seams


def test_one_object_across_many_blocks_with_holes_stays_one(tmp_path):
    labels = np.zeros((64, 64), np.uint8)
    labels[2:62, 2:62] = 5  # a square ring crossing 16 blocks of 16 px ...
    labels[10:54, 10:54] = 0  # ... around a hole crossing 9 block seams,
    labels[30:34, 30:34] = 5  # an island inside the hole,
    labels[20, 2] = 0  # a notch cutting its left band,
    labels[15:17, 7:9] = 0  # and a hole inside the band, on a block corner
    path = write_tif(tmp_path / "ring.tif", labels[None], block=(16, 16), nodata=0)
    found = lt.polygons(path, block=8)
    assert len(found) == 2
    ring = found.shapes[0]
    assert ring.geom_type == "Polygon" and len(ring.interiors) == 2
    assert ring.area == (labels == 5).sum() - 16 and found.shapes[1].area == 16
    assert_objects_equal(found, truth(labels, labels != 0))


def test_diagonal_contacts_across_a_seam_are_separate_objects(tmp_path):
    labels = np.zeros((32, 32), np.uint8)
    labels[15, 15] = labels[16, 16] = 1  # corner to corner across both seams at (16, 16)
    labels[14:16, 3] = labels[16:18, 3] = 2  # edge to edge across the row seam
    path = write_tif(tmp_path / "d.tif", labels[None], block=(16, 16), nodata=0)
    found = lt.polygons(path, block=16)
    assert sorted(found.labels.tolist()) == [1, 1, 2]
    assert found[found.labels == 2].shapes[0].equals(shapely.box(3, 14, 4, 18))


def test_min_area_classes_and_nodata(tmp_path):
    labels = labels_scene(seed=1)
    path = write_tif(tmp_path / "labels.tif", labels[None], block=(16, 16), nodata=0)
    want = truth(labels, labels != 0)
    big = lt.polygons(path, min_area=20, block=16)
    assert_objects_equal(big, [(v, g) for v, g in want if g.area >= 20])
    assert 0 < len(big) < len(want)
    two = lt.polygons(path, classes=[2], block=16)
    assert_objects_equal(two, truth(labels, labels == 2))
    assert set(two.labels.tolist()) == {2}
    plain = write_tif(tmp_path / "plain.tif", labels[None], block=(16, 16))  # no nodata: 0 is a class too
    everything = lt.polygons(plain, block=16)
    assert_objects_equal(everything, truth(labels, np.ones_like(labels, bool)))
    assert shapely.union_all(everything.shapes).equals(shapely.box(0, 0, 128, 96))


def test_an_open_dataset_is_traced_and_left_open(tmp_path):
    labels = labels_scene(seed=2, height=40, width=50)
    path = write_tif(tmp_path / "labels.tif", labels[None], block=(16, 16), nodata=0)
    with rasterio.open(path) as ds:
        found = lt.polygons(ds)
        assert not ds.closed
    assert_objects_equal(found, truth(labels, labels != 0))
    geo = found.polygons()  # outlines, in the raster's CRS
    assert geo[0].equals(shapely.affinity.affine_transform(found.shapes[0], UTM_10M.to_shapely()))


def test_bad_input_is_named(tmp_path):
    floats = write_tif(tmp_path / "f.tif", np.zeros((1, 8, 8), np.float32))
    with pytest.raises(lt.InvalidArgumentError, match="integer classes.*band 1 is float32"):
        lt.polygons(floats)
    labels = write_tif(tmp_path / "l.tif", np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(lt.InvalidArgumentError, match=r"block must be .* got \(0, 4\)"):
        lt.polygons(labels, block=(0, 4))
    with pytest.raises(lt.InvalidArgumentError, match="min_area must be .* got -1"):
        lt.polygons(labels, min_area=-1)
    with pytest.raises(lt.InvalidArgumentError, match=r"bands 1..1, got 2"):
        lt.polygons(labels, band=2)
    with pytest.raises(lt.SourceNotFoundError, match="nowhere.tif"):
        lt.polygons(tmp_path / "nowhere.tif")
    with pytest.raises(lt.InvalidArgumentError, match="path or an open rasterio dataset, got list"):
        lt.polygons([1, 2])


class ReadLog:
    """An open dataset that records the windows read (everything else is the real dataset's)."""

    def __init__(self, ds) -> None:
        self._ds, self.reads = ds, []

    def __getattr__(self, name):
        return getattr(self._ds, name)

    def read(self, band, window):
        self.reads.append(window)
        return self._ds.read(band, window=window)


def test_each_block_is_read_once_in_row_order(tmp_path):
    labels = labels_scene(seed=3)
    path = write_tif(tmp_path / "labels.tif", labels[None], block=(16, 16), nodata=0)
    with rasterio.open(path) as ds:
        log = ReadLog(ds)
        found = lt.polygons(log, block=(16, 32))
    assert_objects_equal(found, truth(labels, labels != 0))
    got = [(w.row_off, w.col_off, w.height, w.width) for w in log.reads]
    assert got == [(r, c, 16, 32) for r in range(0, 96, 16) for c in range(0, 128, 32)]  # no pixel twice


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    block=st.tuples(st.integers(1, 17), st.integers(1, 17)),
    classes=st.integers(2, 4),
)
def test_any_raster_in_any_blocks_equals_one_whole_trace(tmp_path_factory, seed, shape, block, classes):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, shape, dtype=np.uint8)
    if seed % 2:  # blocky regions, not only noise
        labels = np.kron(rng.integers(0, classes, (shape[0] // 4 + 1, shape[1] // 4 + 1)), np.ones((4, 4)))
        labels = labels[: shape[0], : shape[1]].astype(np.uint8)
    path = write_tif(tmp_path_factory.mktemp("h") / "l.tif", labels[None], block=None, nodata=0)
    assert_objects_equal(lt.polygons(path, block=block), truth(labels, labels != 0))
