"""lt.evaluate: perfect sets score 1, dropped and invented objects give hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from affine import Affine
from conftest import UTM_10M, write_tif
from pyogrio.raw import write
from rasterio.crs import CRS

import lazytiles as lt
from lazytiles.geometry import to_map


def squares(n: int, label: int = 1, step: int = 20) -> lt.Detections:
    boxes = [[k * step, 0, k * step + 10, 10] for k in range(n)]
    return lt.Detections(boxes, None, [label] * n, transform=UTM_10M, crs="EPSG:32633")


def write_truth(path, geoms_px, fields: dict, crs: str = "EPSG:4326") -> str:
    """Truth polygons given in UTM_10M pixels, written in ``crs`` (reprojected here, independently of
    lt.evaluate's path: map coordinates through the transform, then rasterio's warp)."""
    utm = CRS.from_epsg(32633)
    geoms = to_map(
        to_map(np.asarray(geoms_px, dtype=object), UTM_10M, utm, None), Affine.identity(), utm, CRS.from_user_input(crs)
    )
    write(str(path), shapely.to_wkb(geoms), list(fields.values()), list(fields), driver="GPKG",
          geometry_type="Polygon", crs=crs)  # fmt: skip
    return str(path)


def test_a_perfect_set_from_polygons_scores_one(tmp_path):
    labels = np.zeros((64, 96), np.uint8)
    labels[5:20, 5:30] = 1
    labels[30:60, 40:90] = 2
    labels[40:50, 60:70] = 0  # a hole
    labels[2:12, 60:94] = 1
    found = lt.polygons(write_tif(tmp_path / "l.tif", labels[None], block=(16, 16), nodata=0), block=16)
    truth = write_truth(tmp_path / "t.gpkg", found.shapes, {"class": found.labels})
    for match in ("box", "polygon"):
        result = lt.evaluate(found, truth, match=match)
        assert (result.precision, result.recall, result.f1, result.ap) == (1.0, 1.0, 1.0, 1.0)
        assert len(result.matched) == 3 and len(result.missed) == 0 and len(result.extra) == 0
        assert [r["class"] for r in result.table] == [1, 2, "all"]
    poly = lt.evaluate(found, truth, iou=0.999, match="polygon")  # the reprojected truth is the same polygons
    assert poly.recall == 1.0


def test_dropped_and_invented_objects_give_hand_computed_numbers():
    truth = squares(4)
    kept = truth[[0, 2, 3]]  # object 1 dropped
    invented = lt.Detections([[500, 0, 510, 10]], [0.8], [1], transform=UTM_10M, crs="EPSG:32633")
    found = lt.Detections(
        np.vstack([kept.boxes[:1], invented.boxes, kept.boxes[1:]]),
        [0.9, 0.8, 0.7, 0.6], [1, 1, 1, 1], transform=UTM_10M, crs="EPSG:32633",
    )  # fmt: skip
    result = lt.evaluate(found, truth)
    row = result.table[0]
    assert (row["truth"], row["found"], row["matched"]) == (4, 4, 3)
    assert row["precision"] == 0.75 and row["recall"] == 0.75 and row["f1"] == 0.75
    # ranked: hit, miss, hit, hit; precision 1, 1/2, 2/3, 3/4 at recall 1/4, 1/4, 2/4, 3/4;
    # its monotone envelope 1, 3/4, 3/4, 3/4: AP = 1/4 * 1 + 1/4 * 3/4 + 1/4 * 3/4
    assert row["ap"] == pytest.approx(0.625)
    np.testing.assert_array_equal(result.missed.boxes, truth.boxes[1:2])
    np.testing.assert_array_equal(result.extra.boxes, invented.boxes)
    assert len(result.matched) == 3 and "1 missed, 1 extra" in repr(result)


def test_classes_are_scored_apart_and_a_wrong_class_is_no_match():
    truth = squares(2, label=1) + squares(1, label=2, step=50)._take(np.array([0]))
    found = lt.Detections(truth.boxes, [0.9, 0.5, 0.8], [1, 2, 2], transform=UTM_10M, crs="EPSG:32633")
    result = lt.evaluate(found, truth)
    by = {r["class"]: r for r in result.table}
    assert (by[1]["matched"], by[1]["recall"], by[1]["precision"]) == (1, 0.5, 1.0)
    # class 2: found 0.8 (hit: the same box as the true one), 0.5 (a class-1 object): AP 1
    assert (by[2]["matched"], by[2]["precision"], by[2]["ap"]) == (1, 0.5, 1.0)
    assert by["all"]["ap"] == pytest.approx((0.5 + 1.0) / 2)


def test_iou_threshold_and_polygon_matching():
    comb = shapely.union_all([shapely.box(0, 0, 40, 4)] + [shapely.box(x, 4, x + 4, 40) for x in range(0, 40, 8)])
    truth = lt.Detections([comb.bounds], None, [1], shapes=[comb], transform=UTM_10M, crs="EPSG:32633")
    found = lt.Detections([[0, 0, 40, 40]], [0.9], [1], transform=UTM_10M, crs="EPSG:32633")  # the box, no outline
    assert lt.evaluate(found, truth, match="box").recall == 1.0
    area = comb.area / 1600  # the comb inside its box: IoU 0.55
    assert area == 0.55 and lt.evaluate(found, truth, match="polygon").recall == 1.0
    assert lt.evaluate(found, truth, iou=area + 1e-9, match="polygon").recall == 0.0
    assert lt.evaluate(found, truth, iou=area - 1e-9, match="polygon").recall == 1.0


def test_objects_on_window_seams_are_scored_apart():
    wins = lt.windows(lt.ArraySource(np.zeros((1, 64, 128), np.uint8), transform=UTM_10M, crs="EPSG:32633"), 64)
    truth = lt.Detections([[5, 5, 20, 20], [56, 5, 72, 20], [100, 40, 127, 60], [60, 40, 70, 50]], None,
                          [1, 1, 1, 1], transform=UTM_10M, crs="EPSG:32633")  # fmt: skip
    found = truth[[0, 2, 3]]  # the first seam object missed
    result = lt.evaluate(found, truth, windows=wins)
    seam = result.seams[-1]
    assert (seam["truth"], seam["found"], seam["matched"], seam["recall"]) == (2, 1, 1, 0.5)
    assert result.table[-1]["recall"] == 0.75
    assert lt.evaluate(found, truth).seams is None


def test_truth_files_are_read_with_their_class_column(tmp_path):
    truth = squares(3)
    pixels = shapely.box(*truth.boxes.T)
    path = write_truth(tmp_path / "t.gpkg", pixels, {"kind": np.array([4, 4, 5])}, crs="EPSG:32633")
    found = lt.Detections(truth.boxes, None, [4, 4, 5], transform=UTM_10M, crs="EPSG:32633")
    assert lt.evaluate(found, path).recall == 0.0  # no label or class column: every true object is class 0
    assert lt.evaluate(found, path, label_column="kind").recall == 1.0
    with pytest.raises(lt.InvalidArgumentError, match=r"has no column 'nope'; its columns are \['kind'\]"):
        lt.evaluate(found, path, label_column="nope")
    names = write_truth(tmp_path / "n.gpkg", pixels, {"label": np.array(["a", "b", "c"], dtype=object)})
    with pytest.raises(lt.InvalidArgumentError, match="holds object values, not integer class ids"):
        lt.evaluate(found, names)
    points = tmp_path / "points.gpkg"
    write(str(points), shapely.to_wkb(shapely.points([[0, 0], [1, 1]])), [np.array([1, 2])], ["label"],
          driver="GPKG", geometry_type="Point", crs="EPSG:32633")  # fmt: skip
    with pytest.raises(lt.InvalidArgumentError, match="holds a Point at feature 0; evaluation compares polygons"):
        lt.evaluate(found, points)
    with pytest.raises(lt.SourceNotFoundError, match="does not exist"):
        lt.evaluate(found, tmp_path / "none.gpkg")
    with pytest.raises(lt.InvalidArgumentError, match=r"match must be 'box' or 'polygon', got 'mask'"):
        lt.evaluate(found, truth, match="mask")
    with pytest.raises(lt.InvalidArgumentError, match=r"iou must be a threshold in \(0, 1\], got 0"):
        lt.evaluate(found, truth, iou=0)


def test_nothing_found_or_nothing_true():
    truth = squares(2)
    none = lt.Detections.empty(transform=UTM_10M, crs="EPSG:32633")
    result = lt.evaluate(none, truth)
    assert result.recall == 0.0 and math.isnan(result.precision) and result.ap == 0.0
    result = lt.evaluate(truth, none)
    assert result.precision == 0.0 and math.isnan(result.recall) and math.isnan(result.ap)


def test_the_result_shows_as_html_in_a_notebook():
    truth = squares(3)
    page = lt.evaluate(truth[:2], truth)._repr_html_()
    assert page.startswith("<div><b>lt.Evaluation: box IoU &gt;= 0.5; 1 missed, 0 extra</b><table>")
    assert "<td>0.6667</td>" in page and page.count("<tr>") == 3  # header, class 1, all
