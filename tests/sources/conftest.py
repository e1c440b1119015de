"""XYZ fixtures: tiles cut from an image whose pixels name their position, served on 127.0.0.1."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from lazytiles.testing.tileserver import TileServer
from lazytiles.testing.xyztiles import XYZCoverage, write_xyz_tiles

#: Zoom and upper-left tile (x, y) of the test tiles: somewhere in Europe at about 38 m per pixel.
ZOOM = 12
ORIGIN = (2100, 1400)


def position_image(rows: int = 768, cols: int = 1024, tile: int = 256, bands: int = 3) -> np.ndarray:
    """uint8 (bands, rows, cols): band 0 holds ``col % 256``, band 1 ``row % 256``, band 2 the tile's
    number (``tile_row * 16 + tile_col + 1``) with 255 at each tile's upper-left corner, so a shifted,
    flipped or misplaced tile shows its own address in the diff. A fourth band is alpha: 200 + tile col.
    """
    r, c = np.indices((rows, cols))
    out = np.empty((bands, rows, cols), np.uint8)
    out[0] = c % 256
    if bands > 1:
        out[1] = r % 256
    if bands > 2:
        out[2] = (r // tile) * 16 + c // tile + 1
        out[2][(r % tile == 0) & (c % tile == 0)] = 255
    if bands > 3:
        out[3] = 200 + c // tile
    return out


@dataclass(frozen=True)
class XYZTree:
    """A directory of ``{z}/{x}/{y}.png`` tiles cut from ``image``, covering ``coverage``."""

    root: Path
    image: np.ndarray
    coverage: XYZCoverage

    @property
    def template(self) -> str:
        return str(self.root / "{z}" / "{x}" / "{y}.png")

    def pixels(self, window) -> np.ndarray:
        """The image's pixels under a window of the zoom's world grid (the oracle)."""
        r = int(window.row_off) - int(self.coverage.window.row_off)
        c = int(window.col_off) - int(self.coverage.window.col_off)
        return self.image[:, r : r + int(window.height), c : c + int(window.width)]


@pytest.fixture
def xyz_tree(tmp_path: Path) -> XYZTree:
    """3 x 4 tiles of 256 px at zoom 12 (768 x 1024 px), RGB PNG."""
    image = position_image()
    root = tmp_path / "tiles"
    coverage = write_xyz_tiles(image, root, zoom=ZOOM, top_left_tile=ORIGIN)
    return XYZTree(root, image, coverage)


@pytest.fixture
def tile_server(xyz_tree: XYZTree) -> Iterator[TileServer]:
    """A TileServer on 127.0.0.1 serving ``xyz_tree``; ``server.template()`` is its URL template."""
    with TileServer(xyz_tree.root, hang_timeout=60) as server:
        yield server


# -- a server whose answers are raw bytes, for what TileServer does not do ---------------------------


@dataclass(frozen=True)
class RawRequest:
    """One request as the raw server saw it: its target (path and query) and headers."""

    target: str
    headers: dict[str, str]


Answer = Callable[[socket.socket, RawRequest], None]


@dataclass
class RawServer:
    """An HTTP server on 127.0.0.1 whose answers tests write to the socket themselves
    (``server.on(target, answer)``; a target without a query also answers the path with any query):
    redirects, dripping bytes, endless bodies, broken HTTP. One request per connection; an unknown
    target answers 404. ``requests`` lists what arrived."""

    tls: ssl.SSLContext | None = None
    routes: dict[str, Answer] = field(default_factory=dict)
    requests: list[RawRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self.stopped = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def on(self, target: str, answer: Answer) -> None:
        self.routes[target] = answer

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        with raw:
            raw.settimeout(30)
            try:
                conn = raw if self.tls is None else self.tls.wrap_socket(raw, server_side=True)
                with conn:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(4096)
                        if not chunk:
                            return
                        data += chunk
                    lines = data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
                    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                    request = RawRequest(lines[0].split(" ")[1], headers)
                    self.requests.append(request)
                    path = request.target.split("?")[0]
                    self.routes.get(request.target, self.routes.get(path, answer_with(b"", status=404)))(conn, request)
            except OSError:  # the client went away: what some tests wait for
                pass

    def stop(self) -> None:
        self.stopped.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=10)


def answer_with(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    """An answer of ``status`` with ``body`` and its Content-Length (plus ``headers``)."""
    fields = {"Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    head = f"HTTP/1.1 {status} Whatever\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"

    def answer(conn: socket.socket, request: RawRequest) -> None:
        conn.sendall(head.encode("latin-1") + body)

    return answer


def redirect_to(location: str, status: int = 302) -> Answer:
    return answer_with(b"moved", status=status, headers={"Location": location})


def drip(prefix: bytes, every: float = 0.05) -> Answer:
    """Sends ``prefix`` one byte at a time, ``every`` seconds, then keeps dripping spaces until the
    client goes away or the server stops: a server that never quite stops answering."""

    def answer(conn: socket.socket, request: RawRequest) -> None:
        for i in range(10**6):
            if RAW_STOP.is_set():
                return
            conn.sendall(prefix[i : i + 1] or b" ")
            time.sleep(every)

    return answer


@dataclass
class Flood:
    """An answer that sends ``total`` bytes of body (announced or not in Content-Length) and counts
    how many the client took before it closed the connection."""

    total: int
    announce: bool = True
    sent: int = 0
    finished: threading.Event = field(default_factory=threading.Event)

    def __call__(self, conn: socket.socket, request: RawRequest) -> None:
        length = f"Content-Length: {self.total}\r\n" if self.announce else "Connection: close\r\n"
        chunk = b"x" * 65536
        try:
            conn.sendall(f"HTTP/1.1 200 OK\r\n{length}\r\n".encode())
            while self.sent < self.total:
                self.sent += conn.send(chunk[: self.total - self.sent])
        finally:
            self.finished.set()


#: Set when the test ends: dripping answers stop.
RAW_STOP = threading.Event()


@pytest.fixture
def raw_servers() -> Iterator[Callable[..., RawServer]]:
    """Makes :class:`RawServer` s on 127.0.0.1 (as many as a test needs, ``tls=`` a server context for
    https); all stop when the test ends."""
    made: list[RawServer] = []
    RAW_STOP.clear()

    def make(tls: ssl.SSLContext | None = None) -> RawServer:
        made.append(RawServer(tls))
        return made[-1]

    yield make
    RAW_STOP.set()
    for server in made:
        server.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files (made with ``cryptography``)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lazytiles test server")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture
def tls(tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server context for ``raw_servers(tls=...)``; clients in the test trust its certificate
    (``SSL_CERT_FILE``, which OpenSSL reads when a connection loads the default certificates)."""
    cert, key = tls_files
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context
