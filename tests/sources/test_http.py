"""HttpClient against real loopback servers: bodies, absent tiles, retries, budgets, politeness,
redirects, oversized bodies, deadlines and secrets."""

from __future__ import annotations

import pickle
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest

import lazytiles as lt
from lazytiles.sources.http import BodyError, HttpClient, redact
from lazytiles.sources.httpwire import redirect_refusal, retry_after
from lazytiles.testing.tileserver import TileServer

from .conftest import Flood, answer_with, drip, redirect_to

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
    with pytest.raises(
        lt.TileFetchError, match=r"after 2 attempts: truncated body \(5120 bytes read, 5120 more expected\)"
    ):
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
    with pytest.raises(
        lt.TileFetchError, match=rf"GET http://127.0.0.1:{port}/a.bin failed after 3 attempts: connection refused"
    ):
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
    assert retry_after("3") == 3.0
    assert retry_after(" 0.25 ") == 0.25
    assert retry_after(None) is None and retry_after("soon") is None
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    later = format_datetime(now + timedelta(seconds=120), usegmt=True)
    assert retry_after(later, now=now.timestamp()) == pytest.approx(120)
    assert retry_after(format_datetime(now - timedelta(seconds=5), usegmt=True), now=now.timestamp()) == 0


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


def test_redact_masks_every_credential_like_parameter_in_any_case_and_in_free_text():
    secret = "?KEY=a&ApiKey=b&apikey=c&api_key=d&Password=e&x-amz-signature=f&sig=g&client_secret=h&style=s"
    assert redact("https://t@h.example/t.png" + secret) == (
        "https://***@h.example/t.png?KEY=***&ApiKey=***&apikey=***&api_key=***&Password=***"
        "&x-amz-signature=***&sig=***&client_secret=***&style=s"
    )
    text = "failed: http://u:pw@a.example/x?token=t1 then /y.png?access_token=t2&z=1 (url: /q?jwt=t3)"
    masked = "failed: http://***@a.example/x?token=*** then /y.png?access_token=***&z=1 (url: /q?jwt=***"
    assert redact(text) == masked  # a value runs to the next space, & or #: better a ) too many than a secret


# -- redirects -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("absolute", [False, True])
def test_a_redirect_within_the_same_host_is_followed_with_the_headers(raw_servers, status, absolute):
    server = raw_servers()
    server.on("/old.png", redirect_to(f"{server.url}/new.png?v=2" if absolute else "new.png?v=2", status))
    server.on("/new.png?v=2", answer_with(BODY))
    client = fast(headers={"X-Api-Key": "k"})
    assert client.get(f"{server.url}/old.png") == BODY
    assert [r.target for r in server.requests] == ["/old.png", "/new.png?v=2"]
    assert all(r.headers["X-Api-Key"] == "k" for r in server.requests)
    assert client.stats()["requests"] == 1  # one attempt, two hops


@pytest.mark.parametrize(("host", "why"), [("localhost", "another host"), ("127.0.0.1", "another port")])
def test_a_redirect_to_another_host_is_refused_and_nothing_reaches_it(raw_servers, host, why):
    here, there = raw_servers(), raw_servers()
    there.on("/t.png", answer_with(BODY))
    here.on("/t.png", redirect_to(f"http://{host}:{there.port}/t.png?token=LEAKED-TOKEN"))
    client = fast(retries=3, headers={"X-Api-Key": "SECRET-KEY", "Authorization": "Bearer SECRET-BEARER"})
    with pytest.raises(lt.TileFetchError) as info:
        client.get(f"{here.url}/t.png")
    message = str(info.value)
    assert f"was redirected (HTTP 302) to http://{host}:{there.port}/t.png?token=***, {why}" in message
    assert "put the final URL in the template" in message and "LEAKED-TOKEN" not in message
    assert there.requests == []  # neither the API key nor anything else went there
    assert len(here.requests) == 1  # not retried


@pytest.mark.parametrize(
    ("source", "target", "why"),
    [
        ("https://a.example/1.png", "http://a.example/1.png", "from https to http"),
        ("https://a.example/1.png", "http://a.example:443/1.png", "from https to http"),
        ("http://a.example/1.png", "https://a.example/1.png", "from http to https"),
        ("https://a.example/1.png", "ftp://a.example/1.png", "from https to ftp"),
        ("https://a.example/1.png", "https://b.example/1.png", "another host"),
        ("https://a.example/1.png", "https://a.example.evil.example/1.png", "another host"),
        ("https://a.example/1.png", "https://a.example:8443/1.png", "another port"),
        ("https://a.example/1.png", "https://a.example:99999/1.png", "not a valid URL"),
        ("https://a.example/1.png", "https://A.EXAMPLE:443/2.png", None),
        ("http://a.example:80/1.png", "http://a.example/2.png?x=1", None),
    ],
)
def test_the_redirect_rule_is_same_scheme_host_and_port(source, target, why):
    assert redirect_refusal(source, target) == why


def test_a_redirect_loop_ends_in_a_clear_error(raw_servers):
    server = raw_servers()
    server.on("/loop.png", redirect_to("/loop.png"))
    with pytest.raises(lt.TileFetchError, match=r"redirected more than 5 times; put the final URL in the template"):
        fast(retries=2).get(f"{server.url}/loop.png")
    assert len(server.requests) == 6


def test_a_redirect_without_location_fails_at_once(raw_servers):
    server = raw_servers()
    server.on("/t.png", answer_with(b"", status=302))
    with pytest.raises(lt.TileFetchError, match=r"answered HTTP 302 Found with no Location to follow"):
        fast(retries=2).get(f"{server.url}/t.png")


# -- oversized bodies and deadlines ----------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("announce", [True, False], ids=["content-length", "until-close"])
def test_an_oversized_body_closes_the_connection_instead_of_reading_it(raw_servers, announce):
    server = raw_servers()
    flood = Flood(total=256 * 2**20, announce=announce)
    server.on("/huge.png", flood)
    with pytest.raises(lt.TileFetchError, match=r"max_body_bytes=1048576.*raise HttpClient\(max_body_bytes=...\)"):
        fast(retries=3, max_body_bytes=2**20).get(f"{server.url}/huge.png")
    assert flood.finished.wait(30)
    assert flood.sent < flood.total  # the client hung up: the server could not send everything
    assert len(server.requests) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "prefix",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody",  # ends at close: cut, it would look whole
        b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10**5,  # the headers never end
    ],
    ids=["body", "body-until-close", "headers"],
)
def test_a_server_dripping_bytes_hits_the_deadline_of_the_attempt(raw_servers, prefix):
    server = raw_servers()
    server.on("/slow.png", drip(prefix, every=0.02))  # each byte well within read_timeout
    client = fast(read_timeout=10, deadline=0.5, retries=1)
    with pytest.raises(lt.TileFetchError) as info:
        client.get(f"{server.url}/slow.png")
    assert "failed after 2 attempts: no complete answer within deadline=0.5 s" in str(info.value)
    assert "raise HttpClient(deadline=...) for a slow server" in str(info.value)
    assert client.stats()["bytes"] == 0


def test_a_finished_attempt_never_cuts_its_connection_later(server):
    client = fast(deadline=0.3)
    assert client.get(f"{server.url}/a.bin") == BODY
    time.sleep(0.6)  # the first attempt's deadline passes while its connection waits in the pool
    assert client.get(f"{server.url}/b.bin") == BODY[::-1]
    assert server.connections == 1 and client.stats()["retries"] == 0


@pytest.mark.timeout(60)
def test_a_deadline_leaves_other_threads_requests_alone(server):
    server.latency = 0.01
    client = fast(deadline=5, max_connections=4)
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda _: client.get(f"{server.url}/a.bin"), range(64))) == [BODY] * 64
    assert client.stats()["retries"] == 0


# -- over TLS --------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_over_tls_a_same_host_redirect_is_followed_and_one_to_http_refused(raw_servers, tls):
    secure = raw_servers(tls=tls)
    plain = raw_servers()
    secure.on("/old.png", redirect_to("/new.png"))
    secure.on("/new.png", answer_with(BODY))
    secure.on("/down.png", redirect_to(f"http://127.0.0.1:{secure.port}/new.png"))
    secure.on("/plain.png", redirect_to(f"{plain.url}/new.png"))
    client = fast(headers={"X-Api-Key": "k"})
    assert client.get(f"{secure.url}/old.png") == BODY
    for path in ("/down.png", "/plain.png"):
        with pytest.raises(
            lt.TileFetchError, match=r"was redirected \(HTTP 302\) to http://127.0.0.1:\d+/new.png, from https to http"
        ):
            client.get(f"{secure.url}{path}")
    assert plain.requests == [] and [r.target for r in secure.requests].count("/new.png") == 1


@pytest.mark.timeout(60)
def test_over_tls_a_dripping_server_is_cut_at_the_deadline(raw_servers, tls):
    server = raw_servers(tls=tls)
    server.on("/slow.png", drip(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", every=0.02))
    server.on("/fast.png", answer_with(BODY))
    client = fast(read_timeout=10, deadline=0.5, retries=1)
    with pytest.raises(lt.TileFetchError, match=r"failed after 2 attempts: no complete answer within deadline=0.5 s"):
        client.get(f"{server.url}/slow.png")
    assert client.get(f"{server.url}/fast.png") == BODY


# -- no secret and no remote byte in any error -----------------------------------------------------

SECRETS = ("USER-NAME", "PASS-WORD", "API-KEY-VALUE", "TOKEN-VALUE", "SIG-VALUE", "REMOTE-BYTES")


def _chain(err: BaseException | None) -> str:
    text = ""
    while err is not None:
        text += f"{type(err).__name__}: {err}\n"
        err = err.__cause__ or err.__context__
    return text


def _secret_url(base: str, path: str) -> str:
    host = base.removeprefix("http://")
    return f"http://USER-NAME:PASS-WORD@{host}{path}?api_key=API-KEY-VALUE&Token=TOKEN-VALUE&X-Amz-Signature=SIG-VALUE"


@pytest.mark.timeout(120)
def test_no_error_quotes_a_secret_of_the_url_or_bytes_the_server_sent(raw_servers, server):
    raw = raw_servers()
    raw.on("/moved", redirect_to("http://localhost:1/elsewhere?token=TOKEN-VALUE"))
    raw.on("/nohttp", lambda conn, request: conn.sendall(b"REMOTE-BYTES: not http at all\r\n\r\n"))
    raw.on(
        "/badchunk",
        lambda conn, request: conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nREMOTE-BYTES\r\n"),
    )
    raw.on("/huge", Flood(total=2**20))
    raw.on("/slow", drip(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", every=0.05))
    server.fail("/fail.bin", times=None, status=500)
    server.fail("/denied.bin", times=None, status=403)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    urls = [_secret_url(raw.url, p) for p in ("/moved", "/nohttp", "/badchunk", "/huge", "/slow")]
    urls += [_secret_url(server.url, p) for p in ("/fail.bin", "/denied.bin")]
    urls += [_secret_url(closed, "/x.png"), _secret_url("http://127.0.0.1:1:2", "/x.png")]

    client = fast(retries=1, deadline=0.5, max_body_bytes=1000)
    messages = []
    for url in urls:
        with pytest.raises(lt.TileFetchError) as info:
            client.get(url)
        messages.append(_chain(info.value))
    leaks = [(m, s) for m in messages for s in SECRETS if s in m]
    assert not leaks, leaks
    assert "***@" in messages[0] and "api_key=***" in messages[0]
