"""The run store as the job's workers share it: one writer at a time, each commit short."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import RunLockedError

#: How long a worker waits for another to finish writing the run store before giving up, seconds.
STORE_WAIT = 600.0


@contextlib.contextmanager
def _locked_store(path: str, session: int | None = None) -> Iterator[Any]:
    """The run store, locked for writing, waiting while another worker writes (commits are short)."""
    from ..runs.store import RunStore

    deadline = time.monotonic() + STORE_WAIT
    pause = 0.01
    while True:
        try:
            store = RunStore.resume(path, check=False)  # no start_writing: it would mark our session 'killed'
            break
        except RunLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)  # another worker is committing; a commit takes milliseconds
            pause = min(0.5, pause * 2)
    store._session = session  # commits count towards the job's session
    try:
        yield store
    finally:
        store.close()


def _done_among(store: Any, indices: Sequence[int]) -> set[int]:
    done: set[int] = set()
    for a in range(0, len(indices), 500):
        part = list(indices[a : a + 500])
        rows = store._query(
            f"SELECT window_index FROM lazytiles_windows WHERE status = 'done' AND window_index IN ({','.join('?' * len(part))})",
            part,
        )
        done.update(int(r[0]) for r in rows)
    return done
