"""Issue 11: one Options for every open; ``create=False`` opens a store without creating anything."""

from __future__ import annotations

import dataclasses
import pickle
import uuid
from pathlib import Path

import pytest
from servers import require

import lockstore
from lockstore.options import OPEN_OPTIONS, SETTINGS_KEYS, Options


def test_options_are_checked_when_built_and_frozen() -> None:
    for bad, error in (
        ({"max_age": 0}, ValueError),
        ({"timeout": float("nan")}, ValueError),
        ({"shards": 0}, ValueError),
        ({"pool_size": 0}, ValueError),
        ({"lock_ttl": 0}, ValueError),
        ({"map_size": 1}, ValueError),
        ({"backend": "nope"}, lockstore.StoreMismatch),
        ({"codec": "yaml"}, lockstore.StoreMismatch),
        ({"secret": "short"}, ValueError),
        ({"prefix": "a{b}"}, ValueError),
        ({"table": "x; DROP"}, ValueError),
        ({"backend": "lmdb", "dbm": "dbm.dumb"}, lockstore.StoreMismatch),
    ):
        with pytest.raises(error):
            Options(**bad)
    options = Options(max_age=60)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_age = 5  # type: ignore[misc]
    assert options.rules() == {"max_age": 60, "clean_interval": None, "clean_limit": None}
    assert options.rules_to_record({"clean_limit": 7}) == {"max_age": 60.0, "clean_interval": 300.0, "clean_limit": 7}


def test_settings_keys_and_open_signature_come_from_options() -> None:
    import inspect

    names = [f.name for f in dataclasses.fields(Options)]
    assert list(OPEN_OPTIONS) == [n for n in names if n != "clock"]
    assert SETTINGS_KEYS["MAX_AGE"] == "max_age"
    params = inspect.signature(lockstore.open).parameters
    assert list(params) == ["path", "create", *names]
    assert params["timeout"].default == Options().timeout


def test_options_of_another_kind_of_store_are_refused_before_anything(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="prefix"):
        lockstore.open(tmp_path / "s", prefix="x")  # type: ignore[call-overload]
    assert not (tmp_path / "s").exists()
    # refused before any connection is tried: the port is closed, yet the error is the option's
    with pytest.raises(TypeError, match="shards"):
        lockstore.open("redis://127.0.0.1:1/0", shards=4)
    with pytest.raises(TypeError, match="table"):
        lockstore.open("redis://127.0.0.1:1/0", table="t")


def test_a_pickled_store_carries_its_options(tmp_path: Path) -> None:
    store = lockstore.open(tmp_path / "s", max_age=120, touch_interval=5, shards=4)
    copy = pickle.loads(pickle.dumps(store))
    try:
        assert copy.options == dataclasses.replace(store.options, clean_interval=300.0, clean_limit=1000)
        assert (copy.max_age, copy.touch_interval, copy.shards) == (120, 5, 4)
    finally:
        copy.close()
        store.close()


def test_create_false_opens_an_existing_directory_store_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with pytest.raises(lockstore.StoreMismatch, match="no store"):
        lockstore.open(path, create=False)
    assert not path.exists()
    path.mkdir(mode=0o700)
    with pytest.raises(lockstore.StoreMismatch, match="no store"):
        lockstore.open(path, create=False)
    assert list(path.iterdir()) == []
    with lockstore.open(path) as store:
        store["a"] = 1
    with lockstore.open(path, create=False) as store:
        assert store["a"] == 1


@pytest.mark.servers
def test_create_false_on_redis_writes_nothing(redis_server: str) -> None:
    redis = require("redis")
    prefix = f"t{uuid.uuid4().hex[:12]}"
    with pytest.raises(lockstore.StoreMismatch, match="no store"):
        lockstore.open(redis_server, prefix=prefix, create=False)
    assert redis.Redis.from_url(redis_server).keys(f"{prefix}*") == []
    with lockstore.open(redis_server, prefix=prefix) as store:
        store["a"] = {"n": 1}
    with lockstore.open(redis_server, prefix=prefix, create=False) as store:
        assert store["a"] == {"n": 1}


@pytest.mark.servers
def test_create_false_on_postgres_writes_nothing(postgres_server: str) -> None:
    psycopg = require("psycopg")
    require("psycopg_pool")
    table = f"t{uuid.uuid4().hex[:12]}"
    with pytest.raises(lockstore.StoreMismatch, match="no store"):
        lockstore.open(postgres_server, table=table, create=False)
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,)
        if conn.execute("SELECT to_regclass('lockstore_meta')").fetchone() != (None,):
            assert conn.execute("SELECT count(*) FROM lockstore_meta WHERE store = %s", (table,)).fetchone() == (0,)
    with lockstore.open(postgres_server, table=table) as store:
        store["a"] = {"n": 1}
    with lockstore.open(postgres_server, table=table, create=False) as store:
        assert store["a"] == {"n": 1}
