"""session2 / session3 SessionStore API: the old documented behaviour, and what lockstore adds.

The API tests run on every backend, Redis and PostgreSQL included (issue 12), each with its own store
(path, Redis prefix, PostgreSQL table). Embedded only, because they are about what the file stores
are: ``setup()`` creating a directory with mode 0700, the ``filename``/``directory`` attributes,
the lmdb/shelve ``backend`` argument and its mismatch, and the memory store that no other process
sees.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import REMOTE, open_store
from procs import run_all
from test_compat_aquarium import target

import lockstore
from lockstore.compat.session2 import (
    DirectorySessionStore,
    SessionStore,
    ShelveSessionStore,
    VolatileSessionStore,
)


class Session:
    """What session2's manager hands to the store: an object with an ``id``."""

    def __init__(self, id: str, **attrs: Any) -> None:
        self.id = id
        self.__dict__.update(attrs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Session) and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]


def _run(ctx: Any, target: Any, args_list: list[tuple[Any, ...]], timeout: float = 60) -> list[int | None]:
    return run_all([ctx.Process(target=target, args=args) for args in args_list], timeout)


# Sessions are class instances: a server store needs codec="pickle" said explicitly (its default is json),
# and a secret, so that whoever can write to the server cannot make the application unpickle their bytes.
PICKLED = {"codec": "pickle", "secret": "a test secret of 32 characters"}


@pytest.fixture(
    params=[
        "directory-lmdb",
        "directory-shelve",
        "shelve",
        "volatile",
        "wrapped-memory",
        "wrapped-redis",
        "wrapped-postgres",
    ]
)
def adapter(request: pytest.FixtureRequest, tmp_path: Any, clock: Any) -> Any:
    kind = request.param
    options = {"clock": clock, "max_age": 3600}
    if kind == "directory-lmdb":
        store: SessionStore = DirectorySessionStore(tmp_path / "d", **options)
    elif kind == "directory-shelve":
        store = DirectorySessionStore(tmp_path / "d", backend="shelve", **options)
    elif kind == "shelve":
        store = ShelveSessionStore(tmp_path / "sessions.db", **options)
    elif kind == "volatile":
        store = VolatileSessionStore(**options)
    elif kind == "wrapped-memory":
        store = SessionStore(lockstore.open(tmp_path / "m", backend="memory", **options))
    else:
        store = SessionStore(
            open_store(request, kind.removeprefix("wrapped-"), str(tmp_path / "m"), **options, **PICKLED)
        )
    yield store
    store.close()


# -- the documented API -------------------------------------------------------------------------


def test_load_session_returns_default_when_absent(adapter: SessionStore) -> None:
    assert adapter.load_session("nobody") is None
    marker = object()
    assert adapter.load_session("nobody", marker) is marker
    assert adapter.load_session("nobody", default=3) == 3


def test_save_then_load_returns_the_session(adapter: SessionStore) -> None:
    session = Session("abc123", user="ada", visits=1)
    adapter.save_session(session)
    loaded = adapter.load_session("abc123")
    assert loaded == session
    assert loaded is not session  # a fresh copy: changing it changes nothing until it is saved
    loaded.visits = 99
    assert adapter.load_session("abc123").visits == 1


def test_save_session_replaces(adapter: SessionStore) -> None:
    adapter.save_session(Session("s1", n=1))
    adapter.save_session(Session("s1", n=2, extra="x"))
    assert adapter.load_session("s1") == Session("s1", n=2, extra="x")


def test_delete_session(adapter: SessionStore) -> None:
    adapter.save_session(Session("s1"))
    adapter.save_session(Session("s2"))
    adapter.delete_session(Session("s1"))
    assert not adapter.has_session("s1")
    assert adapter.has_session("s2")
    adapter.delete_session(Session("s1"))  # deleting an absent session is not an error
    assert adapter.load_session("s1", "gone") == "gone"


def test_has_session(adapter: SessionStore) -> None:
    assert adapter.has_session("s1") is False
    adapter.save_session(Session("s1"))
    assert adapter.has_session("s1") is True


def test_forged_ids_read_as_absent_and_cannot_be_saved(adapter: SessionStore) -> None:
    for bad in ("../etc/passwd", "", "a/b", "x" * 300, "..", "nul\0"):
        assert adapter.has_session(bad) is False
        assert adapter.load_session(bad, "default") == "default"
        adapter.delete_session(Session(bad))
        with pytest.raises(lockstore.InvalidSessionId):
            adapter.save_session(Session(bad))


def test_iter_sessions_yields_id_and_session(adapter: SessionStore) -> None:
    saved = {f"s{i}": Session(f"s{i}", i=i) for i in range(5)}
    for session in saved.values():
        adapter.save_session(session)
    assert dict(adapter.iter_sessions()) == saved


def test_iter_sessions_does_not_refresh_access(adapter: SessionStore, clock: Any) -> None:
    adapter.save_session(Session("s1"))
    clock.now += 3000
    assert [sid for sid, _ in adapter.iter_sessions()] == ["s1"]
    clock.now += 700  # 3700 s after the save: expired, as if the admin browse never happened
    assert list(adapter.iter_sessions()) == []
    assert adapter.load_session("s1") is None


def test_expired_sessions_are_absent(adapter: SessionStore, clock: Any) -> None:
    adapter.save_session(Session("old"))
    clock.now += 3601
    assert adapter.has_session("old") is False
    assert adapter.load_session("old", "default") == "default"


def test_delete_old_sessions_deletes_only_idle_ones(adapter: SessionStore, clock: Any) -> None:
    adapter.save_session(Session("idle"))
    clock.now += 20 * 60
    adapter.save_session(Session("recent"))
    clock.now += 5 * 60
    adapter.save_session(Session("fresh"))
    assert adapter.delete_old_sessions(10) == 1
    assert sorted(sid for sid, _ in adapter.iter_sessions()) == ["fresh", "recent"]
    assert adapter.delete_old_sessions(1) == 1  # "recent" has been idle 5 minutes
    assert [sid for sid, _ in adapter.iter_sessions()] == ["fresh"]
    with pytest.raises(ValueError, match="minutes"):
        adapter.delete_old_sessions(-1)


def test_a_loaded_session_counts_as_used(adapter: SessionStore, clock: Any) -> None:
    adapter.save_session(Session("s1"))
    clock.now += 20 * 60
    assert adapter.load_session("s1") is not None  # a read refreshes the last access
    clock.now += 60
    assert adapter.delete_old_sessions(10) == 0
    assert adapter.has_session("s1")


def test_setup_creates_and_then_keeps_the_store(tmp_path: Any) -> None:
    path = tmp_path / "sessions"
    store = DirectorySessionStore(path)
    assert not path.exists()  # nothing is created before it is used
    store.setup()
    assert (path / "lockstore.json").is_file()
    assert os.stat(path).st_mode & 0o777 == 0o700
    store.save_session(Session("kept", n=1))
    store.close()
    again = DirectorySessionStore(path)
    again.setup()  # the set-up program run twice: sessions are kept, nobody is logged out
    assert again.load_session("kept") == Session("kept", n=1)
    again.close()


def test_setup_with_other_settings_raises(tmp_path: Any) -> None:
    DirectorySessionStore(tmp_path / "s", backend="lmdb").setup()
    store = DirectorySessionStore(tmp_path / "s", backend="shelve")
    with pytest.raises(lockstore.StoreMismatch):
        store.setup()


def test_file_stores_refuse_the_memory_backend(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="backend"):
        DirectorySessionStore(tmp_path / "s", backend="memory")


def test_constructors_keep_the_old_attribute_names(tmp_path: Any) -> None:
    shelf = ShelveSessionStore(str(tmp_path / "sessions.db"))
    assert shelf.filename == str(tmp_path / "sessions.db")
    directory = DirectorySessionStore(tmp_path / "dir")
    assert directory.directory == str(tmp_path / "dir")
    shelf.save_session(Session("s1"))
    assert shelf.store.backend == "shelve"
    assert directory.store.backend == "lmdb"
    shelf.close()
    directory.close()


# -- the flags are honest per backend ---------------------------------------------------------------


def test_flags_per_class() -> None:
    assert (SessionStore.is_multiprocess_safe, SessionStore.is_thread_safe) == (False, False)
    assert (ShelveSessionStore.is_multiprocess_safe, ShelveSessionStore.is_thread_safe) == (True, True)
    assert (DirectorySessionStore.is_multiprocess_safe, DirectorySessionStore.is_thread_safe) == (True, True)
    assert (VolatileSessionStore.is_multiprocess_safe, VolatileSessionStore.is_thread_safe) == (False, True)


@pytest.mark.parametrize(
    ("backend", "multiprocess"),
    [("lmdb", True), ("shelve", True), ("memory", False), ("redis", True), ("postgres", True)],
)
def test_flags_of_a_wrapped_store_follow_its_backend(
    request: pytest.FixtureRequest, tmp_path: Any, backend: str, multiprocess: bool
) -> None:
    with open_store(request, backend, str(tmp_path / "s")) as store:
        adapter = SessionStore(store)
        assert adapter.is_multiprocess_safe is multiprocess
        assert adapter.is_thread_safe is True


def _save_in_child(store: SessionStore) -> None:
    store.save_session(Session("from-child"))
    os._exit(0 if store.has_session("from-child") else 1)


def test_volatile_store_is_not_shared_between_processes() -> None:
    """Why is_multiprocess_safe is False for memory: a second process has its own sessions."""
    store = VolatileSessionStore()
    store.save_session(Session("from-parent"))
    assert _run(mp.get_context("fork"), _save_in_child, [(store,)]) == [0]
    assert store.has_session("from-parent")
    assert not store.has_session("from-child")  # the child's save never reached this process
    store.close()


@pytest.mark.parametrize("kind", ["volatile", "directory", *REMOTE])
def test_thread_safe_flag_holds(request: pytest.FixtureRequest, tmp_path: Any, kind: str) -> None:
    if kind in REMOTE:
        store: SessionStore = SessionStore(open_store(request, kind, str(tmp_path / "r"), **PICKLED))
    else:
        store = VolatileSessionStore() if kind == "volatile" else DirectorySessionStore(tmp_path / "d")
    assert store.is_thread_safe

    def work(t: int) -> None:
        for i in range(100):
            store.save_session(Session(f"t{t}-{i}", n=i))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(dict(store.iter_sessions())) == 400
    store.close()


# -- two processes lose no update ----------------------------------------------------------------


def _worker(kind: str, path: str, options: dict[str, Any], name: str, rounds: int, barrier: Any) -> None:
    if kind == "shelve":
        store: SessionStore = ShelveSessionStore(path)
    elif kind == "directory":
        store = DirectorySessionStore(path)
    else:
        store = SessionStore(lockstore.open(path, **options, **PICKLED))
    sids = [f"{name}-{i}" for i in range(4)]
    barrier.wait(30)
    for r in range(rounds):
        sid = sids[r % len(sids)]
        session: Any = store.load_session(sid) or Session(sid, n=0)
        session.n += 1
        store.save_session(session)
        if r % 20 == 0:
            store.save_session(Session("shared", last=name))  # both write one session too
            assert dict(store.iter_sessions())  # and browse while the other one writes
    store.close()


@pytest.mark.parametrize("kind", ["directory", "shelve", *REMOTE])
def test_two_processes_lose_no_update(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> None:
    """The old shelve store was "not thread safe or multiprocess safe": two writers lost sessions.

    One shard on the embedded backends, so both processes write into the same files at the same time.
    """
    path = str(tmp_path / "s")
    if kind in REMOTE:
        with open_store(request, kind, path, **PICKLED) as created:
            path, options = target(request, created, path)
    else:
        options = {"backend": "shelve" if kind == "shelve" else "lmdb"}
        lockstore.open(path, shards=1, **options).close()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    rounds = 1000
    args = [(kind, path, options, name, rounds, barrier) for name in ("a", "b")]
    assert _run(ctx, _worker, args) == [0, 0]
    store = SessionStore(lockstore.open(path, **options, **({} if "backend" in options else PICKLED)))
    sessions = dict(store.iter_sessions())
    assert sorted(sessions) == sorted([f"{n}-{i}" for n in "ab" for i in range(4)] + ["shared"])
    assert {sid: s.n for sid, s in sessions.items() if sid != "shared"} == {
        f"{n}-{i}": rounds // 4 for n in "ab" for i in range(4)
    }
    assert sessions["shared"].last in ("a", "b")
    assert store.store.verify() == []
    store.close()
