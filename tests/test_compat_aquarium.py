"""Aquarium SessionContainer API: open creates or opens, random cleanup, adjust_time, exists => live."""

from __future__ import annotations

import multiprocessing as mp
import random
from typing import Any

import pytest
from procs import run_all

import lockstore
from lockstore.compat.aquarium import SessionContainer

MAX_AGE = 600


@pytest.fixture(params=["lmdb", "shelve", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Any, clock: Any) -> Any:
    # clean_interval=0: the store itself never sweeps on write, so every sweep seen is the container's
    options = {"clock": clock, "max_age": MAX_AGE, "clean_interval": 0}
    with lockstore.open(tmp_path / "s", backend=request.param, **options) as store:
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
    assert container.cleanup() == 4


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


# -- two processes lose no update ----------------------------------------------------------------


def _request(path: str, sid: str, name: str, rounds: int, barrier: Any) -> None:
    with lockstore.open(path, max_age=MAX_AGE) as store:
        container = SessionContainer(store, cleanup_frequency=7, rng=random.Random(name))
        barrier.wait(30)
        for i in range(rounds):
            session = container.open(sid)
            assert session.sid == sid, "the shared session must never look expired or be swept"
            session[f"{name}{i}"] = i
            session[name] = i
            container.save(session)
            container.open()  # other visitors arrive too


@pytest.mark.parametrize("backend", ["lmdb", "shelve"])
def test_two_processes_lose_no_update(tmp_path: Any, backend: str) -> None:
    path = str(tmp_path / "s")
    with lockstore.open(path, backend=backend, shards=1, max_age=MAX_AGE) as store:
        sid = SessionContainer(store).open().sid
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    rounds = 300
    procs = [ctx.Process(target=_request, args=(path, sid, name, rounds, barrier)) for name in "ab"]
    assert run_all(procs, 60) == [0, 0]
    with lockstore.open(path) as store:
        data = store[sid]
        assert data == {f"{n}{i}": i for n in "ab" for i in range(rounds)} | {"a": rounds - 1, "b": rounds - 1}
        assert len(store) == 1 + 2 * rounds  # every other visitor's session is there too
