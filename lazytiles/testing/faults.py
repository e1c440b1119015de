"""The switchable faults of :class:`~lazytiles.testing.tileserver.TileServer`: which requests fail, and how.

:class:`Faults` holds the rules (set with :meth:`~Faults.inject` and its helpers) and hands each request
the fault it is due (:meth:`~Faults.take_fault`); the tile server, which inherits it, answers with it.
"""

from __future__ import annotations

import fnmatch
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgumentError

FAULT_KINDS = ("error", "throttle", "truncate", "hang", "garbage", "absent", "drop")
#: What a "garbage" fault sends instead of the file: bytes that are no image.
GARBAGE = b"<html>not a tile</html>\n" + bytes(range(256)) * 4
#: Options each kind gets unless :meth:`Faults.inject` is given others.
DEFAULTS: dict[str, dict[str, Any]] = {
    "error": {"status": 500},
    "throttle": {"retry_after": 1},
    "absent": {"status": 404},
}


@dataclass
class Fault:
    """One rule: the first ``times`` requests of each path matching ``pattern`` fail as ``kind``."""

    kind: str
    pattern: str
    times: int | None  # per matching path; None: every request
    options: dict[str, Any]
    used: Counter[str] = field(default_factory=Counter)


class Faults:
    """Fault rules per path pattern (``fnmatch`` on the URL path, ``"*"`` for all), earliest rule first.

    A rule applies to the first ``times`` requests of *each* matching path (``times=None``: every
    request); a path with no fault left is served normally. So ``fail(times=2)`` makes every tile fail
    twice, then work: a client with 2 retries must still read everything exactly.
    """

    def __init__(self) -> None:
        self._fault_lock = threading.Lock()
        self._faults: list[Fault] = []
        self._release = threading.Event()  # set: hung requests go, and later hangs are not held

    def inject(self, kind: str, path: str = "*", *, times: int | None = 1, **options: Any) -> None:
        """Make the first ``times`` requests of each path matching ``path`` fail as ``kind``.

        Kinds: ``error`` (``status=500``), ``throttle`` (429, ``retry_after=1`` seconds), ``truncate``
        (half the body, then the connection closes), ``hang`` (held until :meth:`release`, the
        server's ``hang_timeout`` or its ``stop``, then closed without an answer), ``garbage`` (200
        with bytes that are no image), ``absent`` (``status=404`` or 204 even where the file exists),
        ``drop`` (connection closed at once). The helpers :meth:`fail`, :meth:`throttle`, ... call this.
        """
        if kind not in FAULT_KINDS:
            raise InvalidArgumentError(f"fault kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
        if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
            raise InvalidArgumentError(f"times must be a positive int, or None for every request, got {times!r}")
        with self._fault_lock:
            self._faults.append(Fault(kind, path, times, {**DEFAULTS.get(kind, {}), **options}))

    def fail(self, path: str = "*", *, times: int | None = 1, status: int = 500) -> None:
        """Answer HTTP ``status`` (default 500)."""
        self.inject("error", path, times=times, status=status)

    def throttle(self, path: str = "*", *, times: int | None = 1, retry_after: float = 1) -> None:
        """Answer 429 Too Many Requests with ``Retry-After: retry_after`` (seconds)."""
        self.inject("throttle", path, times=times, retry_after=retry_after)

    def truncate(self, path: str = "*", *, times: int | None = 1) -> None:
        """Send the full ``Content-Length`` but half the body, then close the connection."""
        self.inject("truncate", path, times=times)

    def hang(self, path: str = "*", *, times: int | None = 1) -> None:
        """Accept the request and never answer (until :meth:`release`, the hang timeout or the server stops)."""
        self.inject("hang", path, times=times)

    def garbage(self, path: str = "*", *, times: int | None = 1) -> None:
        """Answer 200 with bytes that are not an image."""
        self.inject("garbage", path, times=times)

    def absent(self, path: str = "*", *, times: int | None = None, status: int = 404) -> None:
        """Answer 404 (or 204) as if the tile did not exist; every time by default."""
        self.inject("absent", path, times=times, status=status)

    def release(self) -> None:
        """Let every hung request go (each closes without an answer); later hangs are not held."""
        self._release.set()

    def clear_faults(self) -> None:
        """Remove every fault and re-arm :meth:`hang`."""
        with self._fault_lock:
            self._faults.clear()
        self._release.clear()

    def take_fault(self, path: str) -> Fault | None:
        """The fault a request for ``path`` is due (counted as used), or None: serve it normally."""
        with self._fault_lock:
            for fault in self._faults:
                matches = fault.pattern == "*" or fnmatch.fnmatchcase(path, fault.pattern)
                if matches and (fault.times is None or fault.used[path] < fault.times):
                    fault.used[path] += 1
                    return fault
        return None


__all__ = ["DEFAULTS", "FAULT_KINDS", "GARBAGE", "Fault", "Faults"]
