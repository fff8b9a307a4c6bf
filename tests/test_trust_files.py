"""Issue 9, items 2, 3, 7, 8 and 9: the store directory, its metadata and its recorded rules are trusted
only after they are checked, and no routine open deletes sessions by a rule other than the store's."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from servers import require_root, require_tool
from test_errors import snapshot

import lockstore

OTHER_USER = "lockstore-other"


@pytest.fixture(scope="session")
def other_uid() -> int:
    """The uid of a second user, created with useradd (as root) when missing."""
    try:
        return pwd.getpwnam(OTHER_USER).pw_uid
    except KeyError:
        pass
    require_root("create a second user")
    require_tool("useradd", "passwd")
    subprocess.run(["useradd", "--system", "--no-create-home", OTHER_USER], check=True)
    return pwd.getpwnam(OTHER_USER).pw_uid


def write_meta(store: Path, **changes: Any) -> dict[str, Any]:
    meta_path = store / "lockstore.json"
    meta = json.loads(meta_path.read_text())
    meta.update(changes)
    meta_path.write_text(json.dumps(meta))
    return meta


# -- item 2: lockstore.json is validated, never trusted as written --------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("shards", 0),
        ("shards", -3),
        ("shards", 70000),
        ("shards", 10**8),
        ("shards", True),
        ("shards", "16"),
        ("format", "x"),
        ("format", 0),
        ("backend", "nosuch"),
        ("backend", ["lmdb"]),
        ("codec", "marshal"),
        ("signed", "no"),
        ("store_id", "../../etc"),
        ("max_age", -1),
        ("max_age", 1e400),
        ("clean_limit", 0),
        ("clean_interval", "300"),
    ],
)
def test_bad_metadata_field_is_a_lockstore_error_naming_it(tmp_path: Path, field: str, value: Any) -> None:
    lockstore.open(tmp_path / "s", codec="json").close()
    write_meta(tmp_path / "s", **{field: value})
    before = snapshot(tmp_path)
    with pytest.raises(lockstore.StoreMismatch, match=f"'{field}'"):
        lockstore.open(tmp_path / "s")
    assert snapshot(tmp_path) == before


def test_metadata_never_imports_a_module_it_names(tmp_path: Path) -> None:
    lockstore.open(tmp_path / "s", backend="shelve", codec="json").close()
    write_meta(tmp_path / "s", dbm="this")
    sys.modules.pop("this", None)
    with pytest.raises(lockstore.StoreMismatch, match="'dbm'"):
        lockstore.open(tmp_path / "s")
    assert "this" not in sys.modules


@pytest.mark.parametrize(
    "raw",
    [b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe", b"{}", b"null", b'{"format": 1e999999}', b"1" * 5000],
)
def test_unparseable_metadata_is_refused(tmp_path: Path, raw: bytes) -> None:
    lockstore.open(tmp_path / "s", codec="json").close()
    (tmp_path / "s" / "lockstore.json").write_bytes(raw)
    with pytest.raises(lockstore.LockstoreError):
        lockstore.open(tmp_path / "s")
    assert (tmp_path / "s" / "lockstore.json").read_bytes() == raw


def test_unknown_metadata_field_is_refused(tmp_path: Path) -> None:
    lockstore.open(tmp_path / "s", codec="json").close()
    write_meta(tmp_path / "s", decoder="pickle")
    with pytest.raises(lockstore.StoreMismatch, match="unknown field"):
        lockstore.open(tmp_path / "s")


def test_metadata_another_user_could_write_is_refused_whatever_the_codec(tmp_path: Path) -> None:
    lockstore.open(tmp_path / "j", codec="json").close()
    meta = tmp_path / "j" / "lockstore.json"
    os.chmod(meta, 0o620)
    write_meta(tmp_path / "j", backend="shelve", dbm="dbm.dumb")  # what a group member would do
    with pytest.raises(lockstore.UnsafeStore, match="writable by group or others"):
        lockstore.open(tmp_path / "j")


def test_metadata_owned_by_another_user_is_refused(tmp_path: Path, other_uid: int) -> None:
    lockstore.open(tmp_path / "j", codec="json").close()
    os.chown(tmp_path / "j" / "lockstore.json", other_uid, -1)
    with pytest.raises(lockstore.UnsafeStore, match=f"owned by uid {other_uid}"):
        lockstore.open(tmp_path / "j")


def test_metadata_symlink_is_not_followed(tmp_path: Path) -> None:
    lockstore.open(tmp_path / "a", codec="json").close()
    lockstore.open(tmp_path / "b", codec="json").close()
    os.unlink(tmp_path / "b" / "lockstore.json")
    os.symlink(tmp_path / "a" / "lockstore.json", tmp_path / "b" / "lockstore.json")
    with pytest.raises(lockstore.UnsafeStore, match="symbolic link"):
        lockstore.open(tmp_path / "b")


# -- item 3: parents, ancestors and the time between check and use -------------------------------------


def test_missing_parents_are_created_0700_under_umask_0(tmp_path: Path) -> None:
    with _umask(0):
        lockstore.open(tmp_path / "a" / "b" / "s").close()
    for p in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "s"):
        assert os.stat(p).st_mode & 0o777 == 0o700, p


def test_ancestor_writable_by_others_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "open"
    parent.mkdir()
    lockstore.open(parent / "s").close()
    os.chmod(parent, 0o777)
    with pytest.raises(lockstore.UnsafeStore, match="writable by group or others"):
        lockstore.open(parent / "s")
    os.chmod(parent, 0o1777)  # sticky, like /tmp: others cannot rename what is ours
    lockstore.open(parent / "s").close()


def test_ancestor_owned_by_another_user_is_refused(tmp_path: Path, other_uid: int) -> None:
    parent = tmp_path / "theirs"
    parent.mkdir(mode=0o755)
    lockstore.open(parent / "s", codec="json").close()
    os.chown(parent, other_uid, -1)
    with pytest.raises(lockstore.UnsafeStore, match=f"owned by uid {other_uid}"):
        lockstore.open(parent / "s")


def test_nothing_is_written_into_a_directory_another_user_owns(tmp_path: Path, other_uid: int) -> None:
    target = tmp_path / "s"
    target.mkdir(mode=0o700)
    os.chown(target, other_uid, -1)
    with pytest.raises(lockstore.UnsafeStore, match=f"owned by uid {other_uid}"):
        lockstore.open(target, codec="json")
    assert os.listdir(target) == []


def test_metadata_temp_file_never_follows_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    store = tmp_path / "s"
    store.mkdir(mode=0o700)
    # the names a predictable writer would use, each a link to the victim
    for pid in {os.getpid(), *range(os.getpid() - 2, os.getpid() + 3)}:
        os.symlink(victim, store / f".lockstore.json.{pid}.tmp")
    with pytest.raises(lockstore.UnsafeStore, match="symbolic link"):
        lockstore.open(store, codec="json")
    assert victim.read_bytes() == b"precious"
    assert not (store / "lockstore.json").exists()


def _swap(path: Path, backend: str) -> None:
    """Move the store at *path* aside and put another store, holding a forged session, in its place."""
    path.rename(path.with_name(path.name + "-moved"))
    with lockstore.open(path, backend=backend, codec="json") as other:
        other["victim"] = {"user": "mallory"}


@pytest.mark.parametrize("backend", ["lmdb", "shelve"])
def test_swapped_directory_is_never_read_by_a_forked_child(tmp_path: Path, backend: str) -> None:
    path = tmp_path / "s"
    store = lockstore.open(path, backend=backend, codec="json")
    store["victim"] = {"user": "alice"}
    assert store["victim"] == {"user": "alice"}
    _swap(path, backend)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, json.dumps(store["victim"]).encode())
        except BaseException as exc:
            os.write(write, json.dumps({"error": repr(exc)}).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        seen = json.loads(f.read())
    os.waitpid(pid, 0)
    assert seen == {"user": "alice"}
    assert store["victim"] == {"user": "alice"}
    store.close()


def test_swapped_shelve_directory_is_never_read_on_refresh(tmp_path: Path) -> None:
    path = tmp_path / "s"
    store = lockstore.open(path, backend="shelve", codec="json")
    store["victim"] = {"user": "alice"}
    _swap(path, "shelve")
    assert store["victim"] == {"user": "alice"}
    store["other"] = {"n": 1}  # a write, with an index refresh, goes to the pinned directory
    store.close()
    with lockstore.open(path.with_name("s-moved")) as moved:
        assert moved["other"] == {"n": 1}


# -- item 7: a rejected option writes nothing -----------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"secret": "short"},
        {"secret": 12345},
        {"codec": "marshal"},
        {"map_size": -1},
        {"map_size": "big"},
        {"dbm": "this"},
        {"backend": "lmdb", "dbm": "dumb"},
        {"shards": 0},
        {"max_age": float("nan")},
        {"durability": "sometimes"},
    ],
)
def test_rejected_option_creates_nothing(tmp_path: Path, options: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError, lockstore.LockstoreError)):
        lockstore.open(tmp_path / "new" / "s", **options)
    assert not (tmp_path / "new").exists()
    lockstore.open(tmp_path / "new" / "s").close()  # and the path is still free to use


def test_short_secret_leaves_no_signed_store_behind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        lockstore.open(tmp_path / "s", secret="short")
    with lockstore.open(tmp_path / "s") as store:  # opens without a secret: nothing recorded "signed"
        store["a"] = 1
        assert store["a"] == 1


# -- item 8: the sweep rules are the store's --------------------------------------------------------------


TWO_WEEKS = 14 * 86400.0


def test_rules_are_recorded_and_taken_when_not_given(tmp_path: Path, file_backend: str) -> None:
    lockstore.open(tmp_path / "s", backend=file_backend, max_age=TWO_WEEKS, clean_interval=60, clean_limit=5).close()
    with lockstore.open(tmp_path / "s") as store:
        assert (store.max_age, store.clean_interval, store.clean_limit) == (TWO_WEEKS, 60, 5)  # type: ignore[attr-defined]
    for option, value in (("max_age", 1800), ("clean_interval", 300), ("clean_limit", 1000)):
        with pytest.raises(lockstore.StoreMismatch, match=f"records {option}="):
            lockstore.open(tmp_path / "s", **{option: value})


_SWEEP_IN_CHILD = """
import sys, lockstore
store = lockstore.open(sys.argv[1])  # no max_age: the recorded one, never a default of its own
store["fresh"] = {"n": 1}   # a write: clean-on-write runs if the shard's interval has passed
print(len(store))
store.close()
"""


def test_a_process_opening_with_defaults_never_sweeps_by_its_own_rule(tmp_path: Path, file_backend: str) -> None:
    path = tmp_path / "s"
    with lockstore.open(path, backend=file_backend, max_age=TWO_WEEKS, shards=1, clean_interval=1) as app:
        now = time.time()
        for i in range(20):  # idle two hours: live by the application's rule, expired by a 1800 s default
            app.put_record(f"idle{i}", {"i": i}, created=now - 7300, last_access=now - 7200)
    time.sleep(1.1)  # the shard's clean interval has passed: the next write sweeps
    out = subprocess.run([sys.executable, "-c", _SWEEP_IN_CHILD, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["21"], out.stderr
    with lockstore.open(path) as store:
        assert sorted(store) == sorted([f"idle{i}" for i in range(20)] + ["fresh"])


def test_store_without_recorded_rules_needs_them_once(tmp_path: Path) -> None:
    path = tmp_path / "s"
    lockstore.open(path, codec="json").close()
    meta = json.loads((path / "lockstore.json").read_text())
    for rule in ("max_age", "clean_interval", "clean_limit"):
        del meta[rule]
    (path / "lockstore.json").write_text(json.dumps(meta))
    with pytest.raises(lockstore.StoreMismatch, match="records no max_age"):
        lockstore.open(path)
    lockstore.open(path, max_age=TWO_WEEKS).close()
    with lockstore.open(path) as store:
        assert store.max_age == TWO_WEEKS


def test_changed_rules_stop_a_running_process_from_sweeping(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from lockstore.opener import set_rules

    path = tmp_path / "s"
    clock = [1_700_000_000.0]
    store = lockstore.open(path, max_age=100, clean_interval=10, shards=1, clock=lambda: clock[0])
    store["old"] = {"n": 1}
    set_rules(path, max_age=1000)  # an operator lengthens the sessions: this process still believes 100
    clock[0] += 500
    with caplog.at_level("WARNING", logger="lockstore.store"):
        store["new"] = {"n": 2}  # the sweep is due: by the old rule it would delete "old"
    assert "no longer sweeps" in caplog.text
    with pytest.raises(lockstore.StoreMismatch, match="max_age=1000"):
        store.clean()
    store.close()
    with lockstore.open(path, clock=lambda: clock[0]) as fresh:
        assert fresh.max_age == 1000
        assert sorted(fresh) == ["new", "old"]


# -- item 9: Flask keeps "remember me" sessions as long as their cookie ------------------------------------


def test_flask_store_keeps_sessions_for_the_permanent_lifetime(tmp_path: Path) -> None:
    import flask

    from lockstore.flask import init_app

    app = flask.Flask(__name__, instance_path=str(tmp_path / "instance"))
    store = init_app(app, str(tmp_path / "sessions"))
    try:
        assert store.max_age == app.permanent_session_lifetime.total_seconds() == 31 * 86400
        now = time.time()
        store.put_record("remembered", {"_permanent": True, "user": 1}, created=now - 7200, last_access=now - 3600)
        store.clean()
        assert store["remembered"]["user"] == 1  # idle an hour: alive, as its 31-day cookie is
    finally:
        store.close()


def test_request_lock_directory_parents_are_created_0700(tmp_path: Path) -> None:
    from lockstore.web.stripes import StripeLocks

    with _umask(0):
        StripeLocks(tmp_path / "locks" / "app" / "stripes", stripes=4).close()
    for p in (tmp_path / "locks", tmp_path / "locks" / "app", tmp_path / "locks" / "app" / "stripes"):
        assert os.stat(p).st_mode & 0o777 == 0o700, p


class _umask:
    def __init__(self, mask: int) -> None:
        self.mask = mask

    def __enter__(self) -> None:
        self.old = os.umask(self.mask)

    def __exit__(self, *exc: object) -> None:
        os.umask(self.old)


def test_a_short_dbm_name_opens_the_store_it_created(tmp_path: Path) -> None:
    lockstore.open(tmp_path / "s", backend="shelve", dbm="dumb").close()
    with lockstore.open(tmp_path / "s", dbm="dumb") as store:
        assert store.settings["dbm"] == "dbm.dumb"  # type: ignore[attr-defined]
