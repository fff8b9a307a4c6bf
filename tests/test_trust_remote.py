"""Issue 9 on the remote stores, against the real redis-server and PostgreSQL: nothing the server holds
chooses the codec or crashes lockstore, signatures bind the store, credentials never show, a rejected
option writes nothing, the sweep rule is the store's, and ``put_record_if`` never overwrites a newer write.

Each test opens the backends' ``open_redis`` / ``open_postgres`` directly, so that an option left out is
really left out (None: the recorded value).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from servers import PostgresServer, free_port

import lockstore
from lockstore import record as fmt
from lockstore.codec import Codec
from lockstore.record import HEADER_SIZE
from lockstore.remote.postgres import open_postgres
from lockstore.remote.redis import open_redis

pytestmark = pytest.mark.servers

SECRET = "k" * 32


class Raw:
    """One store's server-side state, read and written behind lockstore's back."""

    def __init__(self, backend: str, url: str) -> None:
        self.backend = backend
        self.url = url
        self.name = f"t{uuid.uuid4().hex[:12]}"

    def open(self, **options: Any) -> Any:
        if self.backend == "redis":
            return open_redis(self.url, prefix=self.name, **options)
        return open_postgres(self.url, table=self.name, **options)

    def other(self) -> Raw:
        """Another store on the same server."""
        return Raw(self.backend, self.url)

    # -- metadata ---------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        if self.backend == "redis":
            raw = redis.Redis.from_url(self.url)
            return {k.decode(): v.decode() for k, v in raw.hgetall(f"{self.name}:meta").items()}
        with psycopg.connect(self.url, autocommit=True) as conn:
            if conn.execute("SELECT to_regclass('lockstore_meta')").fetchone()[0] is None:
                return {}
            rows = conn.execute("SELECT name, value FROM lockstore_meta WHERE store = %s", (self.name,))
            return dict(rows.fetchall())

    def set_meta(self, name: str | bytes, value: str | bytes) -> None:
        if self.backend == "redis":
            redis.Redis.from_url(self.url).hset(f"{self.name}:meta", name, value)
            return
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS lockstore_meta (store text NOT NULL, name text NOT NULL, "
                "value text NOT NULL, PRIMARY KEY (store, name))"
            )
            conn.execute(
                "INSERT INTO lockstore_meta VALUES (%s, %s, %s) ON CONFLICT (store, name) DO UPDATE "
                "SET value = EXCLUDED.value",
                (self.name, name, value),
            )

    def del_meta(self, name: str) -> None:
        if self.backend == "redis":
            redis.Redis.from_url(self.url).hdel(f"{self.name}:meta", name)
            return
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("DELETE FROM lockstore_meta WHERE store = %s AND name = %s", (self.name, name))

    def legacy(self, codec: str, signed: bool) -> None:
        """Make this a store as lockstore created it before metadata format 2."""
        for name, value in {"format": "1", "codec": codec, "signed": "1" if signed else "0"}.items():
            self.set_meta(name, value)
        if self.backend == "postgres":
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(
                    f'CREATE TABLE {self.name} (sid text COLLATE "C" PRIMARY KEY, rec bytea NOT NULL, '
                    "last_access double precision NOT NULL)"
                )

    def exists(self) -> bool:
        """Whether anything of this store is on the server (metadata, or PostgreSQL's table)."""
        if self.backend == "redis":
            return bool(redis.Redis.from_url(self.url).exists(f"{self.name}:meta"))
        with psycopg.connect(self.url, autocommit=True) as conn:
            table = conn.execute("SELECT to_regclass(%s)", (self.name,)).fetchone()[0]
        return table is not None or bool(self.meta())

    # -- records ----------------------------------------------------------------------------

    def get(self, sid: str) -> bytes | None:
        if self.backend == "redis":
            value: bytes | None = redis.Redis.from_url(self.url).get(f"{self.name}:{{{sid}}}")
            return value
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(f"SELECT rec FROM {self.name} WHERE sid = %s", (sid,)).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, sid: str | bytes, rec: bytes, last_access: float | None = None) -> None:
        if self.backend == "redis":
            key = (self.name + ":{").encode() + (sid if isinstance(sid, bytes) else sid.encode()) + b"}"
            redis.Redis.from_url(self.url).set(key, rec)
            return
        if last_access is None:
            last_access = fmt.last_access(rec) if len(rec) >= HEADER_SIZE else time.time()
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                f"INSERT INTO {self.name} VALUES (%s, %s, %s) ON CONFLICT (sid) DO UPDATE "
                "SET rec = EXCLUDED.rec, last_access = EXCLUDED.last_access",
                (sid, rec, last_access),
            )


@pytest.fixture(params=["redis", "postgres"])
def raw(request: pytest.FixtureRequest) -> Raw:
    url = request.getfixturevalue(f"{request.param}_server")
    return Raw(request.param, url)


def no_secret_in(exc: BaseException, *secrets: str) -> None:
    """Neither the message nor the printed traceback (causes included) of *exc* shows a secret."""
    text = "".join(traceback.format_exception(exc))
    for secret in secrets:
        assert secret not in text, text


class RunsCode:
    """Unpickling this creates a directory: proof that a planted pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


# -- item 4: the codec is never chosen by the server ----------------------------------------------


def test_new_store_defaults_to_json(raw: Raw) -> None:
    with raw.open() as s:
        assert s.stats()["codec"] == "json"
        with pytest.raises(lockstore.EncodeError):
            s["a"] = {1, 2}  # a set: pickle would have taken it
    assert raw.meta()["codec"] == "json"


@pytest.mark.parametrize("legacy", [False, True])
def test_server_cannot_switch_a_store_to_pickle(raw: Raw, tmp_path: Path, legacy: bool) -> None:
    if legacy:
        raw.legacy("json", signed=False)
        options: dict[str, Any] = {"max_age": 1800}
    else:
        raw.open().close()
        options = {}
    marker = tmp_path / "pwned"
    now = time.time()
    raw.set_meta("codec", "pickle")  # what anyone who can write to the server can do
    raw.put("evil", Codec("pickle", None, 1 << 20).record(b"evil", pickle.dumps(RunsCode(marker)), now, now))
    with pytest.raises(lockstore.UnsafeStore, match="codec='pickle'"), raw.open(**options) as s:
        s["evil"]
    assert not marker.exists()
    # The application's explicit choice still opens it.
    with raw.open(codec="pickle", **options) as s:
        assert s.stats()["codec"] == "pickle"


def test_explicit_unsigned_pickle_opens_with_a_warning(raw: Raw, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), raw.open(codec="pickle") as s:
        s["a"] = {"x": (1, 2)}
    assert "pickle without a secret" in caplog.text
    with pytest.raises(lockstore.UnsafeStore):
        raw.open()
    with raw.open(codec="pickle") as s:
        assert s["a"] == {"x": (1, 2)}


def test_signed_pickle_opens_with_its_recorded_codec(raw: Raw) -> None:
    with raw.open(codec="pickle", secret=SECRET) as s:
        s["a"] = {"x": (1, 2)}
    with raw.open(secret=SECRET) as s:
        assert s.stats()["codec"] == "pickle"
        assert s["a"] == {"x": (1, 2)}


# -- item 4: signatures bind the store --------------------------------------------------------------


def test_signed_record_replayed_into_another_store_is_rejected(raw: Raw) -> None:
    other = raw.other()
    with raw.open(secret=SECRET) as a, other.open(secret=SECRET) as b:
        a["admin"] = {"user": "root"}
        b["admin"] = {"user": "guest"}
        assert len(raw.meta()["store_id"]) == 32
        assert raw.meta()["store_id"] != other.meta()["store_id"]
        rec = raw.get("admin")
        assert rec is not None
        other.put("admin", rec)  # the same secret, the same id: only the store differs
        with pytest.raises(lockstore.CorruptRecord, match="signature"):
            b["admin"]
        assert [sid for sid, _ in b.verify()] == ["admin"]
        assert a["admin"] == {"user": "root"}
        assert a.verify() == []


def test_store_created_before_store_ids_keeps_verifying(raw: Raw) -> None:
    raw.legacy("json", signed=True)
    now = time.time()
    old = Codec("json", SECRET, 1 << 20)  # no scope: as records were signed before
    raw.put("s1", old.record(b"s1", old.encode({"n": 1}), now, now))
    with raw.open(secret=SECRET, max_age=600) as s:
        assert s["s1"] == {"n": 1}
        s["s2"] = {"n": 2}
    meta = raw.meta()
    assert meta["format"] == "1"
    assert "store_id" not in meta  # nothing new recorded but the sweep rule
    assert (meta["max_age"], meta["clean_interval"], meta["clean_limit"]) == ("600.0", "300.0", "1000")
    with raw.open(secret=SECRET) as s:
        assert s["s1"] == {"n": 1}
        assert s["s2"] == {"n": 2}
        assert s.verify() == []


# -- item 2 (remote): every metadata field is checked ---------------------------------------------------

BAD_FIELDS = [
    ("format", "x"),
    ("format", "1.5"),
    ("format", ""),
    ("format", "\u0663"),  # an Arabic-Indic 3: int() takes it
    ("format", "0"),
    ("format", "-1"),
    ("format", "99999999999999999999"),
    ("codec", "yaml"),
    ("codec", "PICKLE"),
    ("signed", "yes"),
    ("signed", "2"),
    ("signed", ""),
    ("store_id", "zz" * 16),
    ("store_id", "ab"),
    ("store_id", "AB" * 16),
    ("max_age", "nan"),
    ("max_age", "inf"),
    ("max_age", "-5"),
    ("max_age", "0"),
    ("max_age", "1e400"),
    ("max_age", "1_000"),
    ("max_age", " 60"),
    ("max_age", "1e12"),
    ("max_age", "x" * 500),
    ("clean_interval", "-1"),
    ("clean_interval", "nan"),
    ("clean_limit", "0"),
    ("clean_limit", "1.5"),
    ("clean_limit", "-3"),
    ("clean_limit", "99999999999"),
    ("clean_limit", ""),
    ("evil", "1"),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
def test_bad_metadata_field_is_store_mismatch_and_touches_nothing(raw: Raw, field: str, value: str) -> None:
    raw.open().close()
    raw.set_meta(field, value)
    before = raw.meta()
    with pytest.raises(lockstore.StoreMismatch) as info:
        raw.open()
    message = str(info.value)
    assert repr(field) in message
    assert repr(value)[:40] in message
    assert len(message) < 400
    assert raw.meta() == before


def test_newer_format_is_store_mismatch(raw: Raw) -> None:
    raw.open().close()
    raw.set_meta("format", "3")
    with pytest.raises(lockstore.StoreMismatch, match="newer"):
        raw.open()


@pytest.mark.parametrize("field", ["format", "codec", "signed", "store_id", "max_age", "clean_interval", "clean_limit"])
def test_missing_metadata_field_is_store_mismatch(raw: Raw, field: str) -> None:
    raw.open().close()
    raw.del_meta(field)
    before = raw.meta()
    with pytest.raises(lockstore.StoreMismatch, match=field):
        raw.open(max_age=1800)
    assert raw.meta() == before


def test_metadata_that_is_not_utf8_or_not_a_hash(redis_server: str) -> None:
    store = Raw("redis", redis_server)
    store.open().close()
    store.set_meta("codec", b"\xff\xfe")
    with pytest.raises(lockstore.StoreMismatch, match="'codec' is not UTF-8"):
        store.open()
    store = Raw("redis", redis_server)
    store.open().close()
    store.set_meta(b"\xff", "1")
    with pytest.raises(lockstore.StoreMismatch, match="not UTF-8"):
        store.open()
    store = Raw("redis", redis_server)
    redis.Redis.from_url(redis_server).set(f"{store.name}:meta", "pickle")
    with pytest.raises(lockstore.StoreMismatch, match="not lockstore metadata"):
        store.open()


# -- item 3 (remote): keys and records lockstore did not write -------------------------------------------


def test_redis_foreign_keys_and_short_records(redis_server: str) -> None:
    store = Raw("redis", redis_server)
    with store.open() as s:
        s["good"] = {"n": 1}
        store.put("short", b"\x01\x00abc")
        store.put("bad id!", s._codec.record(b"bad id!", b"{}", time.time(), time.time()))
        store.put(b"\xff\xfe", s._codec.record(b"x", b"{}", time.time(), time.time()))
        with pytest.raises(lockstore.CorruptRecord, match="shorter than its header"):
            s["short"]
        with pytest.raises(lockstore.CorruptRecord):
            s.touch("short")
        # Listed so that it can be found and removed; keys that hold no valid id are not sessions.
        assert sorted(s) == ["good", "short"]
        assert len(s) == 2
        assert s.stats()["live"] == 2
        bad = dict(s.verify())
        assert set(bad) == {
            "short",
            repr(f"{store.name}:{{bad id!}}".encode()),
            repr(store.name.encode() + b":{\xff\xfe}"),
        }
        assert "shorter than its header" in bad["short"]
        with pytest.raises(lockstore.CorruptRecord):
            list(s.records())
        # Swept by their times, foreign keys too; a record too short for its times is never swept.
        assert s.clean(max_idle=0) == 3
        assert sorted(s) == ["short"]
        s["short"] = {"fixed": True}  # an overwrite replaces a record too short to keep anything of
        assert s["short"] == {"fixed": True}
        store.put("short", b"\x01")
        del s["short"]
        assert "short" not in s


def test_postgres_foreign_rows_and_short_records(postgres_server: str) -> None:
    store = Raw("postgres", postgres_server)
    with store.open() as s:
        s["good"] = {"n": 1}
        now = time.time()
        store.put("short", b"\x01\x00abc", now)
        store.put("bad id!", s._codec.record(b"bad id!", b"{}", now, now))
        with pytest.raises(lockstore.CorruptRecord, match="shorter than its header"):
            s["short"]
        assert "bad id!" not in list(s)
        assert len(s) == len(list(s)) == s.stats()["live"] == 2
        bad = dict(s.verify())
        assert set(bad) == {"short", "bad id!"}
        with pytest.raises(lockstore.CorruptRecord, match=r"not a valid session id|shorter than its header"):
            list(s.records())
        del s["short"]
        assert sorted(s) == ["good"]


def test_edit_of_a_damaged_record_is_corrupt_record_and_leaves_it(raw: Raw) -> None:
    """edit() follows the one template (base.Edit) on a server too: a record too short for its header is
    CorruptRecord, as on the embedded stores, and stays for verify() to report; before, a server's edit()
    took it for an absent session and wrote over it."""
    with raw.open() as s:
        raw.put("short", b"\x01\x00abc")
        with pytest.raises(lockstore.CorruptRecord), s.edit("short") as session:
            session["n"] = 1
        with pytest.raises(lockstore.CorruptRecord):
            s["short"]
        assert "short" in dict(s.verify())
        s["short"] = {"fixed": True}  # a plain overwrite still replaces it
        assert s["short"] == {"fixed": True}


# -- item 5: credentials never show -------------------------------------------------------------------


@pytest.fixture
def redis_user(redis_server: str) -> Iterator[tuple[str, str]]:
    """A Redis ACL user with a password, on the shared server."""
    raw = redis.Redis.from_url(redis_server)
    user, password = f"u{uuid.uuid4().hex[:8]}", f"Pw-{uuid.uuid4().hex}"
    raw.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])
    try:
        yield user, password
    finally:
        raw.acl_deluser(user)


def test_redis_credentials_never_show(redis_server: str, redis_user: tuple[str, str]) -> None:
    user, password = redis_user
    hostport = redis_server.split("//")[1].split("/")[0]
    for url in (
        f"redis://{user}:{password}@{hostport}/0",
        f"redis://{hostport}/0?username={user}&password={password}",
    ):
        with open_redis(url, prefix=f"t{uuid.uuid4().hex[:12]}") as s:
            s["a"] = {"n": 1}
            shown = repr(s) + str(s.stats()) + s.path
            assert password not in shown
            assert "***" in s.path
    wrong = "Wr0ng-" + uuid.uuid4().hex
    with pytest.raises(lockstore.BackendUnavailable) as info:
        open_redis(f"redis://{user}:{wrong}@{hostport}/0", prefix="t" + uuid.uuid4().hex[:12], connect_timeout=1)
    assert user in str(info.value)  # the user name is kept
    no_secret_in(info.value, wrong)
    port = free_port()
    for url in (f"redis://:{password}@127.0.0.1:{port}/0", f"redis://{user}@127.0.0.1:{port}/0?password={password}"):
        with pytest.raises(lockstore.BackendUnavailable, match=f"127.0.0.1:{port}") as info:
            open_redis(url, connect_timeout=0.5)
        no_secret_in(info.value, password)


def test_redaction_rule() -> None:
    from lockstore.remote.base import redact_url, scrub

    shown, found = redact_url("redis://me:p%40ss@h:1/0?db=1&auth_token=T0k&SSL_KEYFILE=/k&Password=P+w#rest")
    assert shown == "redis://me:***@h:1/0?db=1&auth_token=***&SSL_KEYFILE=***&Password=***#***"
    assert {"p%40ss", "p@ss", "T0k", "/k", "P+w", "P w", "rest"} <= set(found)
    assert scrub("auth failed for p@ss (T0k)", found) == "auth failed for *** (***)"


def test_postgres_credentials_never_show(postgres_server: str) -> None:
    port = postgres_server.rsplit(":", 1)[1].split("/")[0]
    password = f"Pw-{uuid.uuid4().hex}"  # the shared server trusts 127.0.0.1: any password opens
    for url in (
        f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres?sslpassword=Ssl-{password}",
        f"host=127.0.0.1 port={port} user=postgres password={password} dbname=postgres",
    ):
        with open_postgres(url, table=f"t{uuid.uuid4().hex[:12]}") as s:
            s["a"] = {"n": 1}
            assert password not in repr(s) + str(s.stats())
    # A malformed password that libpq echoes in its error.
    with pytest.raises(ValueError, match="PostgreSQL URL") as info:
        open_postgres(f"postgresql://postgres:{password}%zz@127.0.0.1:{port}/postgres", table="t_unused")
    no_secret_in(info.value, password)
    free = free_port()
    with pytest.raises(lockstore.BackendUnavailable, match=r"127\.0\.0\.1") as info:
        open_postgres(f"postgresql://postgres:{password}@127.0.0.1:{free}/postgres", connect_timeout=1)
    no_secret_in(info.value, password)
    with pytest.raises(lockstore.BackendUnavailable) as info:
        open_postgres(f"host=127.0.0.1 port={free} user=postgres password={password}", connect_timeout=1)
    no_secret_in(info.value, password)


def test_postgres_wrong_password() -> None:
    server = PostgresServer()
    try:
        # Password authentication for every role but the superuser the set-up connects as.
        (server.data / "pg_hba.conf").write_text(
            "host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        server.start()
        right, wrong = f"Pw-{uuid.uuid4().hex}", f"Wr0ng-{uuid.uuid4().hex}"
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE app LOGIN SUPERUSER PASSWORD '{right}'")
        url = f"postgresql://app:{{}}@127.0.0.1:{server.port}/postgres"
        with pytest.raises(lockstore.BackendUnavailable, match="password authentication failed") as info:
            open_postgres(url.format(wrong), connect_timeout=2)
        no_secret_in(info.value, wrong)
        with open_postgres(url.format(right)) as s:
            s["a"] = {"n": 1}
            assert right not in repr(s) + str(s.stats())
    finally:
        server.remove()


# -- item 7: a rejected option writes nothing -------------------------------------------------------------

BAD_OPTIONS = [
    ({"secret": "short"}, ValueError),
    ({"secret": 12345}, TypeError),
    ({"codec": "yaml"}, lockstore.StoreMismatch),
    ({"max_age": math.inf}, ValueError),
    ({"max_age": -1}, ValueError),
    ({"max_age": 1e12}, ValueError),
    ({"clean_interval": math.nan}, ValueError),
    ({"clean_limit": 0}, ValueError),
    ({"clean_limit": 1.5}, ValueError),
    ({"pool_size": 0}, ValueError),
    ({"lock_ttl": 0}, ValueError),
    ({"connect_timeout": math.inf}, ValueError),
    ({"timeout": math.inf}, ValueError),
    ({"max_value_size": 0}, ValueError),
]


@pytest.mark.parametrize(("options", "error"), BAD_OPTIONS)
def test_rejected_option_writes_nothing(raw: Raw, options: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        raw.open(**options)
    assert not raw.exists()
    with raw.open() as s:  # nothing was left behind: the right options open it
        s["a"] = {"n": 1}
        assert s.stats()["signed"] is False


# -- item 8: the sweep rule is the store's -----------------------------------------------------------------


def test_sweep_rule_is_recorded_and_used(raw: Raw) -> None:
    with raw.open(max_age=1_209_600, clean_interval=60, clean_limit=10):
        pass
    meta = raw.meta()
    assert (meta["max_age"], meta["clean_interval"], meta["clean_limit"]) == ("1209600.0", "60.0", "10")
    with raw.open() as s:
        assert (s.max_age, s.clean_interval, s.clean_limit) == (1_209_600, 60, 10)
        now = time.time()
        s.put_record("idle", {"v": 1}, created=now - 90_000, last_access=now - 86_400)  # a day idle
        if raw.backend == "redis":  # native expiry follows the recorded max_age
            ttl = redis.Redis.from_url(raw.url).pttl(f"{raw.name}:{{idle}}") / 1000
            assert 1_209_600 - 86_400 - 60 < ttl <= 1_209_600 - 86_400
        assert s.clean() == 0  # a process opened without max_age sweeps by the store's rule
        assert s["idle"] == {"v": 1}
    for name, value, recorded in (
        ("max_age", 1800, "1209600.0"),
        ("clean_interval", 5, "60.0"),
        ("clean_limit", 7, "10"),
    ):
        with pytest.raises(lockstore.StoreMismatch, match=f"{name}={recorded}.*{name}={value}") as info:
            raw.open(**{name: value})
        assert f"without {name}=" in str(info.value)
    with raw.open(max_age=1_209_600.0, clean_interval=60, clean_limit=10) as s:
        assert s["idle"] == {"v": 1}


def test_new_store_records_the_default_rule(raw: Raw) -> None:
    raw.open().close()
    meta = raw.meta()
    assert meta["format"] == "2"
    assert (meta["max_age"], meta["clean_interval"], meta["clean_limit"]) == ("1800.0", "300.0", "1000")


def test_store_created_before_the_rule_asks_for_max_age_once(raw: Raw) -> None:
    raw.legacy("json", signed=False)
    before = raw.meta()
    with pytest.raises(lockstore.StoreMismatch, match="max_age="):
        raw.open()
    assert raw.meta() == before  # nothing recorded by a refused open
    with raw.open(max_age=600, clean_limit=50) as s:
        assert (s.max_age, s.clean_interval, s.clean_limit) == (600, 300, 50)
    with raw.open() as s:
        assert s.max_age == 600
    with pytest.raises(lockstore.StoreMismatch, match=r"max_age=600\.0"):
        raw.open(max_age=700)


def test_concurrent_first_opens_of_an_old_store_agree(raw: Raw) -> None:
    for _ in range(3):
        raw = raw.other()
        raw.legacy("json", signed=False)
        barrier = threading.Barrier(2)
        results: dict[float, Any] = {}

        def opener(
            max_age: float, raw: Raw = raw, barrier: threading.Barrier = barrier, results: dict[float, Any] = results
        ) -> None:
            barrier.wait(10)
            try:
                raw.open(max_age=max_age).close()
                results[max_age] = "ok"
            except lockstore.StoreMismatch as exc:
                results[max_age] = exc

        threads = [threading.Thread(target=opener, args=(age,)) for age in (600, 700)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        winners = [age for age, outcome in results.items() if outcome == "ok"]
        assert len(winners) == 1, results
        assert raw.meta()["max_age"] == repr(float(winners[0]))


# -- item 10: put_record_if ------------------------------------------------------------------------------


def test_put_record_if_rules(raw: Raw) -> None:
    now = [1_700_000_000.0]
    with raw.open(max_age=100, clock=lambda: now[0]) as s:
        t = now[0]
        assert s.put_record_if("a", {"v": 1}, created=t - 10, last_access=t - 5, expect=None)
        assert not s.put_record_if("a", {"v": 2}, created=t, last_access=t, expect=None)  # live
        assert not s.put_record_if("a", {"v": 3}, created=t, last_access=t, expect=t - 6)
        assert not s.put_record_if("absent", {"v": 3}, created=t, last_access=t, expect=t - 5)
        assert s["a"] == {"v": 1}
        assert s.put_record_if("a", {"v": 4}, created=t - 10, last_access=t - 1, expect=t - 5)
        assert s.record("a") == (({"v": 4}), t - 10, t - 1)
        now[0] += 200  # "a" has expired: it is no longer there to compare with
        assert not s.put_record_if("a", {"v": 5}, created=t, last_access=now[0], expect=t - 1)
        assert s.put_record_if("a", {"v": 6}, created=now[0], last_access=now[0], expect=None)
        assert s["a"] == {"v": 6}
        raw.put("short", b"\x01", now[0])
        assert s.put_record_if("short", {"v": 7}, created=now[0], last_access=now[0], expect=None)
        assert s["short"] == {"v": 7}


def test_put_record_if_waits_for_an_edit_and_never_overwrites_it(raw: Raw) -> None:
    with raw.open() as s:
        s["a"] = {"v": "old"}
        seen = s.record("a")
        assert seen is not None
        inside, leave = threading.Event(), threading.Event()

        def editor() -> None:
            with s.edit("a") as session:
                session["v"] = "newer"
                inside.set()
                leave.wait(10)

        outcome: list[bool] = []

        def copier() -> None:
            outcome.append(
                s.put_record_if(
                    "a", {"v": "copy"}, created=seen.created, last_access=time.time(), expect=seen.last_access
                )
            )

        threads = [threading.Thread(target=editor)]
        threads[0].start()
        assert inside.wait(10)
        threads.append(threading.Thread(target=copier))
        threads[1].start()
        time.sleep(0.3)
        assert threads[1].is_alive()  # waiting for the editor's lock
        leave.set()
        for t in threads:
            t.join(30)
        assert outcome == [False]
        assert s["a"] == {"v": "newer"}


def test_put_record_if_counts_exactly_among_concurrent_writers(raw: Raw) -> None:
    rounds = 40
    with raw.open(timeout=30) as s:
        s["n"] = {"n": 0}
        errors: list[BaseException] = []

        def cas() -> None:
            try:
                for _ in range(rounds):
                    while True:
                        rec = s.record("n")
                        value = {"n": rec.value["n"] + 1}
                        if s.put_record_if(
                            "n", value, created=rec.created, last_access=time.time(), expect=rec.last_access
                        ):
                            break
            except BaseException as exc:
                errors.append(exc)

        def edit() -> None:
            try:
                for _ in range(rounds):
                    with s.edit("n") as session:
                        session["n"] += 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=fn) for fn in (cas, cas, edit, edit)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        assert s["n"] == {"n": 4 * rounds}


def test_put_record_if_never_overwrites_a_touch_in_between(redis_server: str) -> None:
    # A touch does not take the session's lock: make one land between put_record_if's check and its
    # write, from the clock it reads in between.
    store = Raw("redis", redis_server)
    now = [1_700_000_000.0]
    toucher: list[Any] = []

    def clock() -> float:
        if toucher:
            other = toucher.pop()
            assert other.touch("a")
        return now[0]

    with store.open(clock=clock) as s, store.open(clock=lambda: now[0] + 30, touch_interval=0) as other:
        s["a"] = {"v": "old"}
        seen = s.record("a")
        assert seen is not None
        toucher.append(other)
        wrote = s.put_record_if("a", {"v": "copy"}, created=seen.created, last_access=now[0], expect=seen.last_access)
        assert not wrote
        assert s.record("a") == ({"v": "old"}, seen.created, now[0] + 30)
