"""The PostgreSQL backend on a real server: what the shared behaviour suite cannot see.

The mapping, edit, expiry and error behaviour shared with the embedded stores runs in the parametrised
suite (``any_backend``); here: several processes with their own pools creating the table and the
sessions at once, a server crashed under load, row locks, clean on write, timeouts and settings.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid
from typing import Any

import pytest
from servers import fault_run, free_port, hold_edit, require, run_increments, running_postgres

import lockstore

psycopg = require("psycopg")  # the postgres extra: skips the module locally when missing, fails it under CI
require("psycopg_pool")

from lockstore.remote.postgres import open_postgres  # noqa: E402  (imports psycopg: after the check)

pytestmark = pytest.mark.servers


def table() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def test_processes_with_own_pools_count_exactly(postgres_server: str) -> None:
    # Nobody has created the table or the sessions: six processes race to do both.
    options = {"table": table(), "timeout": 60}
    sids = [f"counter-{i}" for i in range(4)]
    run_increments(postgres_server, options, sids, processes=6, n=300)
    with lockstore.open(postgres_server, **options) as s:
        assert [s[sid]["n"] for sid in sids] == [450] * 4


FAULT_SIDS = ("fault-a", "fault-b")  # the sessions and the workers of servers.fault_run
FAULT_WORKERS = ("w0", "w1", "w2")


def progress(url: str, options: dict[str, Any], past: dict[str, int] | None = None, wait: float = 60) -> dict[str, int]:
    """The counts of every fault_run worker in both sessions, once each has written there (more than in *past*).

    Why: on a loaded machine a spawned worker may take longer than fault_run's first 1.5 s to open its store, and
    one that opens it while the server is down fails; so the outage starts only once every worker is running.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            with lockstore.open(url, **options) as s:
                counts = {
                    f"{sid}/{name}": (s.get(sid) or {}).get(name, 0) for sid in FAULT_SIDS for name in FAULT_WORKERS
                }
        except lockstore.BackendUnavailable:
            counts = {}
        if counts and all(counts.values()) and (past is None or all(n > past[key] for key, n in counts.items())):
            return counts
        assert time.monotonic() < deadline, counts
        time.sleep(0.05)


def unavailable_within(store: Any, seconds: float) -> float:
    """Every kind of call on *store* (server down) raises BackendUnavailable; the slowest one's seconds."""
    slowest = 0.0
    hold_locks = store.request_locks(timeout=1)
    calls = [
        lambda: store["fault-a"],
        lambda: store.__setitem__("other", {"x": 1}),
        lambda: store.edit("fault-b").__enter__(),
        lambda: "fault-a" in store,
        lambda: hold_locks.acquire("fault-a"),
        lambda: hold_locks.acquire("fault-b", blocking=False),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(lockstore.BackendUnavailable):
            call()
        slowest = max(slowest, time.monotonic() - started)
    assert slowest < seconds, slowest
    return slowest


def test_server_crashed_and_restarted_under_load() -> None:
    # "system" (synchronous_commit on): fault_run checks that no acknowledged edit was lost to the crash.
    with running_postgres() as server:
        options = {"table": table(), "timeout": 3.0, "connect_timeout": 1.0, "durability": "system"}
        seen: dict[str, Any] = {}

        def crash() -> None:
            seen["before"] = progress(server.url, options)
            with lockstore.open(server.url, **options) as probe:
                server.stop("immediate")
                seen["slowest"] = unavailable_within(probe, options["connect_timeout"] + 1.0)

        def restart() -> None:
            server.start()
            progress(server.url, options, progress(server.url, options))  # every worker writes again

        fault_run(server.url, options, crash, restart)
        print(f"\nserver down: slowest call {seen['slowest']:.2f} s to raise BackendUnavailable (connect_timeout 1 s)")


def test_row_lock_timeout_and_dead_holder_frees_at_once(postgres_server: str) -> None:
    options = {"table": table()}
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    with lockstore.open(postgres_server, timeout=0.3, **options) as s:
        s["busy"] = {"n": 1}
        holder = ctx.Process(target=hold_edit, args=(postgres_server, options, "busy", ready))
        holder.start()
        try:
            assert ready.wait(30)
            started = time.monotonic()
            with pytest.raises(lockstore.LockTimeout), s.edit("busy") as session:
                session["n"] = 2
            with pytest.raises(lockstore.LockTimeout):
                s["busy"] = {"n": 3}
            with pytest.raises(lockstore.LockTimeout):
                del s["busy"]
            assert time.monotonic() - started < 3
            assert s["busy"] == {"n": 1}  # reads never wait for a lock
        finally:
            os.kill(holder.pid, signal.SIGKILL)
            holder.join(10)
        # The server rolls back a dead client's transaction as soon as its connection drops.
        with lockstore.open(postgres_server, timeout=5, **options) as waiter, waiter.edit("busy") as session:
            session["n"] += 10
        assert s["busy"] == {"n": 11}


def test_edit_of_a_new_session_left_empty_creates_nothing(postgres_server: str) -> None:
    with lockstore.open(postgres_server, table=table()) as s:
        with s.edit("ghost"):
            pass
        assert "ghost" not in s
        assert s.stats()["live"] == s.stats()["expired"] == 0


def test_clean_on_write_is_bounded_and_indexed(postgres_server: str) -> None:
    now = [1_700_000_000.0]
    name = table()
    options = {"table": name, "max_age": 100, "clean_interval": 50, "clean_limit": 5, "clock": lambda: now[0]}
    # lockstore.open passes clean_interval and clean_limit on to embedded stores only, so open directly.
    with open_postgres(postgres_server, **options) as s:
        for i in range(20):
            s[f"old{i}"] = {"i": i}
        now[0] += 200
        s["fresh"] = {"i": -1}  # clean_interval has passed: this write sweeps at most 5
        assert s.stats()["expired"] == 15
        s["fresh2"] = {"i": -2}  # within clean_interval of the last sweep: no sweep
        assert s.stats()["expired"] == 15
        assert s.clean() == 15
        assert sorted(s) == ["fresh", "fresh2"]
    with psycopg.connect(postgres_server) as conn:
        indexes = [r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", (name,))]
    assert any("(last_access)" in d for d in indexes), indexes


def test_unreachable_server_is_backend_unavailable() -> None:
    started = time.monotonic()
    with pytest.raises(lockstore.BackendUnavailable, match=r"127\.0\.0\.1"):
        lockstore.open(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", connect_timeout=1)
    assert time.monotonic() - started < 4


def test_settings_are_recorded_per_table(postgres_server: str) -> None:
    name = table()
    with lockstore.open(postgres_server, table=name, codec="json", secret="s" * 32) as s:
        s["a"] = {"x": [1, 2]}
    with pytest.raises(lockstore.StoreMismatch, match="codec"):
        lockstore.open(postgres_server, table=name, codec="pickle", secret="s" * 32)
    with pytest.raises(lockstore.StoreMismatch, match="secret"):
        lockstore.open(postgres_server, table=name)
    with lockstore.open(postgres_server, table=name, secret="s" * 32) as s:  # codec as recorded
        assert s["a"] == {"x": [1, 2]}
        assert s.stats()["codec"] == "json"
        s.setup(None, signed=True)  # idempotent
        assert s["a"] == {"x": [1, 2]}
    with pytest.raises(ValueError, match="table"):
        lockstore.open(postgres_server, table="x; DROP TABLE y")


def test_tampered_record_is_never_decoded(postgres_server: str) -> None:
    name = table()
    with lockstore.open(postgres_server, table=name, secret="k" * 32) as s:
        s["a"] = {"x": 1}
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f"UPDATE {name} SET rec = overlay(rec placing '\\x00'::bytea from length(rec))")
        with pytest.raises(lockstore.CorruptRecord):
            s["a"]
        assert [sid for sid, _ in s.verify()] == ["a"]


def test_clock_expiry_touch_and_records(postgres_server: str) -> None:
    now = [1_700_000_000.0]
    with lockstore.open(postgres_server, table=table(), max_age=100, touch_interval=10, clock=lambda: now[0]) as s:
        for i in range(5):
            s[f"s{i}"] = {"i": i}
        now[0] += 60
        assert s.touch("s0")
        assert s.record("s0").last_access == now[0]
        s["s1"] = {"i": 10}
        assert s.record("s1").created == now[0] - 60  # an overwrite keeps the creation time
        now[0] += 60
        assert sorted(s) == ["s0", "s1"]
        assert sorted(sid for sid, _ in s.records(expired=True)) == ["s2", "s3", "s4"]
        assert "s2" not in s
        with pytest.raises(KeyError):
            s["s2"]
        assert s.clean() == 3
        assert len(s) == 2


def test_forked_children_never_touch_the_parents_connections(postgres_server: str) -> None:
    with lockstore.open(postgres_server, table=table(), codec="json") as s:
        s["a"] = {"n": 0}
        pids = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:  # the child: uses the inherited store, which opens its own pool
                code = 1
                try:
                    for _ in range(50):
                        with s.edit("a") as session:
                            session["n"] += 1
                    s.close()
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        for _ in range(50):  # the parent's pooled connections still work
            with s.edit("a") as session:
                session["n"] += 1
        deadline = time.monotonic() + 60
        codes = {}
        try:
            while len(codes) < len(pids) and time.monotonic() < deadline:
                for pid in pids:
                    if pid not in codes:
                        done, status = os.waitpid(pid, os.WNOHANG)
                        if done:
                            codes[pid] = os.waitstatus_to_exitcode(status)
                time.sleep(0.01)
        finally:
            for pid in set(pids) - set(codes):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        assert list(codes.values()) == [0, 0, 0]
        assert s["a"] == {"n": 200}
