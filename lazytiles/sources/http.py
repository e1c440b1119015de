"""HttpClient: a pooled, polite, retrying HTTP GET for tiles.

Built on urllib3: its ``PoolManager`` is thread-safe, keeps connections alive per host, costs little
per request in threaded synchronous code, and is already a dependency (requests would add a layer
over it; httpx's strength, async, is not how lazytiles reads). One client belongs to one source and
is shared by all its threads; it pickles as its settings and opens fresh connections in each process.

What one :meth:`HttpClient.get` does:

- waits for a free slot (at most ``max_connections`` requests in flight) and, with ``rate_limit``,
  for its turn;
- GETs the URL with connect/read timeouts, a ``User-Agent`` and the configured headers, within a
  ``deadline`` for the whole attempt (connecting, redirects, every read), so a server that sends a
  byte now and then cannot hold a slot for longer;
- follows redirects (at most 5) only to the same scheme, host and port: the configured headers (API
  keys) never reach another host, and https never falls back to http. A redirect elsewhere fails;
- on HTTP 404 or 204 returns ``None`` (the tile is absent);
- on connection errors, timeouts, a passed deadline, HTTP 5xx/408/429, truncated bodies (fewer bytes
  than ``Content-Length``) and bodies the ``decode`` callback rejects with :class:`BodyError`, waits
  and tries again: exponential backoff with jitter, or the server's ``Retry-After`` when it sends one;
- after ``retries`` retries, raises :class:`~lazytiles.TileFetchError` naming the URL, the attempts and
  the last cause. Other HTTP statuses (401, 403, 400, ...) fail at once, and so does a body over
  ``max_body_bytes``: its connection is closed, not read to the end.

No error quotes the bytes a server sent, and every URL in an error goes through :func:`redact`.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TypeVar, overload
from urllib.parse import urljoin

import urllib3
from urllib3.exceptions import LocationValueError

from ..errors import InvalidArgumentError, TileFetchError
from .httpwire import (
    POOL_CLASSES,
    WIRE_ERRORS,
    Deadline,
    RateLimiter,
    Watchdog,
    describe,
    phrase,
    redirect_refusal,
    release,
    retry_after,
)

T = TypeVar("T")

#: Statuses that mean "no tile here": the source fills the tile with nodata.
ABSENT_STATUSES = frozenset({204, 404})
#: Statuses worth another try: the server is overloaded, throttling or briefly broken.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Redirects followed, at most ``MAX_REDIRECTS`` per attempt, only to the same scheme, host and port.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
_SECRET_WORDS = r"key|token|sig|secret|pass|auth|credential|session|jwt"
_USERINFO = re.compile(r"(?<=//)[^/?#@\s]*@")
_SECRET_PARAM = re.compile(rf"([?&;#][^=&#;\s]*(?:{_SECRET_WORDS})[^=&#;\s]*=)[^&#;\s]*", re.IGNORECASE)


class BodyError(ValueError):
    """Raised by a ``decode`` callback for a body that may be a transmission fault (retried)."""


def redact(text: str) -> str:
    """``text`` (a URL, or a message quoting URLs) with user:password and the values of credential-like
    query parameters (key, api_key, token, signature, sig, password, secret..., any case) masked.

    Examples
    --------
    >>> redact("https://me:pw@tiles.example/1/2/3.png?api_key=abc&style=dark")
    'https://***@tiles.example/1/2/3.png?api_key=***&style=dark'
    >>> redact("GET https://h.example/t.png?X-Amz-Signature=s&v=2 failed")
    'GET https://h.example/t.png?X-Amz-Signature=***&v=2 failed'
    """
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub("***@", text))


class _Retry(Exception):
    """One attempt failed in a way worth another try."""

    def __init__(self, cause: str, wait: float | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.wait = wait


def _positive(value: Any, what: str, *, integer: bool = False, allow_zero: bool = False) -> Any:
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidArgumentError(f"{what} must be {kind} {bound}, got {value!r}")
    return value


class HttpClient:
    """A pooled HTTP client for tiles: keep-alive, bounded concurrency, timeouts, retries, politeness.

    Parameters
    ----------
    max_connections
        Most requests in flight at once, over all hosts (default 16); also the keep-alive pool size.
    connect_timeout, read_timeout
        Seconds to wait for a connection, and between bytes of a response.
    deadline
        Seconds one attempt may take in all (default 60): connecting, redirects and every read. Past
        it the connection is closed and the attempt counts as failed (and is retried). With
        ``read_timeout`` it bounds what a hung or dripping server costs.
    retries
        Retries per URL after the first attempt (default 4): the per-tile retry budget.
    backoff
        First wait between attempts, in seconds; it doubles per retry, with jitter (0.5 to 1 times).
    max_backoff
        Longest wait between attempts, in seconds, also for a server's ``Retry-After``.
    rate_limit
        Most requests started per second (e.g. 10 for a public server's usage policy); None: no limit.
    user_agent
        The ``User-Agent`` header (default ``lazytiles/<version>``); public servers ask for one that
        names your application.
    headers
        Extra headers for every request, e.g. ``{"Authorization": "Bearer ..."}`` for an API key. They
        go only to the URL's own scheme, host and port: redirects elsewhere are not followed.
    max_body_bytes
        Longest body accepted (default 32 MiB); a longer one fails without retries, and its connection
        is closed rather than read to the end.

    Examples
    --------
    >>> client = HttpClient(max_connections=8, read_timeout=10, headers={"X-Api-Key": "secret"})
    >>> client
    HttpClient(max_connections=8, connect_timeout=5.0, read_timeout=10, deadline=60.0, retries=4, rate_limit=None)
    >>> client.stats()["requests"]
    0
    """

    def __init__(
        self,
        *,
        max_connections: int = 16,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        deadline: float = 60.0,
        retries: int = 4,
        backoff: float = 0.25,
        max_backoff: float = 30.0,
        rate_limit: float | None = None,
        user_agent: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_body_bytes: int = 32 * 2**20,
    ) -> None:
        self.max_connections = _positive(max_connections, "max_connections", integer=True)
        self.connect_timeout = _positive(connect_timeout, "connect_timeout")
        self.read_timeout = _positive(read_timeout, "read_timeout")
        self.deadline = _positive(deadline, "deadline")
        self.retries = _positive(retries, "retries", integer=True, allow_zero=True)
        self.backoff = _positive(backoff, "backoff", allow_zero=True)
        self.max_backoff = _positive(max_backoff, "max_backoff", allow_zero=True)
        self.rate_limit = None if rate_limit is None else _positive(rate_limit, "rate_limit")
        self.max_body_bytes = _positive(max_body_bytes, "max_body_bytes", integer=True)
        if headers is not None and not isinstance(headers, Mapping):
            raise InvalidArgumentError(f"headers must be a mapping of names to values, got {headers!r}")
        self.headers = dict(headers or {})
        if user_agent is None:
            from .. import __version__

            user_agent = f"lazytiles/{__version__}"
        self.user_agent = str(user_agent)
        self._stats_lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._pid: int | None = None
        self._state_lock = threading.Lock()

    # -- per-process state -------------------------------------------------------------------------

    def _pool(self) -> urllib3.PoolManager:
        if self._pid != os.getpid():  # first use here, or a forked child: sockets are not shared
            with self._state_lock:
                if self._pid != os.getpid():
                    headers = {"User-Agent": self.user_agent, **self.headers}
                    self._manager = urllib3.PoolManager(
                        num_pools=64,
                        maxsize=self.max_connections,
                        block=False,  # the semaphore below bounds concurrency over all hosts
                        headers=headers,
                        timeout=urllib3.Timeout(connect=self.connect_timeout, read=self.read_timeout),
                        retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=0),
                    )
                    self._manager.pool_classes_by_scheme = dict(POOL_CLASSES)
                    self._slots = threading.BoundedSemaphore(self.max_connections)
                    self._limiter = None if self.rate_limit is None else RateLimiter(self.rate_limit)
                    self._watchdog = Watchdog()
                    self._pid = os.getpid()
        return self._manager

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self._counts[name] += n

    # -- the request -------------------------------------------------------------------------------

    @overload
    def get(self, url: str, decode: Callable[[bytes], T]) -> T | None: ...
    @overload
    def get(self, url: str, decode: None = None) -> bytes | None: ...
    def get(self, url: str, decode: Callable[[bytes], T] | None = None) -> T | bytes | None:
        """GET ``url`` with retries: the decoded body, or None when the server says it is absent.

        Parameters
        ----------
        url
            An ``http://`` or ``https://`` URL.
        decode
            Called on the body; raise :class:`BodyError` from it for a body that may be damaged in
            transit (it is fetched again). Other exceptions from it propagate at once. Default: the
            raw bytes.

        Raises
        ------
        TileFetchError
            The retry budget ran out, or the server answered with a status that retrying cannot fix,
            a body over ``max_body_bytes`` or a redirect to another scheme, host or port.
        """
        manager = self._pool()
        attempts = 0
        while True:
            attempts += 1
            try:
                body = self._attempt(manager, url)
                if body is None:
                    self._count("absent")
                    return None
                return body if decode is None else decode(body)
            except BodyError as err:
                retry = _Retry(f"undecodable body ({redact(str(err))})")
            except _Retry as err:
                retry = err
            if attempts > self.retries:
                self._count("failures")
                raise TileFetchError(
                    f"GET {redact(url)} failed after {attempts} attempt{'s' * (attempts > 1)}: {retry.cause}; "
                    "check that the server is up and the URL is right, or allow more with "
                    "HttpClient(retries=..., read_timeout=..., deadline=...)"
                )
            self._count("retries")
            delay = min(self.max_backoff, self.backoff * 2 ** (attempts - 1)) * (0.5 + random.random() / 2)
            if retry.wait is not None:  # the server said how long: honour it (up to max_backoff)
                delay = min(self.max_backoff, max(retry.wait, delay))
            time.sleep(delay)

    def _attempt(self, manager: urllib3.PoolManager, url: str) -> bytes | None:
        if self._limiter is not None:
            self._limiter.wait()
        with self._slots, self._watchdog.watching(self.deadline) as deadline:
            self._count("requests")
            return self._exchange(manager, url, deadline)

    def _exchange(self, manager: urllib3.PoolManager, url: str, deadline: Deadline) -> bytes | None:
        """One attempt: the request, same-host redirects, and the body (None: absent)."""
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            response = self._send(manager, url, current, deadline)
            reuse: bool | None = None  # None: read a short rest, then reuse the connection
            try:
                status = response.status
                if status in REDIRECT_STATUSES:
                    current = self._redirect(url, current, status, response.headers.get("Location"))
                    continue
                if status in ABSENT_STATUSES:
                    return None
                if status in RETRY_STATUSES or 500 <= status < 600:
                    raise _Retry(
                        f"HTTP {status} {phrase(status)}".rstrip(), retry_after(response.headers.get("Retry-After"))
                    )
                if not 200 <= status < 300:
                    hint = " (check the API key and headers)" if status in (401, 403) else ""
                    raise self._failed(
                        f"GET {redact(url)} answered HTTP {status} {phrase(status)}{hint}; "
                        "retrying cannot fix that, so it was not retried"
                    )
                reuse = False  # an oversized or broken body closes the connection, unread
                body = self._read_body(response, url, deadline)
                reuse = True
                return body
            finally:
                release(response, reuse, deadline)
        raise self._failed(
            f"GET {redact(url)} was redirected more than {MAX_REDIRECTS} times; put the final URL in the template"
        )

    def _send(self, manager: urllib3.PoolManager, url: str, current: str, deadline: Deadline) -> Any:
        try:
            return manager.request("GET", current, preload_content=False, redirect=False)
        except LocationValueError as err:  # its text quotes the URL: redacted, and not kept as the cause
            raise self._failed(
                f"GET {redact(current)}: not a valid URL ({redact(str(err))}); check the template"
            ) from None
        except WIRE_ERRORS as err:
            raise self._lost(err, deadline) from None

    def _redirect(self, url: str, current: str, status: int, location: str | None) -> str:
        """The URL a redirect from ``current`` leads to, when it stays on the same scheme, host and port."""
        if not location:
            raise self._failed(f"GET {redact(url)} answered HTTP {status} {phrase(status)} with no Location to follow")
        target = urljoin(current, location)
        refusal = redirect_refusal(current, target)
        if refusal is not None:
            raise self._failed(
                f"GET {redact(url)} was redirected (HTTP {status}) to {redact(target)}, {refusal}; redirects are "
                "followed only within one scheme, host and port, so headers and keys stay with their server: "
                "put the final URL in the template"
            )
        return target

    def _read_body(self, response: Any, url: str, deadline: Deadline) -> bytes:
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            raise self._failed(
                f"GET {redact(url)} has a {length}-byte body, over max_body_bytes={self.max_body_bytes}; "
                "raise HttpClient(max_body_bytes=...) if that is a real tile"
            )
        try:
            body: bytes = response.read(self.max_body_bytes + 1)
        except WIRE_ERRORS as err:
            raise self._lost(err, deadline) from None
        if deadline.expired:  # the body may look whole yet have been cut by the deadline
            raise self._lost(None, deadline)
        if len(body) > self.max_body_bytes:
            raise self._failed(
                f"GET {redact(url)} sent more than max_body_bytes={self.max_body_bytes} bytes; "
                "raise HttpClient(max_body_bytes=...) if that is a real tile"
            )
        encoded = response.headers.get("Content-Encoding", "identity") != "identity"
        if length is not None and length.isdigit() and not encoded and len(body) != int(length):
            raise _Retry(f"truncated body ({len(body)} of {length} bytes)")
        self._count("bytes", len(body))
        return body

    def _failed(self, message: str) -> TileFetchError:
        """A failure that retrying cannot fix (counted)."""
        self._count("failures")
        return TileFetchError(message)

    def _lost(self, err: BaseException | None, deadline: Deadline) -> _Retry:
        """The attempt failed on the way (connection, timeout, deadline): worth another try."""
        if deadline.expired:
            return _Retry(
                f"no complete answer within deadline={self.deadline:g} s (connecting, redirects and all reads "
                "of one attempt); raise HttpClient(deadline=...) for a slow server"
            )
        return _Retry(redact(describe(err)) if err is not None else "the connection was lost")

    # -- reporting and pickling --------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """``requests`` sent, ``retries`` made, ``failures`` (URLs given up on), ``absent`` (404/204)
        answers and ``bytes`` of bodies received, since creation (or unpickling)."""
        with self._stats_lock:
            counts = dict(self._counts)
        for name in ("requests", "retries", "failures", "absent", "bytes"):
            counts.setdefault(name, 0)
        return counts

    def settings(self) -> dict[str, Any]:
        """The constructor arguments that make an equivalent client."""
        return {
            "max_connections": self.max_connections,
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "deadline": self.deadline,
            "retries": self.retries,
            "backoff": self.backoff,
            "max_backoff": self.max_backoff,
            "rate_limit": self.rate_limit,
            "user_agent": self.user_agent,
            "headers": dict(self.headers),
            "max_body_bytes": self.max_body_bytes,
        }

    def close(self) -> None:
        """Close pooled connections; the client reopens them if used again."""
        with self._state_lock:
            if self._pid == os.getpid():
                self._manager.clear()
            self._pid = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (partial(HttpClient, **self.settings()), ())

    def __repr__(self) -> str:
        return (
            f"HttpClient(max_connections={self.max_connections}, connect_timeout={self.connect_timeout}, "
            f"read_timeout={self.read_timeout}, deadline={self.deadline}, retries={self.retries}, "
            f"rate_limit={self.rate_limit})"
        )


__all__ = [
    "ABSENT_STATUSES",
    "MAX_REDIRECTS",
    "REDIRECT_STATUSES",
    "RETRY_STATUSES",
    "BodyError",
    "HttpClient",
    "redact",
]
