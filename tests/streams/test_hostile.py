"""One worker, one topic, every kind of hostile job, then a good one: the worker stays up.

The worker allows one test model and reads only from the scene's directory and one loopback tile
server. Every hostile job must land in the dead-letter topic with a reason naming the rule; no message
on any topic may carry the planted secret; the good job's results must be complete.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lazytiles.testing.tileserver import TileServer
from lazytiles.testing.xyztiles import write_xyz_tiles

from .test_worker import check_job, closed_port, group_messages, job, start_worker, stop, windows_of

SECRET = b"AWS_SECRET=AKIAE" + b"9f3b2c71d0a4" * 3


@pytest.fixture
def allowed(tmp_path: Path, tif: Path) -> Path:
    """The worker's one local directory: the scene, and a planted secret next to it."""
    root = tmp_path / "allowed"
    root.mkdir()
    (root / "scene.tif").write_bytes(tif.read_bytes())
    (root / "secret.txt").write_bytes(SECRET)
    (tmp_path / "outside.txt").write_bytes(SECRET)
    return root


@pytest.mark.timeout(240)
def test_hostile_jobs_are_dead_letters_and_the_worker_keeps_serving(broker, streams, tif, allowed, tmp_path):
    tiles = tmp_path / "tiles"
    write_xyz_tiles(np.zeros((3, 256, 256), np.uint8), tiles, zoom=1)
    scene = str(allowed / "scene.tif")
    with TileServer(tiles) as server:
        allowed_url = f"{server.url}/"
        hostile = {
            "exit": job("exit", scene, model="sys:exit"),
            "abort": job("abort", scene, model="os:abort"),
            "pause": job("pause", scene, model="signal:pause"),
            "server": job("server", scene, model="http.server:test"),
            "pt2": job("pt2", scene, model=str(allowed / "evil.pt2")),
            "planted": job("planted", f"{allowed}/secret.txt{{q}}", zoom=0),
            "outside": job("outside", f"{tmp_path}/outside.txt{{q}}", zoom=0),
            "zero": job("zero", "/dev/zero{q}", zoom=0),
            "environ": job("environ", "file:///proc/self/environ{q}", zoom=0),
            "loopback": job("loopback", f"http://127.0.0.1:{closed_port()}/{{z}}/{{x}}/{{y}}.png", zoom=3),
            "digits": b'{"id": "digits", "source": "x", "model": "m:f", "size": ' + b"9" * 5000 + b"}",
            "nested": b"[" * 200_000 + b"]" * 200_000,
            "control": bytes(range(1, 32)) * 10_000,
            "region": job("region", scene, region={"type": "Polygon", "coordinates": [[[0.0, 0.0]] * 60_000]}),
            "windows": job(
                "windows",
                allowed_url + "{z}/{x}/{y}.png",
                zoom=18,
                size=16,
                bounds=[13.0, 52.0, 14.0, 53.0],
                bounds_crs="EPSG:4326",
            ),
            "batch": job("batch", scene, batch_size=10**9),
            "size": job("size", scene, size=10**12),
            "zoom": job("zoom", allowed_url + "{z}/{x}/{y}.png", zoom=30),
            "exits": job("exits", scene, model="models_for_tests:exits"),
            "interrupts": job("interrupts", scene, model="models_for_tests:interrupts"),
            "recurses": job("recurses", scene, model="models_for_tests:recurses"),
        }
        rules = {
            "exit": "--allow-model",
            "abort": "--allow-model",
            "pause": "--allow-model",
            "server": "--allow-model",
            "pt2": "--allow-model",
            "planted": "could not",
            "outside": "--allow-source",
            "zero": "never read",
            "environ": "never read",
            "loopback": "--allow-source",
            "digits": "not valid JSON",
            "nested": "nested too deeply",
            "control": "not valid JSON",
            "region": "--max-job-bytes",
            "windows": "--max-windows",
            "batch": "--max-batch-size",
            "size": "--max-window-size",
            "zoom": "--max-zoom",
            "exits": "SystemExit",
            "interrupts": "KeyboardInterrupt",
            "recurses": "RecursionError",
        }
        assert len(hostile["region"]) > 600_000  # over --max-job-bytes below, under the broker's own 1 MB
        broker.produce(streams.jobs, *hostile.values(), job("good", scene))
        log = tmp_path / "worker.log"
        models = [
            "--allow-model",
            "models_for_tests:blobs",
            "--allow-model",
            "models_for_tests:exits",
            "--allow-model",
            "models_for_tests:interrupts",
            "--allow-model",
            "models_for_tests:recurses",
        ]
        proc = start_worker(
            broker,
            streams,
            tmp_path / "work",
            log,
            *models,
            "--allow-source",
            str(allowed),
            "--allow-source",
            allowed_url,
            "--max-attempts",
            "2",
            "--max-job-bytes",
            "600000",
            LT_TEST_SECRET=SECRET.decode(),
        )
        try:
            got = group_messages(broker.read_keys(streams.results, ["good:done"], timeout=120))
            dead = broker.read(streams.dlq, lambda ms: len(ms) >= len(hostile), timeout=60)
            time.sleep(1)
            assert proc.poll() is None, log.read_text()  # up the whole time
        finally:
            code = stop(proc, log)
    assert code == 0, log.read_text()

    check_job(got, "good", windows_of(tif))
    reasons = {}
    for m in dead:
        doc = json.loads(m.value())
        original = doc["original"]
        name = list(hostile)[original["offset"]]
        reasons[name] = doc["reason"]
        assert SECRET not in m.value()
    assert sorted(reasons) == sorted(hostile), log.read_text()
    for name, rule in rules.items():
        assert rule in reasons[name], (name, reasons[name])
    every = [v for values in got.values() for v in values]
    assert not any(SECRET in v or SECRET.decode() in v.decode("utf-8", "replace") for v in every)
    assert SECRET.decode() not in log.read_text()


@pytest.mark.timeout(180)
def test_a_job_that_kills_its_worker_is_dead_lettered_after_max_attempts(broker, streams, tif, tmp_path):
    broker.produce(streams.jobs, job("aborts", tif, model="models_for_tests:aborts"), job("after", tif))
    log, workdir = tmp_path / "worker.log", tmp_path / "work"
    flags = (
        "--allow-model",
        "models_for_tests:aborts",
        "--allow-model",
        "models_for_tests:blobs",
        "--allow-source",
        str(tif.parent),
        "--max-attempts",
        "2",
    )
    for _ in range(2):  # each start takes the job again, and the job kills the process
        proc = start_worker(broker, streams, workdir, log, *flags)
        assert proc.wait(60) != 0, log.read_text()
    proc = start_worker(broker, streams, workdir, log, *flags)
    try:
        got = group_messages(broker.read_keys(streams.results, ["after:done"], timeout=60))
        (dead,) = broker.read(streams.dlq, lambda ms: len(ms) >= 1, timeout=30)
    finally:
        assert stop(proc, log) == 0, log.read_text()
    doc = json.loads(dead.value())
    assert doc["original"]["offset"] == 0 and "--max-attempts 2" in doc["reason"]
    check_job(got, "after", windows_of(tif))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--device", "cuda:7"), "device='cuda:7'"),
        (("--device", "nonsense"), "is not a torch device"),
        (("--workers", "-1"), "workers=-1"),
        (("--allow-source", ""), "--allow-source"),
    ],
)
def test_a_misconfigured_worker_stops_before_taking_a_job(tmp_path, flags, message):
    """Checked before subscribing: no broker is needed to see it, and no job is dead-lettered by it."""
    args = [
        sys.executable,
        "-m",
        "lazytiles",
        "worker",
        "--bootstrap",
        f"127.0.0.1:{closed_port()}",
        "--jobs",
        "j",
        "--results",
        "r",
        "--dead-letter",
        "d",
        "--workdir",
        str(tmp_path / "work"),
        *flags,
    ]
    if "--allow-source" not in flags:
        args += ["--allow-source", str(tmp_path)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and message in done.stderr, done.stderr
