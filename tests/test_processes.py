"""Promises that only real processes can prove: no lost update, fork, CGI-style churn, SIGKILL."""

from __future__ import annotations

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
from procs import run_all

import lockstore

ctx = mp.get_context("fork")


def _increment(path: str, sids: list[str], rounds: int, threads: int = 1) -> None:
    store = lockstore.open(path)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(rounds):
            with store.edit(rng.choice(sids)) as session:
                session["n"] = session.get("n", 0) + 1
                by = session.setdefault("by", {})
                by[str(os.getpid())] = by.get(str(os.getpid()), 0) + 1

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


def _child_edits(store: Any, rounds: int) -> None:
    for _ in range(rounds):
        with store.edit("shared") as session:
            session["n"] = session.get("n", 0) + 1
    os._exit(0)


@pytest.mark.parametrize("backend", ["lmdb", "shelve"])
def test_store_opened_in_parent_used_by_forked_children(tmp_path: Any, backend: str) -> None:
    store = lockstore.open(tmp_path / "s", backend=backend)
    with store.edit("shared") as session:  # the parent has used its environment and locks before forking
        session["n"] = 0
    assert store["shared"] == {"n": 0}
    pids = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            try:
                _child_edits(store, 100)
            finally:
                os._exit(1)
        pids.append(pid)
    with store.edit("shared") as session:  # the parent keeps working meanwhile
        session["parent"] = True
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert store["shared"]["n"] == 400
    assert store["shared"]["parent"] is True
    store.close()


CGI_SCRIPT = """
import sys, time, lockstore
path, i, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))  # all fifty open at once
with lockstore.open(path) as store:
    store[f"cgi{i}"] = {"i": i}
    with store.edit("counter") as session:
        session["n"] = session.get("n", 0) + 1
"""


@pytest.mark.parametrize("backend", ["lmdb", "shelve"])
def test_fifty_short_lived_processes(tmp_path: Any, backend: str) -> None:
    """The CGI pattern: fresh interpreters open, write and close the store at the same moment."""
    path = str(tmp_path / "s")
    lockstore.open(path, backend=backend).close()
    start = time.time() + 3.0
    procs = [
        subprocess.Popen([sys.executable, "-c", CGI_SCRIPT, path, str(i), str(start)], stderr=subprocess.PIPE)
        for i in range(50)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    with lockstore.open(path) as store:
        assert store["counter"]["n"] == 50
        assert len(store) == 51
        assert store.verify() == []


def _reader(path: str, stop: Any, clock_file: str) -> None:
    store = lockstore.open(path, touch_interval=0)
    while not stop.is_set():
        assert "n" in store["s"]


@pytest.mark.parametrize("backend", ["lmdb", "shelve"])
def test_reader_never_erases_writer(tmp_path: Any, backend: str) -> None:
    path = str(tmp_path / "s")
    with lockstore.open(path, backend=backend, touch_interval=0) as store:
        store["s"] = {"n": 0}
        first_access = store.record("s").last_access  # type: ignore[union-attr]
        stop = ctx.Event()
        readers = [ctx.Process(target=_reader, args=(path, stop, "")) for _ in range(3)]
        for r in readers:
            r.start()
        for i in range(1, 201):
            with store.edit("s") as session:
                session["n"] = i
                session[f"k{i}"] = i
        time.sleep(0.05)
        stop.set()
        for r in readers:
            r.join(30)
            assert r.exitcode == 0
        final = store["s"]
        assert final["n"] == 200
        assert all(final[f"k{i}"] == i for i in range(1, 201))
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


def test_stats_while_others_write_loses_nothing(tmp_path: Any, file_backend: str) -> None:
    """stats(), info and ls read every shard while other processes write: no write is disturbed."""
    path = str(tmp_path / "s")
    lockstore.open(path, backend=file_backend, shards=2).close()
    sids = [f"s{i}" for i in range(8)]
    procs = [ctx.Process(target=_increment, args=(path, sids, 400)) for _ in range(3)]
    for p in procs:
        p.start()
    with lockstore.open(path) as store:
        while any(p.is_alive() for p in procs):
            stats = store.stats()
            assert stats["live"] <= len(sids)
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        assert sum(store[sid]["n"] for sid in sids) == 3 * 400
        assert store.verify() == []


def _edit_passed_store(store: Any, rounds: int) -> None:
    for _ in range(rounds):
        with store.edit("spawned") as session:
            session["n"] = session.get("n", 0) + 1


@pytest.mark.parametrize("backend", ["lmdb", "shelve"])
def test_store_passed_to_spawned_processes(tmp_path: Any, backend: str) -> None:
    """A store is picklable: a spawn worker gets the path and options and opens its own handles."""
    import pickle

    with lockstore.open(tmp_path / "s", backend=backend, max_age=600, codec="json") as store:
        spawn = mp.get_context("spawn")
        procs = [spawn.Process(target=_edit_passed_store, args=(store, 100)) for _ in range(3)]
        _run(procs)
        assert store["spawned"] == {"n": 300}
        copy = pickle.loads(pickle.dumps(store))
        assert (copy.max_age, copy.backend) == (600, backend)
        assert copy["spawned"] == {"n": 300}
        copy.close()
    with lockstore.open(tmp_path / "m", backend="memory") as memory, pytest.raises(TypeError, match="one process"):
        pickle.dumps(memory)
