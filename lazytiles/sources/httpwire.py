"""The wire-level pieces under :class:`~lazytiles.sources.http.HttpClient`.

- Per-attempt deadlines. urllib3's timeouts bound each receive, so a server that sends one byte every
  few seconds could hold a connection for ever. A :class:`Deadline` bounds a whole attempt instead:
  the connections of :data:`POOL_CLASSES` tell the running attempt which socket it uses, and a
  :class:`Watchdog` thread shuts that socket down when the deadline passes, which ends any connect,
  send or receive blocked on it.
- :func:`release`: a connection goes back to the pool only when its response was read to the end
  (a short rest is read first); otherwise it is closed, so an oversized or endless body is never read.
- :func:`redirect_refusal`: the rule for redirects (same scheme, host and port only).
- :func:`describe`: what an error message says about a failure, never the bytes the server sent.
- :func:`retry_after` and :class:`RateLimiter`: politeness.
"""

from __future__ import annotations

import email.utils
import heapq
import itertools
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from http import HTTPStatus
from http.client import HTTPException, RemoteDisconnected
from typing import Any
from urllib.parse import urlsplit

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, ProtocolError, ReadTimeoutError
from urllib3.exceptions import HTTPError as Urllib3Error

#: A response left unread up to this many bytes is read to its end so its connection can be reused;
#: a longer one closes its connection.
DRAIN_BYTES = 64 * 1024
#: What can go wrong on the wire: the errors an attempt turns into a retry.
WIRE_ERRORS = (Urllib3Error, OSError, HTTPException)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_local = threading.local()  # the deadline of the attempt running in this thread


# -- deadlines -------------------------------------------------------------------------------------


class Deadline:
    """The end of one attempt, ``seconds`` from now: once it passes, the socket the attempt uses is
    shut down and :attr:`expired` is true."""

    __slots__ = ("_conn", "_lock", "at", "done", "expired")

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.done = self.expired = False
        self._conn: HTTPConnection | None = None
        self._lock = threading.Lock()

    def bind(self, conn: HTTPConnection | None) -> None:
        """``conn`` is now this attempt's connection (None: the attempt gave it back to the pool)."""
        with self._lock:
            self._conn = conn
            if self.expired and conn is not None:
                _shutdown(conn)

    def expire(self) -> None:
        with self._lock:
            if not self.done:
                self.expired = True
                if self._conn is not None:
                    _shutdown(self._conn)

    def finish(self) -> None:
        with self._lock:
            self.done, self._conn = True, None


def _shutdown(conn: HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        try:  # socket.socket's own shutdown, also for TLS: the reading thread then sees an end of file
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass


class Watchdog:
    """Expires deadlines, from a thread that runs while any are pending (one per client and process)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._running = False

    @contextmanager
    def watching(self, seconds: float) -> Iterator[Deadline]:
        """A :class:`Deadline` for the attempt this thread runs inside the ``with`` block."""
        deadline = Deadline(seconds)
        with self._cond:
            while self._heap and self._heap[0][2].done:
                heapq.heappop(self._heap)
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="lazytiles-http-deadlines", daemon=True).start()
            elif self._heap[0][2] is deadline:  # earlier than what the thread waits for
                self._cond.notify()
        _local.deadline = deadline
        try:
            yield deadline
        finally:
            _local.deadline = None
            deadline.finish()
            with self._cond:  # woken only when no attempt is left, to end: not once per request
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while self._heap:
                at, _, deadline = self._heap[0]
                wait = at - time.monotonic()
                if wait > 0 and not deadline.done:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                deadline.expire()
            self._running = False


def _bind(conn: HTTPConnection) -> None:
    deadline: Deadline | None = getattr(_local, "deadline", None)
    if deadline is not None:
        deadline.bind(conn)


class _Watched(HTTPConnection):
    """A connection that tells this thread's deadline which socket to shut down (HTTP and, through
    the subclass below, HTTPS: both run ``connect`` and ``request`` as here)."""

    def connect(self) -> None:
        super().connect()
        _bind(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _bind(self)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _Watched


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


#: ``PoolManager.pool_classes_by_scheme`` for connections that report to the running attempt.
POOL_CLASSES = {"http": _HTTPPool, "https": _HTTPSPool}


def release(response: Any, reuse: bool | None, deadline: Deadline) -> None:
    """Give the connection back to the pool when the response was read to its end (``reuse`` None:
    when the rest is short enough to read now); otherwise close it, never reading a long rest."""
    if reuse is None:
        try:
            rest = response.read(DRAIN_BYTES + 1, decode_content=False)
            reuse = not deadline.expired and len(rest) <= DRAIN_BYTES
        except WIRE_ERRORS:
            reuse = False
    deadline.bind(None)  # from here the connection may serve another attempt: not this deadline's to cut
    if not reuse or deadline.expired:
        response.close()
    response.release_conn()


# -- what to follow, what to say -------------------------------------------------------------------


def redirect_refusal(source: str, target: str) -> str | None:
    """Why a redirect from ``source`` to ``target`` is not followed, or None when it stays within the
    same scheme, host and port.

    >>> redirect_refusal("https://a.example/1.png", "https://a.example:443/2.png") is None
    True
    >>> redirect_refusal("https://a.example/1.png", "http://a.example/1.png")
    'from https to http'
    >>> redirect_refusal("https://a.example/1.png", "https://b.example/1.png")
    'another host'
    """
    try:
        old, new = urlsplit(source), urlsplit(target)
        old_port, new_port = old.port, new.port
    except ValueError:
        return "not a valid URL"
    schemes = old.scheme.lower(), new.scheme.lower()
    if schemes[0] != schemes[1]:
        return f"from {schemes[0]} to {schemes[1] or 'no scheme'}"
    if (old.hostname or "") != (new.hostname or ""):
        return "another host"
    if (old_port or _DEFAULT_PORTS.get(schemes[0])) != (new_port or _DEFAULT_PORTS.get(schemes[1])):
        return "another port"
    return None


def phrase(status: int) -> str:
    """The standard reason phrase of ``status`` (the server's own could say anything)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def describe(err: BaseException) -> str:
    """A short cause for an error message: the kind of failure, never bytes the server sent. Its text
    may still quote the URL: pass it through ``redact``."""
    if isinstance(err, MaxRetryError) and err.reason is not None:
        err = err.reason
    text = str(err)
    if isinstance(err, ReadTimeoutError) or "Read timed out" in text:
        return "read timed out"
    if type(err) is ConnectTimeoutError:  # not its subclass NewConnectionError (refused, unreachable...)
        return "connect timed out"
    short = re.search(r"IncompleteRead\((\d+) bytes read, (\d+) more expected\)", text)
    if short:
        return f"truncated body ({short[1]} bytes read, {short[2]} more expected)"
    if isinstance(err, ProtocolError | HTTPException):  # their text may quote what the server sent
        inner = err.args[-1] if isinstance(err, ProtocolError) and err.args else err
        if isinstance(inner, RemoteDisconnected):
            return "the server closed the connection without an answer"
        if isinstance(inner, ConnectionResetError):
            return "connection reset by the server"
        return f"broken HTTP answer ({type(inner).__name__})"
    if "Connection refused" in text:
        return "connection refused"
    if "Failed to resolve" in text or "Name or service not known" in text:
        return "host name not found"
    return f"{type(err).__name__}: {text}"


# -- politeness ------------------------------------------------------------------------------------


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delay-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = datetime.now(timezone.utc).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


class RateLimiter:
    """At most ``rate`` starts per second, spaced evenly, shared by all threads."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            time.sleep(start - now)


__all__ = [
    "DRAIN_BYTES",
    "POOL_CLASSES",
    "WIRE_ERRORS",
    "Deadline",
    "RateLimiter",
    "Watchdog",
    "describe",
    "phrase",
    "redirect_refusal",
    "release",
    "retry_after",
]
