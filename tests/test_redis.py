"""The Redis backend on a real redis-server: what the shared behaviour suite cannot see.

The mapping, edit, expiry and error behaviour shared with the embedded stores runs in the parametrised
suite (``any_backend``); here: several processes with their own pools, a server killed under load,
native expiry, lock keys, timeouts and prefixes.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from servers import fault_run, free_port, hold_edit, require, run_increments, running_redis

import lockstore

redis = require("redis")  # skips the module locally when the extra is missing, fails it under CI
key_slot = require("redis.crc").key_slot

pytestmark = pytest.mark.servers


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(redis_server: str) -> Any:
    with lockstore.open(redis_server, prefix=prefix()) as s:
        yield s


def test_processes_with_own_pools_count_exactly(redis_server: str) -> None:
    options = {"prefix": prefix(), "timeout": 60}
    sids = [f"counter-{i}" for i in range(4)]
    run_increments(redis_server, options, sids, processes=6, n=300)
    with lockstore.open(redis_server, **options) as s:
        assert [s[sid]["n"] for sid in sids] == [450] * 4


def every_fault_worker_wrote(url: str, options: dict[str, Any], wait: float = 60) -> None:
    """Return once every worker of servers.fault_run (w0..w2) has written to both of its sessions.

    Why: on a loaded machine a spawned worker may take longer than fault_run's first 1.5 s to open its store, and
    one that opens it while the server is down fails; so the outage starts only once every worker is running.
    """
    deadline = time.monotonic() + wait
    with lockstore.open(url, **options) as s:
        while not all((s.get(sid) or {}).get(name, 0) for sid in ("fault-a", "fault-b") for name in ("w0", "w1", "w2")):
            assert time.monotonic() < deadline, {sid: s.get(sid) for sid in ("fault-a", "fault-b")}
            time.sleep(0.05)


def test_server_killed_and_restarted_under_load(tmp_path: Path) -> None:
    with running_redis(tmp_path / "aof", appendonly=True) as server:
        options = {"prefix": prefix(), "timeout": 3.0, "connect_timeout": 1.0, "lock_ttl": 1.0}

        def kill() -> None:
            every_fault_worker_wrote(server.url, options)
            server.kill()

        fault_run(server.url, options, kill, server.start)


def test_native_expiry_slides_on_touch(redis_server: str) -> None:
    raw = redis.Redis.from_url(redis_server)
    p = prefix()
    with lockstore.open(redis_server, prefix=p, max_age=600, touch_interval=0) as s:
        now = time.time()
        s.put_record("old", {"a": 1}, created=now - 500, last_access=now - 500)
        key = f"{p}:{{old}}"
        assert 90_000 < raw.pttl(key) <= 100_000  # what is left of max_age since the last access
        assert s.touch("old")
        assert 590_000 < raw.pttl(key) <= 600_000
        s["new"] = {"b": 2}
        assert 590_000 < raw.pttl(f"{p}:{{new}}") <= 600_000
        s.put_record("gone", {"c": 3}, created=now - 700, last_access=now - 700)
        assert raw.exists(f"{p}:{{gone}}") == 0  # already expired: not written at all
        assert "gone" not in s
        assert sorted(s) == ["new", "old"]


def test_keys_live_under_the_prefix_with_hash_tags(redis_server: str) -> None:
    raw = redis.Redis.from_url(redis_server)
    p, q = prefix(), prefix()
    with lockstore.open(redis_server, prefix=p) as a, lockstore.open(redis_server, prefix=q) as b:
        a["x"] = {"in": "a"}
        b["x"] = {"in": "b"}
        with a.edit("y") as session:
            session["k"] = 1
        assert {k.decode() for k in raw.scan_iter(f"{p}:*")} >= {f"{p}:{{x}}", f"{p}:{{y}}", f"{p}:meta"}
        # Redis Cluster places a key by its hash tag: a session's keys share a slot, sessions spread.
        assert key_slot(f"{p}:{{y}}".encode()) == key_slot(f"{p}:{{y}}:lock".encode()) == key_slot(b"y")
        a.clear()
        assert len(a) == 0
        assert b["x"] == {"in": "b"}


def test_lock_timeout_then_dead_holder_lock_expires(redis_server: str) -> None:
    options = {"prefix": prefix(), "lock_ttl": 1.0}
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    with lockstore.open(redis_server, timeout=0.3, **options) as s:
        s["busy"] = {"n": 1}
        holder = ctx.Process(target=hold_edit, args=(redis_server, options, "busy", ready))
        holder.start()
        try:
            assert ready.wait(30)
            started = time.monotonic()
            with pytest.raises(lockstore.LockTimeout), s.edit("busy") as session:
                session["n"] = 2
            assert time.monotonic() - started < 2
            with pytest.raises(lockstore.LockTimeout):
                s["busy"] = {"n": 3}
            assert s["busy"] == {"n": 1}  # reads never wait for a lock
        finally:
            os.kill(holder.pid, signal.SIGKILL)
            holder.join(10)
        # The dead holder's lock lapses after lock_ttl; its change was never saved.
        with lockstore.open(redis_server, timeout=5, **options) as waiter, waiter.edit("busy") as session:
            session["n"] += 10
        assert s["busy"] == {"n": 11}


def test_slow_live_holder_keeps_its_lock_past_lock_ttl(store: Any, redis_server: str) -> None:
    """Issue 12: the lease is renewed while the holder lives (it used to lapse after lock_ttl, and the slow
    holder's commit then failed); a holder paused past its lease: tests/test_redis_leases.py."""
    with lockstore.open(redis_server, prefix=store.prefix, lock_ttl=1.0) as s:  # renewed every 1/3 s
        s["slow"] = {"n": 1}
        with s.edit("slow") as session:
            session["n"] = 2
            time.sleep(3.0)
            with (
                lockstore.open(redis_server, prefix=store.prefix, timeout=0.2) as s2,
                pytest.raises(lockstore.LockTimeout),
            ):
                s2["slow"] = {"n": 5}  # still held: nobody else gets in
        assert s["slow"] == {"n": 2}


def test_unreachable_server_is_backend_unavailable() -> None:
    started = time.monotonic()
    with pytest.raises(lockstore.BackendUnavailable, match=r"127\.0\.0\.1"):
        lockstore.open(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.5)
    assert time.monotonic() - started < 3


def test_stalled_server_times_out_never_hangs(tmp_path: Path) -> None:
    with running_redis(tmp_path / "stall") as server:
        s = lockstore.open(server.url, prefix=prefix(), connect_timeout=0.5)
        s["a"] = {"n": 1}
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(lockstore.BackendUnavailable, match="did not answer"):
                s["a"]
            with pytest.raises(lockstore.BackendUnavailable):
                s.edit("a").__enter__()
            assert time.monotonic() - started < 4
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert s["a"] == {"n": 1}
        s.close()


def test_settings_are_recorded_per_prefix(redis_server: str) -> None:
    p = prefix()
    with lockstore.open(redis_server, prefix=p, codec="json", secret="s" * 32) as s:
        s["a"] = {"x": [1, 2]}
    with pytest.raises(lockstore.StoreMismatch, match="codec"):
        lockstore.open(redis_server, prefix=p, codec="pickle", secret="s" * 32)
    with pytest.raises(lockstore.StoreMismatch, match="secret"):
        lockstore.open(redis_server, prefix=p)
    with lockstore.open(redis_server, prefix=p, secret="s" * 32) as s:  # codec as recorded
        assert s["a"] == {"x": [1, 2]}
        assert s.stats()["codec"] == "json"
    with pytest.raises(ValueError, match="prefix"):
        lockstore.open(redis_server, prefix="a{b}")


def test_tampered_record_is_never_decoded(redis_server: str) -> None:
    raw = redis.Redis.from_url(redis_server)
    p = prefix()
    with lockstore.open(redis_server, prefix=p, secret="k" * 32) as s:
        s["a"] = {"x": 1}
        rec = raw.get(f"{p}:{{a}}")
        raw.set(f"{p}:{{a}}", rec[:-1] + bytes([rec[-1] ^ 1]), keepttl=True)
        with pytest.raises(lockstore.CorruptRecord):
            s["a"]
        assert [sid for sid, _ in s.verify()] == ["a"]


def test_clock_expiry_and_clean(redis_server: str) -> None:
    now = [1_700_000_000.0]
    with lockstore.open(redis_server, prefix=prefix(), max_age=100, clock=lambda: now[0]) as s:
        for i in range(5):
            s[f"s{i}"] = {"i": i}
        now[0] += 60
        s.touch("s0")
        s["s1"] = {"i": 10}
        now[0] += 60
        assert sorted(s) == ["s0", "s1"]
        assert sorted(sid for sid, _ in s.records(expired=True)) == ["s2", "s3", "s4"]
        assert s.stats()["expired"] == 3
        assert s.clean() == 3
        assert s.stats()["expired"] == 0
        assert len(s) == 2
