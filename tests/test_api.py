"""Issue 10, "Python API and typing": pop and setdefault are atomic across processes, bool() does not
count, open() takes only the options it knows and says what they are."""

from __future__ import annotations

import inspect
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from conftest import open_store
from procs import run_all

import lockstore

WORKERS = 4


def _pop_worker(target: dict[str, Any], sid: str, barrier: Any, results: Any) -> None:
    store = lockstore.open(target["path"], **target["options"])
    barrier.wait(30)
    results.put(store.pop(sid, None))
    store.close()


def _setdefault_worker(target: dict[str, Any], sid: str, me: int, barrier: Any, results: Any) -> None:
    store = lockstore.open(target["path"], **target["options"])
    barrier.wait(30)
    results.put(store.setdefault(sid, {"owner": me}))
    store.close()


def _target(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> dict[str, Any]:
    store = open_store(request, backend, str(tmp_path / "s"), codec="json")
    store.close()
    if backend == "redis":
        return {"path": request.getfixturevalue("redis_server"), "options": {"prefix": store.prefix}}  # type: ignore[attr-defined]
    if backend == "postgres":
        return {"path": request.getfixturevalue("postgres_server"), "options": {"table": store.table}}  # type: ignore[attr-defined]
    return {"path": str(tmp_path / "s"), "options": {}}


@pytest.fixture(params=["lmdb", "shelve", "redis", "postgres"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """A store that several processes open: its path (or URL) and options."""
    return _target(request, request.param, tmp_path)


def test_pop_gives_a_session_to_one_process_only(shared: dict[str, Any]) -> None:
    ctx = multiprocessing.get_context("spawn")
    for round_ in range(3):
        sid = f"prize{round_}"
        with lockstore.open(shared["path"], **shared["options"]) as store:
            store[sid] = {"round": round_}
        barrier, results = ctx.Barrier(WORKERS), ctx.Queue()
        procs = [ctx.Process(target=_pop_worker, args=(shared, sid, barrier, results)) for _ in range(WORKERS)]
        assert run_all(procs) == [0] * WORKERS
        got = [results.get(timeout=10) for _ in range(WORKERS)]
        assert sorted(got, key=repr) == sorted([None] * (WORKERS - 1) + [{"round": round_}], key=repr)


def test_setdefault_stores_one_default_that_every_process_sees(shared: dict[str, Any]) -> None:
    ctx = multiprocessing.get_context("spawn")
    for round_ in range(3):
        sid = f"seat{round_}"
        barrier, results = ctx.Barrier(WORKERS), ctx.Queue()
        procs = [
            ctx.Process(target=_setdefault_worker, args=(shared, sid, me, barrier, results)) for me in range(WORKERS)
        ]
        assert run_all(procs) == [0] * WORKERS
        got = [results.get(timeout=10) for _ in range(WORKERS)]
        assert len({g["owner"] for g in got}) == 1, got  # one default won, and every process got it
        with lockstore.open(shared["path"], **shared["options"]) as store:
            assert store[sid] == got[0]


def test_pop_and_setdefault_follow_dict(make_store: Any, any_backend: str) -> None:
    store = make_store(any_backend, codec="json")
    assert store.setdefault("a", [1]) == [1]
    assert store.setdefault("a", [2]) == [1]
    assert store.pop("a") == [1]
    assert store.pop("a", "gone") == "gone"
    with pytest.raises(KeyError):
        store.pop("a")
    with pytest.raises(TypeError):
        store.pop("a", 1, 2)


def test_bool_stops_at_the_first_live_session(make_store: Any, backend: str) -> None:
    store = make_store(backend, shards=64)
    assert not store
    store["x"] = 1
    scanned: list[int] = []
    engine = store._engine
    original = engine.scan_times

    def counting(shard: int) -> Any:
        scanned.append(shard)
        return original(shard)

    engine.scan_times = counting
    try:
        assert store
    finally:
        engine.scan_times = original
    assert scanned[-1] == lockstore.ids.shard_of("x", 64)  # stopped at the session's shard
    assert len(scanned) < 64 or scanned[-1] == 63


def test_open_takes_only_known_options_and_documents_each() -> None:
    params = inspect.signature(lockstore.open).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    doc = inspect.getdoc(lockstore.open) or ""
    for name in params:
        if name != "path":
            assert f"\n{name}" in doc, f"help(lockstore.open) does not describe {name}"
    with pytest.raises(TypeError, match="unexpected keyword"):
        lockstore.open("/nonexistent", maxage=5)  # type: ignore[call-overload]


def test_an_unknown_url_scheme_is_an_error_and_creates_nothing(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="unknown store URL scheme 'x'"):
        lockstore.open("x://y")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [float("nan"), -1, "10", True])
def test_clean_refuses_a_max_idle_that_is_not_a_time(make_store: Any, any_backend: str, bad: Any) -> None:
    store = make_store(any_backend)
    store["keep"] = 1
    with pytest.raises(ValueError, match="max_idle"):
        store.clean(max_idle=bad)
    assert store["keep"] == 1


@pytest.mark.parametrize(("old", "new"), [("redis", "open_redis"), ("postgres", "open_postgres")])
def test_the_remote_stores_old_import_path_still_works_with_a_warning(old: str, new: str) -> None:
    import importlib
    import sys

    sys.modules.pop(f"lockstore.backends.{old}", None)
    with pytest.warns(DeprecationWarning, match=f"lockstore.remote.{old}"):
        shim = importlib.import_module(f"lockstore.backends.{old}")
    assert getattr(shim, new) is getattr(importlib.import_module(f"lockstore.remote.{old}"), new)


def test_the_stripes_old_import_path_still_works_with_a_warning() -> None:
    import importlib
    import sys

    from lockstore.web.stripes import StripeLocks

    sys.modules.pop("lockstore.stripes", None)
    with pytest.warns(DeprecationWarning, match="lockstore.web.stripes"):
        shim = importlib.import_module("lockstore.stripes")
    assert shim.StripeLocks is StripeLocks
