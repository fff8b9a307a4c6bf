"""Leases, fencing and durability of the Redis store on real redis-servers and real processes (issue 12).

- A holder SIGKILLed inside ``edit()``, or holding a session's request lock: the next holder gets in within one
  lease (measured; the figure is printed), and nothing acknowledged is lost.
- A holder SIGSTOPped past its lease, then SIGCONTed: its commit raises :class:`lockstore.LockLost` and writes
  nothing; the write made meanwhile stands. For ``edit()`` and for writes under the request lock.
- A slow live holder keeps its lock: renewals carry it past three leases.
- ``durability="system"``: a write returns once a replica has it (``WAIT``), so a master killed and replaced by
  its replica loses no acknowledged write; with the replica stalled a write raises ``BackendUnavailable``, while
  ``"process"`` acknowledges it and a failover then loses it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import RedisServer, require

import lockstore

redis = require("redis")

pytestmark = pytest.mark.servers

MARGIN = 1.0
"""Seconds a waiter may take beyond the lease: the wake-up of a blocked waiter, process start-up, a loaded machine."""


def prefix() -> str:
    return f"l{uuid.uuid4().hex[:12]}"


# -- workers (spawned processes) ----------------------------------------------------------------------------


def edit_holder(url: str, options: dict[str, Any], sid: str, acked: int, ready: Any, go: Any, out: Any) -> None:
    """*acked* acknowledged increments of *sid*, then hold its edit() with an unsaved change until *go*, then
    leave the block (a commit); report the outcome on *out*."""
    with lockstore.open(url, **options) as store:
        for _ in range(acked):
            with store.edit(sid) as session:
                session["n"] = session.get("n", 0) + 1
        try:
            with store.edit(sid) as session:
                session["n"] = -1
                ready.set()
                go.wait(120)
            out.put("committed")
        except lockstore.LockstoreError as exc:
            out.put(type(exc).__name__)


def request_holder(url: str, options: dict[str, Any], sid: str, acked: int, ready: Any, go: Any, out: Any) -> None:
    """Hold *sid*'s request lock as a request would: *acked* acknowledged increments under it, then wait for
    *go* and make one more (a write under the lock, fenced by it); report the outcome on *out*."""
    with lockstore.open(url, **options) as store:
        locks = store.request_locks(timeout=10)
        hold = locks.acquire(sid)
        assert hold is not None
        for _ in range(acked):
            with store.edit(sid) as session:
                session["n"] = session.get("n", 0) + 1
        ready.set()
        go.wait(120)
        try:
            with store.edit(sid) as session:
                session["n"] = -1
            out.put("committed")
        except lockstore.LockstoreError as exc:
            out.put(type(exc).__name__)
        finally:
            hold.release()


@contextlib.contextmanager
def spawned(target: Any, *args: Any) -> Iterator[tuple[Any, Any, Any, Any]]:
    """(process, ready, go, out) of *target* run with *args* + (ready, go, out); killed on exit whatever happens."""
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, ready, go, out))
    proc.start()
    try:
        assert ready.wait(60), "the holder did not start"
        yield proc, ready, go, out
    finally:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.join(10)


# -- killed holders ----------------------------------------------------------------------------------------


def test_holder_killed_inside_edit_clears_within_the_default_lease(redis_server: str) -> None:
    options = {"prefix": prefix()}
    with lockstore.open(redis_server, timeout=15, **options) as store:
        lease = store.lock_ttl
        with spawned(edit_holder, redis_server, options, "k", 3) as (proc, _, _, _):
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(10)
            killed = time.monotonic()
            with store.edit("k") as session:
                waited = time.monotonic() - killed
                assert session == {"n": 3}  # every acknowledged increment, not the dead holder's change
                session["n"] += 1
        print(f"\nedit lock of a SIGKILLed holder cleared after {waited:.2f} s (lease {lease:g} s)")
        assert waited < lease + MARGIN
        assert store["k"] == {"n": 4}
        assert lease == 5.0  # Redis's default lease: a dead holder blocks a session this long at most


def test_holder_killed_holding_the_request_lock_clears_within_the_lease(redis_server: str) -> None:
    options = {"prefix": prefix(), "lock_ttl": 2.0}
    with lockstore.open(redis_server, **options) as store:
        locks = store.request_locks(timeout=15)
        with spawned(request_holder, redis_server, options, "r", 3) as (proc, _, _, _):
            assert locks.acquire("r", blocking=False) is None  # held by the other process
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(10)
            killed = time.monotonic()
            hold = locks.acquire("r")
            waited = time.monotonic() - killed
        assert hold is not None
        try:
            with store.edit("r") as session:
                assert session == {"n": 3}
                session["n"] += 1
        finally:
            hold.release()
        print(f"\nrequest lock of a SIGKILLed holder cleared after {waited:.2f} s (lease {store.lock_ttl:g} s)")
        assert waited < store.lock_ttl + MARGIN
        assert store["r"] == {"n": 4}


# -- paused holders (fencing) ------------------------------------------------------------------------------


def test_edit_holder_paused_past_its_lease_cannot_commit(redis_server: str) -> None:
    options = {"prefix": prefix(), "lock_ttl": 1.0}
    with (
        lockstore.open(redis_server, timeout=10, **options) as store,
        spawned(edit_holder, redis_server, options, "p", 2) as (proc, _, go, out),
    ):
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(store.lock_ttl * 1.5)
        with store.edit("p") as session:  # the paused holder's lock has lapsed: this one gets in
            session["n"] += 100
        os.kill(proc.pid, signal.SIGCONT)
        go.set()
        assert out.get(timeout=30) == "LockLost"
        assert store["p"] == {"n": 102}  # the resumed holder wrote nothing over it


def test_request_lock_holder_paused_past_its_lease_cannot_write(redis_server: str) -> None:
    options = {"prefix": prefix(), "lock_ttl": 1.0}
    with lockstore.open(redis_server, timeout=10, **options) as store:
        locks = store.request_locks(timeout=10)
        with spawned(request_holder, redis_server, options, "q", 2) as (proc, _, go, out):
            os.kill(proc.pid, signal.SIGSTOP)
            started = time.monotonic()
            hold = locks.acquire("q")  # within one lease of the pause
            assert hold is not None
            assert time.monotonic() - started < store.lock_ttl + MARGIN
            try:
                with store.edit("q") as session:
                    session["n"] += 100
                os.kill(proc.pid, signal.SIGCONT)
                go.set()
                # its edit lock is free, but the request lock it wrote under is this process's now
                assert out.get(timeout=30) == "LockLost"
            finally:
                hold.release()
        assert store["q"] == {"n": 102}


def test_slow_live_holders_keep_their_locks_past_three_leases(redis_server: str) -> None:
    options = {"prefix": prefix(), "lock_ttl": 0.5}
    with (
        lockstore.open(redis_server, **options) as holder,
        lockstore.open(redis_server, timeout=0.2, **options) as other,
    ):
        holder["s"] = {"n": 1}
        locks, rival = holder.request_locks(), other.request_locks(timeout=0.2)
        hold = locks.acquire("s")
        assert hold is not None
        with holder.edit("s") as session:
            session["n"] = 2
            until = time.monotonic() + 3 * holder.lock_ttl
            while time.monotonic() < until:  # nobody gets in while the holder lives, however long it takes
                with pytest.raises(lockstore.LockTimeout):
                    other["s"] = {"n": 99}
                with pytest.raises(lockstore.LockTimeout):
                    rival.acquire("s")
        hold.release()
        assert other["s"] == {"n": 2}
        again = rival.acquire("s")
        assert again is not None
        again.release()


def test_request_lock_is_reentrant_per_thread_and_fenced_only_while_held(redis_server: str) -> None:
    raw = redis.Redis.from_url(redis_server)
    p = prefix()
    with lockstore.open(redis_server, prefix=p) as store:
        locks = store.request_locks()
        first = locks.acquire("e")
        second = locks.acquire("e")  # the same thread again: counted
        assert first is not None and second is not None
        assert locks.index("e") == locks.index("e") != locks.index("f")
        token = raw.get(f"{p}:{{e}}:req")
        second.release()
        assert raw.get(f"{p}:{{e}}:req") == token
        raw.set(f"{p}:{{e}}:req", b"someone-else")  # as if the lease had lapsed and another process took it
        with pytest.raises(lockstore.LockLost, match="request"):
            store["e"] = {"x": 1}
        assert "e" not in store
        first.release()
        first.release()  # idempotent
        assert raw.get(f"{p}:{{e}}:req") == b"someone-else"  # compare-and-delete: not ours, left alone
        store["e"] = {"x": 2}  # no hold, no fence
        assert store["e"] == {"x": 2}


# -- durability: a master and its replica --------------------------------------------------------------------


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A master and a replica of it, the link up."""
    master = RedisServer(tmp_path / "master")
    master.start()
    replica = RedisServer(tmp_path / "replica", extra=["--replicaof", "127.0.0.1", str(master.port)])
    try:
        replica.start()
        link = redis.Redis.from_url(replica.url)
        deadline = time.monotonic() + 20
        while link.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not connect"
            time.sleep(0.05)
        yield master, replica
    finally:
        replica.kill()
        master.kill()


def test_system_durability_returns_once_the_replica_has_the_write(pair: tuple[RedisServer, RedisServer]) -> None:
    master, replica = pair
    p = prefix()
    on_master, on_replica = redis.Redis.from_url(master.url), redis.Redis.from_url(replica.url)
    with lockstore.open(master.url, prefix=p, durability="system") as store:
        for i in range(50):
            with store.edit("d") as session:
                session["n"] = i
            store[f"s{i}"] = {"i": i}
            assert on_replica.get(f"{p}:{{d}}") == on_master.get(f"{p}:{{d}}")
            assert on_replica.exists(f"{p}:{{s{i}}}") == 1
            del store[f"s{i}"]
            assert on_replica.exists(f"{p}:{{s{i}}}") == 0
        # the replica is failed over to: every acknowledged write is there
        master.kill()
    on_replica.replicaof("NO", "ONE")
    with lockstore.open(replica.url, prefix=p) as promoted:
        assert promoted["d"] == {"n": 49}
        assert len(promoted) == 1


def test_system_durability_refuses_to_acknowledge_without_a_replica(pair: tuple[RedisServer, RedisServer]) -> None:
    master, replica = pair
    p = prefix()
    assert replica.process is not None
    with (
        lockstore.open(master.url, prefix=p, durability="system", connect_timeout=1.0) as system,
        lockstore.open(master.url, prefix=p) as process,
    ):
        system["a"] = {"n": 1}
        os.kill(replica.process.pid, signal.SIGSTOP)  # connected, but it confirms nothing
        try:
            started = time.monotonic()
            with pytest.raises(lockstore.BackendUnavailable, match="no replica confirmed"), system.edit("a") as session:
                session["n"] = 2
            assert time.monotonic() - started < 2 * system.connect_timeout
            started = time.monotonic()
            process["b"] = {"n": 1}  # "process": the master's acknowledgement is enough (a failover now may lose it)
            assert time.monotonic() - started < 0.5
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
        system["c"] = {"n": 3}  # the replica confirms again
        assert redis.Redis.from_url(replica.url).exists(f"{p}:{{c}}") == 1
