"""Worker processes for :func:`lazytiles.prefetch`: each receives the pickled sequence once, computes
items by index, and sends them back pickled (protocol 5) with their large buffers in a shared-memory
segment the parent owns, creates, grows and unlinks; and how a failure travels back.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import pickle
import secrets
import signal
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Literal

from ..errors import LazyTilesError, WorkerError

#: Items whose out-of-band buffers total at least this many bytes travel through shared memory.
SHM_MIN_BYTES = 64 * 2**10
#: Seconds ``close()`` waits for a worker to finish its item before a process is terminated.
CLOSE_TIMEOUT = 5.0

StartMethod = Literal["fork", "spawn", "forkserver"]


@dataclass
class _Failure:
    """Why an item could not be computed; turned into an exception in the consumer that asks for it."""

    exc: BaseException | None  # the original (rebuilt from its pickle for a process worker), if any
    type_name: str
    message: str
    where: str
    remote_traceback: str | None = None

    @classmethod
    def of(cls, err: BaseException, where: str) -> _Failure:
        return cls(err, type(err).__name__, str(err), where)

    def raise_for(self, index: int) -> None:
        text = f"item {index} failed in {self.where}: {self.type_name}: {self.message}"
        cause: BaseException | None = self.exc
        if self.remote_traceback is not None:
            remote = _RemoteTraceback(self.remote_traceback)
            if cause is None:
                cause = remote
            elif cause.__cause__ is None:
                cause.__cause__ = remote
        err: BaseException | None = None
        if isinstance(self.exc, LazyTilesError):
            try:
                err = type(self.exc)(text)  # users' `except TileFetchError:` keeps working
            except Exception:  # a subclass with another signature: fall back to WorkerError
                err = None
        if err is None:
            err = WorkerError(text)
        raise err from cause


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process, as text."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


# -- process workers -------------------------------------------------------------------------------


def _default_start_method() -> StartMethod:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _aligned(n: int, to: int = 64) -> int:
    return -(-n // to) * to


class _ProcessWorker:
    """One worker process, driven by one thread of the parent; owns the shared memory it writes into.

    ``payload`` is the pickled sequence; ``start_method`` None picks forkserver where available, else
    spawn; ``on_exit`` is called when the process dies while computing an item (it is restarted for
    the next one).
    """

    def __init__(
        self, number: int, payload: bytes, start_method: StartMethod | None, on_exit: Callable[[], None]
    ) -> None:
        self._number = number
        self._payload = payload
        self._start_method = start_method
        self._on_exit = on_exit
        self.proc: multiprocessing.process.BaseProcess | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._shm: SharedMemory | None = None  # created and unlinked by this (parent) side
        self._shm_news = False  # the process has not attached the current segment yet
        self._lock = threading.Lock()

    def _start(self) -> tuple[multiprocessing.process.BaseProcess, multiprocessing.connection.Connection]:
        ctx = multiprocessing.get_context(self._start_method or _default_start_method())
        parent, child = ctx.Pipe(duplex=True)
        # typeshed types get_context(str) as a BaseContext, which lacks Process; every real context has it
        process: type[multiprocessing.process.BaseProcess] = ctx.Process  # type: ignore[attr-defined]
        proc = process(
            target=_process_main,
            args=(child, self._payload),
            name=f"lazytiles-prefetch-{self._number}",
            daemon=True,  # never outlives the parent, even when it dies without closing us
        )
        proc.start()
        child.close()
        with self._lock:
            self.proc, self._conn = proc, parent
            self._shm_news = self._shm is not None
        return proc, parent

    def compute(self, index: int) -> tuple[Any, _Failure | None]:
        proc, conn = (self.proc, self._conn) if self.proc is not None and self._conn is not None else self._start()
        where = f"prefetch worker process {proc.pid}"
        try:
            conn.send((index, self._shm.name if self._shm_news and self._shm else None))
            self._shm_news = False
            reply = conn.recv()
        except (EOFError, OSError):  # the process died (a crash, a kill, or close() terminated it)
            proc.join(CLOSE_TIMEOUT)
            code = proc.exitcode
            self._discard()
            self._on_exit()
            return None, _Failure(
                None,
                "ProcessExit",
                f"the worker process exited with code {code} while computing this item (a crash in "
                "native code or running out of memory can do this; a process that exits at once may "
                "lack the `if __name__ == '__main__':` guard in the script that starts it)",
                where,
            )
        kind = reply[0]
        if kind == "shm":
            _, header, sizes = reply
            shm = self._shm
            assert shm is not None and shm.buf is not None  # made here, and closed after the process stops
            buffers, offset = [], 0
            for size in sizes:
                buffers.append(bytearray(shm.buf[offset : offset + size]))  # copied out: slot reused
                offset += _aligned(size)
            return pickle.loads(header, buffers=buffers), None
        if kind == "pipe":
            _, header, raws, want = reply
            if want:
                self._grow(want)
            return pickle.loads(header, buffers=[bytearray(r) for r in raws]), None
        # kind == "error"
        _, exc_pickle, type_name, message, tb = reply
        exc = None
        if exc_pickle is not None:
            try:
                exc = pickle.loads(exc_pickle)
            except Exception:  # an exception class that cannot be rebuilt here: its text is enough
                exc = None
        return None, _Failure(exc, type_name, message, where, tb)

    def _grow(self, nbytes: int) -> None:
        size = _aligned(nbytes, 2**20)
        shm = SharedMemory(name=f"lt_{os.getpid()}_{secrets.token_hex(6)}", create=True, size=size)
        with self._lock:
            old, self._shm, self._shm_news = self._shm, shm, True
        if old is not None:  # the process still maps it until it attaches the new one; unlinking is safe
            _unlink(old)

    def _discard(self) -> None:
        with self._lock:
            conn, self._conn, self.proc = self._conn, None, None
        if conn is not None:
            conn.close()

    def kill(self) -> None:
        """Terminate the process if it is still running (its thread then sees it exit)."""
        with self._lock:
            proc = self.proc
        if proc is not None and proc.is_alive():
            proc.terminate()
            proc.join(CLOSE_TIMEOUT)
            if proc.is_alive():
                proc.kill()
                proc.join(CLOSE_TIMEOUT)

    def stop(self) -> None:
        """Ask an idle process to exit and wait for it; terminate it if it does not."""
        with self._lock:
            proc, conn = self.proc, self._conn
        if proc is None or conn is None:
            return
        try:
            conn.send(None)
        except OSError:
            pass  # already gone
        proc.join(CLOSE_TIMEOUT)
        self.kill()
        self._discard()

    def release(self) -> None:
        """Stop the process if needed and unlink the shared memory."""
        self.stop()
        with self._lock:
            shm, self._shm = self._shm, None
        if shm is not None:
            _unlink(shm)


def _unlink(shm: SharedMemory) -> None:
    try:
        shm.close()
    except BufferError:  # a view is still exported (a decode interrupted by close): unlink anyway
        pass
    try:
        shm.unlink()
    except FileNotFoundError:
        pass


def _process_main(conn: multiprocessing.connection.Connection, payload: bytes) -> None:
    """A worker process: rebuild the sequence once, then compute items by index until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    seq, init_error = None, None
    try:
        seq = pickle.loads(payload)
    except BaseException as err:
        init_error = err
    shm: SharedMemory | None = None
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return  # the parent is gone
            if msg is None:
                return
            index, shm_name = msg
            if shm_name is not None:
                if shm is not None:
                    shm.close()
                shm = SharedMemory(name=shm_name)
            conn.send(_compute_and_encode(seq, index, shm, init_error))
    finally:
        if shm is not None:
            shm.close()
        conn.close()


def _compute_and_encode(
    seq: Any, index: int, shm: SharedMemory | None, init_error: BaseException | None
) -> tuple[Any, ...]:
    if init_error is not None:
        return _error_reply(init_error, "the sequence could not be unpickled in the worker process: ")
    try:
        item = seq[index]
    except BaseException as err:
        return _error_reply(err)
    try:
        return _encode(item, shm)
    except BaseException as err:
        return _error_reply(
            err,
            f"the item ({type(item).__name__}) could not be pickled to send it back; return plain "
            "data (arrays, numbers, dataclasses) or use method='thread': ",
        )


def _encode(item: Any, shm: SharedMemory | None) -> tuple[Any, ...]:
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(item, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    need = sum(_aligned(r.nbytes) for r in raws)
    if need < SHM_MIN_BYTES:
        return ("pipe", header, [bytes(r) for r in raws], 0)
    if shm is None or shm.buf is None or shm.size < need:
        return ("pipe", header, [bytes(r) for r in raws], need)  # the parent makes a segment this big
    offset, sizes = 0, []
    for r in raws:
        shm.buf[offset : offset + r.nbytes] = r
        sizes.append(r.nbytes)
        offset += _aligned(r.nbytes)
    return ("shm", header, sizes)


def _error_reply(err: BaseException, prefix: str = "") -> tuple[Any, ...]:
    exc_pickle: bytes | None
    try:
        exc_pickle = pickle.dumps(err)
        pickle.loads(exc_pickle)  # some exceptions pickle but cannot be rebuilt
    except Exception:
        exc_pickle = None
    tb = "".join(traceback.format_exception(err))
    return ("error", exc_pickle, type(err).__name__, prefix + str(err), tb)
