"""Dead letters: what a worker sends, in place of results, for a job it cannot run; pure JSON, no I/O."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from .messages import _dumps

__all__ = ["DEAD_LETTER_KEEP", "REASON_CHARS", "dead_letter_message"]


#: How much of a refused message a dead letter carries (its sha256 and length name the whole).
DEAD_LETTER_KEEP = 64 * 1024
#: The longest reason a dead letter carries.
REASON_CHARS = 4096


def dead_letter_message(
    reason: str, error: str, *, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
) -> tuple[bytes | None, bytes]:
    """``(key, value)`` for a job that cannot run: the original key (cut to 1 KiB) and a JSON object
    with the ``reason``, the ``error`` class and the ``original`` message: topic, partition, offset,
    key, ``sha256`` and ``bytes`` of the value, and at most 64 KiB of it — as ``value`` text when it is
    UTF-8 and short enough once escaped, else the first 48 KiB as ``value_base64`` — with
    ``truncated`` saying whether that is all of it. A dead letter stays under ~80 KiB whatever was sent,
    so it always fits the broker's message limit.

    Examples
    --------
    >>> import json
    >>> _, value = dead_letter_message("bad", "JobError", topic="jobs", partition=0, offset=7,
    ...                                key=b"k", value=b"\x01" * 300_000)
    >>> doc = json.loads(value)
    >>> len(value) < 80_000, doc["original"]["bytes"], doc["original"]["truncated"]
    (True, 300000, True)
    """
    value = b"" if value is None else bytes(value)
    original: dict[str, Any] = dict(topic=topic, partition=partition, offset=offset, key=None, truncated=False)
    original.update(sha256=hashlib.sha256(value).hexdigest(), bytes=len(value))
    if key is not None:
        key = bytes(key)[:1024]
        original["key"] = key.decode("utf-8", "backslashreplace")
    try:
        text: str | None = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and len(json.dumps(text)) <= DEAD_LETTER_KEEP:
        original["value"] = text
    else:
        kept = value[: DEAD_LETTER_KEEP * 3 // 4]
        original["value_base64"] = base64.b64encode(kept).decode("ascii")
        original["truncated"] = len(kept) < len(value)
    reason = reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 3] + "..."
    return key, _dumps({"reason": reason, "error": error, "original": original})
