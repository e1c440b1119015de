"""lt.prefetch: same items as the sequence, read ahead in order, cheap random access, clean shutdown.

Oracles: a plain list for items, numpy slicing for pixels, and call counters (a Counter for threads, a
log file that every process appends to) for what was computed. Synchronisation uses Events and
Barriers with timeouts, and ``wait_idle`` (the engine has nothing in progress and nothing to start).
"""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import seqtools
from conftest import ramp, write_tif
from numpy.testing import assert_array_equal

import lazytiles as lt
from lazytiles.prefetching.sequence import Prefetched

WAIT = 20  # seconds: the most any wait may take before a test fails instead of hanging


# -- sequences to prefetch ------------------------------------------------------------------------


class Counting(Sequence):
    """Item i is ``values[i]``; counts computations, can block on a gate or fail, in this process."""

    def __init__(self, values, gates=None, fail=()) -> None:
        self.values = list(values)
        self.gates = gates or {}
        self.entered = {i: threading.Event() for i in self.gates}  # set when a gated item starts
        self.fail = dict(fail)  # index -> exception to raise
        self.calls: Counter[int] = Counter()
        self.started: list[int] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.values[i]
        with self._lock:
            self.calls[i] += 1
            self.started.append(i)
        if i in self.gates:
            self.entered[i].set()
            assert self.gates[i].wait(WAIT), f"gate of item {i} never opened"
        if i in self.fail:
            raise self.fail[i]
        return self.values[i]


class Logged(Sequence):
    """Item i is an int32 array full of i; every computation appends i to ``log``, in any process."""

    def __init__(self, n: int, log: Path, shape=(3, 128, 128), fail=(), crash=(), lt_fail=(), odd=()) -> None:
        self.n, self.log, self.shape = n, str(log), shape
        self.fail, self.crash, self.lt_fail, self.odd = set(fail), set(crash), set(lt_fail), set(odd)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        with open(self.log, "a") as f:  # one short O_APPEND write per line: lines never interleave
            f.write(f"{i}\n")
        if i in self.crash:
            os._exit(3)
        if i in self.fail:
            raise ValueError(f"bad item {i}")
        if i in self.lt_fail:
            raise lt.TileFetchError(f"tile of item {i} is gone")
        if i in self.odd:
            raise TwoArgError("a", i)
        return np.full(self.shape, i, dtype=np.int32)


class TwoArgError(Exception):
    """Pickles, but cannot be rebuilt from its pickle (its __init__ wants two arguments)."""

    def __init__(self, a, b) -> None:
        super().__init__(f"{a}{b} went wrong")


def calls(log: Path) -> Counter[int]:
    return Counter(int(line) for line in log.read_text().split()) if log.exists() else Counter()


def shm_segments() -> set[str]:
    """Shared memory segments this test process made (named lt_<pid>_...)."""
    root = Path("/dev/shm")
    return {p.name for p in root.iterdir() if p.name.startswith(f"lt_{os.getpid()}_")} if root.exists() else set()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" not in status.read_text()  # a zombie has exited; its parent has not reaped it yet
    except FileNotFoundError:
        return not Path("/proc").exists()  # gone in between, or no /proc here


def double(w):
    return w.data * 2


def idle(pre: Prefetched) -> None:
    assert pre._engine.wait_idle(WAIT), "workers did not settle"


# -- items ----------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 3])
def test_iteration_and_indexing_give_the_list_items(workers):
    data = [f"item{i}" for i in range(103)]
    seq = Counting(data)
    with lt.prefetch(seq, workers=workers, progress=False) as pre:
        assert len(pre) == 103 and isinstance(pre, Sequence)
        assert list(pre) == data
        rng = np.random.default_rng(0)
        for i in rng.integers(-103, 103, 200):
            assert pre[int(i)] == data[i]
        assert list(reversed(pre)) == data[::-1]
        for key in (slice(None, None, 3), slice(90, 10, -7), slice(5, 20), slice(-4, None)):
            assert list(pre[key]) == data[key]
            assert [pre[key][k] for k in range(len(data[key]))] == data[key]
        assert list(pre[[5, 2, 99]]) == [data[5], data[2], data[99]]
        assert list(pre[3:50][::2][1:5]) == data[3:50][::2][1:5]


def test_index_errors_are_a_lists():
    with lt.prefetch(list(range(10)), workers=2, progress=False) as pre:
        with pytest.raises(IndexError, match="item index 10 is out of range for 10 items"):
            pre[10]
        with pytest.raises(lt.LazyTilesError):
            pre[-11]
        with pytest.raises(TypeError, match="not str"):
            pre["3"]
        assert list(pre[20:]) == []


# -- laziness and bounded read-ahead ------------------------------------------------------------


@pytest.mark.timeout(60)
def test_nothing_is_computed_until_asked_and_read_ahead_is_bounded():
    seq = Counting(range(200))
    ahead = 6
    with lt.prefetch(seq, workers=3, ahead=ahead, progress=False) as pre:
        assert not seq.calls and not pre._engine._threads  # no item, no thread yet
        it = iter(pre)
        assert not seq.calls  # a generator starts at its first next()
        assert next(it) == 0
        idle(pre)
        assert sorted(seq.calls) == list(range(ahead + 1))  # item 0 and the next `ahead`
        for k, item in enumerate(it, start=1):
            assert item == k
            with seq._lock:  # never more than `ahead` items past the one the consumer holds
                assert max(seq.started) <= k + ahead
            if k == 50:
                idle(pre)
                assert sorted(seq.calls) == list(range(51 + ahead))
        assert seq.calls == Counter(range(200))  # each item once


@pytest.mark.timeout(60)
def test_indexing_reads_ahead_only_after_a_pattern():
    seq = Counting(range(1000))
    with lt.prefetch(seq, workers=2, ahead=4, progress=False) as pre:
        pre[500]
        idle(pre)
        assert set(seq.calls) == {500}  # one index: no pattern, no read-ahead
        pre[501]
        idle(pre)
        assert set(seq.calls) == set(range(500, 506))  # i, i + 1: the next 4 are read ahead
        for i in (502, 503, 504):
            pre[i]
        idle(pre)
        assert set(seq.calls) == set(range(500, 509)) and max(seq.calls.values()) == 1
        for i in (300, 290, 280):  # a constant stride backwards, found after three indices
            pre[i]
        idle(pre)
        assert {270, 260, 250, 240} <= set(seq.calls) and 269 not in seq.calls


@pytest.mark.timeout(60)
def test_random_access_computes_about_one_item_per_access():
    n, accesses = 5000, 400
    seq = Counting(range(n))
    rng = np.random.default_rng(0)
    with lt.prefetch(seq, workers=4, ahead=8, progress=False) as pre:
        for i in rng.integers(0, n, accesses):
            assert pre[int(i)] == i
        idle(pre)
        # a queue that restarts on every jump would compute ~ahead items per access (3600 here)
        assert sum(seq.calls.values()) <= accesses * 1.1
        assert pre.stats()["misses"] >= accesses * 0.9


@pytest.mark.timeout(60)
def test_a_jump_cancels_unstarted_read_ahead_and_keeps_finished_items():
    gate = threading.Event()
    seq = Counting(range(1000), gates={12: gate})
    with lt.prefetch(seq, workers=1, ahead=8, progress=False) as pre:
        assert (pre[10], pre[11]) == (10, 11)  # a pattern: 12..19 are planned, 12 starts and blocks
        assert seq.entered[12].wait(WAIT)
        assert pre[700] == 700  # a jump: 13..19 are dropped before they start
        gate.set()
        idle(pre)
        assert set(seq.calls) == {10, 11, 12, 700}
        assert pre[12] == 12 and seq.calls[12] == 1  # read ahead before the jump, reused now
        assert pre.stats()["wasted"] == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [2, 4])
def test_a_full_pass_computes_each_item_once(workers):
    n = 40_000
    seq = Counting(range(n))  # fast items: the consumer races the workers for every index
    with lt.prefetch(seq, workers=workers, progress=False) as pre:
        for _ in range(3):
            assert list(pre) == list(range(n))
        idle(pre)
    assert seq.calls == Counter({i: 3 for i in range(n)})
    assert pre.stats()["wasted"] == 0 and pre.stats()["computed"] == 3 * n


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # python >= 3.12
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_its_own_workers():
    pre = lt.prefetch(list(range(100)), workers=2, progress=False)
    assert list(pre) == list(range(100)) and pre._engine._threads
    pid = os.fork()
    if pid == 0:  # the child: its copy has no threads; it must start its own, not wait on the parent's
        ok = list(pre) == list(range(100)) and pre[7] == 7 and list(pre[::-9]) == list(range(100))[::-9]
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert list(pre[50:]) == list(range(50, 100))
    pre.close()


@pytest.mark.timeout(60)
def test_unused_read_ahead_never_holds_more_than_ahead_items():
    seq = Counting(range(10_000))
    rng = np.random.default_rng(2)
    with lt.prefetch(seq, workers=2, ahead=5, progress=False) as pre:
        for start in rng.integers(0, 9_990, 40):  # short runs: each starts a read-ahead, then jumps
            for i in range(start, start + 3):
                assert pre[int(i)] == i
            idle(pre)
            held = pre._engine._slots
            assert len(held) <= 5, sorted(held)
        assert pre.stats()["wasted"] > 0


@pytest.mark.timeout(60)
def test_two_iterators_at_once_each_read_ahead():
    seq = Counting(range(600))
    with lt.prefetch(seq, workers=2, ahead=6, progress=False) as pre:
        first, second = iter(pre[:300]), iter(pre[300:])
        assert next(first) == 0
        idle(pre)  # the first stream's read-ahead is full (1..6) before the second one starts
        assert next(second) == 300
        idle(pre)  # the workers had their chance to make room for the second stream
        pairs = [(0, 300), *zip(first, second)]
        assert pairs == [(i, 300 + i) for i in range(300)]
        idle(pre)
        assert seq.calls == Counter(range(600))  # interleaving two streams restarts nothing
        assert pre.stats()["wasted"] == 0


@pytest.mark.timeout(60)
def test_an_iterator_left_half_way_stops_holding_the_read_ahead():
    seq = Counting(range(1000))
    with lt.prefetch(seq, workers=2, ahead=4, progress=False) as pre:
        left = iter(pre)
        assert next(left) == 0
        idle(pre)  # items 1..4 are read ahead for ``left``, which is never advanced again
        assert set(pre._engine._slots) == {1, 2, 3, 4}
        for i in range(500, 541):  # more than STALE_AFTER * ahead requests without ``left``
            assert pre[i] == i
        idle(pre)
        assert set(pre._engine._slots) == {541, 542, 543, 544}  # all read-ahead now serves the live stream
        assert next(left) == 1  # and the stale iterator still works, computing what it asks for


@pytest.mark.timeout(60)
def test_ahead_zero_reads_nothing_ahead():
    seq = Counting(range(50))
    with lt.prefetch(seq, workers=2, ahead=0, progress=False) as pre:
        assert list(pre) == list(range(50))
        idle(pre)
        assert seq.calls == Counter(range(50)) and not pre._engine._threads


# -- threads --------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_consumer_threads_get_their_own_items():
    data = [(i, str(i)) for i in range(500)]
    seq = Counting(data)
    consumers = 8
    barrier = threading.Barrier(consumers, timeout=WAIT)
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def consume(t: int) -> None:
        try:
            rng = np.random.default_rng(t)
            order = list(range(t, 500, consumers)) if t % 2 else list(rng.permutation(500)[:100])
            barrier.wait()
            results[t] = [(int(i), pre[int(i)]) for i in order]
        except BaseException as err:
            errors.append(err)

    with lt.prefetch(seq, workers=3, progress=False) as pre:
        threads = [threading.Thread(target=consume, args=(t,)) for t in range(consumers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert not errors and len(results) == consumers
        for got in results.values():
            assert all(item == data[i] for i, item in got)
        idle(pre)
        assert sum(seq.calls.values()) <= 500 + 400 + 8 * pre.ahead  # no storm from interleaved threads


@pytest.mark.timeout(60)
def test_worker_exceptions_name_the_index_and_keep_their_type():
    fail = {7: ValueError("bad pixel 7"), 9: lt.TileFetchError("tile (0, 3) of x.tif could not be read")}
    seq = Counting(range(20), fail=fail)
    with lt.prefetch(seq, workers=2, progress=False) as pre:
        got = []
        with pytest.raises(lt.WorkerError, match=r"item 7 failed in .*ValueError: bad pixel 7") as info:
            for item in pre:
                got.append(item)
        assert got == list(range(7))
        assert isinstance(info.value, RuntimeError) and info.value.__cause__ is fail[7]
        with pytest.raises(lt.TileFetchError, match=r"item 9 failed in .*tile \(0, 3\) of x.tif") as info:
            pre[9]
        assert isinstance(info.value, OSError)
        assert pre[8] == 8 and pre[10] == 10  # the workers carry on
        with pytest.raises(lt.WorkerError, match="item 7"):  # a failure is not cached: tried again
            pre[7]
        assert seq.calls[7] == 2


@pytest.mark.timeout(60)
def test_interrupted_iteration_then_close_stops_the_threads():
    seq = Counting(range(1000))
    pre = lt.prefetch(seq, workers=3, progress=False)
    for item in pre:
        if item == 20:
            break
    threads = list(pre._engine._threads)
    assert threads and all(t.is_alive() for t in threads)
    idle(pre)
    assert max(seq.calls) <= 20 + pre.ahead  # nothing read past the plan when the loop stopped
    pre.close()
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(lt.WorkerError, match="closed"):
        pre[3]
    pre.close()  # idempotent


@pytest.mark.timeout(60)
def test_close_tells_a_waiting_consumer_and_waits_for_the_item_in_progress():
    gate = threading.Event()
    seq = Counting(range(100), gates={12: gate})
    pre = lt.prefetch(seq, workers=1, ahead=2, progress=False)
    assert (pre[10], pre[11]) == (10, 11)  # 12 goes to the worker, and blocks there
    assert seq.entered[12].wait(WAIT)
    failed = threading.Event()
    errors = []

    def consume() -> None:
        try:
            pre[12]
        except lt.WorkerError as err:
            errors.append(err)
            failed.set()

    consumer = threading.Thread(target=consume)
    consumer.start()
    engine = pre._engine
    with engine._lock:  # the consumer's claim on item 12 wakes the workers' condition
        assert engine._work.wait_for(lambda: engine._slots[12].waiters == 1, WAIT)
    closer = threading.Thread(target=pre.close)
    closer.start()
    assert failed.wait(WAIT)  # told at once, while the worker is still busy
    assert "item 12 was still being computed when this prefetched sequence was closed" in str(errors[0])
    gate.set()
    closer.join(WAIT)
    consumer.join(WAIT)
    assert not closer.is_alive() and not any(t.is_alive() for t in pre._engine._threads)


@pytest.mark.timeout(60)
def test_garbage_collected_prefetch_stops_its_threads():
    pre = lt.prefetch(Counting(range(100)), workers=2, progress=False)
    it = iter(pre)
    next(it)
    threads = list(pre._engine._threads)
    del it, pre
    gc.collect()
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads)


def test_progress_bar_during_a_full_pass(capsys):
    assert list(lt.prefetch(list(range(30)), workers=2)) == list(range(30))
    assert "30/30" in capsys.readouterr().err
    assert list(lt.prefetch(list(range(30)), workers=2, progress=False)) == list(range(30))
    assert capsys.readouterr().err == ""


def test_pickles_as_the_sequence_and_settings():
    data = list(range(40))
    pre = lt.prefetch(data, workers=3, ahead=5, progress=False)
    assert pre[1] == 1
    copy = pickle.loads(pickle.dumps(pre))
    assert isinstance(copy, Prefetched) and copy is not pre
    assert (copy.workers, copy.method, copy.ahead) == (3, "thread", 5) and list(copy) == data
    assert list(pickle.loads(pickle.dumps(pre[::4]))) == data[::4]
    assert len(pickle.dumps(pre)) < len(pickle.dumps(data)) + 300
    pre.close()
    copy.close()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(workers=0), r"workers must be a positive int, got 0"),
        (dict(workers=2.5), r"workers must be a positive int, got 2.5"),
        (dict(method="fork"), r"method must be one of 'thread', 'process', got 'fork'"),
        (dict(ahead=-1), r"ahead must be an int >= 0"),
        (dict(start_method="spawn"), r"start_method='spawn' applies only to method='process'"),
        (dict(method="process", start_method="teleport"), r"start_method must be one of .*'teleport'"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(lt.InvalidArgumentError, match=match):
        lt.prefetch(list(range(3)), **kwargs)


def test_not_a_sequence_or_not_picklable():
    with pytest.raises(ValueError, match=r"seq must be a sequence .* got generator"):
        lt.prefetch(i for i in range(3))
    with pytest.raises(lt.InvalidArgumentError, match=r"method='process' .* does not pickle"):
        lt.prefetch(seqtools.smap(lambda x: x, [1, 2]), method="process")


# -- real windows ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_thread_prefetch_of_geotiff_windows_and_seqtools(tmp_path):
    array = ramp(3, 700, 900, "uint16")
    wins = lt.windows(lt.open(write_tif(tmp_path / "r.tif", array)), size=256, stride=128)
    with lt.prefetch(wins, workers=3, progress=False) as pre:
        for w in pre:
            r, c = int(w.window.row_off), int(w.window.col_off)
            assert_array_equal(w.data, array[:, r : r + 256, c : c + 256])
    doubled = seqtools.smap(double, wins)
    with lt.prefetch(doubled, workers=2, progress=False) as pre:
        for k, data in enumerate(pre):
            w = wins.pixel_window(k)
            r, c = int(w.row_off), int(w.col_off)
            assert_array_equal(data, array[:, r : r + 256, c : c + 256] * 2)


# -- processes ------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_process_prefetch_gives_the_items_through_shared_memory(tmp_path):
    log = tmp_path / "calls.log"
    before = shm_segments()
    seq = Logged(60, log)  # 196 KiB items: shared memory after the first
    with lt.prefetch(seq, workers=2, method="process", progress=False) as pre:
        assert not log.exists()  # nothing computed, no process started
        items = list(pre)
        assert [int(a[0, 0, 0]) for a in items] == list(range(60))
        assert all(a.shape == (3, 128, 128) and a.dtype == np.int32 and (a == k).all() for k, a in enumerate(items))
        assert items[0].flags.writeable
        assert calls(log) == Counter(range(60))
        if Path("/dev/shm").exists():
            assert len(shm_segments() - before) == 2  # one segment per worker, made by this process
        pids = pre._engine.pids()
        assert len(pids) == 2 and all(alive(p) for p in pids)
        small = lt.prefetch(Logged(5, log, shape=(2,)), workers=1, method="process", progress=False)
        assert [a.tolist() for a in small] == [[k, k] for k in range(5)]  # small items: the pipe
        small.close()
    assert not any(alive(p) for p in pids)
    assert shm_segments() == before


@pytest.mark.timeout(120)
def test_process_random_access_and_errors(tmp_path):
    log = tmp_path / "calls.log"
    seq = Logged(400, log, fail={7}, lt_fail={9}, odd={11}, crash={13})
    rng = np.random.default_rng(1)
    with lt.prefetch(seq, workers=2, ahead=4, method="process", progress=False) as pre:
        picks = [int(i) for i in rng.choice([i for i in range(400) if i not in (7, 9, 11, 13)], 60)]
        for i in picks:
            assert int(pre[i][0, 0, 0]) == i
        pre._engine.wait_idle(WAIT)
        assert sum(calls(log).values()) <= len(picks) * 1.2  # about one computation per access

        with pytest.raises(
            lt.WorkerError, match=r"item 7 failed in prefetch worker process \d+: ValueError: bad item 7"
        ) as info:
            pre[7]
        assert isinstance(info.value.__cause__, ValueError)  # rebuilt from its pickle
        assert "bad item 7" in str(info.value.__cause__.__cause__)  # the worker's traceback text
        with pytest.raises(lt.TileFetchError, match=r"item 9 failed in .*tile of item 9 is gone"):
            pre[9]
        with pytest.raises(lt.WorkerError, match=r"item 11 failed in .*TwoArgError: a11 went wrong"):
            pre[11]
        pids = pre._engine.pids()
        with pytest.raises(lt.WorkerError, match=r"item 13 failed in .*exited with code 3"):
            pre[13]
        assert int(pre[14][0, 0, 0]) == 14 and int(pre[15][0, 0, 0]) == 15  # a new process took over
        assert pre.stats()["restarts"] == 1
    assert not any(alive(p) for p in pids + pre._engine.pids())


@pytest.mark.timeout(120)
def test_process_prefetch_of_geotiff_windows_and_seqtools(tmp_path):
    array = ramp(3, 600, 800, "uint8")
    wins = lt.windows(lt.open(write_tif(tmp_path / "r.tif", array)), size=256, stride=128)
    before = shm_segments()
    with lt.prefetch(wins, workers=2, method="process", progress=False) as pre:
        seen = []
        for w in pre:
            r, c = int(w.window.row_off), int(w.window.col_off)
            assert_array_equal(w.data, array[:, r : r + 256, c : c + 256])
            assert w.crs == wins.source.crs and w.transform == wins[w.index].transform
            seen.append(w.index)
        assert seen == list(range(len(wins)))
        w = pre[5]
        assert_array_equal(w.data, wins[5].data)
    with lt.prefetch(seqtools.smap(double, wins), workers=2, method="process", progress=False) as pre:
        for k, data in enumerate(pre):
            assert_array_equal(data, wins[k].data * 2)
    assert shm_segments() == before


@pytest.mark.timeout(120)
def test_abandoned_process_prefetch_is_cleaned_up_by_gc(tmp_path):
    before = shm_segments()
    pre = lt.prefetch(Logged(100, tmp_path / "calls.log"), workers=2, method="process", progress=False)
    for a in pre:
        if a[0, 0, 0] == 10:
            break  # the generator closes its stream here
    pids = pre._engine.pids()
    assert pids and (shm_segments() - before or not Path("/dev/shm").exists())
    del pre, a
    gc.collect()
    assert not any(alive(p) for p in pids)
    assert shm_segments() == before


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start_method", [pytest.param("spawn", marks=pytest.mark.slow), "forkserver"])
def test_exit_without_close_leaves_nothing_behind(tmp_path, start_method):
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, sys
            import numpy as np
            import lazytiles as lt
            sys.path[:0] = [{str(Path(__file__).parent.parent)!r}, {str(Path(__file__).parent)!r}]
            from test_prefetch import Logged

            if __name__ == "__main__":
                pre = lt.prefetch(Logged(1000, {str(tmp_path / "calls.log")!r}), workers=2,
                                  method="process", progress=False, start_method={start_method!r})
                for a in pre:
                    if a[0, 0, 0] == 30:
                        break
                print(os.getpid(), *pre._engine.pids())
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(lt.__file__).parent.parent), *sys.path]))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90, env=env)
    assert done.returncode == 0, done.stderr
    assert "leaked" not in done.stderr and "resource_tracker" not in done.stderr and "Traceback" not in done.stderr
    parent, *workers = map(int, done.stdout.split())
    assert len(workers) == 2 and not any(alive(p) for p in workers)
    if Path("/dev/shm").exists():
        assert not [p for p in os.listdir("/dev/shm") if p.startswith(f"lt_{parent}_")]
