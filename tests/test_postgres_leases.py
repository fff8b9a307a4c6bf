"""PostgreSQL's server-side locks with leases (issue 12): the request-long lock, and the lease of ``edit()``.

Real server, real processes: a holder SIGKILLed frees its locks at once; a holder SIGSTOPped past its lease
(``lock_ttl``) loses them, and when it resumes its write raises :class:`~lockstore.LockLost` and writes nothing,
while the next holder's write stands; a slow live holder keeps its lock through the renewals.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import uuid
from typing import Any

import pytest
from servers import require

import lockstore

require("psycopg")
require("psycopg_pool")

pytestmark = pytest.mark.servers

LEASE = 1.0


def table() -> str:
    return f"l{uuid.uuid4().hex[:12]}"


def holder(url: str, options: dict[str, Any], sid: str, mode: str, ready: Any, go: Any, results: Any) -> None:
    """Hold *sid* (``"request"``: its request lock; ``"edit"``: an edit with an uncommitted change) until *go*; then
    try to write it (``"request"``: an edit, a set and a delete). Reports what happened to each write."""

    def attempt(write: Any) -> str:
        try:
            write()
        except lockstore.LockLost as exc:
            return f"LockLost: {exc}"
        except Exception as exc:
            return repr(exc)
        return "written"

    def edit() -> None:
        with s.edit(sid) as session:
            session["n"] = -1

    with lockstore.open(url, **options) as s:
        if mode == "request":
            hold = s.request_locks(timeout=5).acquire(sid)
            assert hold is not None
            ready.set()
            go.wait(60)
            results.put([attempt(edit), attempt(lambda: s.__setitem__(sid, {"n": -2})), attempt(lambda: s.pop(sid))])
            hold.release()
        else:

            def paused_edit() -> None:
                with s.edit(sid) as session:
                    session["n"] = -1
                    ready.set()
                    go.wait(60)

            results.put([attempt(paused_edit)])


def start_holder(url: str, options: dict[str, Any], sid: str, mode: str) -> tuple[Any, Any, Any]:
    ctx = multiprocessing.get_context("spawn")
    ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=holder, args=(url, options, sid, mode, ready, go, results))
    proc.start()
    assert ready.wait(60)
    return proc, go, results


def stop(proc: Any) -> None:
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    proc.join(10)


def test_request_lock_excludes_other_holders_and_times_out(postgres_server: str) -> None:
    options = {"table": table(), "lock_ttl": LEASE}
    with lockstore.open(postgres_server, **options) as a, lockstore.open(postgres_server, **options) as b:
        mine, theirs = a.request_locks(timeout=5), b.request_locks(timeout=0.3)
        hold = mine.acquire("s1")
        assert hold is not None
        assert mine.acquire("s1") is hold  # re-entrant in its thread
        hold.release()
        started = time.monotonic()
        with pytest.raises(lockstore.LockTimeout, match="advisory lock"):
            theirs.acquire("s1")
        assert 0.25 < time.monotonic() - started < 2
        assert theirs.acquire("s1", blocking=False) is None
        assert theirs.acquire("s2", blocking=False) is not None  # another session: its own lock
        hold.release()
        other = theirs.acquire("s1", blocking=False)
        assert other is not None
        other.release()
        other.release()  # idempotent


@pytest.mark.parametrize("mode", ["request", "edit"])
def test_holder_killed_frees_the_session_at_once(postgres_server: str, mode: str) -> None:
    options = {"table": table(), "lock_ttl": 30.0}
    with lockstore.open(postgres_server, **options) as s:
        s["k"] = {"n": 5}
        proc, _, _ = start_holder(postgres_server, options, "k", mode)
        try:
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(10)
            started = time.monotonic()
            hold = s.request_locks(timeout=10).acquire("k")
            assert hold is not None
            with s.edit("k") as session:
                session["n"] += 1
            hold.release()
            waited = time.monotonic() - started
        finally:
            stop(proc)
        print(f"\n{mode}: next holder in {waited * 1000:.0f} ms after the SIGKILL (lock_ttl 30 s)")
        assert waited < 3
        assert s["k"] == {"n": 6}  # the killed holder's change was never committed


@pytest.mark.parametrize("mode", ["request", "edit"])
def test_holder_paused_past_its_lease_cannot_commit(postgres_server: str, mode: str) -> None:
    options = {"table": table(), "lock_ttl": LEASE, "timeout": 10.0}
    with lockstore.open(postgres_server, **options) as s:
        s["p"] = {"n": 1}
        proc, go, results = start_holder(postgres_server, options, "p", mode)
        try:
            os.kill(proc.pid, signal.SIGSTOP)
            started = time.monotonic()
            hold = s.request_locks().acquire("p")  # the server ends the paused holder's session after its lease
            assert hold is not None
            with s.edit("p") as session:
                session["n"] += 10
            hold.release()
            took = time.monotonic() - started
            os.kill(proc.pid, signal.SIGCONT)
            go.set()
            outcome = results.get(timeout=30)
            proc.join(10)
        finally:
            stop(proc)
        print(f"\n{mode}: next holder got the lock {took:.2f} s after the pause (lease {LEASE} s); paused: {outcome}")
        assert all(one.startswith("LockLost") for one in outcome), outcome
        assert took < LEASE + 3
        assert s["p"] == {"n": 11}  # the next holder's write stands; the paused one wrote nothing


def test_renewals_keep_a_slow_live_holder(postgres_server: str) -> None:
    options = {"table": table(), "lock_ttl": 0.6}
    with lockstore.open(postgres_server, **options) as s, lockstore.open(postgres_server, **options) as other:
        with s.edit("slow") as session:  # idles past lock_ttl several times over: renewed
            session["n"] = 1
            time.sleep(2.0)
        assert s["slow"] == {"n": 1}
        hold = s.request_locks().acquire("slow")
        assert hold is not None
        time.sleep(2.0)
        assert other.request_locks(timeout=0.2).acquire("slow", blocking=False) is None  # still held
        with s.edit("slow") as session:  # on the hold's connection, alive
            session["n"] += 1
        hold.release()
        assert other["slow"] == {"n": 2}


def test_edit_of_a_held_session_from_another_thread_waits_for_the_one_in_progress(postgres_server: str) -> None:
    with lockstore.open(postgres_server, table=table(), timeout=5) as s:
        hold = s.request_locks().acquire("t")
        assert hold is not None
        entered = threading.Event()

        def edit_slowly() -> None:
            with s.edit("t") as session:
                entered.set()
                session["a"] = 1
                time.sleep(0.3)

        worker = threading.Thread(target=edit_slowly)
        worker.start()
        assert entered.wait(10)
        with s.edit("t") as session:  # the hold's connection carries one transaction at a time
            session["b"] = 2
        worker.join(10)
        hold.release()
        assert s["t"] == {"a": 1, "b": 2}


@pytest.mark.parametrize(("durability", "setting"), [("system", "on"), ("process", "off")])
def test_durability_is_synchronous_commit(postgres_server: str, durability: str, setting: str) -> None:
    with lockstore.open(postgres_server, table=table(), durability=durability) as s:
        assert s.options.durability == durability
        assert s._run(lambda conn: conn.execute("SHOW synchronous_commit").fetchone()) == (setting,)
        hold = s.request_locks().acquire("d")
        assert hold is not None
        with s.edit("d") as session:
            session["x"] = 1
            assert session == {"x": 1}
        hold.release()
