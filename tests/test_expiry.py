"""Expiry with a clock the tests move: absent everywhere once idle past max_age; clean on write."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

import lockstore
from lockstore.ids import shard_of


def test_expired_is_absent_everywhere(make_store: Any, backend: str, clock: Any) -> None:
    store = make_store(backend, max_age=100, clock=clock, clean_interval=0)
    store["old"] = {"v": 1}
    store["new"] = {"v": 2}
    clock.now += 60
    assert store["new"] == {"v": 2}  # a read refreshes last access (touch_interval 60 passed)
    clock.now += 60  # old: idle 120 > 100; new: idle 60
    assert "old" not in store
    assert store.get("old") is None
    with pytest.raises(KeyError):
        store["old"]
    assert list(store) == ["new"]
    assert len(store) == 1
    assert store.record("old") is None
    assert not store.touch("old")
    with pytest.raises(KeyError), store.edit("old", create=False):
        pass
    with store.edit("old") as session:  # an expired id starts a fresh session
        assert session == {}
    stats = store.stats()
    assert (stats["live"], stats["expired"]) == (1, 1)
    assert [sid for sid, _ in store.records(expired=True)] == ["old"]
    assert store.clean() == 1
    assert store.stats()["expired"] == 0
    assert store["new"] == {"v": 2}


def test_touch_interval_limits_writes(make_store: Any, backend: str, clock: Any) -> None:
    store = make_store(backend, max_age=1000, touch_interval=60, clock=clock)
    store["s"] = {"v": 1}
    t0 = store.record("s").last_access
    clock.now += 30
    assert store["s"] == {"v": 1}
    assert store.record("s").last_access == t0  # younger than touch_interval: not rewritten
    clock.now += 40
    assert store["s"] == {"v": 1}
    assert store.record("s").last_access == pytest.approx(clock.now)
    clock.now += 100
    assert store.touch("s")
    assert store.record("s").last_access == pytest.approx(clock.now)


def _fill(store: Any, n: int, prefix: str = "s") -> list[str]:
    sids = [f"{prefix}{i}" for i in range(n)]
    for sid in sids:
        store[sid] = {"sid": sid}
    return sids


def test_clean_on_write_only_the_written_shard_after_interval(make_store: Any, backend: str, clock: Any) -> None:
    store = make_store(backend, shards=4, max_age=100, clean_interval=300, clock=clock)
    sids = _fill(store, 80)  # the first write into each shard cleans it (never cleaned before)
    shard = shard_of("a", 4)
    in_shard = sum(1 for sid in sids if shard_of(sid, 4) == shard)

    def expired() -> dict[int, int]:
        return {s["shard"]: s["expired"] for s in store.stats()["per_shard"]}

    clock.now += 200  # every session expired, but the clean interval has not passed
    store["a"] = {"v": 1}
    assert expired()[shard] == in_shard  # no sweep before the interval
    clock.now += 200  # now it has
    b = next(sid for sid in (f"b{i}" for i in range(1000)) if shard_of(sid, 4) == shard)
    store[b] = {"v": 2}
    after = expired()
    assert after[shard] == 0  # the written shard was swept ("a", idle 200 s, with it)
    assert all(after[s] == sum(1 for sid in sids if shard_of(sid, 4) == s) for s in range(4) if s != shard)
    swept_at = {s["shard"]: s["last_clean"] for s in store.stats()["per_shard"]}
    clock.now += 150  # b is expired now, but the next sweep is not due yet
    c = next(sid for sid in (f"c{i}" for i in range(1000)) if shard_of(sid, 4) == shard)
    store[c] = {"v": 3}
    assert expired()[shard] == 1
    assert {s["shard"]: s["last_clean"] for s in store.stats()["per_shard"]} == swept_at
    assert store.clean() == 80 - in_shard + 1
    assert list(store) == [c]


def test_clean_on_write_is_bounded(make_store: Any, backend: str, clock: Any) -> None:
    store = make_store(backend, shards=1, max_age=100, clean_interval=300, clean_limit=50, clock=clock)
    _fill(store, 400)
    clock.now += 400  # every session expired, and the clean interval has passed
    store["trigger"] = {"v": 1}
    assert store.stats()["expired"] == 350  # one write removed at most clean_limit sessions
    store["second"] = {"v": 1}
    assert store.stats()["expired"] == 350  # and the next write, inside the interval, pays nothing
    assert store.clean() == 350
    assert len(store) == 2


def test_live_sessions_are_never_swept(make_store: Any, backend: str, clock: Any) -> None:
    store = make_store(backend, shards=2, max_age=100, clean_interval=1, touch_interval=0, clock=clock)
    live = _fill(store, 30, "live")
    for _ in range(10):
        _fill(store, 10, f"dead{_}-")
        clock.now += 50
        for sid in live:
            assert store[sid] == {"sid": sid}  # reads keep them alive (touch_interval 0)
    clock.now += 60  # every dead batch is now idle over 100 s, every live session 60 s
    store.clean()
    assert store.stats()["expired"] == 0
    assert sorted(store) == sorted(live)
    for sid in live:
        assert store[sid] == {"sid": sid}


def test_real_time_expiry(tmp_path: Any) -> None:
    with lockstore.open(tmp_path / "s", max_age=0.5, touch_interval=0) as store:
        store["a"] = 1
        assert store["a"] == 1
        time.sleep(0.7)
        assert "a" not in store


def test_clean_max_idle_removes_idle_sessions_only(make_store: Any, any_backend: str) -> None:
    store = make_store(any_backend, max_age=1000)
    now = store.clock()
    store.put_record("idle", {"v": 1}, created=now - 500, last_access=now - 400)
    store.put_record("busy", {"v": 2}, created=now - 500, last_access=now - 10)
    assert store.clean(max_idle=300) == 1
    assert sorted(store) == ["busy"]
    assert store.clean(max_idle=300) == 0


@pytest.mark.parametrize(("file_backend_", "count"), [("lmdb", 100_000), ("shelve", 10_000)])
def test_lock_files_stay_bounded(tmp_path: Any, clock: Any, file_backend_: str, count: int) -> None:
    with lockstore.open(tmp_path / "s", backend=file_backend_, shards=8, max_age=10, clock=clock) as store:
        for i in range(count):
            store[f"s{i}"] = i
        clock.now += 100
        assert store.clean() == count
        assert len(store) == 0
    names = os.listdir(tmp_path / "s")
    assert sorted(n for n in names if n.startswith("lock-")) == [f"lock-{i:03d}" for i in range(8)]
    assert len(names) <= 8 + 3  # lock files, metadata, engine directory (and LMDB's grow lock)
