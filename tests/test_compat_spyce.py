"""Spyce session module API: get / put / delete, sessions created just in time, no _lastaccess key.

Every test runs on the embedded backends and on Redis and PostgreSQL (issue 12), each with its own
store (path, Redis prefix, PostgreSQL table).
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import pytest
from conftest import REMOTE, open_store
from procs import run_all
from test_compat_aquarium import target

import lockstore
from lockstore.compat.spyce import SpyceSession

BACKENDS = ["lmdb", "shelve", "memory", *REMOTE]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Any) -> Any:
    with open_store(request, request.param, str(tmp_path / "s"), clock=clock, max_age=600) as store:
        yield store


def test_get_put_delete_like_a_dictionary(store: Any) -> None:
    session = SpyceSession(store)
    session.put("username", "ada")
    session.put("visits", 1)
    assert session.get("username") == "ada"
    session.delete("username")
    assert session.get("username") is None
    assert session.get("username", "anonymous") == "anonymous"
    assert session.get("visits") == 1


def test_the_session_follows_the_visitor(store: Any) -> None:
    first = SpyceSession(store)
    first.put("username", "ada")
    again = SpyceSession(store, first.id)  # the next request, with the id from the cookie
    assert again.id == first.id
    assert again.is_new is False
    assert again.get("username") == "ada"


def test_sessions_are_created_just_in_time(store: Any) -> None:
    session = SpyceSession(store)
    assert session.is_new
    assert lockstore.is_valid_id(session.id)
    assert session.get("anything") is None
    session.delete("anything")
    assert "anything" not in session
    assert len(session) == 0
    assert list(session) == []
    assert len(store) == 0  # reading and deleting never created it: no disk access for visitors
    assert session.last_access is None
    session.put("cart", [1])
    assert list(store) == [session.id]


def test_lastaccess_is_never_a_user_key(store: Any, clock: Any) -> None:
    session = SpyceSession(store)
    session.put("a", 1)
    assert dict(session) == {"a": 1}  # no _lastaccess among the keys
    assert session.last_access == clock.now
    clock.now += 100
    session.put("b", 2)
    assert session.last_access == clock.now


def test_lastaccess_cannot_be_clobbered(store: Any, clock: Any) -> None:
    session = SpyceSession(store)
    session.put("_lastaccess", 0)  # what Spyce told users never to do: now harmless data
    clock.now += 500
    assert session.get("_lastaccess") == 0
    assert session.last_access == clock.now  # the read refreshed it; the data did not
    clock.now += 599  # a read above refreshed the session: it is still alive
    assert SpyceSession(store, session.id).id == session.id
    assert store.clean() == 0


def test_expired_session_gets_a_new_id(store: Any, clock: Any) -> None:
    session = SpyceSession(store)
    session.put("a", 1)
    clock.now += 601
    again = SpyceSession(store, session.id)
    assert again.is_new
    assert again.id != session.id
    assert again.get("a") is None


@pytest.mark.parametrize("cookie", ["not a valid id!", "../../etc/passwd", "", "unknown-but-valid"])
def test_forged_or_unknown_ids_get_a_fresh_id(store: Any, cookie: str) -> None:
    session = SpyceSession(store, cookie)
    assert session.is_new
    assert session.id != cookie
    session.put("a", 1)
    assert cookie not in list(store)


def test_values_read_are_fresh_copies(store: Any) -> None:
    session = SpyceSession(store)
    session.put("cart", [1, 2])
    cart = session.get("cart")
    cart.append(3)
    assert session.get("cart") == [1, 2]  # changed only by put
    session.put("cart", cart)
    assert session["cart"] == [1, 2, 3]


def test_mapping_interface(store: Any) -> None:
    session = SpyceSession(store)
    session["a"] = 1
    session.update({"b": 2}, c=3)
    assert dict(session) == {"a": 1, "b": 2, "c": 3}
    assert "b" in session
    assert len(session) == 3
    del session["a"]
    with pytest.raises(KeyError):
        del session["a"]
    with pytest.raises(KeyError):
        session["missing"]
    assert sorted(session) == ["b", "c"]
    session.clear()  # Spyce's clear: the whole session goes
    assert store.record(session.id) is None
    assert session.get("b") is None


def test_del_of_missing_key_on_absent_session_writes_nothing(store: Any) -> None:
    session = SpyceSession(store)
    with pytest.raises(KeyError):
        del session["x"]
    assert len(store) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_unencodable_value_changes_nothing(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    with open_store(request, backend, str(tmp_path / "j"), codec="json") as store:
        session = SpyceSession(store)
        session.put("a", 1)
        with pytest.raises(lockstore.EncodeError):
            session.put("b", {1, 2})
        assert dict(session) == {"a": 1}


@pytest.mark.parametrize("backend", BACKENDS)
def test_too_large_value_changes_nothing(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    with open_store(request, backend, str(tmp_path / "s"), max_value_size=1000) as store:
        session = SpyceSession(store)
        session.put("a", "small")
        with pytest.raises(lockstore.ValueTooLarge):
            session.put("b", "x" * 2000)
        assert dict(session) == {"a": "small"}


def test_a_session_that_is_not_a_dict_is_reported(store: Any) -> None:
    store["legacy"] = ["not", "a", "dict"]
    session = SpyceSession(store, "legacy")
    with pytest.raises(TypeError, match="not a dict"):
        session.get("a")


# -- two processes lose no update ----------------------------------------------------------------


def _putter(path: str, options: dict[str, Any], sid: str, name: str, rounds: int, barrier: Any) -> None:
    with lockstore.open(path, **options) as store:
        session = SpyceSession(store, sid)
        assert session.id == sid
        barrier.wait(30)
        for i in range(rounds):
            session.put(f"{name}{i}", i)
            if i % 3 == 0:
                session.delete(f"{name}{i}")


@pytest.mark.parametrize("backend", ["lmdb", "shelve", *REMOTE])
def test_two_processes_putting_into_one_session_lose_no_key(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    """Spyce: "it is remotely possible that sessions might blast each other". Not any more."""
    path = str(tmp_path / "s")
    # one shard on the embedded backends, so both processes write into the same files at the same time
    with open_store(request, backend, path, **({} if backend in REMOTE else {"shards": 1})) as store:
        session = SpyceSession(store)
        session.put("owner", "test")
        location, options = target(request, store, path)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    rounds = 600
    procs = [ctx.Process(target=_putter, args=(location, options, session.id, name, rounds, barrier)) for name in "ab"]
    assert run_all(procs, 60) == [0, 0]
    with lockstore.open(location, **options) as store:
        expected = {"owner": "test"} | {f"{n}{i}": i for n in "ab" for i in range(rounds) if i % 3}
        assert dict(SpyceSession(store, session.id)) == expected
