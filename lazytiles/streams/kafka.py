"""Kafka streams: detections out to a topic (:func:`publish`), and a worker that takes region jobs
from a topic (:func:`worker`, ``lazytiles worker``).

Install with ``pip install lazytiles[kafka]``: confluent-kafka, the Python binding of librdkafka
(maintained by Confluent, idempotent producer, cooperative rebalancing, delivery reports). It is
imported when a function here first talks to a broker, not at ``import lazytiles``.

Delivery is *at least once, exactly once per key*. Every message is confirmed by the broker
(``acks=all``, idempotent producer) before the work it reports counts as done: a window is recorded
in its run store only after its message was confirmed, and a job's offset is committed only after
all its messages were. A message sent again after a crash has the same key and the same bytes (the
formats are in :mod:`lazytiles.streams.messages`), so a consumer that keeps one value per key — or a compacted
topic — sees each window once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..detections import Detections
from ..errors import InvalidArgumentError, MissingDependencyError, StreamError

log = logging.getLogger(__name__)

__all__ = [
    "Published",
    "StreamError",
    "decode",
    "message_recipe",
    "publish",
]


def confluent_module() -> Any:
    try:
        import confluent_kafka
    except ImportError as err:
        raise MissingDependencyError(
            f"lazytiles.streams.kafka needs confluent-kafka ({err}); install it with: pip install lazytiles[kafka]"
        ) from err
    return confluent_kafka


def _check_bootstrap(bootstrap: Any) -> None:
    if not isinstance(bootstrap, str) or not bootstrap.strip():
        raise InvalidArgumentError(f"bootstrap must be 'host:port[,host:port...]' of a Kafka broker, got {bootstrap!r}")


def client_settings(bootstrap: str, config: Mapping[str, Any] | None, **defaults: Any) -> dict[str, Any]:
    _check_bootstrap(bootstrap)
    settings = {"bootstrap.servers": bootstrap, "logger": log, **defaults}
    settings.update(config or {})
    return settings


# -- confirmed delivery ---------------------------------------------------------------------------


class Sender:
    """A producer whose messages count only once the broker confirmed them (:meth:`confirm`).

    Idempotent, ``acks=all``: a retry inside librdkafka never duplicates or reorders a message.
    """

    def __init__(self, bootstrap: str, config: Mapping[str, Any] | None, timeout: float) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise InvalidArgumentError(f"timeout must be a positive number of seconds, got {timeout!r}")
        _check_bootstrap(bootstrap)
        self._ck = ck = confluent_module()
        self.bootstrap, self.timeout = bootstrap, float(timeout)
        settings = client_settings(
            bootstrap,
            config,
            **{
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": int(timeout * 1000),
                "error_cb": self._on_error,
            },
        )
        try:
            self._producer = ck.Producer(settings)
        except ck.KafkaException as err:
            raise InvalidArgumentError(f"cannot make a Kafka producer for {bootstrap!r}: {err}") from err
        self._lock = threading.Lock()  # callbacks run in whichever thread polls
        self._failures: list[str] = []
        self._last_error: str | None = None

    def _on_error(self, err: Any) -> None:  # broker-level trouble, e.g. all brokers down
        self._last_error = str(err)
        if err.fatal():
            with self._lock:
                self._failures.append(f"fatal producer error: {err}")

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            key = None if msg.key() is None else msg.key().decode("utf-8", "replace")
            with self._lock:
                self._failures.append(f"{msg.topic()} key {key!r}: {err}")

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Queue one message (waiting while librdkafka's queue is full); not yet confirmed."""
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: serve callbacks until there is room
                self._producer.poll(0.1)
            except self._ck.KafkaException as err:  # refused before sending, e.g. a message too large
                raise StreamError(
                    f"cannot send {len(value)} bytes with key {key!r} to topic {topic!r}: {err}; for large "
                    "messages raise message.max.bytes (config=) and the topic's max.message.bytes"
                ) from err
        self._producer.poll(0)

    def confirm(self, what: str) -> None:
        """Wait until every queued message is confirmed; raise :class:`StreamError` if any was not."""
        left = self._producer.flush(self.timeout + 5)
        with self._lock:
            failures, self._failures = self._failures, []
        if left or failures:
            hint = f" (last broker error: {self._last_error})" if self._last_error else ""
            raise StreamError(
                f"{what}: {len(failures) + left} message(s) to {self.bootstrap} were not confirmed"
                f"{': ' + '; '.join(failures[:3]) if failures else ''}{hint}; check that the broker is up "
                "and the topic exists, then run again (what was confirmed is kept, duplicates carry the same key)"
            )


# -- publishing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """What :func:`publish` sent: all confirmed by the broker."""

    topic: str
    run_id: str
    messages: int
    failed: dict[int, str] = field(default_factory=dict)


def _run_id(recipe: Mapping[str, Any]) -> str:
    text = json.dumps(recipe, sort_keys=True, default=str)
    return "run-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def message_recipe(recipe: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The recipe a result message carries: a run recipe (:func:`lazytiles.runs.recipe.run_recipe`) without
    what depends on the machine (the source's local path) and with the CRS as a short string, so two
    workers on two hosts send the same bytes for the same window."""
    from rasterio.crs import CRS

    out = {k: v for k, v in recipe.items() if k != "source"}
    if out.get("source.crs"):
        out["source.crs"] = CRS.from_wkt(out["source.crs"]).to_string()
    out.update(extra)
    return out


def publish(
    dets_or_run: Any,
    *,
    topic: str,
    bootstrap: str,
    run_id: str | None = None,
    merged: bool = False,
    config: Mapping[str, Any] | None = None,
    timeout: float = 60.0,
) -> Published:
    """Send detections to a Kafka topic and wait until the broker confirmed every message.

    Per window (default): one message per window, key ``"{run_id}:{window_index}"``, value a GeoJSON
    FeatureCollection of that window's boxes in lon/lat with ``score``, ``label`` and the pixel
    ``box``, plus the source and the run's recipe (:func:`lazytiles.streams.messages.window_message`); windows
    with no boxes send an empty collection. Then one ``"{run_id}:done"`` message counting the windows
    and listing those that could not be read. ``merged=True`` sends merged objects instead, one
    message per object (key ``"{run_id}:merged:{k}"``), then the ``done`` message.

    Parameters
    ----------
    dets_or_run
        The lazy result of ``lt.detect`` (its model runs now, streaming); a run (``lt.open_run(path)``)
        or its path, whose stored results are sent (no model runs; windows not done are left out);
        or, with ``merged=True``, a merged :class:`~lazytiles.Detections`.
    topic, bootstrap
        Where to send: a topic name and the broker list ``"host:port[,host:port]"``.
    run_id
        Names the run in every key. Default: a hash of the recipe (source, windows, model), so sending
        the same run again gives the same keys.
    merged
        Send merged objects (``lt.merge`` of the windows) rather than per-window results.
    config
        Extra librdkafka producer settings (security, compression, ...).
    timeout
        Seconds a message may take to be confirmed before :class:`StreamError`.

    Returns
    -------
    Published
        The topic, run id, number of messages sent and the windows that failed.

    Raises
    ------
    StreamError
        The broker is unreachable or did not confirm every message within ``timeout`` (also an
        ``OSError``). What was confirmed stays; publishing again sends duplicates with the same keys.
    MissingDependencyError
        confluent-kafka is not installed.
    """
    from . import messages as jobs

    if not isinstance(topic, str) or not topic:
        raise InvalidArgumentError(f"topic must be a topic name, got {topic!r}")
    what = _payload(dets_or_run, merged)
    run_id = run_id or _run_id(what.recipe)
    sender = Sender(bootstrap, config, timeout)
    sent, seen, failed = 0, 0, {}
    if what.merged is not None:
        for key, value in jobs.object_messages(what.merged, run_id=run_id, source=what.source, recipe=what.recipe):
            sender.send(topic, key, value)
            sent += 1
    else:
        for index, window, dets, error in what.items:
            seen += 1
            if dets is None:
                failed[index] = str(error)
                continue
            key, value = jobs.window_message(
                dets, run_id=run_id, window_index=index, source=what.source, recipe=what.recipe, window=window
            )
            sender.send(topic, key, value)
            sent += 1
    objects = None if what.merged is None else len(what.merged)
    missing = 0 if what.merged is not None else what.windows - seen
    key, value = jobs.done_message(run_id, windows=what.windows, failed=failed, missing=missing, objects=objects)
    sender.send(topic, key, value)
    sender.confirm(f"publishing run {run_id!r} to topic {topic!r}")
    return Published(topic=topic, run_id=run_id, messages=sent + 1, failed=failed)


_Item = tuple[int, "tuple[int, int, int, int]", "Detections | None", "str | None"]


@dataclass(frozen=True)
class _Payload:
    """What :func:`publish` sends: per-window ``items`` (index, pixel window, detections or None,
    error), or ``merged`` objects; ``windows`` is how many windows the run has."""

    source: str
    recipe: dict[str, Any]
    windows: int
    items: Iterable[_Item] = ()
    merged: Detections | None = None


def _payload(obj: Any, merged: bool) -> _Payload:
    from ..detection.sequence import DetectionSequence
    from ..runs.recipe import DetectOptions, run_recipe
    from ..runs.run import Run, open_run

    if isinstance(obj, Detections):
        if not merged:
            raise InvalidArgumentError(
                "a single Detections does not say which windows found nothing; pass the lazy result of "
                "lt.detect (or a run) to publish per window, or merged=True to publish these as merged objects"
            )
        return _Payload("", {"objects": len(obj)}, 0, merged=obj)
    if isinstance(obj, DetectionSequence):
        wins = obj.windows
        recipe = message_recipe(run_recipe(obj.model, wins, DetectOptions.of(obj)))
        source = wins.source.token
        if merged:
            from ..merging.streaming import merge

            return _Payload(source, recipe, len(wins), merged=merge(obj, progress=False))
        rects = wins.pixel_windows()
        position = {int(i): k for k, i in enumerate(wins.indices)}

        def streamed() -> Iterator[_Item]:
            for index, dets, error in obj.outcomes():
                yield index, tuple(rects[position[index]].tolist()), dets, error

        return _Payload(source, recipe, len(wins), streamed())
    if isinstance(obj, str | os.PathLike):
        obj = open_run(obj)
    if isinstance(obj, Run):
        return _run_payload(obj, merged)
    raise InvalidArgumentError(
        f"cannot publish a {type(obj).__name__}: pass the lazy result of lt.detect, a run (lt.open_run(path)) "
        "or its path, or, with merged=True, a merged lt.Detections"
    )


def _run_payload(run: Any, merged: bool) -> _Payload:
    recipe, source = message_recipe(run.recipe), str(run.recipe.get("source", ""))
    stored = run.per_window()
    total = len(stored)
    if merged:
        found = run.result()
        return _Payload(source, recipe, total, merged=run.merge() if found is None else found)
    rects = stored.windows.pixel_windows()
    done, failed = set(run.done.tolist()), run.failed

    def items() -> Iterator[_Item]:  # windows neither done nor failed are left out (counted as missing)
        for k, index in enumerate(stored.windows.indices.tolist()):
            if index in done or index in failed:
                dets = stored[k] if index in done else None
                yield index, tuple(rects[k].tolist()), dets, failed.get(index)

    return _Payload(source, recipe, total, items())


def decode(value: bytes | str | Mapping[str, Any]) -> Detections:
    """The :class:`~lazytiles.Detections` a result message holds (see :func:`lazytiles.streams.messages.decode`)."""
    from .messages import decode as _decode

    return _decode(value)
