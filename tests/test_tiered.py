"""The memory tier (Webware's SessionDynamicStore) over a shelve store."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import threading
from typing import Any

import pytest

import lockstore
from lockstore.tiered import TieredStore, tiered

MAX_AGE = 3600
MEMORY_TIMEOUT = 900


@pytest.fixture
def path(tmp_path: Any) -> str:
    return str(tmp_path / "s")


@pytest.fixture
def store(path: str, clock: Any) -> Any:
    with lockstore.open(path, backend="shelve", clock=clock, max_age=MAX_AGE) as store:
        yield store


@pytest.fixture
def tier(store: Any) -> Any:
    tier = tiered(store, single_process=True, memory_timeout=MEMORY_TIMEOUT, sweep_interval=60)
    yield tier
    tier.close()


# -- it refuses what it cannot do safely --------------------------------------------------------


def test_refuses_without_the_single_process_declaration(store: Any) -> None:
    with pytest.raises(ValueError, match="single_process=True"):
        tiered(store)
    with pytest.raises(ValueError, match="single_process=True"):
        tiered(store, single_process=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["lmdb", "memory"])
def test_refuses_backends_it_does_not_speed_up(tmp_path: Any, backend: str) -> None:
    with lockstore.open(tmp_path / backend, backend=backend) as store, pytest.raises(ValueError, match="buys nothing"):
        tiered(store, single_process=True)


@pytest.mark.parametrize(
    "options",
    [{"max_memory_sessions": 0}, {"max_memory_sessions": 1.5}, {"memory_timeout": -1}, {"sweep_interval": "60"}],
)
def test_rejects_bad_options(store: Any, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        tiered(store, single_process=True, **options)


def test_cannot_be_used_in_a_forked_child(tier: TieredStore) -> None:
    tier["parent"] = {"n": 1}

    def child() -> None:
        try:
            tier["parent"]
        except lockstore.LockstoreError as exc:
            os._exit(0 if "forked child" in str(exc) else 2)
        os._exit(1)

    proc = mp.get_context("fork").Process(target=child)
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    assert tier["parent"] == {"n": 1}  # the parent's tier is untouched


# -- the dict API ---------------------------------------------------------------------------------


def test_full_dict_api(tier: TieredStore, store: Any) -> None:
    store["on-disk"] = {"d": 1}  # already in the persistent store
    tier["a"] = {"n": 1}
    tier.update({"b": 2}, c=[3])
    assert tier["a"] == {"n": 1}
    assert tier["on-disk"] == {"d": 1}
    assert "b" in tier and "on-disk" in tier and "zzz" not in tier
    assert sorted(tier) == ["a", "b", "c", "on-disk"]
    assert sorted(tier.keys()) == ["a", "b", "c", "on-disk"]
    assert len(tier) == 4
    assert dict(tier.items())["c"] == [3]
    assert tier.get("zzz", "default") == "default"
    assert tier.setdefault("b", 99) == 2
    assert tier.setdefault("d", 4) == 4
    assert tier.pop("d") == 4
    assert tier.pop("d", None) is None
    with pytest.raises(KeyError):
        tier.pop("d")
    del tier["on-disk"]
    assert "on-disk" not in store  # deleted from both tiers at once
    with pytest.raises(KeyError):
        del tier["on-disk"]
    with pytest.raises(KeyError):
        tier["on-disk"]
    tier.clear()
    assert len(tier) == 0
    assert len(store) == 0


def test_reads_are_fresh_copies(tier: TieredStore) -> None:
    tier["a"] = {"cart": [1]}
    value = tier["a"]
    value["cart"].append(2)
    assert tier["a"] == {"cart": [1]}


def test_invalid_ids_are_rejected(tier: TieredStore) -> None:
    with pytest.raises(lockstore.InvalidSessionId):
        tier["../x"] = 1
    with pytest.raises(lockstore.InvalidSessionId):
        tier["../x"]
    with pytest.raises(lockstore.InvalidSessionId):
        42 in tier  # noqa: B015


def test_values_are_checked_when_they_enter_memory(store: Any) -> None:
    tier = tiered(store, single_process=True, max_value_size=100)
    with pytest.raises(lockstore.EncodeError):
        tier["a"] = {"f": lambda: 1}
    with pytest.raises(lockstore.ValueTooLarge):
        tier["a"] = "x" * 200
    assert "a" not in tier
    tier.close()


def test_values_follow_the_store_codec(tmp_path: Any) -> None:
    with lockstore.open(tmp_path / "j", backend="shelve", codec="json") as store:
        tier = tiered(store, single_process=True)
        tier["a"] = {"t": (1, 2)}
        assert tier["a"] == {"t": [1, 2]}  # as the store itself would return it
        with pytest.raises(lockstore.EncodeError):
            tier["b"] = {1, 2}
        tier.close()


def test_edit_is_atomic_among_threads(tier: TieredStore) -> None:
    def work() -> None:
        for _ in range(200):
            with tier.edit("counter") as session:
                session["n"] = session.get("n", 0) + 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tier["counter"] == {"n": 800}


def test_edit_semantics(tier: TieredStore) -> None:
    with pytest.raises(KeyError), tier.edit("absent", create=False):
        pass
    with tier.edit("absent"):
        pass
    assert "absent" not in tier  # left empty: not created
    with pytest.raises(RuntimeError), tier.edit("a") as session:
        session["x"] = 1
        raise RuntimeError
    assert "a" not in tier  # discarded on exception
    tier["list"] = [1]
    with pytest.raises(TypeError, match="dict"), tier.edit("list"):
        pass


# -- the tiers: memory first, persistent store on sweep, on overflow, on close ------------------------


def test_writes_stay_in_memory_until_swept_or_closed(tier: TieredStore, store: Any) -> None:
    tier["a"] = {"n": 1}
    assert store.record("a") is None  # no disk write on the request path
    tier.store_all()
    assert store["a"] == {"n": 1}
    assert tier.stats()["memory"]["sessions"] == 1


def test_sweep_moves_idle_sessions_and_drops_one_shot_ones(tier: TieredStore, store: Any, clock: Any) -> None:
    tier["returning"] = {"n": 1}
    tier["crawler"] = {"n": 1}  # created and never read again
    clock.now += 10
    assert tier["returning"] == {"n": 1}  # the visitor came back
    clock.now += MEMORY_TIMEOUT + 1
    assert tier.sweep() == {"moved": 1, "dropped": 1, "memory": 0}
    # written with its last use in memory, not the time of the sweep
    assert store.record("returning") == lockstore.Record(
        {"n": 1}, clock.now - MEMORY_TIMEOUT - 11, clock.now - MEMORY_TIMEOUT - 1
    )
    assert "crawler" not in store
    assert "crawler" not in tier
    assert tier["returning"] == {"n": 1}  # read back from the persistent store


def test_sweep_keeps_recently_used_sessions(tier: TieredStore, store: Any, clock: Any) -> None:
    tier["old"] = 1
    tier["old"]
    clock.now += MEMORY_TIMEOUT - 100
    tier["recent"] = 2
    tier["recent"]
    clock.now += 101
    assert tier.sweep()["moved"] == 1
    assert "old" in store
    assert "recent" not in store


def test_sweep_runs_by_itself_every_sweep_interval(tier: TieredStore, store: Any, clock: Any) -> None:
    tier["a"] = 1
    tier["a"]
    clock.now += MEMORY_TIMEOUT + 1
    assert "b" not in tier  # any operation runs the sweep that is due
    assert store["a"] == 1


def test_a_stored_session_overwritten_in_memory_is_never_dropped(tier: TieredStore, store: Any, clock: Any) -> None:
    store["user"] = {"v": 1}
    tier["user"] = {"v": 2}  # written once through the tier, never read: yet not a one-shot session
    clock.now += MEMORY_TIMEOUT + 1
    assert tier.sweep()["moved"] == 1
    assert store["user"] == {"v": 2}


def test_close_saves_everything_one_shot_included(store: Any, path: str, clock: Any) -> None:
    tier = tiered(store, single_process=True)
    tier["crawler"] = {"n": 1}
    tier["user"] = {"n": 2}
    tier.close()
    tier.close()  # idempotent
    with pytest.raises(lockstore.StoreClosed):
        tier["user"]
    with lockstore.open(path, clock=clock) as again:
        assert again["crawler"] == {"n": 1}
        assert again["user"] == {"n": 2}


def test_at_most_max_memory_sessions_in_memory(store: Any) -> None:
    tier = tiered(store, single_process=True, max_memory_sessions=3)
    for i in range(5):
        tier[f"s{i}"] = {"i": i}
    assert tier.stats()["memory"]["sessions"] == 3
    assert [sid for sid in ("s0", "s1") if store.record(sid)] == ["s0", "s1"]  # LRU written, never dropped
    assert tier["s0"] == {"i": 0}
    assert sorted(tier) == [f"s{i}" for i in range(5)]
    tier.close()


def test_expired_sessions_are_invisible_in_memory_too(store: Any, clock: Any) -> None:
    # no automatic sweep: the expired session is still held in memory
    tier = tiered(store, single_process=True, sweep_interval=MAX_AGE * 10)
    tier["a"] = {"n": 1}
    tier["a"]
    clock.now += MAX_AGE + 1
    assert "a" not in tier
    assert tier.record("a") is None
    assert list(tier) == []
    assert tier.clean() == 1  # it was still in memory
    assert tier.get("a") is None
    assert "a" not in store
    tier.close()


def test_read_only_sessions_keep_their_last_access(tier: TieredStore, store: Any, clock: Any) -> None:
    store["a"] = {"n": 1}
    for _ in range(4):  # read for longer than max_age, from memory only
        clock.now += MAX_AGE - 100
        assert tier["a"] == {"n": 1}
    tier.store_all()
    assert store.record("a").last_access == clock.now


def test_write_through(store: Any, clock: Any) -> None:
    tier = tiered(store, single_process=True, write_through=True)
    tier["a"] = {"n": 1}
    assert store["a"] == {"n": 1}  # on disk at once: a killed process loses nothing
    with tier.edit("a") as session:
        session["n"] = 2
    assert store["a"] == {"n": 2}
    tier.close()


def test_records_and_put_record(tier: TieredStore, store: Any, clock: Any) -> None:
    tier["a"] = {"n": 1}
    tier.put_record("b", {"n": 2}, created=clock.now - 50, last_access=clock.now - 10)
    assert tier.record("b") == lockstore.Record({"n": 2}, clock.now - 50, clock.now - 10)
    assert sorted(sid for sid, _ in tier.records()) == ["a", "b"]
    assert tier.verify() == []
    assert tier.touch("a") and not tier.touch("zzz")


# -- processes ---------------------------------------------------------------------------------------


EXIT_WITHOUT_CLOSE = """
import sys
import lockstore
from lockstore.tiered import tiered

tier = tiered(lockstore.open(sys.argv[1], backend="shelve"), single_process=True)
tier["left-in-memory"] = {"saved": "at exit"}
# no close(): the interpreter's exit saves the memory tier (Webware's storeAllSessions on shutdown)
"""


def test_interpreter_exit_saves_the_memory_tier(path: str) -> None:
    lockstore.open(path, backend="shelve").close()
    subprocess.run([sys.executable, "-c", EXIT_WITHOUT_CLOSE, path], check=True, timeout=60)
    with lockstore.open(path) as store:
        assert store["left-in-memory"] == {"saved": "at exit"}


def test_another_process_does_not_see_memory_only_sessions(tier: TieredStore, path: str, clock: Any) -> None:
    """The limit the single_process declaration is about, shown rather than claimed."""
    tier["hot"] = {"n": 1}
    with lockstore.open(path, clock=clock) as other:  # as another process would open it
        assert "hot" not in other
        tier.store_all()
        assert other["hot"] == {"n": 1}
