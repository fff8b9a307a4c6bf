"""Bad input gets a clear error and changes nothing; unsafe or mismatched stores are refused."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock
from servers import require_root, unavailable

import lockstore


def snapshot(path: Path) -> dict[str, str]:
    """Every file under *path* with a hash of its bytes (lock files are empty and never change)."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def state(store: lockstore.BaseStore) -> list[tuple[str, lockstore.Record]]:
    """Every record, live and expired, with its value and both times, read through the store: what "writes
    nothing" means for the memory backend, which has no files to compare. Reading every shard creates the
    lock files not yet used: take it before a :func:`snapshot`."""
    return sorted([*store.records(), *store.records(expired=True)], key=lambda item: item[0])


BAD_IDS = [b"bytes", None, 42, "", "x" * 257, "a/b", "../etc", ".", "..", "a\x00b", "tab\there", "é", "sp ace"]


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_bad_ids_rejected_before_any_file(tmp_path: Path, backend: str, bad: Any, clock: Clock) -> None:
    store = lockstore.open(tmp_path / "s", backend=backend, clock=clock, touch_interval=0)
    store["good"] = {"v": 1}
    before, record = snapshot(tmp_path), store.record("good")
    clock.now += 100  # a write from here on would record other times
    for action in (
        lambda: store[bad],
        lambda: store.__setitem__(bad, 1),
        lambda: store.__delitem__(bad),
        lambda: bad in store,
        lambda: store.edit(bad).__enter__(),
        lambda: store.touch(bad),
    ):
        with pytest.raises(lockstore.InvalidSessionId):
            action()
    assert snapshot(tmp_path) == before  # not a file created, not a byte changed
    assert store.record("good") == record  # its value and both times: what the memory backend can show
    assert not lockstore.is_valid_id(bad)
    store.close()


def test_valid_ids() -> None:
    for sid in ["a", "A-z_0.9~", "x" * 256, lockstore.new_id()]:
        assert lockstore.validate_id(sid) == sid
    ids = {lockstore.new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) >= 22 and lockstore.is_valid_id(i) for i in ids)


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("no pickling here")


@pytest.mark.parametrize("value", [Unpicklable(), {"x": lambda: 1}, {"n": threading.Lock()}])
def test_unencodable_value_writes_nothing(tmp_path: Path, backend: str, value: Any, clock: Clock) -> None:
    store = lockstore.open(tmp_path / "s", backend=backend, clock=clock, touch_interval=0)
    store["s"] = {"v": 1}
    records = state(store)
    before = snapshot(tmp_path)  # after state(), which opens every shard
    clock.now += 100  # a write from here on would record other times
    with pytest.raises(lockstore.EncodeError):
        store["s"] = value
    with pytest.raises(lockstore.EncodeError), store.edit("s") as session:
        session["bad"] = value
    assert isinstance(lockstore.EncodeError("x"), TypeError)
    assert state(store) == records  # the value and both times, unchanged
    assert snapshot(tmp_path) == before
    assert store["s"] == {"v": 1}
    store.close()


def test_value_too_large_writes_nothing(tmp_path: Path, backend: str, clock: Clock) -> None:
    store = lockstore.open(tmp_path / "s", backend=backend, max_value_size=1000, clock=clock, touch_interval=0)
    store["s"] = {"v": 1}
    records = state(store)
    before = snapshot(tmp_path)  # after state(), which opens every shard
    clock.now += 100  # a write from here on would record other times
    with pytest.raises(lockstore.ValueTooLarge):
        store["s"] = "x" * 2000
    with pytest.raises(lockstore.ValueTooLarge), store.edit("s") as session:
        session["big"] = "x" * 2000
    assert state(store) == records  # the value and both times, unchanged
    assert snapshot(tmp_path) == before
    assert store["s"] == {"v": 1}
    store.close()


def test_json_codec_refuses_what_json_cannot_hold(tmp_path: Path) -> None:
    with lockstore.open(tmp_path / "s", codec="json") as store:
        with pytest.raises(lockstore.EncodeError):
            store["s"] = {"when": object()}
        with pytest.raises(lockstore.EncodeError):
            store["s"] = {"nan": float("nan")}
        assert "s" not in store


def test_reopen_with_other_settings_is_refused(tmp_path: Path) -> None:
    lockstore.open(tmp_path / "s", backend="shelve", shards=4, codec="json").close()
    before = snapshot(tmp_path)
    for options in ({"backend": "lmdb"}, {"shards": 8}, {"codec": "pickle"}, {"secret": "0123456789abcdef"}):
        with pytest.raises(lockstore.StoreMismatch):
            lockstore.open(tmp_path / "s", **options)
    assert snapshot(tmp_path) == before
    with lockstore.open(tmp_path / "s") as store:  # None takes the recorded values
        assert (store.backend, store.shards) == ("shelve", 4)  # type: ignore[attr-defined]


def test_paths_that_are_not_stores(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(lockstore.LockstoreError, match="not a directory"):
        lockstore.open(tmp_path / "file")
    newer = tmp_path / "newer"
    newer.mkdir(mode=0o700)
    (newer / "lockstore.json").write_text(json.dumps({"format": 99, "backend": "lmdb", "shards": 16}))
    with pytest.raises(lockstore.StoreMismatch, match="newer"):
        lockstore.open(newer)
    with pytest.raises(ValueError):
        lockstore.open(tmp_path / "x", max_age=-1)
    with pytest.raises(lockstore.StoreMismatch):
        lockstore.open(tmp_path / "y", backend="nosuch")
    assert not (tmp_path / "y").exists()


def test_unwritable_directory(tmp_path: Path) -> None:
    require_root("give files to another user")
    # root can write anywhere; check the other user's view instead: files another user owns are refused
    lockstore.open(tmp_path / "s").close()
    os.chown(tmp_path / "s" / "lockstore.json", 65534, 65534)
    with pytest.raises(lockstore.UnsafeStore, match="owned by uid 65534"):
        lockstore.open(tmp_path / "s")
    # the metadata picks the backend and codec: another user's is refused whatever the codec
    lockstore.open(tmp_path / "j", codec="json").close()
    os.chown(tmp_path / "j" / "lockstore.json", 65534, 65534)
    with pytest.raises(lockstore.UnsafeStore, match="owned by uid 65534"):
        lockstore.open(tmp_path / "j")


def test_private_files_and_writable_pickle_store_refused(tmp_path: Path, file_backend: str) -> None:
    lockstore.open(tmp_path / "s", backend=file_backend).close()
    for root, dirs, files in os.walk(tmp_path / "s"):
        assert os.stat(root).st_mode & 0o777 == 0o700
        for name in files:
            assert os.stat(os.path.join(root, name)).st_mode & 0o777 == 0o600, name
    os.chmod(tmp_path / "s", 0o777)
    with pytest.raises(lockstore.UnsafeStore, match="writable by group or others"):
        lockstore.open(tmp_path / "s")


def test_tampered_record_is_never_decoded(tmp_path: Path, file_backend: str) -> None:
    secret = b"a secret of at least sixteen bytes"
    with lockstore.open(tmp_path / "s", backend=file_backend, secret=secret) as store:
        store["victim"] = {"role": "user"}
    # flip the payload bytes on disk
    target = "data.mdb" if file_backend == "lmdb" else None
    changed = False
    for root, _, files in os.walk(tmp_path / "s"):
        for name in files:
            if (target and name != target) or (not target and not name.endswith(".dat")):
                continue
            full = os.path.join(root, name)
            data = open(full, "rb").read()
            if b"user" in data:
                open(full, "r+b").write(data.replace(b"user", b"root"))
                changed = True
    assert changed
    with lockstore.open(tmp_path / "s", secret=secret) as store:
        with pytest.raises(lockstore.CorruptRecord, match="signature"):
            store["victim"]
        assert [sid for sid, _ in store.verify()] == ["victim"]
    with pytest.raises(lockstore.StoreMismatch):
        lockstore.open(tmp_path / "s")  # a signed store needs its secret


def _hold(path: str, ready: Any, release: Any) -> None:
    store = lockstore.open(path)
    with store.edit("k") as session:
        session["holder"] = True
        ready.set()
        release.wait(30)


def test_lock_timeout_writes_nothing(tmp_path: Path, file_backend: str) -> None:
    path = str(tmp_path / "s")
    with lockstore.open(path, backend=file_backend) as store:
        store["k"] = {"v": 1}
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(path, ready, release))
    p.start()
    try:
        assert ready.wait(30)
        before = snapshot(tmp_path)
        with lockstore.open(path, timeout=0.2) as store:
            t0 = time.monotonic()
            with pytest.raises(lockstore.LockTimeout) as info:
                store["k"] = {"v": 2}
            assert 0.2 <= time.monotonic() - t0 < 2
            assert "shard" in str(info.value) and path in str(info.value)
            assert isinstance(info.value, TimeoutError)
            with pytest.raises(lockstore.LockTimeout), store.edit("k"):
                pass
        assert snapshot(tmp_path) == before
        release.set()
        p.join(30)
        assert p.exitcode == 0
    finally:  # a failed check never leaves the lock holder waiting 30 s
        if p.is_alive():
            p.kill()
        p.join()
    with lockstore.open(path) as store:
        assert store["k"] == {"v": 1, "holder": True}


def test_nested_writes_in_one_thread_do_not_deadlock(tmp_path: Path, backend: str) -> None:
    with lockstore.open(tmp_path / "s", backend=backend, shards=1, clean_interval=0.001, timeout=1) as store:
        with store.edit("a") as session:
            session["n"] = 1
            store["b"] = {"inner": True}  # same shard, same thread, with a clean due: no self-deadlock
            assert store["b"] == {"inner": True}
        assert store["a"] == {"n": 1}


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    """A 1 MiB tmpfs mounted for the test (needs root, as CI runs)."""
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    require_root("mount a small tmpfs for the full-disk test")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode:
        unavailable("mounting a 1 MiB tmpfs failed (a container without CAP_SYS_ADMIN?)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_full_disk_is_a_clear_error_and_loses_nothing(tiny_disk: Path, file_backend: str) -> None:
    store = lockstore.open(tiny_disk / "s", backend=file_backend, codec="json")
    written = 0
    with pytest.raises(lockstore.StorageError) as info:
        for i in range(10_000):
            store[f"s{i}"] = {"pad": os.urandom(3000).hex()}
            written += 1
    assert isinstance(info.value, OSError)
    assert "No space left" in str(info.value)
    assert written > 10
    acknowledged = {f"s{i}" for i in range(written)}
    assert set(store) == acknowledged
    assert store.verify() == []
    with pytest.raises(lockstore.StorageError), store.edit("s0") as session:
        session["more"] = os.urandom(200_000).hex()
    assert set(store["s0"]) == {"pad"}
    store.close()
    with lockstore.open(tiny_disk / "s") as again:
        assert set(again) == acknowledged
        assert again.verify() == []
