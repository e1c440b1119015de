"""Job messages are hostile until checked: whatever the bytes, parsing raises JobError and echoes little."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from lazytiles.streams.deadletters import DEAD_LETTER_KEEP, dead_letter_message
from lazytiles.streams.messages import JobError, parse_job

GOOD = {"id": "a1", "source": "scene.tif", "model": "pkg.mod:make"}


@pytest.mark.parametrize(
    "message",
    [
        b'{"id": "a1", "source": "s.tif", "model": "m:f", "size": ' + b"9" * 5000 + b"}",  # int over the digit limit
        b"[" * 200_000 + b"]" * 200_000,  # nesting deeper than the parser's recursion
        b'{"id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        bytes(range(32)) * 10_000,  # control characters
        b"\xff\xfe not utf-8",
        b"",
        b"null",
        b'"a string"',
    ],
)
def test_every_poison_message_is_a_job_error(message: bytes) -> None:
    with pytest.raises(JobError) as info:
        parse_job(message)
    assert len(str(info.value)) < 400  # the message is named, not echoed


@pytest.mark.parametrize("job_id", ["x:merged", "a:1", "", "   ", "x" * 201, "tab\there", 7, None, ["a"]])
def test_ids_that_could_collide_or_flood_are_refused(job_id: object) -> None:
    with pytest.raises(JobError, match="'id' must be"):
        parse_job(json.dumps({**GOOD, "id": job_id}))


def test_huge_fields_are_named_not_echoed() -> None:
    junk = "A" * 300_000
    for fields in ({**GOOD, "size": junk}, {**GOOD, junk: 1}, {**GOOD, "region": [junk]}, {**GOOD, "overlap": junk}):
        with pytest.raises(JobError) as info:
            parse_job(json.dumps(fields))
        assert len(str(info.value)) < 400


def test_a_region_travels_as_its_hash() -> None:
    region = {"type": "Point", "coordinates": [13.4, 52.5]}
    job = parse_job(json.dumps({**GOOD, "region": region}))
    canonical = json.dumps(region, sort_keys=True, separators=(",", ":"))
    assert job.region_sha256 == hashlib.sha256(canonical.encode()).hexdigest()
    assert parse_job(json.dumps(GOOD)).region_sha256 is None


@pytest.mark.parametrize(
    "value",
    [b"\x01" * 300_000, "é".encode() * 400_000, bytes(range(256)) * 4000, b'{"id": "ok"}', None],
)
def test_dead_letters_always_fit_and_name_the_original(value: bytes | None) -> None:
    key, doc_bytes = dead_letter_message(
        "x" * 100_000, "JobError", topic="jobs", partition=3, offset=9, key=b"k" * 5000, value=value
    )
    assert len(doc_bytes) < 80_000 and key is not None and len(key) == 1024
    doc = json.loads(doc_bytes)
    raw = value or b""
    original = doc["original"]
    assert original["sha256"] == hashlib.sha256(raw).hexdigest() and original["bytes"] == len(raw)
    assert len(doc["reason"]) <= 4096
    if "value" in original:
        assert original["value"].encode() == raw and not original["truncated"]
    else:
        kept = base64.b64decode(original["value_base64"])
        assert raw.startswith(kept) and len(kept) <= DEAD_LETTER_KEEP
        assert original["truncated"] == (len(kept) < len(raw))
