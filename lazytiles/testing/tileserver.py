"""A real tile server on 127.0.0.1 for tests, benchmarks, notebooks and ``lazytiles demo``.

:class:`TileServer` serves a directory over HTTP/1.1 with keep-alive and byte ranges (``Range``,
``206 Partial Content``, ``HEAD``, ``Accept-Ranges``: what GDAL's ``/vsicurl/`` needs to read a COG),
and injects faults on request (:mod:`lazytiles.testing.faults`): latency, HTTP errors, 429 with
``Retry-After``, truncated bodies, hanging connections, garbage bytes and absent tiles. It counts
requests per path. Files that do not exist answer 404, so a directory of tiles is a tile service whose
coverage ends where the files do; a path that leads outside the directory (``..``, a symlink) answers
403. Files are streamed in chunks. ``python -m lazytiles.testing.tileserver DIR`` runs one in its own
process (:func:`main`). :func:`lazytiles.testing.xyztiles.write_xyz_tiles` writes an image aligned to
the web-mercator grid as ``{z}/{x}/{y}.png`` tiles.

Examples
--------
>>> import tempfile, numpy as np, lazytiles as lt
>>> from lazytiles.testing.tileserver import TileServer
>>> from lazytiles.testing.xyztiles import write_xyz_tiles
>>> image = np.random.default_rng(0).integers(0, 255, (3, 512, 512), dtype=np.uint8)
>>> tiles = tempfile.mkdtemp()
>>> cover = write_xyz_tiles(image, tiles, zoom=10, top_left_tile=(550, 335))
>>> with TileServer(tiles) as server:
...     src = lt.open(server.template(), zoom=10, tile_size=256)
...     server.fail(times=1)                      # every tile answers HTTP 500 once, then works
...     window = lt.windows(src, size=512, bounds=cover.bounds)[0]
...     hits = server.hits
>>> bool((window.data == image).all()), sorted(hits.values())
(True, [2, 2, 2, 2])
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import InvalidArgumentError
from .faults import GARBAGE, Fault, Faults

#: Bytes read from a file and written to the socket at a time.
CHUNK = 64 * 1024


class TileServer(Faults):
    """Serve ``directory`` on 127.0.0.1 from a background thread, with switchable faults (:class:`Faults`).

    Parameters
    ----------
    directory
        The files to serve; ``/a/b.png`` is ``directory/a/b.png``. Nothing outside it is reachable:
        the requested path is resolved (``..``, symlinks) and refused with 403 when it leaves it.
    host, port
        Where to listen (default: 127.0.0.1 and a free port).
    latency
        Seconds each request waits before it is answered (settable at any time).
    hang_timeout
        Longest a hung request is held (see :meth:`hang`).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        hang_timeout: float = 30.0,
    ) -> None:
        super().__init__()
        self.directory = Path(directory).resolve()
        if not self.directory.is_dir():
            raise InvalidArgumentError(f"directory {os.fspath(directory)!r} is not a directory; pass the tile root")
        self.host, self.port = host, port
        self.latency = float(latency)
        self.hang_timeout = float(hang_timeout)
        self._lock = threading.Lock()
        self._hits: Counter[str] = Counter()
        self._times: defaultdict[str, list[float]] = defaultdict(list)
        self._headers: dict[str, str] = {}
        self._in_flight = self._peak = 0
        self._clients: set[tuple[Any, ...]] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle --------------------------------------------------------------------------------

    def start(self) -> TileServer:
        """Start serving (no-op when already started); returns the server."""
        if self._server is None:
            self._release.clear()
            server = _Server((self.host, self.port), _Handler)
            server.owner = self
            self._server = server
            self.port = server.server_address[1]
            self._thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="lazytiles-tileserver", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Release hung requests, stop serving and close the socket."""
        server, self._server = self._server, None
        self._release.set()
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> TileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, no trailing slash."""
        return f"http://{self.host}:{self.port}"

    def template(self, pattern: str = "{z}/{x}/{y}.png") -> str:
        """The tile-URL template of tiles laid out as ``pattern`` under the directory."""
        return f"{self.url}/{pattern.lstrip('/')}"

    # -- counting ----------------------------------------------------------------------------------

    def _record(self, path: str, headers: Any, client: Any) -> None:
        with self._lock:
            self._clients.add(tuple(client))
            self._hits[path] += 1
            self._times[path].append(time.monotonic())
            self._headers = dict(headers.items())
            self._in_flight += 1
            self._peak = max(self._peak, self._in_flight)

    def _done(self) -> None:
        with self._lock:
            self._in_flight -= 1

    @property
    def last_headers(self) -> dict[str, str]:
        """The headers of the latest request (User-Agent, API keys, Range...)."""
        with self._lock:
            return dict(self._headers)

    @property
    def connections(self) -> int:
        """Distinct client connections (address and port) that sent requests since :meth:`reset_counts`."""
        with self._lock:
            return len(self._clients)

    @property
    def peak_in_flight(self) -> int:
        """Most requests being answered at the same moment since the last :meth:`reset_counts`."""
        with self._lock:
            return self._peak

    @property
    def hits(self) -> Counter[str]:
        """Requests per URL path so far (a copy), including failed and faulted ones."""
        with self._lock:
            return Counter(self._hits)

    @property
    def requests(self) -> int:
        """All requests so far."""
        with self._lock:
            return sum(self._hits.values())

    def request_times(self, path: str) -> list[float]:
        """``time.monotonic()`` at the arrival of each request for ``path``."""
        with self._lock:
            return list(self._times.get(path, ()))

    def reset_counts(self) -> None:
        """Forget the request counts, times, connections and peak."""
        with self._lock:
            self._hits.clear()
            self._times.clear()
            self._peak = self._in_flight
            self._clients.clear()

    def _resolve(self, path: str) -> Path | int:
        """The file a URL path names, or the status refusing it: 403 outside the directory, 404 no file."""
        rel = unquote(path).lstrip("/")
        if not rel or "\x00" in rel:
            return 404
        try:
            file = (self.directory / rel).resolve()  # "..", and symlinks, wherever they point
            if not file.is_relative_to(self.directory):
                return 403
            return file if file.is_file() else 404
        except (OSError, RuntimeError):  # a symlink loop, a name too long
            return 404

    def __repr__(self) -> str:
        state = f"serving at {self.url}" if self._server is not None else "stopped"
        return f"TileServer({os.fspath(self.directory)!r}, latency={self.latency})  # {state}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True
    owner: TileServer

    def server_activate(self) -> None:
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End every kept-alive connection, so no handler thread outlives the server."""
        with self._open_lock:
            open_sockets = list(self._open)
        for sock in open_sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or give up close their end mid-response: not a server error.
        err = sys.exc_info()[1]
        if isinstance(err, ConnectionError | socket.timeout | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms stall
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the owner counts requests
        pass

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _start(self, status: int, length: int, ctype: str, **headers: str) -> None:
        """Send the status line and headers (``Content_Range`` is sent as ``Content-Range``)."""
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(length))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()

    def _send(self, status: int, body: bytes, ctype: str = "text/plain", head: bool = False, **headers: str) -> None:
        self._start(status, len(body), ctype, **headers)
        if not head and status != 204:
            self.wfile.write(body)

    def _stream(self, file: Path, start: int, length: int) -> None:
        """Write ``length`` bytes of ``file`` from ``start``, :data:`CHUNK` bytes at a time."""
        with open(file, "rb") as f:
            f.seek(start)
            while length > 0:
                chunk = f.read(min(CHUNK, length))
                if not chunk:  # the file shrank meanwhile: the client sees a short body
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
                length -= len(chunk)

    def _serve(self, head: bool) -> None:
        owner = self.server.owner
        path = urlsplit(self.path).path
        owner._record(path, self.headers, self.client_address)
        try:
            self._answer(owner, path, head)
        finally:
            owner._done()

    def _answer(self, owner: TileServer, path: str, head: bool) -> None:
        if owner.latency > 0:
            time.sleep(owner.latency)  # the simulated network, not a synchronisation
        fault = owner.take_fault(path)
        if fault is not None and self._fault(fault, path, head):
            return
        file = owner._resolve(path)
        if isinstance(file, int):
            self._send(file, b"outside the served directory\n" if file == 403 else b"no such tile\n", head=head)
            return
        size = file.stat().st_size
        start, end = 0, size - 1
        status = 200
        extra = {"Accept_Ranges": "bytes"}
        spec = self.headers.get("Range")
        if spec:
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", spec)  # one range; several get the whole file
            if m and (m[1] or m[2]):
                if m[1]:
                    start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
                else:
                    start = max(0, size - int(m[2]))
                if start >= size or start > end:
                    self._send(416, b"", head=head, Content_Range=f"bytes */{size}", **extra)
                    return
                status = 206
                extra["Content_Range"] = f"bytes {start}-{end}/{size}"
        self._start(status, end - start + 1, _content_type(file), **extra)
        if not head:
            self._stream(file, start, end - start + 1)

    def _fault(self, fault: Fault, path: str, head: bool) -> bool:
        """Answer with ``fault``; False when it needs a file that is not there (then serve normally)."""
        kind, opts, owner = fault.kind, fault.options, self.server.owner
        if kind == "error":
            self._send(opts["status"], b"injected failure\n", head=head)
        elif kind == "throttle":
            wait = opts["retry_after"]
            value = str(int(wait)) if float(wait).is_integer() else str(wait)
            self._send(429, b"slow down\n", head=head, Retry_After=value)
        elif kind == "absent":
            self._send(opts["status"], b"" if opts["status"] == 204 else b"no such tile\n", head=head)
        elif kind == "garbage":
            self._send(200, GARBAGE, "image/png", head)
        elif kind == "hang":
            owner._release.wait(owner.hang_timeout)
            self.close_connection = True  # give up without a word
        elif kind == "drop":
            self.close_connection = True
        elif kind == "truncate":
            file = owner._resolve(path)
            if isinstance(file, int):
                return False
            size = file.stat().st_size  # the full Content-Length, half the body, then the connection closes
            self._start(200, size, _content_type(file))
            if not head:
                self._stream(file, 0, size // 2)
            self.close_connection = True
        return True


def _content_type(file: Path) -> str:
    return mimetypes.guess_type(file.name)[0] or "application/octet-stream"


def main(argv: list[str] | None = None) -> None:
    """``python -m lazytiles.testing.tileserver DIR [--latency S] [--port P]``: serve until SIGINT or SIGTERM.

    Prints the server's URL on the first line of stdout, so a parent process can read it, and on
    exit a JSON line ``{"requests": N, "paths": M}`` (M: distinct URL paths asked for).
    """
    parser = argparse.ArgumentParser(prog="python -m lazytiles.testing.tileserver", description=main.__doc__)
    parser.add_argument("directory")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with TileServer(args.directory, port=args.port, latency=args.latency) as server:
        print(server.url, flush=True)
        while not stop.wait(0.5):
            pass
        hits = server.hits
    print(json.dumps({"requests": sum(hits.values()), "paths": len(hits)}), flush=True)


if __name__ == "__main__":
    main()


__all__ = ["CHUNK", "TileServer", "main"]
