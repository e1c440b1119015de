"""HttpClient against a real loopback server: bodies, absent tiles, retries, budgets, politeness."""

from __future__ import annotations

import pickle
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import lazytiles as lt
from lazytiles.sources.http import BodyError, HttpClient, _retry_after, redact
from lazytiles.testing.tileserver import TileServer

BODY = bytes(range(256)) * 40  # 10 KiB that name their offsets


@pytest.fixture
def server(tmp_path: Path):
    (tmp_path / "a.bin").write_bytes(BODY)
    (tmp_path / "b.bin").write_bytes(BODY[::-1])
    (tmp_path / "big.bin").write_bytes(b"x" * 5000)
    with TileServer(tmp_path, hang_timeout=60) as s:
        yield s


def fast(**options) -> HttpClient:
    options.setdefault("backoff", 0.001)
    options.setdefault("read_timeout", 10)
    return HttpClient(**options)


def test_get_returns_the_body_and_counts_it(server):
    client = fast()
    assert client.get(f"{server.url}/a.bin") == BODY
    assert client.get(f"{server.url}/a.bin", decode=len) == len(BODY)
    stats = client.stats()
    assert stats["requests"] == 2 and stats["retries"] == 0 and stats["bytes"] == 2 * len(BODY)


def test_404_and_204_mean_absent(server):
    client = fast()
    assert client.get(f"{server.url}/nothing.bin") is None
    server.absent("/a.bin", status=204)
    assert client.get(f"{server.url}/a.bin") is None
    assert client.stats()["absent"] == 2 and client.stats()["retries"] == 0


@pytest.mark.parametrize("fault", ["fail", "throttle", "truncate", "garbage-decode", "drop"])
def test_transient_faults_are_retried_until_the_body_arrives(server, fault):
    path = "/a.bin"
    if fault == "fail":
        server.fail(path, times=2, status=502)
    elif fault == "throttle":
        server.throttle(path, times=2, retry_after=0)
    elif fault == "truncate":
        server.truncate(path, times=2)
    elif fault == "drop":
        server.inject("drop", path, times=2)
    else:
        server.garbage(path, times=2)

    def decode(body: bytes) -> bytes:
        if body != BODY:
            raise BodyError("not the body")
        return body

    client = fast(retries=2)
    assert client.get(server.url + path, decode=decode) == BODY
    assert server.hits[path] == 3 and client.stats()["retries"] == 2


def test_the_retry_budget_ends_in_an_error_naming_url_attempts_and_cause(server):
    server.fail("/a.bin", times=None, status=500)
    client = fast(retries=3)
    with pytest.raises(lt.TileFetchError, match=rf"GET {server.url}/a.bin failed after 4 attempts: HTTP 500") as info:
        client.get(f"{server.url}/a.bin")
    assert isinstance(info.value, OSError)
    assert server.hits["/a.bin"] == 4 and client.stats()["failures"] == 1
    assert pickle.loads(pickle.dumps(info.value)).args == info.value.args


def test_a_truncated_body_is_named_as_such(server):
    server.truncate("/a.bin", times=None)
    with pytest.raises(lt.TileFetchError, match=r"after 2 attempts: truncated body \(5120 bytes read, 5120 more expected\)"):
        fast(retries=1).get(f"{server.url}/a.bin")


@pytest.mark.parametrize("status", [400, 401, 403, 410])
def test_statuses_retrying_cannot_fix_fail_at_once(server, status):
    server.fail("/a.bin", times=None, status=status)
    with pytest.raises(lt.TileFetchError, match=rf"answered HTTP {status} .*not retried"):
        fast(retries=5).get(f"{server.url}/a.bin")
    assert server.hits["/a.bin"] == 1


def test_an_error_from_decode_that_is_no_body_error_is_not_retried(server):
    def decode(body: bytes) -> bytes:
        raise KeyError("a bug, not a transmission fault")

    with pytest.raises(KeyError):
        fast(retries=5).get(f"{server.url}/a.bin", decode=decode)
    assert server.hits["/a.bin"] == 1


@pytest.mark.timeout(60)
def test_a_hung_request_times_out_and_is_retried(server):
    server.hang("/a.bin", times=1)  # held up to 60 s unless the client gives up
    client = fast(read_timeout=0.3)
    start = time.monotonic()
    assert client.get(f"{server.url}/a.bin") == BODY
    assert time.monotonic() - start < 30 and server.hits["/a.bin"] == 2


@pytest.mark.timeout(60)
def test_a_server_that_always_hangs_fails_with_read_timed_out(server):
    server.hang("/a.bin", times=None)
    with pytest.raises(lt.TileFetchError, match=r"after 2 attempts: read timed out"):
        fast(read_timeout=0.2, retries=1).get(f"{server.url}/a.bin")


def test_a_refused_connection_is_retried_then_named(server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(lt.TileFetchError, match=rf"GET http://127.0.0.1:{port}/a.bin failed after 3 attempts: connection refused"):
        fast(retries=2).get(f"http://127.0.0.1:{port}/a.bin")


def test_a_body_over_max_body_bytes_is_refused_without_retries(server):
    with pytest.raises(lt.TileFetchError, match=r"5000-byte body, over max_body_bytes=4096"):
        fast(max_body_bytes=4096).get(f"{server.url}/big.bin")
    assert server.hits["/big.bin"] == 1


def test_user_agent_and_headers_are_sent(server):
    fast().get(f"{server.url}/a.bin")
    assert server.last_headers["User-Agent"] == f"lazytiles/{lt.__version__}"
    fast(user_agent="my-app/1.0 (me@example.org)", headers={"Authorization": "Bearer k"}).get(f"{server.url}/a.bin")
    assert server.last_headers["User-Agent"] == "my-app/1.0 (me@example.org)"
    assert server.last_headers["Authorization"] == "Bearer k"


def test_connections_are_kept_alive(server):
    client = fast()
    for _ in range(20):
        client.get(f"{server.url}/a.bin")
    server.fail("/b.bin", times=3, status=500)  # error answers keep the connection usable too
    client.get(f"{server.url}/b.bin")
    assert server.requests == 24 and server.connections == 1


def test_no_more_than_max_connections_requests_are_in_flight(server):
    server.latency = 0.05
    client = fast(max_connections=3)
    start = threading.Barrier(12, timeout=30)

    def get(_: int) -> bytes | None:
        start.wait()
        return client.get(f"{server.url}/a.bin")

    with ThreadPoolExecutor(12) as pool:
        assert list(pool.map(get, range(12))) == [BODY] * 12
    assert 2 <= server.peak_in_flight <= 3


def test_the_rate_limit_spaces_requests(server):
    client = fast(rate_limit=20)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: client.get(f"{server.url}/a.bin"), range(8)))
    times = server.request_times("/a.bin")
    assert len(times) == 8 and times[-1] - times[0] >= 6 / 20  # 7 gaps of 1/20 s, one of slack


def test_retry_after_in_seconds_or_as_a_date():
    assert _retry_after("3") == 3.0
    assert _retry_after(" 0.25 ") == 0.25
    assert _retry_after(None) is None and _retry_after("soon") is None
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    later = format_datetime(now + timedelta(seconds=120), usegmt=True)
    assert _retry_after(later, now=now.timestamp()) == pytest.approx(120)
    assert _retry_after(format_datetime(now - timedelta(seconds=5), usegmt=True), now=now.timestamp()) == 0


def test_redact_masks_credentials_and_secret_query_values():
    assert redact("https://u:p@h.example/1/2/3.png") == "https://***@h.example/1/2/3.png"
    assert redact("https://h.example/{z}/{x}/{y}.png?access_token=abc&style=x") == (
        "https://h.example/{z}/{x}/{y}.png?access_token=***&style=x"
    )
    assert redact("https://h.example/t.png?Signature=s&X-Amz-Credential=c&v=2") == (
        "https://h.example/t.png?Signature=***&X-Amz-Credential=***&v=2"
    )
    assert redact("/plain/path/{z}.png") == "/plain/path/{z}.png"


def test_a_client_pickles_as_its_settings(server):
    client = fast(max_connections=4, headers={"X-Key": "k"}, rate_limit=50.0, user_agent="ua")
    client.get(f"{server.url}/a.bin")
    copy = pickle.loads(pickle.dumps(client))
    assert copy.settings() == client.settings() and copy.stats()["requests"] == 0
    assert copy.get(f"{server.url}/a.bin") == BODY


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_connections": 0}, r"max_connections must be an integer > 0, got 0"),
        ({"retries": -1}, r"retries must be an integer >= 0, got -1"),
        ({"read_timeout": 0}, r"read_timeout must be a number > 0, got 0"),
        ({"rate_limit": -2}, r"rate_limit must be a number > 0"),
        ({"headers": [("a", "b")]}, r"headers must be a mapping"),
    ],
)
def test_bad_settings_are_refused(options, match):
    with pytest.raises(lt.InvalidArgumentError, match=match):
        HttpClient(**options)


def test_a_url_that_is_no_url_fails_clearly():
    with pytest.raises(lt.TileFetchError, match=r"not a valid URL"):
        fast().get("http://127.0.0.1:1:2/a.png")
