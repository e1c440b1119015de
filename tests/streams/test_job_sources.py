"""Kafka jobs over several sources: a list is one mosaic; every source must pass the allow-list."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import rasterio
from affine import Affine
from conftest import write_tif

from lazytiles.streams.messages import JobError, parse_job

from .test_worker import check_job, group_messages, job, start_worker, stop, windows_of

pytestmark = pytest.mark.timeout(120)


def test_a_job_source_is_a_string_or_a_list_of_them():
    assert parse_job(job("one", Path("a.tif"))).source == "a.tif"
    several = parse_job(job("two", Path("a.tif"), source=["a.tif", "b.tif"]))
    assert several.source == ("a.tif", "b.tif") and several.to_dict()["source"] == ["a.tif", "b.tif"]
    assert parse_job(job("single", Path("a.tif"), source=["a.tif"])).source == "a.tif"
    for bad, shown in [
        ([], "a list of 0"),
        (["a.tif", 3], "a list of 2"),
        (["x"] * 257, "a list of 257"),
        (7, "a value of type int"),
    ]:
        with pytest.raises(JobError, match=f"'source' must be .* at most 256 rasters .*, got {shown}"):
            parse_job(job("bad", Path("a.tif"), source=bad))


def halves(tif: Path, folder: Path) -> list[str]:
    """The scene cut into its left and right halves, as two GeoTIFFs."""
    with rasterio.open(tif) as ds:
        data, transform = ds.read(), ds.transform
    left = write_tif(folder / "left.tif", data[:, :, :128].copy(), transform=transform, block=(64, 64))
    right = write_tif(
        folder / "right.tif", data[:, :, 128:].copy(), transform=transform @ Affine.translation(128, 0), block=(64, 64)
    )
    return [str(left), str(right)]


def test_a_worker_runs_a_mosaic_job_and_refuses_a_list_with_one_source_outside(broker, streams, tif, tmp_path):
    parts = halves(tif, tmp_path)
    outside = "/etc/hostname"
    broker.produce(streams.jobs, job("mosaic", tif, source=parts), job("mixed", tif, source=[parts[0], outside]))
    log = tmp_path / "worker.log"
    proc = start_worker(broker, streams, tmp_path / "work", log, "--allow-source", tempfile.gettempdir())
    try:
        got = group_messages(broker.read_keys(streams.results, ["mosaic:done"], timeout=60))
        dead = broker.read(streams.dlq, lambda ms: len(ms) >= 1, timeout=60)
    finally:
        code = stop(proc, log)
    assert code == 0, log.read_text()
    check_job(got, "mosaic", windows_of(tif))  # the halves as one source: the scene's windows and boxes
    assert json.loads(got["mosaic:0"][0])["lazytiles"]["source"] == ", ".join(parts)
    doc = json.loads(dead[0].value())
    assert doc["error"] == "JobRefused" and "/etc/hostname" in doc["reason"]
