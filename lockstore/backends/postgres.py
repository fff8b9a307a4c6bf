"""The PostgreSQL backend: ``lockstore.open("postgresql://user@host/db", table="lockstore_sessions")``.

One table holds the store, created on first open (or by :meth:`PostgresStore.setup`) with
``CREATE ... IF NOT EXISTS`` under a transaction-scoped advisory lock, so processes opening a new store
at once do not race::

    sid text COLLATE "C" PRIMARY KEY, rec bytea NOT NULL, last_access double precision NOT NULL
    index on (last_access)

``rec`` is the same record as in the embedded stores (times, optional signature, payload), so signing
and the codecs behave the same; ``last_access`` repeats the record's time for the index.

- ``edit()`` runs ``SELECT ... FOR UPDATE`` and the write in one transaction; a session that does not
  exist yet is claimed with ``INSERT ... ON CONFLICT DO NOTHING`` (the loser waits for the winner's
  commit and then locks its row), so two processes creating one session never lose an update.
- Expiry is by ``last_access`` against the store's clock; reads never return an expired session.
  Instead of per-shard cleaning, a write sweeps at most ``clean_limit`` expired rows through the index
  once ``clean_interval`` has passed in this process (``FOR UPDATE SKIP LOCKED``: it never waits for an
  editor); ``clean()`` removes all of them.
- Connections come from a ``psycopg_pool`` pool. ``lock_timeout`` bounds the wait for a session's row
  lock (:class:`~lockstore.LockTimeout`), ``idle_in_transaction_session_timeout`` (``lock_ttl``) ends an
  edit whose holder stalls; a server that is down or refuses connections raises
  :class:`~lockstore.BackendUnavailable` within ``connect_timeout``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..base import Clock
from ..codec import HEADER_SIZE, Codec, Record, codec_functions
from ..errors import BackendUnavailable, CorruptRecord, LockTimeout, StoreClosed, StoreMismatch
from ..ids import describe_id, validate_id
from ..opener import _check_numbers
from ._remote import RemoteStore

logger = logging.getLogger(__name__)

FORMAT = 1
PAGE = 500
CLEAN_BATCH = 5000
_TABLE_OK = re.compile(r"[a-z_][a-z0-9_]{0,47}").fullmatch
T = TypeVar("T")


def _redact(url: str) -> str:
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://?"
    host = params.get("host", "")
    port = params.get("port", "")
    return f"postgresql://{params.get('user', '')}@{host}{':' + str(port) if port else ''}/{params.get('dbname', '')}"


class _Edit:
    """The context manager returned by :meth:`PostgresStore.edit`: one transaction, the row locked."""

    def __init__(self, store: PostgresStore, sid: str, create: bool) -> None:
        self._store = store
        self._sid = validate_id(sid)
        self._create = create
        self._conn: psycopg.Connection[Any] | None = None

    def __enter__(self) -> dict[str, Any]:
        store = self._store
        sid = self._sid
        self._conn, rec = store._run(self._begin, keep=True)
        self._since = time.monotonic()
        try:
            now = store.clock()
            codec = store._codec
            key = sid.encode()
            if rec is not None and now - codec.times(rec)[2] > store.max_age:
                rec = None
            if rec is None:
                if not self._create:
                    raise KeyError(sid)
                value: Any = {}
                self._old: bytes | None = None
                self._created = now
                self._atime = -math.inf
            else:
                _, _, atime, created = codec.times(rec)
                body = codec.payload(key, rec)
                value = codec.loads(body, key)
                if not isinstance(value, dict):
                    raise TypeError(f"edit() needs a dict session; {describe_id(sid)} holds a {type(value).__name__}")
                self._old = bytes(body)
                self._created = created
                self._atime = atime
            self._value = value
            return value
        except BaseException:
            self._finish(None, 0.0)
            raise

    def _begin(self, conn: psycopg.Connection[Any]) -> bytes | None:
        """BEGIN and lock the session's row, creating it (uncommitted, empty) if absent and wanted."""
        store = self._store
        # No pipeline mode here: a server does not apply idle_in_transaction_session_timeout to a
        # transaction opened in a pipeline, and lock_ttl relies on it (measured: no faster either).
        conn.execute("BEGIN")
        cur = conn.execute(store._q_lock, (self._sid,))
        for _ in range(100):
            row = cur.fetchone()
            if row is not None:
                return bytes(row[0]) or None
            if not self._create:
                return None
            # Nobody has this session: claim it. If another transaction inserts it at the same time,
            # this INSERT waits for that one to end, does nothing, and the loop locks its row.
            cur = conn.execute(store._q_claim, (self._sid, b"", store.clock()))
            if cur.fetchone() is not None:
                return None
            cur = conn.execute(store._q_lock, (self._sid,))
        raise LockTimeout(f"session {describe_id(self._sid)} kept appearing and disappearing; try again")

    def _finish(self, rec: bytes | None, now: float) -> None:
        """COMMIT *rec* (if not None), else ROLLBACK; always give the connection back."""
        store = self._store
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if rec is None:
                conn.execute("ROLLBACK")
            else:
                conn.execute(store._q_update, (rec, now, self._sid))
                conn.execute("COMMIT")
        except psycopg.Error as exc:
            if rec is None:
                logger.debug("rollback of %s failed: %s", describe_id(self._sid), exc)
                return
            if (conn.broken or conn.closed) and time.monotonic() - self._since > store.lock_ttl:
                # The server ends a transaction left idle past idle_in_transaction_session_timeout
                # (lock_ttl) and closes its connection: the transaction was rolled back.
                raise LockTimeout(
                    f"the edit of {describe_id(self._sid)} took longer than lock_ttl={store.lock_ttl} s: the "
                    "server ended its transaction and nothing was written"
                ) from exc
            raise store._error(exc, f"saving session {describe_id(self._sid)}") from exc
        finally:
            store._putconn(conn)
        if rec is not None:
            store._clean_on_write(now)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        store = self._store
        if exc_type is not None:
            self._finish(None, 0.0)
            return
        try:
            value = self._value
            rec = None
            now = store.clock()
            if self._old is not None or value:  # just in time: an absent session left empty is not created
                codec = store._codec
                payload = codec.encode(value)
                if payload != self._old or now - self._atime >= store.touch_interval:
                    rec = codec.record(self._sid.encode(), payload, now, self._created)
        except BaseException:
            self._finish(None, 0.0)
            raise
        self._finish(rec, now)


class PostgresStore(RemoteStore):
    """A store in a PostgreSQL table: see :func:`open_postgres` and :func:`lockstore.open`.

    Notes
    -----
    Thread safe: threads share one connection pool, each operation on its own connection. Process
    safe: every process (or machine) opens its own store; ``edit()`` is atomic across all of them
    through row locks. Fork safe: a child never touches the connections it inherited (closing them
    would end the parent's sessions); it opens a new pool on first use.
    """

    def __init__(
        self,
        url: str,
        *,
        table: str,
        codec: str | None,
        max_age: float,
        touch_interval: float,
        timeout: float,
        max_value_size: int,
        secret: bytes | str | None,
        clock: Clock | None,
        clean_interval: float,
        clean_limit: int,
        connect_timeout: float,
        lock_ttl: float,
        pool_size: int,
    ) -> None:
        if not isinstance(table, str) or not _TABLE_OK(table):
            raise ValueError(f"table must match [a-z_][a-z0-9_]{{0,47}}, not {table!r}")
        for name, number in (("connect_timeout", connect_timeout), ("lock_ttl", lock_ttl)):
            if isinstance(number, bool) or not isinstance(number, int | float) or not number > 0:
                raise ValueError(f"{name} must be a number of seconds > 0, not {number!r}")
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be a positive int, not {pool_size!r}")
        if codec is not None:
            codec_functions(codec)
        self.backend = "postgres"
        self.path = _redact(url)
        self.table = table
        self.max_age = float(max_age)
        self.touch_interval = float(touch_interval)
        self.timeout = float(timeout)
        self.clean_interval = float(clean_interval)
        self.clean_limit = clean_limit
        self.connect_timeout = float(connect_timeout)
        self.lock_ttl = float(lock_ttl)
        self.clock = clock or time.time
        self._pool_size = pool_size
        self._closed = False
        self._lock = threading.Lock()
        self._next_clean = -math.inf
        self._orphans: list[psycopg_pool.ConnectionPool[Any]] = []
        options = (
            f"-c lock_timeout={math.ceil(self.timeout * 1000)} "
            f"-c idle_in_transaction_session_timeout={math.ceil(self.lock_ttl * 1000)}"
        )
        self._conninfo = make_conninfo(
            url, connect_timeout=max(2, math.ceil(self.connect_timeout)), options=options, application_name="lockstore"
        )
        self._build_queries()
        self._pid = os.getpid()
        self._pool = self._new_pool()
        try:
            self._codec = Codec(self.setup(codec, secret is not None), secret, max_value_size)
            if self._codec.name == "pickle" and not self._codec.signed:
                # Unpickling runs code: on a server, whoever can write to it could run code here.
                logger.warning(
                    "store at %s uses pickle without a secret: anyone who can write to this table can run "
                    "code in this process; pass secret= (signed records) or codec='json'",
                    self.path,
                )
        except BaseException:
            self.close()
            raise

    # -- plumbing ----------------------------------------------------------------------------

    def _build_queries(self) -> None:
        t = sql.Identifier(self.table)
        q = sql.SQL
        self._q_get = q("SELECT rec FROM {} WHERE sid = %s").format(t)
        self._q_atime = q("SELECT last_access FROM {} WHERE sid = %s").format(t)
        self._q_lock = q("SELECT rec FROM {} WHERE sid = %s FOR UPDATE").format(t)
        self._q_lock_header = q("SELECT substr(rec, 1, {}) FROM {} WHERE sid = %s FOR UPDATE").format(
            sql.Literal(HEADER_SIZE), t
        )
        self._q_claim = q(
            "INSERT INTO {} (sid, rec, last_access) VALUES (%s, %s, %s) ON CONFLICT (sid) DO NOTHING RETURNING 1"
        ).format(t)
        self._q_update = q("UPDATE {} SET rec = %s, last_access = %s WHERE sid = %s").format(t)
        self._q_upsert = q(
            "INSERT INTO {} (sid, rec, last_access) VALUES (%s, %s, %s) ON CONFLICT (sid) "
            "DO UPDATE SET rec = EXCLUDED.rec, last_access = EXCLUDED.last_access"
        ).format(t)
        self._q_retime = q("UPDATE {} SET rec = %s, last_access = %s WHERE sid = %s AND last_access = %s").format(t)
        self._q_delete = q("DELETE FROM {} WHERE sid = %s RETURNING last_access").format(t)
        self._q_sweep = q(
            "DELETE FROM {t} WHERE sid IN (SELECT sid FROM {t} WHERE last_access < %s "
            "ORDER BY last_access LIMIT %s FOR UPDATE SKIP LOCKED)"
        ).format(t=t)
        self._q_page = q("SELECT sid, rec FROM {} WHERE sid > %s ORDER BY sid LIMIT %s").format(t)
        self._q_keys = q("SELECT sid FROM {} WHERE sid > %s AND last_access >= %s ORDER BY sid LIMIT %s").format(t)
        self._q_count = q("SELECT count(*) FROM {} WHERE last_access >= %s").format(t)
        self._q_clear = q("DELETE FROM {}").format(t)
        self._q_stats = q(
            "SELECT count(*) FILTER (WHERE last_access >= %s), count(*) FILTER (WHERE last_access < %s), "
            "pg_total_relation_size({}) FROM {}"
        ).format(sql.Literal(self.table), t)

    def _new_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        return psycopg_pool.ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=self._pool_size,
            kwargs={"autocommit": True},
            open=False,
            timeout=self.connect_timeout,
            reconnect_timeout=max(60.0, self.connect_timeout),
            num_workers=1,
            name=f"lockstore-{self.table}",
        )

    def _current_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        if self._closed:
            raise StoreClosed(f"store {self.table!r} at {self.path} is closed")
        if os.getpid() != self._pid:
            with self._lock:
                if os.getpid() != self._pid:
                    # In a forked child: keep the inherited pool referenced forever, never closed, so that
                    # no goodbye message goes out on the parent's connections; use a new pool.
                    self._orphans.append(self._pool)
                    self._pool = self._new_pool()
                    self._pid = os.getpid()
        pool = self._pool
        if pool.closed:
            with self._lock:
                if pool.closed:
                    try:
                        pool.open(wait=True, timeout=self.connect_timeout)
                    except psycopg.OperationalError as exc:
                        pool.close()
                        raise self._error(exc, "connecting") from exc
        return pool

    def _error(self, exc: psycopg.Error, doing: str) -> Exception:
        if isinstance(exc, psycopg.errors.LockNotAvailable):
            return LockTimeout(f"{doing}: a session's row stayed locked in {self.table!r} for {self.timeout} s")
        if isinstance(exc, psycopg_pool.PoolTimeout):
            return BackendUnavailable(
                f"postgres at {self.path}: no connection within {self.connect_timeout} s "
                f"while {doing} (server down, or all {self._pool_size} pooled connections busy)"
            )
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | psycopg.errors.AdminShutdown):
            return BackendUnavailable(f"postgres at {self.path} is unavailable while {doing}: {exc}")
        if isinstance(exc, psycopg.errors.IdleInTransactionSessionTimeout):
            return LockTimeout(f"{doing}: the edit took longer than lock_ttl={self.lock_ttl} s; nothing was written")
        return BackendUnavailable(f"postgres at {self.path} failed while {doing}: {exc}")

    def _putconn(self, conn: psycopg.Connection[Any]) -> None:
        try:
            self._pool.putconn(conn)
        except (psycopg.Error, ValueError) as exc:  # pool closed meanwhile, or another pool after fork
            logger.debug("could not return a connection to the pool: %s", exc)
            conn.close()

    def _run(self, fn: Callable[[psycopg.Connection[Any]], T], *, retry: bool = True, keep: bool = False) -> Any:
        """``fn(conn)`` on a pooled connection, errors mapped; returns its result, or (conn, result)
        with *keep* (the caller then gives the connection back with :meth:`_putconn`).

        A broken connection is retried once after :meth:`ConnectionPool.check` has dropped the dead
        ones: after a server restart every pooled connection is dead. Only for *retry* calls, which are
        safe to repeat.
        """
        for attempt in (0, 1):
            pool = self._current_pool()
            try:
                conn = pool.getconn()
            except psycopg.Error as exc:
                raise self._error(exc, "getting a connection") from exc
            try:
                result = fn(conn)
            except psycopg.Error as exc:
                broken = conn.broken or conn.closed
                if not broken and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    with contextlib.suppress(psycopg.Error):
                        conn.rollback()
                self._putconn(conn)
                if broken and retry and attempt == 0:
                    with contextlib.suppress(psycopg.Error):
                        pool.check()
                    continue
                raise self._error(exc, "running a query") from exc
            except BaseException:
                if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    with contextlib.suppress(psycopg.Error):
                        conn.rollback()
                self._putconn(conn)
                raise
            if keep:
                return conn, result
            self._putconn(conn)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def setup(self, codec: str | None = None, signed: bool = False) -> str:
        """Create the table, its index and its settings row if missing; return the recorded codec.

        Safe to run again and from several processes at once (an advisory lock serialises it).
        """
        t = sql.Identifier(self.table)
        fields = {"format": str(FORMAT), "codec": codec or "pickle", "signed": "1" if signed else "0"}

        def create(conn: psycopg.Connection[Any]) -> dict[str, str]:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"lockstore:{self.table}",))
                conn.execute(
                    sql.SQL(
                        'CREATE TABLE IF NOT EXISTS {} (sid text COLLATE "C" PRIMARY KEY, '
                        "rec bytea NOT NULL, last_access double precision NOT NULL)"
                    ).format(t)
                )
                conn.execute(
                    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (last_access)").format(
                        sql.Identifier(f"{self.table}_last_access"), t
                    )
                )
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS lockstore_meta (store text NOT NULL, name text NOT NULL, "
                    "value text NOT NULL, PRIMARY KEY (store, name))"
                )
                exists = conn.execute("SELECT 1 FROM lockstore_meta WHERE store = %s", (self.table,)).fetchone()
                if exists is None:
                    for name, value in fields.items():
                        conn.execute("INSERT INTO lockstore_meta VALUES (%s, %s, %s)", (self.table, name, value))
                rows = conn.execute("SELECT name, value FROM lockstore_meta WHERE store = %s", (self.table,))
                return {name: value for name, value in rows.fetchall()}

        recorded: dict[str, str] = self._run(create)
        where = f"store {self.table!r} at {self.path}"
        if int(recorded.get("format", "0")) > FORMAT:
            raise StoreMismatch(f"{where} has format {recorded.get('format')}, newer than this lockstore reads")
        if codec is not None and recorded.get("codec") != codec:
            raise StoreMismatch(f"{where} was created with codec={recorded.get('codec')!r}; opened with {codec!r}")
        if (recorded.get("signed") == "1") != signed:
            raise StoreMismatch(
                f"{where} was created {'with' if recorded.get('signed') == '1' else 'without'} "
                "a secret; open it the same way"
            )
        return recorded.get("codec", "pickle")

    def _fetch_one(self, query: sql.Composed, params: tuple[Any, ...]) -> Any:
        def run(conn: psycopg.Connection[Any]) -> Any:
            row = conn.execute(query, params).fetchone()
            return None if row is None else row[0]

        return self._run(run)

    def _get(self, sid: str) -> bytes | None:
        rec = self._fetch_one(self._q_get, (validate_id(sid),))
        return None if rec is None else bytes(rec)

    def _clean_on_write(self, now: float) -> None:
        """Sweep up to ``clean_limit`` expired rows once ``clean_interval`` has passed in this process."""
        if self.clean_interval <= 0 or now < self._next_clean:
            return
        self._next_clean = now + self.clean_interval
        try:
            self._run(lambda conn: conn.execute(self._q_sweep, (now - self.max_age, self.clean_limit)))
        except BackendUnavailable as exc:  # the write itself went through; sweeping can wait
            logger.debug("clean on write skipped: %s", exc)

    def _pages(self, query: sql.Composed, *params: Any) -> Iterator[list[tuple[Any, ...]]]:
        """Rows of a keyset-paginated query, by page, without a long transaction."""
        last = ""
        while True:

            def page(conn: psycopg.Connection[Any], last: str = last) -> list[tuple[Any, ...]]:
                return conn.execute(query, (last, *params, PAGE)).fetchall()

            rows = self._run(page)
            if rows:
                yield rows
            if len(rows) < PAGE:
                return
            last = rows[-1][0]

    # -- the mapping -------------------------------------------------------------------------

    def __contains__(self, sid: object) -> bool:
        atime = self._fetch_one(self._q_atime, (validate_id(sid),))
        return atime is not None and self.clock() - atime <= self.max_age

    def __setitem__(self, sid: str, value: Any) -> None:
        validate_id(sid)
        payload = self._codec.encode(value)
        now = self.clock()

        def put(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                row = conn.execute(self._q_lock_header, (sid,)).fetchone()
                created = now
                if row is not None and len(row[0]) >= HEADER_SIZE:
                    _, _, atime, old_created = Codec.times(bytes(row[0]))
                    if now - atime <= self.max_age:
                        created = old_created
                rec = self._codec.record(sid.encode(), payload, now, created)
                conn.execute(self._q_upsert, (sid, rec, now))

        self._run(put)
        self._clean_on_write(now)

    def __delitem__(self, sid: str) -> None:
        atime = self._fetch_one_once(self._q_delete, (validate_id(sid),))
        if atime is None or self.clock() - atime > self.max_age:
            raise KeyError(sid)

    def _fetch_one_once(self, query: sql.Composed, params: tuple[Any, ...]) -> Any:
        def run(conn: psycopg.Connection[Any]) -> Any:
            row = conn.execute(query, params).fetchone()
            return None if row is None else row[0]

        return self._run(run, retry=False)

    def __iter__(self) -> Iterator[str]:
        for rows in self._pages(self._q_keys, self.clock() - self.max_age):
            for (sid,) in rows:
                yield sid

    def __len__(self) -> int:
        return int(self._fetch_one(self._q_count, (self.clock() - self.max_age,)))

    def clear(self) -> None:
        """Delete every session, live or expired."""
        self._run(lambda conn: conn.execute(self._q_clear))

    # -- beyond the mapping ----------------------------------------------------------------

    def edit(self, sid: str, *, create: bool = True) -> _Edit:
        """Atomic read-modify-write of one session, across processes and machines::

            with store.edit(sid) as session:     # a dict; the session's row is locked (FOR UPDATE)
                session["n"] = session.get("n", 0) + 1

        Saved on a clean exit if changed, discarded on an exception. A new empty dict if the session is
        absent (or :class:`KeyError` with ``create=False``). The value must be a dict.
        """
        return _Edit(self, sid, create)

    def _touch_record(self, sid: str, rec: bytes, now: float) -> None:
        new = self._codec.retime(sid.encode(), rec, now)
        old_atime = Codec.times(rec)[2]
        self._run(lambda conn: conn.execute(self._q_retime, (new, now, sid, old_atime)))

    def clean(self, progress: Callable[[int, int], None] | None = None, *, max_idle: float | None = None) -> int:
        """Remove every expired session, or every one idle over *max_idle* seconds (in batches,
        skipping rows an edit holds)."""
        idle = self.max_age if max_idle is None else min(float(max_idle), self.max_age)
        removed = batches = 0
        while True:
            now = self.clock()
            cutoff = now - idle

            def sweep(conn: psycopg.Connection[Any], cutoff: float = cutoff) -> int:
                return conn.execute(self._q_sweep, (cutoff, CLEAN_BATCH)).rowcount

            count: int = self._run(sweep)
            removed += count
            batches += 1
            done = count < CLEAN_BATCH
            if progress is not None:
                progress(batches, batches if done else batches + 1)
            if done:
                self._next_clean = now + self.clean_interval
                return removed

    def stats(self) -> dict[str, Any]:
        cutoff = self.clock() - self.max_age

        def run(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
            row = conn.execute(self._q_stats, (cutoff, cutoff)).fetchone()
            version = conn.info.server_version
            assert row is not None
            return (*row, version)

        live, expired, size, version = self._run(run)
        return {
            "backend": self.backend,
            "path": self.path,
            "table": self.table,
            "shards": 1,
            "codec": self._codec.name,
            "signed": self._codec.signed,
            "max_age": self.max_age,
            "clean_interval": self.clean_interval,
            "live": live,
            "expired": expired,
            "bytes": size,
            "per_shard": [{"shard": 0, "live": live, "expired": expired, "last_clean": None}],
            "server": f"postgresql {version // 10000}.{version % 10000}",
        }

    def verify(self) -> list[tuple[str, str]]:
        bad: list[tuple[str, str]] = []
        for rows in self._pages(self._q_page):
            for sid, rec in rows:
                try:
                    validate_id(sid)
                    self._codec.decode(sid.encode(), bytes(rec))
                except Exception as exc:
                    bad.append((sid, str(exc)))
        return bad

    def records(
        self, *, expired: bool = False, on_error: Callable[[str, CorruptRecord], None] | None = None
    ) -> Iterator[tuple[str, Record]]:
        for rows in self._pages(self._q_page):
            now = self.clock()
            for sid, raw in rows:
                rec = bytes(raw)
                try:
                    if not rec or self._live(rec, now) == expired:
                        continue
                    _, _, atime, created = Codec.times(rec)
                    value = self._codec.decode(sid.encode(), rec)
                except CorruptRecord as exc:
                    if on_error is None:
                        raise CorruptRecord(f"session {describe_id(sid)}: {exc}") from None
                    on_error(sid, exc)
                    continue
                yield sid, Record(value, created, atime)

    def put_record(self, sid: str, value: Any, *, created: float, last_access: float) -> None:
        validate_id(sid)
        rec = self._codec.record(sid.encode(), self._codec.encode(value), float(last_access), float(created))
        self._run(lambda conn: conn.execute(self._q_upsert, (sid, rec, float(last_access))))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if os.getpid() == self._pid:
            self._pool.close(timeout=self.connect_timeout)


def open_postgres(
    url: str,
    *,
    table: str = "lockstore_sessions",
    codec: str | None = None,
    max_age: float = 1800,
    touch_interval: float = 60,
    timeout: float = 10.0,
    max_value_size: int = 1 << 20,
    secret: bytes | str | None = None,
    clock: Clock | None = None,
    clean_interval: float = 300,
    clean_limit: int = 1000,
    connect_timeout: float = 5.0,
    lock_ttl: float = 30.0,
    pool_size: int = 20,
) -> PostgresStore:
    """Open the store in *table* of the PostgreSQL database at *url*, creating the table if needed.

    Parameters
    ----------
    url
        A libpq URL or conninfo string: ``postgresql://user:password@host:port/dbname``.
    table
        The table holding the sessions (``[a-z_][a-z0-9_]*``, at most 48 characters). Its codec and
        whether a secret is used are recorded in ``lockstore_meta``; opening with others raises
        :class:`StoreMismatch`.
    codec, max_age, touch_interval, max_value_size, secret, clock
        As for :func:`lockstore.open`.
    timeout
        Seconds to wait for a session's row lock (``lock_timeout``), then :class:`LockTimeout`.
    clean_interval, clean_limit
        A write sweeps at most *clean_limit* expired rows once *clean_interval* seconds have passed
        in this process (0 turns it off; ``clean()`` sweeps everything).
    connect_timeout
        Seconds to wait for a connection (the server, or a free pooled connection), then
        :class:`BackendUnavailable`.
    lock_ttl
        Seconds an ``edit()`` may hold its transaction idle; a stalled holder's transaction is then
        ended by the server (its write fails with :class:`LockTimeout`) and the row freed.
    pool_size
        Connections this store keeps at most (one per thread in use at once).

    Raises
    ------
    BackendUnavailable
        The server cannot be reached.
    StoreMismatch
        The table was created with another codec, or with(out) a secret.
    """
    _check_numbers(max_age, clean_interval, touch_interval, timeout, max_value_size, clean_limit, None)
    return PostgresStore(
        url,
        table=table,
        codec=codec,
        max_age=max_age,
        touch_interval=touch_interval,
        timeout=timeout,
        max_value_size=max_value_size,
        secret=secret,
        clock=clock,
        clean_interval=clean_interval,
        clean_limit=clean_limit,
        connect_timeout=connect_timeout,
        lock_ttl=lock_ttl,
        pool_size=pool_size,
    )


__all__ = ["PostgresStore", "open_postgres"]
