"""Detections: georeferencing, GeoJSON / GeoPackage round trips, display and pickling."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import shapely
from affine import Affine
from conftest import UTM_10M
from pyogrio.raw import read
from rasterio.crs import CRS

import lazytiles as lt


def utm_to_lonlat(easting: float, northing: float, zone: int) -> tuple[float, float]:
    """Inverse transverse Mercator on WGS 84, northern hemisphere (Snyder 1987, eqs. 8-12 to 8-25).

    Independent of GDAL/PROJ; accurate to well under a centimetre within a few km of the central
    meridian, which is where the test boxes are.
    """
    a, f, k0 = 6378137.0, 1 / 298.257223563, 0.9996
    e2 = f * (2 - f)
    ep2 = e2 / (1 - e2)
    x, m = easting - 500_000.0, northing / k0
    mu = m / (a * (1 - e2 / 4 - 3 * e2**2 / 64 - 5 * e2**3 / 256))
    e1 = (1 - math.sqrt(1 - e2)) / (1 + math.sqrt(1 - e2))
    phi1 = (
        mu
        + (3 * e1 / 2 - 27 * e1**3 / 32) * math.sin(2 * mu)
        + (21 * e1**2 / 16 - 55 * e1**4 / 32) * math.sin(4 * mu)
        + (151 * e1**3 / 96) * math.sin(6 * mu)
        + (1097 * e1**4 / 512) * math.sin(8 * mu)
    )
    s, c, t = math.sin(phi1), math.cos(phi1), math.tan(phi1)
    n1 = a / math.sqrt(1 - e2 * s * s)
    t1, c1 = t * t, ep2 * c * c
    r1 = a * (1 - e2) / (1 - e2 * s * s) ** 1.5
    d = x / (n1 * k0)
    lat = phi1 - (n1 * t / r1) * (
        d**2 / 2
        - (5 + 3 * t1 + 10 * c1 - 4 * c1**2 - 9 * ep2) * d**4 / 24
        + (61 + 90 * t1 + 298 * c1 + 45 * t1**2 - 252 * ep2 - 3 * c1**2) * d**6 / 720
    )
    lon = (
        d - (1 + 2 * t1 + c1) * d**3 / 6 + (5 - 2 * c1 + 28 * t1 - 3 * c1**2 + 8 * ep2 + 24 * t1**2) * d**5 / 120
    ) / c
    return (zone - 1) * 6 - 180 + 3 + math.degrees(lon), math.degrees(lat)


BOXES = np.array([[0, 0, 10, 20], [100.5, 40, 130, 41], [250, 300, 400, 310]])


@pytest.fixture
def dets() -> lt.Detections:
    return lt.Detections(
        BOXES,
        [0.9, 0.5, 0.25],
        [1, 0, 1],
        [3, 3, 8],
        partial=[False, True, False],
        transform=UTM_10M,
        crs="EPSG:32633",
    )


def map_corners(box, transform=UTM_10M):
    """The box's four corners through the affine transform, written out by hand."""
    x0, y0, x1, y1 = box
    return [transform @ (x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]


def test_geo_boxes_in_the_source_crs_are_the_transformed_corners(dets):
    want = [
        [500_000.0, 5_999_800.0, 500_100.0, 6_000_000.0],
        [501_005.0, 5_999_590.0, 501_300.0, 5_999_600.0],
        [502_500.0, 5_996_900.0, 504_000.0, 5_997_000.0],
    ]
    np.testing.assert_allclose(dets.geo_boxes(), want)
    np.testing.assert_allclose(dets.geo_boxes(dets.crs), want)
    rotated = lt.Detections(
        [[0, 0, 10, 10]], [1], [0], transform=Affine.rotation(90) @ Affine.scale(2), crs="EPSG:3857"
    )
    np.testing.assert_allclose(rotated.geo_boxes(), [[-20, 0, 0, 20]], atol=1e-9)


def test_geo_boxes_in_lon_lat_match_an_independent_inverse_utm(dets):
    got = dets.geo_boxes("EPSG:4326")
    for box, (west, south, east, north) in zip(BOXES, got):
        corners = [utm_to_lonlat(x, y, 33) for x, y in map_corners(box)]
        lons, lats = zip(*corners)
        assert west == pytest.approx(min(lons), abs=1e-8) and east == pytest.approx(max(lons), abs=1e-8)
        assert south == pytest.approx(min(lats), abs=1e-8) and north == pytest.approx(max(lats), abs=1e-8)
    assert got[:, 0].min() > 14.99 and got[:, 2].max() < 15.1 and 54 < got[:, 1].min() < got[:, 3].max() < 54.2
    dense = dets.geo_boxes("EPSG:4326", densify=8)
    np.testing.assert_allclose(dense, got, atol=1e-6)  # small boxes: edges barely bend
    assert dets.outlines(densify=3).shape == (3, 16, 2)


def test_geo_boxes_need_a_crs_to_reproject():
    plain = lt.Detections([[0, 0, 1, 1]], [1], [0])
    np.testing.assert_allclose(plain.geo_boxes(), [[0, 0, 1, 1]])
    with pytest.raises(lt.CRSError, match=r"outlines\(crs=...\) needs the detections' CRS, but they have none"):
        plain.geo_boxes("EPSG:4326")
    with pytest.raises(lt.CRSError, match="to_geojson writes lon/lat"):
        plain.to_geojson("never.geojson")


def test_geojson_is_rfc7946_and_reads_back_with_pyogrio(dets, tmp_path):
    path = dets.to_geojson(tmp_path / "found.geojson")
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    assert doc["type"] == "FeatureCollection" and "crs" not in doc and len(doc["features"]) == 3
    props = [f["properties"] for f in doc["features"]]
    assert props[1] == {"score": 0.5, "label": 0, "window_index": 3, "partial": True}
    for feature, box in zip(doc["features"], BOXES):
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert ring.shape == (5, 2) and (ring[0] == ring[-1]).all()
        assert shapely.Polygon(ring).exterior.is_ccw  # RFC 7946: exterior rings counter-clockwise
        want = np.array([utm_to_lonlat(x, y, 33) for x, y in map_corners(box)])
        distance = np.abs(ring[:4, None, :] - want[None, :, :]).max(axis=2)  # every corner, once
        assert (distance.min(axis=1) < 1e-8).all() and (distance.min(axis=0) < 1e-8).all()
    meta, _, geometry, fields = read(path)
    assert CRS.from_user_input(meta["crs"]) == CRS.from_epsg(4326)
    assert list(meta["fields"]) == ["score", "label", "window_index", "partial"]
    np.testing.assert_allclose(fields[0], [0.9, 0.5, 0.25], rtol=1e-6)
    np.testing.assert_array_equal(fields[2], [3, 3, 8])
    np.testing.assert_allclose(shapely.bounds(shapely.from_wkb(geometry)), dets.geo_boxes("EPSG:4326"), atol=1e-12)


def test_geopackage_round_trip_in_the_source_crs(dets, tmp_path):
    path = tmp_path / "found.gpkg"
    dets.to_gpkg(path, layer="objects")
    meta, _, geometry, fields = read(path, layer="objects")
    assert CRS.from_user_input(meta["crs"]) == CRS.from_epsg(32633)
    polys = shapely.from_wkb(geometry)
    for poly, box in zip(polys, BOXES):
        assert {tuple(p) for p in np.asarray(poly.exterior.coords)[:4]} == set(map_corners(box))
    np.testing.assert_array_equal(fields[1], [1, 0, 1])
    assert [bool(v) for v in fields[3]] == [False, True, False]
    dets[:1].to_gpkg(path, layer="objects", append=True)
    assert len(read(path, layer="objects")[2]) == 4
    dets[:1].to_gpkg(path, layer="objects")
    assert len(read(path, layer="objects")[2]) == 1


def test_to_geodataframe_or_a_clear_error(dets):
    try:
        import geopandas  # noqa: F401
    except ImportError:
        with pytest.raises(lt.MissingDependencyError, match="pip install geopandas") as info:
            dets.to_geodataframe()
        assert isinstance(info.value, ImportError)
    else:
        frame = dets.to_geodataframe()
        assert len(frame) == 3 and frame.crs == dets.crs
        np.testing.assert_allclose(frame.total_bounds, [500_000, 5_996_900, 504_000, 6_000_000])


def test_repr_html_lists_rows_and_counts_by_label(dets):
    text = dets._repr_html_()
    assert "3 boxes, 1 partial" in text and "by label: 0: 1, 1: 2" in text and "EPSG:32633" in text
    assert "<td>100.5</td>" in text and "<td>0.250</td>" in text
    many = lt.Detections.concat([dets] * 5)
    assert "... 5 more" in many._repr_html_()


def test_show_draws_boxes_in_their_label_colours():
    from lazytiles.display.picture import label_colour

    white, colour = (255, 255, 255), label_colour(4)
    one = lt.Detections([[10, 10, 20, 30]], [0.9], [4], transform=UTM_10M, crs="EPSG:32633")
    image = one.show()  # a white canvas over the boxes, 3 px around them
    assert image.size == (16, 26)
    assert image.getpixel((2, 12)) == colour and image.getpixel((8, 15)) == white and image.getpixel((0, 12)) == white
    background = np.zeros((3, 50, 50), np.uint8)
    drawn = one.show(background)  # pixel (0, 0) of the array is the source's
    assert drawn.size == (50, 50) and drawn.getpixel((9, 15)) == colour and drawn.getpixel((15, 20)) == (0, 0, 0)
    src = lt.ArraySource(background, transform=UTM_10M, crs="EPSG:32633")
    assert one.show(lt.windows(src, size=25)[0]).getpixel((9, 15))[:3] == colour


def test_detections_pickle_cheaply_and_stay_frozen(dets):
    for protocol in (4, 5):
        copy = pickle.loads(pickle.dumps(dets, protocol=protocol))
        assert copy == dets and not copy.boxes.flags.writeable and not copy.partial.flags.writeable
    assert len(pickle.dumps(dets)) < 3000
    buffers = []  # out of band, as prefetch's process workers send them: the arrays land in new bytearrays
    header = pickle.dumps(dets, protocol=5, buffer_callback=buffers.append)
    copy = pickle.loads(header, buffers=[bytearray(b.raw()) for b in buffers])
    assert copy == dets and not any(getattr(copy, n).flags.writeable for n in ARRAYS)


# -- an immutable value ------------------------------------------------------------------------------

ARRAYS = ("boxes", "scores", "labels", "window_index", "partial")


def test_every_array_is_read_only(dets):
    for name in ARRAYS:
        with pytest.raises(ValueError, match="read-only"):
            getattr(dets, name)[0] = 1
    for made in (dets[1:], dets[np.array([2, 0])], dets + dets, lt.Detections.concat([dets]), lt.Detections.empty()):
        assert not any(getattr(made, n).flags.writeable for n in ARRAYS)
    with pytest.raises(ValueError, match="read-only"):
        dets.boxes += 1
    with pytest.raises(ValueError, match="read-only"):
        np.multiply(dets.scores, 2, out=dets.scores)


def test_the_callers_arrays_are_copied_never_frozen():
    boxes, scores = np.array(BOXES, dtype=np.float64), np.array([0.9, 0.5, 0.25], np.float32)
    labels, where, partial = np.array([1, 0, 1]), np.array([3, 3, 8]), np.array([False, True, False])
    d = lt.Detections(boxes[:], scores, labels, where, partial=partial)
    for mine in (boxes, scores, labels, where, partial):
        assert mine.flags.writeable
        mine[0] = 0  # changing them afterwards does not change the detections
    assert d.boxes[0].tolist() == BOXES[0].tolist() and d.scores[0] == np.float32(0.9) and d.labels[0] == 1
    assert d.window_index[0] == 3 and not d.partial[0]
    shared = np.array(BOXES, dtype=np.float64)
    shared.flags.writeable = False  # read-only already: kept as it is, no copy
    assert lt.Detections(shared, [1, 1, 1], [0, 0, 0]).boxes is shared


@pytest.mark.parametrize("name", ["boxes", "scores", "partial", "transform", "crs", "extra"])
def test_attributes_cannot_be_set_or_deleted(dets, name):
    with pytest.raises(
        lt.FrozenError, match=f"lt.Detections is immutable: cannot set {name!r}; make a new one"
    ) as info:
        setattr(dets, name, None)
    assert isinstance(info.value, AttributeError)
    with pytest.raises(lt.FrozenError, match=f"cannot delete {name!r}"):
        delattr(dets, name)
    assert dets.crs == CRS.from_epsg(32633) and len(dets) == 3


def test_equality_includes_every_column_and_the_georeferencing(dets):
    def changed(**kw):
        args = dict(
            boxes=dets.boxes,
            scores=dets.scores,
            labels=dets.labels,
            window_index=dets.window_index,
            partial=dets.partial,
            transform=dets.transform,
            crs=dets.crs,
        )
        args.update(kw)
        return lt.Detections(
            args.pop("boxes"), args.pop("scores"), args.pop("labels"), args.pop("window_index"), **args
        )

    assert changed() == dets and not changed() != dets
    assert changed(partial=[True, True, False]) != dets  # the same boxes, one more of them partial
    assert changed(window_index=[3, 3, 9]) != dets and changed(scores=[0.9, 0.5, 0.5]) != dets
    assert changed(labels=[1, 1, 1]) != dets and changed(boxes=np.add(dets.boxes, 1)) != dets
    assert changed(crs="EPSG:4326") != dets and changed(transform=Affine.identity()) != dets
    assert (dets == "boxes") is False and dets != 3


# -- outlines ------------------------------------------------------------------------------------------------

L_SHAPE = shapely.Polygon([(0, 0), (10, 0), (10, 5), (5, 5), (5, 20), (0, 20)])  # inside box 0
TWO_PARTS = shapely.MultiPolygon([shapely.box(250, 300, 260, 310), shapely.box(390, 300, 400, 310)])  # box 2


@pytest.fixture
def shaped(dets) -> lt.Detections:
    return lt.Detections(
        dets.boxes, dets.scores, dets.labels, dets.window_index, partial=dets.partial,
        shapes=[L_SHAPE, None, TWO_PARTS], transform=dets.transform, crs=dets.crs,
    )  # fmt: skip


def test_outlines_travel_through_slicing_concat_pickle_and_equality(shaped, dets):
    assert list(shaped.shapes) == [L_SHAPE, None, TWO_PARTS] and not shaped.shapes.flags.writeable
    assert list(dets.shapes) == [None, None, None]
    assert list(shaped[::2].shapes) == [L_SHAPE, TWO_PARTS] and shaped[1].shapes[0] is None
    both = lt.Detections.concat([dets[:1], shaped[2:]])
    assert list(both.shapes) == [None, TWO_PARTS]
    back = pickle.loads(pickle.dumps(shaped))
    assert back == shaped and not back.shapes.flags.writeable
    assert shaped != dets  # the same boxes, one outline more
    moved = lt.Detections(shaped.boxes, shaped.scores, shaped.labels, shaped.window_index, partial=shaped.partial,
                          shapes=[shapely.affinity.translate(L_SHAPE, 1), None, TWO_PARTS],
                          transform=shaped.transform, crs=shaped.crs)  # fmt: skip
    assert moved != shaped
    assert "2 with outlines" in repr(shaped)


def test_polygons_are_outlines_where_known_else_boxes(shaped, dets):
    polys = shaped.polygons()
    assert polys[0].equals(shapely.affinity.affine_transform(L_SHAPE, UTM_10M.to_shapely()))
    assert polys[1].equals(dets.polygons()[1])
    assert polys[2].geom_type == "MultiPolygon" and polys[2].area == pytest.approx(2 * 100 * 100)
    lonlat = shaped.polygons("EPSG:4326")
    want = [utm_to_lonlat(*(UTM_10M @ v), 33) for v in L_SHAPE.exterior.coords]  # the independent inverse UTM
    np.testing.assert_allclose(np.asarray(lonlat[0].exterior.coords), want, atol=1e-9)


def test_outlines_are_written_to_gpkg_and_geojson(shaped, tmp_path):
    meta, _, geometry, _ = read(shaped.to_gpkg(tmp_path / "o.gpkg"))
    assert meta["geometry_type"] == "MultiPolygon"
    got = shapely.from_wkb(geometry)
    for g, want in zip(got, shaped.polygons()):
        assert g.equals(want)
    shaped.to_geojson(tmp_path / "o.geojson")
    doc = json.loads((tmp_path / "o.geojson").read_text(encoding="utf-8"))
    kinds = [f["geometry"]["type"] for f in doc["features"]]
    assert kinds == ["Polygon", "Polygon", "MultiPolygon"]
    ring = shapely.Polygon(doc["features"][0]["geometry"]["coordinates"][0])
    assert ring.exterior.is_ccw and len(ring.exterior.coords) == 7  # the L's six corners, closed
    assert read(shaped[1:2].to_gpkg(tmp_path / "p.gpkg"))[0]["geometry_type"] == "Polygon"


def test_outlines_are_checked():
    with pytest.raises(lt.InvalidArgumentError, match=r"one outline \(or None\) per box \(1\), got 2"):
        lt.Detections([[0, 0, 1, 1]], [1], [0], shapes=[None, None])
    with pytest.raises(lt.InvalidArgumentError, match="got a LineString at position 1"):
        lt.Detections([[0, 0, 1, 1]] * 2, [1, 1], [0, 0], shapes=[None, shapely.LineString([(0, 0), (1, 1)])])
    with pytest.raises(lt.InvalidArgumentError, match="got a str at position 0"):
        lt.Detections([[0, 0, 1, 1]], [1], [0], shapes=["box"])
    with pytest.raises(lt.InvalidArgumentError, match="got a single Polygon; wrap it in a list"):
        lt.Detections([[0, 0, 1, 1]], [1], [0], shapes=shapely.box(0, 0, 1, 1))
