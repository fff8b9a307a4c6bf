"""Aquarium SessionContainer API: open creates or opens, random cleanup, adjust_time, exists => live.

Every test runs on the embedded backends and on Redis and PostgreSQL (issue 12: the adapters must not
assume a re-entrant or file lock); each test has its own store (path, Redis prefix, PostgreSQL table).
"""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REMOTE, open_store
from procs import run_all

import lockstore
from lockstore.compat.aquarium import SessionContainer

MAX_AGE = 600
TIMEOUT = 5.0  # a lock wait the old nested write of adjust_time ran into on Redis and PostgreSQL
SHARED = ["lmdb", "shelve", *REMOTE]  # the backends two processes can share


def target(request: pytest.FixtureRequest, store: lockstore.BaseStore, path: str) -> tuple[str, dict[str, Any]]:
    """(path or url, options) that open *store* again, in this process or another (compat tests share it)."""
    if store.backend not in REMOTE:
        return path, {}
    key = "prefix" if store.backend == "redis" else "table"
    return request.getfixturevalue(f"{store.backend}_server"), {key: getattr(store, key)}


@pytest.fixture(params=["lmdb", "shelve", "memory", *REMOTE])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Any) -> Any:
    # clean_interval=0: the store itself never sweeps on write, so every sweep seen is the container's
    options = {"clock": clock, "max_age": MAX_AGE, "clean_interval": 0, "timeout": TIMEOUT}
    with open_store(request, request.param, str(tmp_path / "s"), **options) as store:
        yield store


@pytest.fixture
def container(store: Any) -> SessionContainer:
    return SessionContainer(store, cleanup_frequency=0)


def test_open_without_sid_creates_a_session(container: SessionContainer) -> None:
    session = container.open()
    assert session.is_new
    assert lockstore.is_valid_id(session.sid)
    assert len(session.sid) >= 22  # at least 128 random bits
    assert session == {}
    assert container.exists(session.sid)  # created at once: it exists for the next request


def test_generated_sids_differ(container: SessionContainer) -> None:
    assert len({container.open().sid for _ in range(50)}) == 50


def test_open_with_sid_opens_that_session(container: SessionContainer) -> None:
    first = container.open()
    first["user"] = "ada"
    container.save(first)
    again = container.open(first.sid)
    assert again.sid == first.sid
    assert not again.is_new
    assert again == {"user": "ada"}


@pytest.mark.parametrize("sid", ["unknown-sid", "../../etc/passwd", "", "bad id"])
def test_open_with_unknown_or_forged_sid_creates_a_new_one(container: SessionContainer, sid: str) -> None:
    session = container.open(sid)
    assert session.is_new
    assert session.sid != sid
    assert container.exists(session.sid)
    assert not container.exists(sid)


def test_an_existing_session_is_not_expired(container: SessionContainer, clock: Any) -> None:
    session = container.open()
    clock.now += MAX_AGE - 1
    assert container.exists(session.sid)
    clock.now += 2  # expired, and not swept yet: it no longer exists
    assert not container.exists(session.sid)
    again = container.open(session.sid)
    assert again.is_new
    assert again.sid != session.sid


def test_save_writes_only_the_changed_keys(container: SessionContainer) -> None:
    base = container.open()
    base.update(a=1, b=2, c=3)
    container.save(base)
    one = container.open(base.sid)  # two requests of one user, at the same time
    two = container.open(base.sid)
    one["a"] = 10
    del one["c"]
    two["b"] = 20
    two["d"] = [4]
    container.save(one)
    container.save(two)  # does not put back "a": 1 or "c": 3
    assert container.open(base.sid) == {"a": 10, "b": 20, "d": [4]}


def test_save_detects_changes_made_in_place(container: SessionContainer) -> None:
    session = container.open()
    session["cart"] = [1]
    container.save(session)
    session["cart"].append(2)
    container.save(session)
    assert container.open(session.sid)["cart"] == [1, 2]


def test_save_of_an_unchanged_session_writes_nothing(container: SessionContainer, clock: Any) -> None:
    session = container.open()
    before = container.store.record(session.sid)
    clock.now += 120
    container.save(session)
    assert container.store.record(session.sid) == before


def test_save_after_expiry_stores_the_whole_session(container: SessionContainer, clock: Any) -> None:
    session = container.open()
    session["a"] = 1
    container.save(session)
    session["b"] = 2
    clock.now += MAX_AGE + 1
    container.save(session)
    assert container.open(session.sid) == {"a": 1, "b": 2}


def test_delete(container: SessionContainer) -> None:
    session = container.open()
    container.delete(session.sid)
    assert not container.exists(session.sid)
    container.delete(session.sid)  # absent: not an error
    container.delete("../bad")


# -- random cleanup every SESSION_CLEANUP_FREQUENCY opens -----------------------------------------


def _expire_some(container: SessionContainer, clock: Any, n: int = 5) -> None:
    for _ in range(n):
        container.open()
    clock.now += MAX_AGE + 1


def test_default_cleanup_frequency_is_aquariums(store: Any) -> None:
    assert SessionContainer.SESSION_CLEANUP_FREQUENCY == 100
    assert SessionContainer(store).cleanup_frequency == 100
    with pytest.raises(ValueError, match="cleanup_frequency"):
        SessionContainer(store, cleanup_frequency=-1)


def test_cleanup_frequency_zero_never_cleans(store: Any, clock: Any) -> None:
    container = SessionContainer(store, cleanup_frequency=0, rng=random.Random(1))
    _expire_some(container, clock)
    for _ in range(300):
        container.open()
    assert container.cleanups == 0
    assert store.stats()["expired"] == 5  # left for cron
    assert container.cleanup() == 5
    assert store.stats()["expired"] == 0


def test_cleanup_frequency_one_cleans_on_every_open(store: Any, clock: Any) -> None:
    container = SessionContainer(store, cleanup_frequency=1)
    _expire_some(container, clock)
    container.open()
    assert store.stats()["expired"] == 0
    assert container.cleanups == 6


def test_cleanup_runs_about_once_every_frequency_opens(store: Any) -> None:
    container = SessionContainer(store, cleanup_frequency=10, rng=random.Random(7))
    for _ in range(600):
        container.open()
    assert 30 <= container.cleanups <= 90  # binomial(600, 1/10): mean 60, sd 7.3


def test_cleanup_never_removes_a_live_session(store: Any, clock: Any) -> None:
    container = SessionContainer(store, cleanup_frequency=1)
    live = container.open()
    clock.now += MAX_AGE - 1
    for _ in range(20):
        container.open()
    assert container.exists(live.sid)


# -- adjust_time ------------------------------------------------------------------------------------


def test_adjust_time_backwards_expires_sessions(container: SessionContainer) -> None:
    sessions = [container.open() for _ in range(4)]
    assert container.adjust_time(-(MAX_AGE + 1)) == 4
    assert not any(container.exists(s.sid) for s in sessions)
    # Redis deletes a record written already expired at once, leaving nothing for the cleanup
    assert container.cleanup() == (0 if container.store.backend == "redis" else 4)


def test_adjust_time_forwards_keeps_sessions_alive(container: SessionContainer, clock: Any) -> None:
    session = container.open()
    session["a"] = 1
    container.save(session)
    before = container.store.record(session.sid)
    assert before is not None
    clock.now += MAX_AGE - 10
    assert container.adjustTime(100) == 1  # the old camelCase name still works
    clock.now += 50  # MAX_AGE + 40 after the last real access, 540 s after the adjusted one
    record = container.store.record(session.sid)
    assert record is not None
    assert record.value == {"a": 1}
    assert record.created == before.created
    assert record.last_access == clock.now - 540


def test_adjust_time_after_touch_interval_is_not_undone(container: SessionContainer, clock: Any) -> None:
    session = container.open()
    clock.now += 300  # older than the store's touch_interval
    container.adjust_time(-250)
    record = container.store.record(session.sid)
    assert record is not None
    assert record.last_access == clock.now - 550


def _hold_and_save(path: str, options: dict[str, Any], sid: str, ready: Any, hold: float) -> None:
    """Hold *sid*'s edit() (its lock) for *hold* seconds, then save a change that must survive."""
    with lockstore.open(path, **options) as store, store.edit(sid, create=False) as session:
        ready.set()
        time.sleep(hold)
        session["saved"] = "by the other process"


@pytest.mark.parametrize("backend", SHARED)
def test_adjust_time_never_overwrites_a_concurrent_save(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    """Another process holds the session in edit() while adjust_time reaches it: adjust_time waits for
    its lock, loses the compare (the save changed the last access) and shifts the saved record instead
    of writing back the value it listed. The old code nested a write in its own edit(): on Redis and
    PostgreSQL it waited ``timeout`` for itself and raised LockTimeout."""
    path = str(tmp_path / "s")
    with open_store(request, backend, path, max_age=MAX_AGE, timeout=TIMEOUT) as store:  # the real clock
        container = SessionContainer(store, cleanup_frequency=0)
        session = container.open()
        session["n"] = 1
        container.save(session)
        other = container.open()  # a session nobody else touches: adjusted at the first try
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        location, options = target(request, store, path)
        proc = ctx.Process(target=_hold_and_save, args=(location, options, session.sid, ready, 1.0))
        try:
            proc.start()
            assert ready.wait(30)
            started = time.time()
            assert container.adjust_time(-100) == 2
            finished = time.time()
        finally:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        assert proc.exitcode == 0
        assert finished - started > 0.5  # adjust_time waited for the other process's lock
        record = store.record(session.sid)
        assert record is not None
        assert record.value == {"n": 1, "saved": "by the other process"}  # the save was not overwritten
        assert started - 100 <= record.last_access <= finished - 100  # and the saved record was shifted
        assert container.exists(other.sid)


# -- two processes lose no update ----------------------------------------------------------------


def _request(path: str, options: dict[str, Any], sid: str, name: str, rounds: int, barrier: Any) -> None:
    with lockstore.open(path, max_age=MAX_AGE, **options) as store:
        container = SessionContainer(store, cleanup_frequency=7, rng=random.Random(name))
        barrier.wait(30)
        for i in range(rounds):
            session = container.open(sid)
            assert session.sid == sid, "the shared session must never look expired or be swept"
            session[f"{name}{i}"] = i
            session[name] = i
            container.save(session)
            container.open()  # other visitors arrive too


@pytest.mark.parametrize("backend", SHARED)
def test_two_processes_lose_no_update(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    path = str(tmp_path / "s")
    # one shard on the embedded backends, so both processes write into the same files at the same time
    shards = {} if backend in REMOTE else {"shards": 1}
    with open_store(request, backend, path, max_age=MAX_AGE, **shards) as store:
        sid = SessionContainer(store).open().sid
        location, options = target(request, store, path)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    rounds = 300
    procs = [ctx.Process(target=_request, args=(location, options, sid, name, rounds, barrier)) for name in "ab"]
    assert run_all(procs, 60) == [0, 0]
    with lockstore.open(location, **options) as store:
        data = store[sid]
        assert data == {f"{n}{i}": i for n in "ab" for i in range(rounds)} | {"a": rounds - 1, "b": rounds - 1}
        assert len(store) == 1 + 2 * rounds  # every other visitor's session is there too
