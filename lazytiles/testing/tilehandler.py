"""Answering one request of :class:`~lazytiles.testing.tileserver.TileServer`: a file, a byte range of it, or a fault.

:class:`_Handler` speaks HTTP/1.1 with keep-alive: ``GET`` and ``HEAD``, one ``Range: bytes=`` range
(``206 Partial Content``, ``416`` past the end), ``404`` for files that do not exist, and the faults
:data:`FAULT_KINDS` names. It reads its settings (latency, faults, the directory) from the server's
owner, the :class:`~lazytiles.testing.tileserver.TileServer`, which keeps all state and counts the requests.
:class:`_Server` tracks open connections so that stopping ends every kept-alive one.
:mod:`lazytiles.testing.tileserver` re-exports :data:`FAULT_KINDS` and :data:`GARBAGE`.
"""

from __future__ import annotations

import mimetypes
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .tileserver import TileServer

FAULT_KINDS = ("error", "throttle", "truncate", "hang", "garbage", "absent", "drop")
#: What a "garbage" fault sends instead of the file: bytes that are no image.
GARBAGE = b"<html>not a tile</html>\n" + bytes(range(256)) * 4


@dataclass
class _Fault:
    kind: str
    pattern: str
    times: int | None  # per matching path; None: every request
    options: dict[str, Any]
    used: Counter[str] = field(default_factory=Counter)


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
        import sys

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

    def _send(
        self, status: int, body: bytes, ctype: str = "text/plain", head: bool = False, **headers: str
    ) -> None:
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if not head and status != 204:
            self.wfile.write(body)

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
        fault = owner._take_fault(path)
        if fault is not None and self._fault(fault, path, head):
            return
        file = owner._resolve(path)
        if file is None:
            self._send(404, b"no such tile\n", head=head)
            return
        size = file.stat().st_size
        ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
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
        with open(file, "rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        self._send(status, body, ctype, head, **extra)

    def _fault(self, fault: _Fault, path: str, head: bool) -> bool:
        """Answer with ``fault``; False when it needs a file that is not there (then serve normally)."""
        kind, opts = fault.kind, fault.options
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
            self.server.owner._release.wait(self.server.owner.hang_timeout)
            self.close_connection = True  # give up without a word
        elif kind == "drop":
            self.close_connection = True
        elif kind == "truncate":
            file = self.server.owner._resolve(path)
            if file is None:
                return False
            body = file.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", mimetypes.guess_type(file.name)[0] or "application/octet-stream")
            self.end_headers()
            if not head:
                self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
        return True


__all__ = ["FAULT_KINDS", "GARBAGE"]
