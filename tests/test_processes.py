"""Promises that only real processes can prove: no lost update, fork, CGI-style churn, SIGKILL."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from procs import Occupancy, reap, run_all

import lockstore
from lockstore.ids import shard_of

ctx = mp.get_context("fork")
HOLD = 0.001  # seconds each worker stays inside its edit: a missing lock lets the others in meanwhile


def _increment(
    path: str,
    sids: list[str],
    rounds: int,
    threads: int = 1,
    gate: Any = None,
    occupancy: Occupancy | None = None,
    shards: int = 1,
) -> None:
    """*rounds* read-modify-writes of random *sids* per thread; with a *gate* (a barrier), all workers start
    together; with an *occupancy* marker (one slot per shard), each edit marks itself inside and stays
    there :data:`HOLD` seconds."""
    store = lockstore.open(path)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(rounds):
            sid = rng.choice(sids)
            with store.edit(sid) as session:
                marker = occupancy.inside(shard_of(sid, shards)) if occupancy else contextlib.nullcontext()
                with marker:
                    session["n"] = session.get("n", 0) + 1
                    by = session.setdefault("by", {})
                    by[str(os.getpid())] = by.get(str(os.getpid()), 0) + 1
                    if occupancy is not None:
                        time.sleep(HOLD)

    if gate is not None:
        gate.wait(60)
    if threads == 1:
        work(os.getpid())
    else:
        ts = [threading.Thread(target=work, args=(os.getpid() * 100 + i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    store.close()


def _run(procs: list[Any], timeout: float = 120) -> None:
    codes = run_all(procs, timeout)
    assert codes == [0] * len(procs), f"worker exit codes {codes}"


@pytest.mark.parametrize("backend", ["lmdb", "shelve"])
def test_no_lost_update_six_processes(tmp_path: Any, backend: str) -> None:
    path = str(tmp_path / "s")
    lockstore.open(path, backend=backend, shards=2).close()
    sids = ["alpha", "beta", "gamma", "delta"]
    _run([ctx.Process(target=_increment, args=(path, sids, 300)) for _ in range(6)])
    with lockstore.open(path) as store:
        assert sum(store[sid]["n"] for sid in sids) == 6 * 300
        # every process's own count adds up too: no update of one overwrote another's
        per_process: dict[str, int] = {}
        for sid in sids:
            for pid, n in store[sid]["by"].items():
                per_process[pid] = per_process.get(pid, 0) + n
        assert sorted(per_process.values()) == [300] * 6
        assert store.verify() == []


@pytest.mark.parametrize("backend", ["lmdb", "shelve"])
def test_eight_processes_one_session(tmp_path: Any, backend: str) -> None:
    """ANCHORS T1: 8 processes x 500 read-modify-writes of one session leave exactly 4,000."""
    path = str(tmp_path / "s")
    lockstore.open(path, backend=backend).close()
    _run([ctx.Process(target=_increment, args=(path, ["one"], 500)) for _ in range(8)])
    with lockstore.open(path) as store:
        assert store["one"]["n"] == 4000
        assert sorted(store["one"]["by"].values()) == [500] * 8


@pytest.mark.parametrize("backend", ["lmdb", "shelve"])
def test_threads_and_processes_mixed(tmp_path: Any, backend: str) -> None:
    path = str(tmp_path / "s")
    lockstore.open(path, backend=backend, shards=2).close()
    sids = ["a", "b", "c", "d"]
    _run([ctx.Process(target=_increment, args=(path, sids, 100, 4)) for _ in range(3)])
    with lockstore.open(path) as store:
        assert sum(store[sid]["n"] for sid in sids) == 3 * 4 * 100


def _child_edits(store: Any, rounds: int, gate: Any, occupancy: Occupancy) -> None:
    gate.wait(60)
    for _ in range(rounds):
        with store.edit("shared") as session, occupancy.inside():
            session["n"] = session.get("n", 0) + 1
            time.sleep(HOLD)
    os._exit(0)


@pytest.mark.parametrize("backend", ["lmdb", "shelve"])
def test_store_opened_in_parent_used_by_forked_children(tmp_path: Any, backend: str) -> None:
    store = lockstore.open(tmp_path / "s", backend=backend)
    with store.edit("shared") as session:  # the parent has used its environment and locks before forking
        session["n"] = 0
    assert store["shared"] == {"n": 0}
    children, rounds = 4, 100
    gate = ctx.Barrier(children + 1)  # everyone starts at once: the children overlap each other and the parent
    occupancy = Occupancy(ctx)
    pids = []
    try:
        for _ in range(children):
            pid = os.fork()
            if pid == 0:
                try:
                    _child_edits(store, rounds, gate, occupancy)
                finally:
                    os._exit(1)
            pids.append(pid)
        gate.wait(60)
        for _ in range(rounds):  # the parent keeps working meanwhile
            with store.edit("shared") as session, occupancy.inside():
                session["parent"] = session.get("parent", 0) + 1
                time.sleep(HOLD)
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
    finally:
        reap(pids)
    assert occupancy.entries == (children + 1) * rounds
    assert occupancy.most == 1  # never two processes inside the session at once
    assert store["shared"] == {"n": children * rounds, "parent": rounds}
    store.close()


CGI_SCRIPT = """
import os, sys, time, lockstore
path, i, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
print("ready", flush=True)
sys.stdin.readline()  # the start gate: the parent says go to all fifty at once, so they open together
with lockstore.open(path) as store:
    store[f"cgi{i}"] = {"i": i}
    marks = os.open(log, os.O_WRONLY | os.O_APPEND)
    with store.edit("counter") as session:
        os.write(marks, b"+%d\\n" % i)  # occupancy marker: nobody else may be inside until "-i"
        session["n"] = session.get("n", 0) + 1
        time.sleep(0.01)
        os.write(marks, b"-%d\\n" % i)
"""


@pytest.mark.parametrize("backend", ["lmdb", "shelve"])
def test_fifty_short_lived_processes(tmp_path: Any, backend: str) -> None:
    """The CGI pattern: fresh interpreters open, write and close the store at the same moment."""
    path = str(tmp_path / "s")
    lockstore.open(path, backend=backend).close()
    log = tmp_path / "inside.log"
    log.write_bytes(b"")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(50):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", CGI_SCRIPT, path, str(i), str(log)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            )
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    marks = log.read_bytes().split()
    assert len(marks) == 100
    overlaps = [(a, b) for a, b in zip(marks[::2], marks[1::2], strict=True) if a[1:] != b[1:] or a[:1] != b"+"]
    assert overlaps == []  # each edit left before the next one entered
    with lockstore.open(path) as store:
        assert store["counter"]["n"] == 50
        assert len(store) == 51
        assert store.verify() == []


def _slow_clock() -> float:
    """The readers' clock: each read asks it for the time between reading the record and touching it, so
    the sleep here widens that gap; a read that wrote back the record it had read would erase any write
    committed meanwhile."""
    time.sleep(0.001)
    return time.time()


def _reader(path: str, gate: Any, stop: Any, reads: Any, slot: int, seen: Any) -> None:
    """Read (and so touch: touch_interval=0) until *stop*, counting reads in ``reads[slot]``; report the
    values of ``n`` seen."""
    store = lockstore.open(path, touch_interval=0, clock=_slow_clock)
    values = set()
    gate.wait(60)
    while not stop.is_set():
        values.add(store["s"]["n"])
        reads[slot] += 1
    store.close()
    seen.put(sorted(values))


@pytest.mark.parametrize("backend", ["lmdb", "shelve"])
def test_reader_never_erases_writer(tmp_path: Any, backend: str) -> None:
    """Reads that touch the record, overlapping every write, never erase one: each write waits until every
    reader has read the previous one twice, so readers are always mid-read when the writer commits."""
    path = str(tmp_path / "s")
    n_readers, writes = 3, 200
    with lockstore.open(path, backend=backend, touch_interval=0) as store:
        store["s"] = {"n": 0}
        first_access = store.record("s").last_access  # type: ignore[union-attr]
        gate, stop, seen = ctx.Barrier(n_readers + 1), ctx.Event(), ctx.Queue()
        reads = ctx.Array("q", n_readers, lock=False)
        readers = [ctx.Process(target=_reader, args=(path, gate, stop, reads, r, seen)) for r in range(n_readers)]
        values = []
        try:
            for r in readers:
                r.start()
            gate.wait(60)
            deadline = time.monotonic() + 60
            for i in range(1, writes + 1):
                with store.edit("s") as session:
                    assert session["n"] == i - 1, f"write {i - 1} was erased by a reader: n is {session['n']}"
                    session["n"] = i
                    session[f"k{i}"] = i
                before = list(reads)
                while any(now < then + 2 for now, then in zip(reads, before, strict=True)):
                    assert time.monotonic() < deadline and all(r.is_alive() for r in readers)
                    time.sleep(0.0002)
            stop.set()
            values = [seen.get(timeout=30) for _ in readers]
            for r in readers:
                r.join(30)
                assert r.exitcode == 0
        finally:
            stop.set()
            for r in readers:
                if r.is_alive():
                    r.kill()
                    r.join()
        for got in values:  # proof of overlap: every reader saw every write while the writer went on
            assert set(range(1, writes + 1)) <= set(got)
        final = store["s"]
        assert final["n"] == writes
        assert all(final[f"k{i}"] == i for i in range(1, writes + 1))
        assert store.record("s").last_access > first_access  # type: ignore[union-attr]


def _acknowledging_writer(path: str, conn: Any, seed: int) -> None:
    store = lockstore.open(path)
    rng = random.Random(seed)
    i = 0
    while True:
        i += 1
        sid = f"w{rng.randrange(40)}"
        value = {"seq": i, "pad": "x" * rng.randrange(10, 3000)}
        if rng.random() < 0.5:
            store[sid] = value
        else:
            with store.edit(sid) as session:
                session.clear()
                session.update(value)
        conn.send((sid, i))  # acknowledged only once the write returned


@pytest.mark.parametrize("backend", ["lmdb", "shelve"])
def test_sigkill_loses_no_acknowledged_write(tmp_path: Any, backend: str) -> None:
    path = str(tmp_path / "s")
    lockstore.open(path, backend=backend, shards=4, timeout=5).close()
    latest: dict[str, int] = {}
    rng = random.Random(7)
    for kill in range(20):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_acknowledging_writer, args=(path, child, kill))
        p.start()
        child.close()
        time.sleep(rng.uniform(0.02, 0.25))
        os.kill(p.pid, signal.SIGKILL)  # at a random moment: mid-write, holding a shard lock, anywhere
        p.join()
        while parent.poll():
            try:
                sid, seq = parent.recv()
            except EOFError:
                break
            latest[sid] = (kill, seq)  # type: ignore[assignment]
        parent.close()
        # the next process gets every lock at once and sees every acknowledged write
        t0 = time.monotonic()
        with lockstore.open(path, timeout=1) as store:
            for shard in range(4):
                with store._locks.held(shard, 1):  # type: ignore[attr-defined]
                    pass
            assert time.monotonic() - t0 < 1
            for sid, (k, seq) in latest.items():  # type: ignore[misc]
                got = store[sid]["seq"]
                if k == kill:
                    assert got >= seq, f"{sid}: acknowledged {seq}, found {got}"
                latest[sid] = (kill, got)  # type: ignore[assignment]
            assert store.verify() == []
    assert len(latest) > 10


def _hold_lock(path: str, ready: Any) -> None:
    store = lockstore.open(path)
    with store.edit("held") as session:
        session["x"] = 1
        ready.set()
        time.sleep(60)


@pytest.mark.parametrize("backend", ["lmdb", "shelve"])
def test_killed_lock_holder_releases_at_once(tmp_path: Any, backend: str) -> None:
    path = str(tmp_path / "s")
    lockstore.open(path, backend=backend).close()
    ready = ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(path, ready))
    p.start()
    try:
        assert ready.wait(30)
        with lockstore.open(path, timeout=0.3) as store:
            with pytest.raises(lockstore.LockTimeout), store.edit("held"):
                pass  # held by a live process: never fail open
            os.kill(p.pid, signal.SIGKILL)
            p.join()
            t0 = time.monotonic()
            with store.edit("held") as session:
                session["y"] = 2
            assert time.monotonic() - t0 < 0.3
            assert store["held"] == {"y": 2}  # the killed holder's edit was never saved
    finally:  # a failed check never leaves the lock holder running (it would sleep 60 s holding the lock)
        if p.is_alive():
            p.kill()
        p.join()


def test_stats_while_others_write_loses_nothing(tmp_path: Any, file_backend: str) -> None:
    """stats(), info and ls read every shard while other processes write: no write is disturbed."""
    path = str(tmp_path / "s")
    shards, writers, rounds = 2, 3, 200
    lockstore.open(path, backend=file_backend, shards=shards).close()
    sids = [f"s{i}" for i in range(8)]
    gate = ctx.Barrier(writers + 1)
    occupancy = Occupancy(ctx, slots=shards)  # per shard: what a shard lock keeps to one writer at a time
    options = {"gate": gate, "occupancy": occupancy, "shards": shards}
    procs = [ctx.Process(target=_increment, args=(path, sids, rounds), kwargs=options) for _ in range(writers)]
    try:
        for p in procs:
            p.start()
        with lockstore.open(path) as store:
            gate.wait(60)
            scans = 0
            while any(p.is_alive() for p in procs):
                stats = store.stats()
                assert stats["live"] <= len(sids)
                scans += 1
            for p in procs:
                p.join(60)
                assert p.exitcode == 0
            assert scans > 1
            assert occupancy.entries == writers * rounds
            assert occupancy.most == 1  # never two writers inside one shard at once
            assert sum(store[sid]["n"] for sid in sids) == writers * rounds
            assert store.verify() == []
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()


def _edit_passed_store(store: Any, rounds: int, gate: Any, occupancy: Occupancy) -> None:
    gate.wait(60)
    for _ in range(rounds):
        with store.edit("spawned") as session, occupancy.inside():
            session["n"] = session.get("n", 0) + 1
            time.sleep(HOLD)


@pytest.mark.parametrize("backend", ["lmdb", "shelve"])
def test_store_passed_to_spawned_processes(tmp_path: Any, backend: str) -> None:
    """A store is picklable: a spawn worker gets the path and options and opens its own handles."""
    import pickle

    with lockstore.open(tmp_path / "s", backend=backend, max_age=600, codec="json") as store:
        spawn = mp.get_context("spawn")
        gate, occupancy = spawn.Barrier(3), Occupancy(spawn)  # spawned one by one, they start together
        procs = [spawn.Process(target=_edit_passed_store, args=(store, 100, gate, occupancy)) for _ in range(3)]
        _run(procs)
        assert occupancy.entries == 300
        assert occupancy.most == 1
        assert store["spawned"] == {"n": 300}
        copy = pickle.loads(pickle.dumps(store))
        assert (copy.max_age, copy.backend) == (600, backend)
        assert copy["spawned"] == {"n": 300}
        copy.close()
    with lockstore.open(tmp_path / "m", backend="memory") as memory, pytest.raises(TypeError, match="one process"):
        pickle.dumps(memory)
