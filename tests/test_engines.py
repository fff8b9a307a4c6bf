"""Engine-specific hazards: LMDB map growth across processes and dead readers; dbm.dumb crash recovery."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from pathlib import Path
from typing import Any

import lmdb
import pytest
from procs import run_all

import lockstore
from lockstore.backends.dumb import DumbShard

ctx = mp.get_context("fork")


def _fill(path: str, who: int, n: int) -> None:
    with lockstore.open(path) as store:
        for i in range(n):
            store[f"p{who}-{i}"] = {"pad": os.urandom(2000).hex()}


def test_lmdb_map_grows_safely_from_two_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    lockstore.open(path, map_size=1 << 20).close()  # 1 MiB: far too small for what follows
    procs = [ctx.Process(target=_fill, args=(path, who, 600)) for who in range(2)]
    assert run_all(procs) == [0, 0]
    with lockstore.open(path) as store:
        assert len(store) == 1200
        assert store.verify() == []
        env_size = os.path.getsize(tmp_path / "s" / "lmdb" / "data.mdb")
        assert env_size > 2 << 20


def _reader_killed(path: str, ready: Any) -> None:
    env = lmdb.open(path, max_readers=1024, subdir=True, lock=True, max_dbs=4)
    txn = env.begin()  # a reader slot, held until the kill
    txn.get(b"x")
    ready.set()
    signal.pause()


def test_dead_readers_do_not_fill_the_reader_table(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with lockstore.open(path) as store:
        store["a"] = 1
    for _ in range(10):  # ANCHORS T9: 200 readers killed mid-transaction, 20 at a time
        batch = [(ctx.Event(), None) for _ in range(20)]
        procs = []
        try:
            for ready, _ in batch:
                p = ctx.Process(target=_reader_killed, args=(os.path.join(path, "lmdb"), ready))
                p.start()
                procs.append(p)
            for (ready, _), p in zip(batch, procs, strict=True):
                assert ready.wait(30)
                os.kill(p.pid, signal.SIGKILL)
        finally:  # a reader that was not killed above would wait in signal.pause() for ever
            for p in procs:
                if p.is_alive():
                    p.kill()
                p.join()
    with lockstore.open(path) as store:  # reader_check on open frees the dead slots
        assert store["a"] == 1
        env = store._engine._env().env  # type: ignore[attr-defined]
        rows = [line.split() for line in env.readers().splitlines()[1:] if line.strip()]
        assert all(int(row[0]) == os.getpid() for row in rows), env.readers()


def test_dumb_shard_survives_a_torn_index_line(tmp_path: Path) -> None:
    base = str(tmp_path / "shard")
    db = DumbShard(base, durable=False, file_mode=0o600)
    db.refresh()
    db[b"a"] = b"one"
    db[b"b"] = b"two"
    with open(base + ".dir", "ab") as f:
        f.write(b"'c', (0, ")  # a writer killed in the middle of its index line: never acknowledged
    other = DumbShard(base, durable=False, file_mode=0o600)
    other.refresh()
    assert dict(other.items()) == {b"a": b"one", b"b": b"two"}
    other[b"c"] = b"three"
    db.refresh()
    assert db[b"c"] == b"three"
    import dbm.dumb

    with dbm.dumb.open(base, "r") as plain:  # the files stay readable by the standard dbm.dumb
        assert plain[b"a"] == b"one" and plain[b"c"] == b"three"


def test_dumb_shard_recovers_a_half_done_compaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = str(tmp_path / "shard")
    db = DumbShard(base, durable=False, file_mode=0o600)
    db.refresh()
    for i in range(50):
        db[b"k%d" % i] = b"v%d" % i
    for i in range(50):
        db[b"k%d" % i] = b"w%d" % i  # every old value is dead now
    expected = {b"k%d" % i: b"w%d" % i for i in range(50)}
    # killed after writing the new files and the marker, before swapping: the old pair stands
    with open(base + ".dat.new", "wb") as f:
        f.write(b"garbage")
    with open(base + ".dir.new", "wb") as f:
        f.write(b"'k0', (0, 7)\n")
    open(base + ".compacting", "wb").close()
    os.utime(base + ".dat", None)
    fresh = DumbShard(base, durable=False, file_mode=0o600)
    fresh.refresh()
    assert dict(fresh.items()) == expected
    assert not os.path.exists(base + ".compacting")
    # a compaction killed between its two renames (.dat swapped, .dir not): the next user finishes it
    real_replace = os.replace
    calls: list[str] = []

    def dies_after_first(src: str, dst: str) -> None:
        real_replace(src, dst)
        calls.append(src)
        if len(calls) == 1:
            raise SystemExit("killed")

    monkeypatch.setattr(os, "replace", dies_after_first)
    with pytest.raises(SystemExit):
        fresh.compact()
    monkeypatch.undo()
    assert os.path.exists(base + ".compacting") and os.path.exists(base + ".dir.new")
    db2 = DumbShard(base, durable=False, file_mode=0o600)
    db2.refresh()
    assert dict(db2.items()) == expected
    assert not os.path.exists(base + ".compacting")
    assert os.path.getsize(base + ".dat") < 200  # compacted: only the live values remain


def test_shelve_values_survive_compaction(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with lockstore.open(path, backend="shelve", shards=1) as store:
        for round_ in range(3):
            for i in range(200):
                store[f"s{i}"] = {"round": round_, "pad": "x" * 3000}
        assert os.path.getsize(path / "shelve" / "shard-000.dat") > 1_500_000
        assert store.clean() == 0  # nothing expired, but two thirds of the values file is dead: compacted
        assert os.path.getsize(path / "shelve" / "shard-000.dat") < 800_000
    with lockstore.open(path) as store:
        assert len(store) == 200
        assert all(store[f"s{i}"]["round"] == 2 for i in range(200))


def test_dumb_shards_in_two_processes_follow_each_others_index_rewrites(tmp_path: Path) -> None:
    """Deletions replace the index file; the other side must never read a replaced index as its own
    (a freed inode number comes back quickly: only a descriptor held open pins it)."""
    import random

    base = str(tmp_path / "shard")
    a = DumbShard(base, durable=False, file_mode=0o600)
    b = DumbShard(base, durable=False, file_mode=0o600)
    model: dict[bytes, bytes] = {}
    rng = random.Random(5)
    for step in range(400):
        writer = a if rng.random() < 0.5 else b
        writer.refresh()
        key = b"k%d" % rng.randrange(12)
        if rng.random() < 0.4 and key in model:
            del writer[key]
            del model[key]
        else:
            model[key] = b"v%d" % step
            writer[key] = model[key]
        reader = b if writer is a else a
        reader.refresh()
        assert dict(reader.items()) == model, step


def _count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every ``os.fsync`` from now on, as the path of the file synced (what the dbm.dumb shards call)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def _writes(store: lockstore.BaseStore) -> dict[str, Any]:
    def edit() -> None:
        with store.edit("a") as session:
            session["n"] += 1

    return {
        "set": lambda: store.__setitem__("a", {"n": 1}),
        "edit": edit,
        "delete": lambda: store.__delitem__("a"),
        "set again": lambda: store.__setitem__("b", {"n": 3}),
    }


@pytest.mark.parametrize("durability", ["system", "process"])
def test_shelve_system_durability_syncs_every_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: str
) -> None:
    """durability="system": every write of a shelve store fsyncs the files it touched before it returns
    ("process": none does). dbm.dumb, the shards lockstore writes itself, is always there to count."""
    synced = _count_fsyncs(monkeypatch)
    with lockstore.open(tmp_path / "s", backend="shelve", dbm="dbm.dumb", durability=durability) as store:
        shards = str(tmp_path / "s" / "shelve")
        for name, write in _writes(store).items():
            before = len(synced)
            write()
            paths = synced[before:]
            if durability == "process":
                assert paths == [], name
                continue
            assert paths and all(path.startswith(shards + os.sep) for path in paths), (name, paths)
            if name != "delete":  # the value, then its index line
                assert {os.path.splitext(path)[1] for path in paths} == {".dat", ".dir"}, (name, paths)
        assert dict(store.items()) == {"b": {"n": 3}}


@pytest.mark.parametrize("backend", ["lmdb", "shelve"])
def test_system_durability(tmp_path: Path, backend: str) -> None:
    with lockstore.open(tmp_path / "s", backend=backend, durability="system") as store:
        for write in _writes(store).values():
            write()
        if backend == "lmdb":
            flags = store._engine._env().env.flags()  # type: ignore[attr-defined]
            assert flags["sync"] and flags["metasync"]  # every commit reaches the disk
            with pytest.raises(lockstore.StoreMismatch, match="durability"):
                lockstore.open(tmp_path / "s")  # the same environment, in the same process
    with lockstore.open(tmp_path / "s") as store:  # durability is per opening, not recorded
        assert dict(store.items()) == {"b": {"n": 3}}
        if backend == "lmdb":
            flags = store._engine._env().env.flags()  # type: ignore[attr-defined]
            assert not flags["sync"] and not flags["metasync"]  # "process": the operating system decides
    with pytest.raises(ValueError, match="durability"):
        lockstore.open(tmp_path / "s", durability="maybe")
