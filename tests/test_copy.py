"""``copy_store`` and ``put_record_if``: every live session and its times travel, and a re-run never
recreates a session the destination deleted nor overwrites one the application changed there (issue 9,
item 10); the journal that remembers what was copied is checked like any file another user could plant."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from servers import require_root

import lockstore
from lockstore.copy import JournalError, copy_store
from lockstore.errors import UnsafeStore
from lockstore.tiered import tiered

EMBEDDED = ["lmdb", "shelve", "memory"]


def sessions(now: float) -> dict[str, tuple[dict[str, object], float, float]]:
    """id -> (value, created, last_access): live ones of many ages, values every codec can carry."""
    out = {}
    for i in range(150):
        value = {"user": i, "name": f"u{i}", "cart": [i, i * 2, {"sku": "x" * (i % 7)}], "flag": i % 2 == 0}
        out[f"s{i:03d}-{lockstore.new_id()[:8]}"] = (value, now - 3000 - i, now - 10 * i)
    return out


@pytest.mark.servers
def test_copy_round_trip_keeps_sessions_and_times(tmp_path: Path, redis_server: str, postgres_server: str) -> None:
    now = time.time()
    want = sessions(now)
    lmdb = lockstore.open(str(tmp_path / "lmdb"))
    red = lockstore.open(redis_server, prefix=f"c{uuid.uuid4().hex[:10]}", codec="json", secret="r" * 32)
    pg = lockstore.open(postgres_server, table=f"c{uuid.uuid4().hex[:10]}", codec="msgpack")
    back = lockstore.open(str(tmp_path / "back"), codec="json")
    try:
        for sid, (value, created, atime) in want.items():
            lmdb.put_record(sid, value, created=created, last_access=atime)
        lmdb.put_record("expired", {"old": True}, created=now - 9000, last_access=now - 5000)

        calls: list[tuple[int, int]] = []
        done = copy_store(lmdb, red, journal=tmp_path / "j1", progress=lambda done, total: calls.append((done, total)))
        assert done.written == len(want)
        assert calls[-1] == (len(want), len(want))
        assert copy_store(red, pg, journal=tmp_path / "j2").written == len(want)
        assert copy_store(pg, back, journal=tmp_path / "j3").written == len(want)

        for store in (red, pg, back):
            got = {sid: (rec.value, rec.created, rec.last_access) for sid, rec in store.records()}
            assert got == want, store.backend
            assert "expired" not in store
        # Safe to re-run: nothing left to copy, nothing changed.
        again = copy_store(lmdb, red, journal=tmp_path / "j1")
        assert (again.written, again.unchanged) == (0, len(want))
        assert copy_store(back, lmdb, journal=tmp_path / "j4").skipped_present == len(want)
        assert {sid: rec.last_access for sid, rec in red.records()} == {s: w[2] for s, w in want.items()}
    finally:
        for store in (lmdb, red, pg, back):
            store.close()


@pytest.mark.servers
def test_rerun_never_overwrites_newer_sessions(tmp_path: Path, redis_server: str, postgres_server: str) -> None:
    red = lockstore.open(redis_server, prefix=f"c{uuid.uuid4().hex[:10]}")
    pg = lockstore.open(postgres_server, table=f"c{uuid.uuid4().hex[:10]}")
    journal = tmp_path / "journal.jsonl"
    try:
        now = time.time()
        red.put_record("a", {"v": "old"}, created=now - 100, last_access=now - 50)
        red.put_record("b", {"v": "old"}, created=now - 100, last_access=now - 50)
        red.put_record("c", {"v": "old"}, created=now - 100, last_access=now - 50)
        assert copy_store(red, pg, journal=journal).written == 3
        pg["a"] = {"v": "new in dst"}  # the application moved to pg and wrote there
        del pg["c"]  # and logged c out
        for sid in "abc":
            red.put_record(sid, {"v": "changed in src"}, created=now - 100, last_access=now - 10)
        result = copy_store(red, pg, journal=journal)
        assert (result.written, result.skipped_newer, result.skipped_deleted) == (1, 1, 1)
        assert pg["a"] == {"v": "new in dst"}
        assert pg["b"] == {"v": "changed in src"}
        assert "c" not in pg
    finally:
        red.close()
        pg.close()


# -- re-runs on the embedded stores ---------------------------------------------------------------


@pytest.fixture(params=EMBEDDED)
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """(src, dst): two stores of one embedded backend, closed at the end."""
    src = lockstore.open(tmp_path / "src", backend=request.param, max_age=3600)
    dst = lockstore.open(tmp_path / "dst", backend=request.param, max_age=3600)
    yield src, dst
    src.close()
    dst.close()


def test_a_rerun_does_not_recreate_a_session_deleted_in_dst(pair: Any, tmp_path: Path) -> None:
    src, dst = pair
    now = time.time()
    src.put_record("alice", {"user": "alice"}, created=now - 100, last_access=now - 60)
    src.put_record("bob", {"user": "bob"}, created=now - 100, last_access=now - 60)
    assert copy_store(src, dst, journal=tmp_path / "j").written == 2
    del dst["alice"]  # alice logs out on the new store
    result = copy_store(src, dst, journal=tmp_path / "j")
    assert "alice" not in dst
    assert (result.written, result.unchanged) == (0, 2)
    # even when the straggling old store still touches her session after the logout
    src.put_record("alice", {"user": "alice", "late": True}, created=now - 100, last_access=now - 1)
    result = copy_store(src, dst, journal=tmp_path / "j")
    assert "alice" not in dst
    assert (result.written, result.skipped_deleted) == (0, 1)


def test_a_rerun_does_not_overwrite_a_session_the_application_changed(pair: Any, tmp_path: Path) -> None:
    src, dst = pair
    now = time.time()
    src.put_record("alice", {"v": 1}, created=now - 100, last_access=now - 60)
    copy_store(src, dst, journal=tmp_path / "j")
    dst.put_record("alice", {"v": "app"}, created=now - 100, last_access=now - 30)  # the application wrote
    src.put_record("alice", {"v": "src"}, created=now - 100, last_access=now - 5)  # later, the old store too
    result = copy_store(src, dst, journal=tmp_path / "j")
    assert (result.written, result.skipped_newer) == (0, 1)
    assert dst["alice"] == {"v": "app"}


def test_a_rerun_updates_a_session_changed_in_src_only(pair: Any, tmp_path: Path) -> None:
    src, dst = pair
    now = time.time()
    src.put_record("alice", {"v": 1}, created=now - 100, last_access=now - 60)
    copy_store(src, dst, journal=tmp_path / "j")
    src.put_record("alice", {"v": 2}, created=now - 100, last_access=now - 5)
    result = copy_store(src, dst, journal=tmp_path / "j")
    assert result.written == 1
    assert dst.record("alice") == (({"v": 2}), now - 100, now - 5)
    lines = [json.loads(line) for line in (tmp_path / "j").read_text().splitlines()]
    assert lines == [{"id": "alice", "last_access": now - 60}, {"id": "alice", "last_access": now - 5}]


def test_a_first_copy_never_overwrites_a_live_session_in_dst(pair: Any, tmp_path: Path) -> None:
    src, dst = pair
    now = time.time()
    src.put_record("alice", {"v": "src"}, created=now - 100, last_access=now - 5)
    src.put_record("bob", {"v": "src"}, created=now - 100, last_access=now - 5)
    dst.put_record("alice", {"v": "dst"}, created=now - 100, last_access=now - 50)  # older, but the app's
    dst.put_record("bob", {"v": "dst, expired"}, created=now - 9000, last_access=now - 5000)
    result = copy_store(src, dst, journal=tmp_path / "j")
    assert (result.written, result.skipped_present) == (1, 1)
    assert dst["alice"] == {"v": "dst"}
    assert dst["bob"] == {"v": "src"}  # an expired session counts as absent


def test_copy_goes_on_past_a_source_record_that_does_not_decode(tmp_path: Path) -> None:
    with lockstore.open(tmp_path / "src", secret="s" * 32) as src:
        for sid in ("a", "b", "c"):
            src[sid] = {"sid": sid}
    # the same store read with another secret: every signature fails, as after tampering; one record is
    # then rewritten under that secret and is the only good one
    with (
        lockstore.open(tmp_path / "src", secret="t" * 32) as src,
        lockstore.open(tmp_path / "dst", codec="json") as dst,
    ):
        src["b"] = {"sid": "b", "again": True}
        result = copy_store(src, dst, journal=tmp_path / "j")
        assert result.written == 1
        assert sorted(sid for sid, _ in result.bad) == ["a", "c"]
        assert all("signature" in why for _, why in result.bad)
        assert dict(dst.items()) == {"b": {"sid": "b", "again": True}}


# -- put_record_if: the compare and the put are one step under the destination's lock ------------


def _write_when_told(path: str, backend: str, go: Any, done: Any) -> None:
    """A second process: the application writing alice into the destination when the copier says so."""
    with lockstore.open(path, backend=backend, max_age=3600) as store:
        if not go.wait(60):
            raise SystemExit(3)
        store["alice"] = {"v": "app, from another process"}
        done.set()


@pytest.mark.parametrize("backend", ["lmdb", "shelve"])
def test_put_record_if_never_overwrites_a_write_by_another_process(tmp_path: Path, backend: str) -> None:
    path = str(tmp_path / "dst")
    now = time.time()
    ctx = mp.get_context("spawn")
    go, done = ctx.Event(), ctx.Event()
    with lockstore.open(path, backend=backend, max_age=3600) as dst:
        dst.put_record("alice", {"v": "copied"}, created=now - 100, last_access=now - 60)
        writer = ctx.Process(target=_write_when_told, args=(path, backend, go, done))
        writer.start()
        try:
            seen = dst.record("alice")  # the copier's check ...
            assert seen is not None
            go.set()  # ... then the application writes, from another process ...
            assert done.wait(60)
            # ... then the copier's put: it compares again, under the lock, and writes nothing
            assert not dst.put_record_if(
                "alice", {"v": "stale"}, created=now - 100, last_access=now - 1, expect=seen.last_access
            )
            assert dst["alice"] == {"v": "app, from another process"}
            assert not dst.put_record_if("alice", {"v": "stale"}, created=now - 100, last_access=now - 1, expect=None)
            # and with what is there now, it writes
            current = dst.record("alice")
            assert current is not None
            assert dst.put_record_if(
                "alice", {"v": "new"}, created=now - 100, last_access=now, expect=current.last_access
            )
            assert dst["alice"] == {"v": "new"}
        finally:
            writer.join(60)
            if writer.is_alive():
                writer.kill()
        assert writer.exitcode == 0


def _increment(path: str, backend: str, start: Any, n: int) -> None:
    with lockstore.open(path, backend=backend, max_age=3600, touch_interval=0) as store:
        start.wait(60)
        for _ in range(n):
            with store.edit("counter") as session:
                session["n"] += 1
            time.sleep(0.001)  # room for the copier's puts between the increments


def _compare_and_put_loop(store: Any, stop: Any) -> int:
    """What a copier does, as fast as it can: read the session, put a copy of it back only if unchanged."""
    wrote = 0
    while not stop():
        rec = store.record("counter")
        stale = {"n": rec.value["n"]}
        time.sleep(0.0003)  # the window in which a non-atomic check-then-put loses an increment
        if store.put_record_if(
            "counter", stale, created=rec.created, last_access=rec.last_access + 1e-6, expect=rec.last_access
        ):
            wrote += 1
    return wrote


@pytest.mark.parametrize("backend", ["lmdb", "shelve"])
def test_put_record_if_loses_no_increment_of_other_processes(tmp_path: Path, backend: str) -> None:
    path = str(tmp_path / "dst")
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    n, workers = 150, 2
    with lockstore.open(path, backend=backend, max_age=3600) as store:
        store["counter"] = {"n": 0}
        procs = [ctx.Process(target=_increment, args=(path, backend, start, n)) for _ in range(workers)]
        try:
            for p in procs:
                p.start()
            start.set()
            deadline = time.monotonic() + 120
            wrote = _compare_and_put_loop(
                store, lambda: not any(p.is_alive() for p in procs) or time.monotonic() > deadline
            )
            for p in procs:
                p.join(10)
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join()
        assert [p.exitcode for p in procs] == [0] * workers
        assert store["counter"] == {"n": n * workers}
        assert wrote > 0  # the copier did write, between the increments


@pytest.mark.parametrize("kind", ["memory", "tiered"])
def test_put_record_if_loses_no_increment_of_other_threads(tmp_path: Path, kind: str) -> None:
    backend = "memory" if kind == "memory" else "shelve"
    store: Any = lockstore.open(tmp_path / "dst", backend=backend, max_age=3600, touch_interval=0)
    if kind == "tiered":
        store = tiered(store, single_process=True, write_through=False)
    n, workers = 300, 2
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads interleave within the copier's compare-and-put if they can
    try:
        store["counter"] = {"n": 0}

        def increment() -> None:
            for _ in range(n):
                with store.edit("counter") as session:
                    session["n"] += 1
                time.sleep(0.001)

        threads = [threading.Thread(target=increment) for _ in range(workers)]
        for t in threads:
            t.start()
        wrote = _compare_and_put_loop(store, lambda: not any(t.is_alive() for t in threads))
        for t in threads:
            t.join()
        assert store["counter"] == {"n": n * workers}
        assert wrote > 0
    finally:
        sys.setswitchinterval(switch)
        store.close()


def test_tiered_put_record_if_compares_with_the_memory_copy(tmp_path: Path) -> None:
    with lockstore.open(tmp_path / "s", backend="shelve", max_age=3600) as store:
        now = time.time()
        store.put_record("alice", {"v": "saved"}, created=now - 100, last_access=now - 60)
        tier = tiered(store, single_process=True)
        try:
            tier["alice"] = {"v": "in memory only"}  # newer than the persistent copy, not saved yet
            assert not tier.put_record_if("alice", {"v": "x"}, created=now, last_access=now, expect=now - 60)
            assert not tier.put_record_if("alice", {"v": "x"}, created=now, last_access=now, expect=None)
            assert tier["alice"] == {"v": "in memory only"}
            held = tier.record("alice")
            assert held is not None
            assert tier.put_record_if("alice", {"v": "x"}, created=now, last_access=now + 1, expect=held.last_access)
            assert tier["alice"] == {"v": "x"}
            assert tier.persistent.record("alice").value == {"v": "x"}
            assert tier.put_record_if("bob", {"v": "b"}, created=now, last_access=now, expect=None)
            assert tier.persistent["bob"] == {"v": "b"}
        finally:
            tier.close()


# -- the journal is untrusted input --------------------------------------------------------------


@pytest.fixture
def stores(tmp_path: Path) -> Any:
    """(src with two sessions, empty dst)."""
    now = time.time()
    src = lockstore.open(tmp_path / "src")
    dst = lockstore.open(tmp_path / "dst")
    src.put_record("alice", {"v": 1}, created=now - 100, last_access=now - 60)
    src.put_record("bob", {"v": 2}, created=now - 100, last_access=now - 60)
    yield src, dst
    src.close()
    dst.close()


def test_a_new_journal_is_created_0600_whatever_the_umask(stores: Any, tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        copy_store(*stores, journal=tmp_path / "j")
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "j").st_mode & 0o777) == 0o600


def test_a_symlinked_journal_is_refused(stores: Any, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    os.symlink(target, tmp_path / "j")
    with pytest.raises(UnsafeStore, match="symbolic link"):
        copy_store(*stores, journal=tmp_path / "j")
    os.symlink(tmp_path / "missing", tmp_path / "dangling")  # not created through a dangling link either
    with pytest.raises(UnsafeStore, match="symbolic link"):
        copy_store(*stores, journal=tmp_path / "dangling")
    assert not (tmp_path / "missing").exists()
    assert target.read_text() == ""
    assert len(stores[1]) == 0


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_a_journal_others_can_write_is_refused(stores: Any, tmp_path: Path, mode: int) -> None:
    journal = tmp_path / "j"
    journal.write_text("")
    os.chmod(journal, mode)
    with pytest.raises(UnsafeStore, match="writable by group or others"):
        copy_store(*stores, journal=journal)
    assert len(stores[1]) == 0
    assert journal.read_text() == ""


def test_a_journal_that_is_not_a_file_is_refused(stores: Any, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo", 0o600)
    with pytest.raises(UnsafeStore, match="not a regular file"):
        copy_store(*stores, journal=tmp_path / "fifo")


def test_a_journal_of_another_user_is_refused(stores: Any, tmp_path: Path) -> None:
    require_root("give a file to another user")
    journal = tmp_path / "j"
    journal.write_text("")
    os.chmod(journal, 0o600)
    os.chown(journal, 65534, 65534)
    with pytest.raises(UnsafeStore, match="owned by uid 65534"):
        copy_store(*stores, journal=journal)
    assert len(stores[1]) == 0


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[]",
        b'{"id": "carol"}',
        b'{"id": "carol", "last_access": 1.0, "extra": 1}',
        b'{"id": 5, "last_access": 1.0}',
        b'{"id": "../etc", "last_access": 1.0}',
        b'{"id": "carol", "last_access": "1.0"}',
        b'{"id": "carol", "last_access": true}',
        b'{"id": "carol", "last_access": NaN}',
        b'{"id": "carol", "last_access": Infinity}',
        b'{"id": "carol", "last_access": 1e999}',
        b'{"id": "carol", "last_access": 1' + b"0" * 400 + b"}",
        b'{"id": "carol", "last_access": 1.0}' + b" " * 2000,
        b'{"id": "\xff", "last_access": 1.0}',
        b"[" * 500 + b"]" * 500,
        b"",
    ],
)
def test_a_journal_line_that_does_not_parse_stops_the_copy_first(stores: Any, tmp_path: Path, line: bytes) -> None:
    journal = tmp_path / "j"
    content = b'{"id": "dave", "last_access": 1.0}\n' + line + b"\n"
    journal.write_bytes(content)
    os.chmod(journal, 0o600)
    with pytest.raises(JournalError, match=rf"^{re.escape(str(journal))}, line 2: "):
        copy_store(*stores, journal=journal)
    assert len(stores[1]) == 0
    assert journal.read_bytes() == content


def test_a_torn_last_journal_line_is_an_error(stores: Any, tmp_path: Path) -> None:
    journal = tmp_path / "j"
    journal.write_bytes(b'{"id": "dave", "last_access": 1.0}\n{"id": "al')
    os.chmod(journal, 0o600)
    with pytest.raises(JournalError, match=rf"^{re.escape(str(journal))}, line 2: the last line is incomplete"):
        copy_store(*stores, journal=journal)
    assert len(stores[1]) == 0


def test_one_copy_at_a_time_per_journal(stores: Any, tmp_path: Path) -> None:
    from lockstore.copy import Journal

    with Journal(tmp_path / "j"), pytest.raises(JournalError, match="in use by another lockstore copy"):
        copy_store(*stores, journal=tmp_path / "j")
    assert len(stores[1]) == 0
