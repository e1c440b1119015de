"""lt.kafka.publish and the result messages, against a real broker (tansu on 127.0.0.1)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import rasterio.warp
import shapely.geometry
from conftest import UTM_10M  # tests/conftest.py

import lazytiles as lt
from lazytiles.detection.models import BlobDetector
from lazytiles.streams import messages as jobs
from lazytiles.streams.deadletters import dead_letter_message

from .conftest import ck
from .models_for_tests import RECTS, expected_boxes, scene

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def scene_dets() -> lt.DetectionSequence:
    src = lt.ArraySource(scene(), transform=UTM_10M, crs="EPSG:32633", tile_shape=64)
    wins = lt.windows(src, size=64)
    return lt.detect(BlobDetector(threshold=0.5), wins, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def scene_list(scene_dets) -> list[lt.Detections]:
    return list(scene_dets)


def by_key(messages) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for m in messages:
        out.setdefault(m.key().decode(), []).append(m.value())
    return out


def test_publish_then_consume_gives_every_window_with_its_boxes(broker, scene_dets, scene_list):
    (topic,) = broker.topics("results")
    sent = lt.kafka.publish(scene_dets, topic=topic, bootstrap=broker.bootstrap, run_id="scene")
    assert sent.messages == 17 and sent.failed == {} and sent.run_id == "scene"

    got = by_key(broker.read_keys(topic, ["scene:done"]))
    assert set(got) == {f"scene:{i}" for i in range(16)} | {"scene:done"}
    assert all(len(v) == 1 for v in got.values())
    done = json.loads(got["scene:done"][0])["lazytiles"]
    assert done["windows"] == 16 and done["failed"] == {}

    pixel = scene_dets.windows.pixel_windows()
    found = 0
    for i in range(16):
        value = got[f"scene:{i}"][0]
        doc = json.loads(value)
        meta = doc["lazytiles"]
        assert meta["kind"] == "window" and meta["window_index"] == i and meta["run_id"] == "scene"
        assert meta["window"] == pixel[i].tolist() and meta["source"] == scene_dets.windows.source.token
        assert meta["recipe"]["model.class"] == "lazytiles.detection.models.BlobDetector"
        assert meta["recipe"]["source.crs"] == "EPSG:32633" and meta["recipe"]["windows.count"] == 16
        # the oracle: each rectangle clipped to the window, counted by hand
        boxes = sorted((*f["properties"]["box"], f["properties"]["label"]) for f in doc["features"])
        assert boxes == expected_boxes(tuple(pixel[i]))
        assert all(f["properties"]["score"] == 1.0 and f["properties"]["window_index"] == i for f in doc["features"])
        found += len(boxes)
        # decode gives back exactly what lt.detect returned for the window
        assert lt.kafka.decode(value) == scene_list[i]
    assert found >= len(RECTS) + 4  # the seam-crossing rectangles come in pieces


def test_features_are_lon_lat_polygons_of_the_boxes(broker, scene_dets):
    (topic,) = broker.topics("results")
    pixel = scene_dets.windows.pixel_windows()
    k = max(range(len(pixel)), key=lambda i: len(expected_boxes(tuple(pixel[i]))))  # the busiest window
    lt.kafka.publish(scene_dets[k : k + 1], topic=topic, bootstrap=broker.bootstrap, run_id="geo")
    (msg,) = [m for m in broker.read_keys(topic, ["geo:done"]) if m.key() == f"geo:{k}".encode()]
    features = json.loads(msg.value())["features"]
    assert len(features) == len(expected_boxes(tuple(pixel[k]))) >= 2
    for feature in features:
        check_feature(feature)


def check_feature(feature) -> None:
    x0, y0, x1, y1 = feature["properties"]["box"]
    ring = feature["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 5
    polygon = shapely.geometry.shape(feature["geometry"])
    assert polygon.exterior.is_ccw  # RFC 7946: exterior rings counter-clockwise
    # the box's corners in UTM metres (by hand from the 10 m grid), carried to lon/lat independently
    xs = [500_000 + 10 * x for x in (x0, x1, x1, x0)]
    ys = [6_000_000 - 10 * y for y in (y0, y0, y1, y1)]
    lons, lats = rasterio.warp.transform("EPSG:32633", "EPSG:4326", xs, ys)
    for lon, lat in zip(lons, lats):
        assert polygon.exterior.distance(shapely.geometry.Point(lon, lat)) < 1e-9
    assert 14.9 < lons[0] < 15.1 and 54.0 < lats[0] < 54.2  # near 15 E, 54.1 N


def test_publishing_again_gives_identical_bytes_under_the_same_keys(broker, scene_dets):
    (topic,) = broker.topics("results")
    first = lt.kafka.publish(scene_dets[:3], topic=topic, bootstrap=broker.bootstrap)
    second = lt.kafka.publish(scene_dets[:3], topic=topic, bootstrap=broker.bootstrap)
    assert first.run_id == second.run_id and first.run_id.startswith("run-")  # a hash of the recipe
    got = by_key(broker.read(topic, lambda ms: len(ms) >= 8))
    assert len(got) == 4 and all(len(v) == 2 and v[0] == v[1] for v in got.values())


def test_merged_objects_are_one_message_each(broker, scene_dets, scene_list):
    (topic,) = broker.topics("merged")
    merged = lt.merge(scene_list, windows=scene_dets.windows, progress=False)
    sent = lt.kafka.publish(merged, topic=topic, bootstrap=broker.bootstrap, run_id="m", merged=True)
    assert sent.messages == len(merged) + 1 == len(RECTS) + 1
    got = by_key(broker.read_keys(topic, ["m:done"]))
    assert set(got) == {f"m:merged:{k}" for k in range(len(RECTS))} | {"m:done"}
    boxes = sorted(tuple(lt.kafka.decode(got[f"m:merged:{k}"][0]).boxes[0]) for k in range(len(RECTS)))
    assert boxes == sorted((float(x0), float(y0), float(x1), float(y1)) for x0, y0, x1, y1, _ in RECTS)
    meta = json.loads(got["m:merged:0"][0])["lazytiles"]
    assert meta["kind"] == "object" and meta["objects"] == len(RECTS)
    assert json.loads(got["m:done"][0])["lazytiles"]["objects"] == len(RECTS)


def test_a_sequence_can_be_published_merged(broker, scene_dets):
    (topic,) = broker.topics("merged")
    sent = lt.kafka.publish(scene_dets, topic=topic, bootstrap=broker.bootstrap, run_id="s", merged=True)
    assert sent.messages == len(RECTS) + 1


def test_a_stored_run_publishes_the_same_messages_without_running_the_model(broker, scene_dets, tmp_path):
    wins = scene_dets.windows
    lt.detect_region(BlobDetector(threshold=0.5), wins, out=tmp_path / "run.gpkg", progress=False)
    live, stored = broker.topics("live", "stored")
    lt.kafka.publish(scene_dets, topic=live, bootstrap=broker.bootstrap, run_id="r")
    with lt.open_run(tmp_path / "run.gpkg") as run:
        sent = lt.kafka.publish(run, topic=stored, bootstrap=broker.bootstrap, run_id="r")
    assert sent.messages == 17
    a = by_key(broker.read_keys(live, ["r:done"]))
    b = by_key(broker.read_keys(stored, ["r:done"]))
    assert a == b  # same keys, same bytes: the run's recipe is the sequence's
    merged = lt.kafka.publish(tmp_path / "run.gpkg", topic=stored, bootstrap=broker.bootstrap, merged=True)
    assert merged.messages == len(RECTS) + 1 and merged.run_id.startswith("run-")


@pytest.mark.skipif(ck is None, reason="the kafka extra is not installed: pip install lazytiles[kafka]")
def test_unreachable_broker_is_a_stream_error(scene_dets):
    with pytest.raises(lt.StreamError, match=r"not confirmed.*127\.0\.0\.1:9.*broker is up") as info:
        lt.kafka.publish(scene_dets[:1], topic="t", bootstrap="127.0.0.1:9", timeout=1.0)
    assert isinstance(info.value, OSError) and isinstance(info.value, lt.LazyTilesError)


def test_bad_arguments_are_rejected_before_connecting(scene_dets):
    with pytest.raises(lt.InvalidArgumentError, match="does not say which windows found nothing"):
        lt.kafka.publish(scene_dets[0], topic="t", bootstrap="127.0.0.1:9")
    with pytest.raises(ValueError, match="cannot publish a list"):
        lt.kafka.publish([scene_dets[0]], topic="t", bootstrap="127.0.0.1:9")
    with pytest.raises(ValueError, match="bootstrap must be"):
        lt.kafka.publish(scene_dets, topic="t", bootstrap="")
    with pytest.raises(ValueError, match="topic must be"):
        lt.kafka.publish(scene_dets, topic="", bootstrap="127.0.0.1:9")


def test_missing_client_names_the_extra(monkeypatch, scene_dets):
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install lazytiles\[kafka\]") as info:
        lt.kafka.publish(scene_dets, topic="t", bootstrap="127.0.0.1:9")
    assert isinstance(info.value, lt.MissingDependencyError)


def test_importing_lazytiles_does_not_import_the_client():
    import subprocess

    code = "import sys, lazytiles; lazytiles.streams.kafka; print('confluent_kafka' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


# -- the message format, without a broker --------------------------------------------------------


def test_dead_letter_message_keeps_the_original():
    key, value = dead_letter_message(
        "bad", "JobError", topic="jobs", partition=0, offset=7, key=b"k", value=b"\xff{not json"
    )
    doc = json.loads(value)
    assert key == b"k" and doc["reason"] == "bad" and doc["original"]["offset"] == 7
    import base64

    assert base64.b64decode(doc["original"]["value_base64"]) == b"\xff{not json"


def test_decode_rejects_other_messages():
    with pytest.raises(lt.InvalidArgumentError, match="not a lazytiles result message"):
        jobs.decode(b'{"type": "FeatureCollection", "features": []}')


def test_window_message_without_crs_has_null_geometry():
    dets = lt.Detections([[1, 2, 3, 4]], [0.5], [1], [0])
    _, value = jobs.window_message(dets, run_id="r", window_index=0, source="s", recipe={})
    (feature,) = json.loads(value)["features"]
    assert feature["geometry"] is None and feature["properties"]["box"] == [1.0, 2.0, 3.0, 4.0]
    assert jobs.decode(value) == dets


@pytest.mark.parametrize(
    "message, match",
    [
        (b"{oops", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"source": "a.tif", "model": "m:f"}', "job 'id' must be"),
        (b'{"id": "j", "model": "m:f"}', "job 'j' has no 'source' field"),
        (b'{"id": "j", "source": "a.tif", "model": "m:f", "sise": 3}', r"unknown field\(s\) 'sise'"),
        (
            b'{"id": "j", "source": "a.tif", "model": "m:f", "overlap": 1.5}',
            r"'overlap' must be a fraction in \[0, 1\)",
        ),
        (b'{"id": "j", "source": "a.tif", "model": "m:f", "size": 0}', "'size' must be"),
        (b'{"id": "j", "source": "a.tif", "model": "m:f", "bounds": [1, 2, 0, 3]}', "left < right"),
        (b'{"id": "j", "source": "a.tif", "model": "m:f", "region": [1]}', "'region' must be a GeoJSON geometry"),
        (b'{"id": "j", "source": "a.tif", "model": "m:f", "batch_size": true}', "'batch_size' must be"),
    ],
)
def test_bad_jobs_say_what_is_wrong(message, match):
    with pytest.raises(jobs.JobError, match=match):
        jobs.parse_job(message)


def test_a_full_job_parses_with_its_words():
    region = {"type": "Polygon", "coordinates": [[[15, 54], [15.1, 54], [15.1, 54.1], [15, 54]]]}
    job = jobs.parse_job(
        json.dumps(
            {
                "id": "a/b c",
                "source": "x/{z}/{x}/{y}.png",
                "zoom": 17,
                "bounds": [15, 54, 15.1, 54.1],
                "bounds_crs": "EPSG:4326",
                "region": region,
                "size": [256, 128],
                "overlap": 0.5,
                "model": "m:f",
                "batch_size": 2,
            }
        )
    )
    assert job.size == (256, 128) and job.zoom == 17 and job.region == region and job.bounds == (15, 54, 15.1, 54.1)
    assert "/" not in job.slug and " " not in job.slug and job.slug.startswith("a_b_c-")
    assert job.slug != jobs.parse_job('{"id": "a_b c", "source": "s", "model": "m:f"}').slug
    assert hash(job) == hash(jobs.parse_job(json.dumps(job.to_dict())))
    assert np.isclose(job.overlap, 0.5)
