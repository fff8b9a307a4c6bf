"""``copy_store``: LMDB -> Redis -> PostgreSQL -> LMDB keeps every live session and its times."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

import lockstore
from lockstore.copy import copy_store

pytestmark = pytest.mark.servers


def sessions(now: float) -> dict[str, tuple[dict[str, object], float, float]]:
    """id -> (value, created, last_access): live ones of many ages, values every codec can carry."""
    out = {}
    for i in range(150):
        value = {"user": i, "name": f"u{i}", "cart": [i, i * 2, {"sku": "x" * (i % 7)}], "flag": i % 2 == 0}
        out[f"s{i:03d}-{lockstore.new_id()[:8]}"] = (value, now - 3000 - i, now - 10 * i)
    return out


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
        assert copy_store(lmdb, red, lambda done, total: calls.append((done, total))) == len(want)
        assert calls[-1] == (len(want), len(want))
        assert copy_store(red, pg) == len(want)
        assert copy_store(pg, back) == len(want)

        for store in (red, pg, back):
            got = {sid: (rec.value, rec.created, rec.last_access) for sid, rec in store.records()}
            assert got == want, store.backend
            assert "expired" not in store
        # Safe to re-run: nothing left to copy, nothing changed.
        assert copy_store(lmdb, red) == 0
        assert copy_store(back, lmdb) == 0
        assert {sid: rec.last_access for sid, rec in red.records()} == {s: w[2] for s, w in want.items()}
    finally:
        for store in (lmdb, red, pg, back):
            store.close()


def test_rerun_never_overwrites_newer_sessions(redis_server: str, postgres_server: str) -> None:
    red = lockstore.open(redis_server, prefix=f"c{uuid.uuid4().hex[:10]}")
    pg = lockstore.open(postgres_server, table=f"c{uuid.uuid4().hex[:10]}")
    try:
        now = time.time()
        red.put_record("a", {"v": "old"}, created=now - 100, last_access=now - 50)
        red.put_record("b", {"v": "old"}, created=now - 100, last_access=now - 50)
        assert copy_store(red, pg) == 2
        pg["a"] = {"v": "new in dst"}  # the application moved to pg and wrote there
        red.put_record("b", {"v": "changed in src"}, created=now - 100, last_access=now - 10)
        assert copy_store(red, pg) == 1
        assert pg["a"] == {"v": "new in dst"}
        assert pg["b"] == {"v": "changed in src"}
    finally:
        red.close()
        pg.close()
