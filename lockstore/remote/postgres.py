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
- The store's settings are rows ``(store, name, value)`` of the table ``lockstore_meta``: metadata
  format, codec, whether records are signed, a random store id bound into every signature, and the
  sweep rule (``max_age``, ``clean_interval``, ``clean_limit``). Nothing there is trusted: see
  :mod:`lockstore.remote.base`. They are created, read and checked in one transaction, so an open
  that fails leaves the database as it was.
- Rows lockstore did not write (an id that is not a valid session id, a record too short for its
  header) are reported by :meth:`PostgresStore.verify`; reading one raises
  :class:`~lockstore.CorruptRecord`. Iteration and ``len()`` count valid ids only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .. import record as fmt
from .._process import GENERATION
from ..base import Clock
from ..codec import Record
from ..errors import BackendUnavailable, CorruptRecord, LockTimeout, StoreClosed, StoreMismatch
from ..ids import describe_id, is_valid_id, validate_id
from ..record import HEADER_SIZE
from .base import (
    RemoteEdit,
    RemoteStore,
    Settings,
    check_options,
    creation_fields,
    is_secret_name,
    make_codec,
    parse_meta,
    redact_url,
    resolve,
)

logger = logging.getLogger(__name__)

PAGE = 500
CLEAN_BATCH = 5000
_TABLE_OK = re.compile(r"[a-z_][a-z0-9_]{0,47}").fullmatch
# The ids validate_id accepts, for the queries that list and count sessions.
_VALID_ID_SQL = "sid ~ '^[A-Za-z0-9_.~-]+$' AND length(sid) <= 256 AND sid <> '.' AND sid <> '..'"
_CONNINFO_PAIR = re.compile(r"([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'?|[^\s&]+)")
T = TypeVar("T")


def _display(url: str) -> tuple[str, list[str]]:
    """How the store shows *url* (user, host, port and database only) and every secret value it holds
    (passwords, and keywords named like one: see :func:`~lockstore.remote.base.is_secret_name`)."""
    found = redact_url(url)[1] if "://" in url else []
    # Also from the raw text: a conninfo string that does not parse can still be echoed by an error.
    found += [v.strip("'") for name, v in _CONNINFO_PAIR.findall(url) if is_secret_name(name)]
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://?", found
    found += [str(v) for name, v in params.items() if is_secret_name(name) and v]
    host = params.get("host", "")
    port = params.get("port", "")
    shown = f"postgresql://{params.get('user', '')}@{host}{':' + str(port) if port else ''}/{params.get('dbname', '')}"
    return shown, found


class _Edit(RemoteEdit):
    """The context manager returned by :meth:`PostgresStore.edit`: one transaction, the row locked."""

    _store: PostgresStore
    _conn: psycopg.Connection[Any] | None = None

    def _begin(self) -> bytes | None:
        self._conn, found = self._store._run(self._begin_txn, keep=True)
        self._since = time.monotonic()
        rec: bytes | None = found
        return rec

    def _begin_txn(self, conn: psycopg.Connection[Any]) -> bytes | None:
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

    def _end(self, rec: bytes | None, now: float) -> None:
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
                logger.debug("rollback of %s failed: %s", describe_id(self._sid), store._scrub(exc))
                return
            if (conn.broken or conn.closed) and time.monotonic() - self._since > store.lock_ttl:
                # The server ends a transaction left idle past idle_in_transaction_session_timeout
                # (lock_ttl) and closes its connection: the transaction was rolled back.
                raise LockTimeout(
                    f"the edit of {describe_id(self._sid)} took longer than lock_ttl={store.lock_ttl} s: the "
                    "server ended its transaction and nothing was written"
                ) from None
            raise store._error(exc, f"saving session {describe_id(self._sid)}") from None
        finally:
            store._putconn(conn)
        if rec is not None:
            store._clean_on_write(now)


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
        max_age: float | None = None,
        touch_interval: float,
        timeout: float,
        max_value_size: int,
        secret: bytes | str | None,
        clock: Clock | None,
        clean_interval: float | None = None,
        clean_limit: int | None = None,
        connect_timeout: float,
        lock_ttl: float,
        pool_size: int,
    ) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        if not isinstance(table, str) or not _TABLE_OK(table):
            raise ValueError(f"table must match [a-z_][a-z0-9_]{{0,47}}, not {table!r}")
        # Every option is checked before the server is touched: a rejected one writes nothing.
        check_options(
            codec=codec,
            touch_interval=touch_interval,
            secret=secret,
            max_value_size=max_value_size,
            max_age=max_age,
            clean_interval=clean_interval,
            clean_limit=clean_limit,
            timeout=timeout,
            connect_timeout=connect_timeout,
            lock_ttl=lock_ttl,
            pool_size=pool_size,
        )
        self.backend = "postgres"
        self.path, self._secrets = _display(url)
        self.table = table
        self.touch_interval = float(touch_interval)
        self.timeout = float(timeout)
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
        try:
            self._conninfo = make_conninfo(
                url,
                connect_timeout=max(2, math.ceil(self.connect_timeout)),
                options=options,
                application_name="lockstore",
            )
        except psycopg.Error as exc:
            raise ValueError(f"not a usable PostgreSQL URL or conninfo string: {self._scrub(exc)}") from None
        self._build_queries()
        self._gen = GENERATION[0]
        self._pool = self._new_pool()
        try:
            settings = self.setup(
                codec, secret is not None, max_age=max_age, clean_interval=clean_interval, clean_limit=clean_limit
            )
            self.max_age = settings.max_age
            self.clean_interval = settings.clean_interval
            self.clean_limit = settings.clean_limit
            self._codec = make_codec("postgres", table, settings, secret, max_value_size, self.path)
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
        self._q_delete = q("DELETE FROM {} WHERE sid = %s RETURNING rec").format(t)
        self._q_sweep = q(
            "DELETE FROM {t} WHERE sid IN (SELECT sid FROM {t} WHERE last_access < %s "
            "ORDER BY last_access LIMIT %s FOR UPDATE SKIP LOCKED)"
        ).format(t=t)
        self._q_page = q("SELECT sid, rec FROM {} WHERE sid > %s ORDER BY sid LIMIT %s").format(t)
        valid = q(_VALID_ID_SQL)
        self._q_keys = q("SELECT sid FROM {} WHERE sid > %s AND last_access >= %s AND {} ORDER BY sid LIMIT %s").format(
            t, valid
        )
        self._q_count = q("SELECT count(*) FROM {} WHERE last_access >= %s AND {}").format(t, valid)
        self._q_clear = q("DELETE FROM {}").format(t)
        self._q_stats = q(
            "SELECT count(*) FILTER (WHERE last_access >= %s AND {v}), "
            "count(*) FILTER (WHERE last_access < %s AND {v}), pg_total_relation_size({name}) FROM {t}"
        ).format(name=sql.Literal(self.table), t=t, v=valid)

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
        if GENERATION[0] != self._gen:
            with self._lock:
                if GENERATION[0] != self._gen:
                    # In a forked child: keep the inherited pool referenced forever, never closed, so that
                    # no goodbye message goes out on the parent's connections; use a new pool.
                    self._orphans.append(self._pool)
                    self._pool = self._new_pool()
                    self._gen = GENERATION[0]
        pool = self._pool
        if pool.closed:
            with self._lock:
                if pool.closed:
                    try:
                        pool.open(wait=True, timeout=self.connect_timeout)
                    except psycopg.OperationalError as exc:
                        pool.close()
                        raise self._error(self._why(exc), "connecting") from None
        return pool

    def _why(self, exc: psycopg.OperationalError) -> psycopg.OperationalError:
        """Why the pool got no connection: the pool only says it timed out (and logs the reason), so on
        that failure path alone, one direct attempt tells (a wrong password, an unknown database...)."""
        if not isinstance(exc, psycopg_pool.PoolTimeout):
            return exc
        try:
            psycopg.connect(self._conninfo, autocommit=True).close()
        except psycopg.OperationalError as direct:
            return direct
        return exc

    def _error(self, exc: psycopg.Error, doing: str) -> Exception:
        """The lockstore error for a client error, its text scrubbed of credentials. Raise it ``from None``:
        a traceback would print the client error's own text as it is."""
        if isinstance(exc, psycopg.errors.LockNotAvailable):
            return LockTimeout(f"{doing}: a session's row stayed locked in {self.table!r} for {self.timeout} s")
        if isinstance(exc, psycopg_pool.PoolTimeout):
            return BackendUnavailable(
                f"postgres at {self.path}: no connection within {self.connect_timeout} s "
                f"while {doing} (server down, or all {self._pool_size} pooled connections busy)"
            )
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | psycopg.errors.AdminShutdown):
            return BackendUnavailable(
                f"postgres at {self.path} is unavailable while {doing}: {type(exc).__name__}: {self._scrub(exc)}"
            )
        if isinstance(exc, psycopg.errors.IdleInTransactionSessionTimeout):
            return LockTimeout(f"{doing}: the edit took longer than lock_ttl={self.lock_ttl} s; nothing was written")
        return BackendUnavailable(
            f"postgres at {self.path} failed while {doing}: {type(exc).__name__}: {self._scrub(exc)}"
        )

    def _putconn(self, conn: psycopg.Connection[Any]) -> None:
        try:
            self._pool.putconn(conn)
        except (psycopg.Error, ValueError) as exc:  # pool closed meanwhile, or another pool after fork
            logger.debug("could not return a connection to the pool: %s", self._scrub(exc))
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
                raise self._error(exc, "getting a connection") from None
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
                raise self._error(exc, "running a query") from None
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

    def setup(
        self,
        codec: str | None = None,
        signed: bool = False,
        *,
        max_age: float | None = None,
        clean_interval: float | None = None,
        clean_limit: int | None = None,
    ) -> Settings:
        """Create the table, its index and its settings if missing, check the recorded settings against
        these options (see :func:`open_postgres`) and return them resolved.

        One transaction: if the settings are refused, the database is left as it was. Safe to run again
        and from several processes at once (advisory locks serialise it).
        """
        t = sql.Identifier(self.table)
        where = f"store {self.table!r} at {self.path}"
        create = creation_fields(codec, signed, max_age, clean_interval, clean_limit)
        select = "SELECT name, value FROM lockstore_meta WHERE store = %s"
        insert = "INSERT INTO lockstore_meta VALUES (%s, %s, %s) ON CONFLICT (store, name) DO NOTHING"

        def settle(rows: list[tuple[str, str]]) -> tuple[Settings | None, dict[str, str]]:
            recorded = parse_meta(rows, where)
            return resolve(
                recorded,
                where,
                codec=codec,
                signed=signed,
                max_age=max_age,
                clean_interval=clean_interval,
                clean_limit=clean_limit,
            )

        def run(conn: psycopg.Connection[Any]) -> Settings:
            with conn.transaction():
                # One lock for every store of the database (lockstore_meta is shared: two stores created
                # at once would race to create it), and the per-table one older versions take.
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('lockstore:setup'))")
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"lockstore:{self.table}",))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS lockstore_meta (store text NOT NULL, name text NOT NULL, "
                    "value text NOT NULL, PRIMARY KEY (store, name))"
                )
                rows = conn.execute(select, (self.table,)).fetchall()
                if not rows:
                    conn.cursor().executemany(insert, [(self.table, name, value) for name, value in create.items()])
                    rows = list(create.items())
                settings, fill = settle(rows)
                if settings is None:  # a store created before the sweep rule was recorded
                    conn.cursor().executemany(insert, [(self.table, name, value) for name, value in fill.items()])
                    settings, _ = settle(conn.execute(select, (self.table,)).fetchall())
                    if settings is None:  # pragma: no cover - the rows were just filled under the lock
                        raise StoreMismatch(f"{where}: its settings could not be recorded")
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
                return settings

        result: Settings = self._run(run)
        return result

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
                    atime, old_created = fmt.times(bytes(row[0]))
                    if now - atime <= self.max_age:
                        created = old_created
                rec = self._codec.record(sid.encode(), payload, now, created)
                conn.execute(self._q_upsert, (sid, rec, now))

        self._run(put)
        self._clean_on_write(now)

    def _take(self, sid: str) -> tuple[bytes | None, float]:
        rec = self._fetch_one_once(self._q_delete, (validate_id(sid),))  # DELETE ... RETURNING: one step
        return (None if rec is None else bytes(rec)), self.clock()

    def _fetch_one_once(self, query: sql.Composed, params: tuple[Any, ...]) -> Any:
        def run(conn: psycopg.Connection[Any]) -> Any:
            row = conn.execute(query, params).fetchone()
            return None if row is None else row[0]

        return self._run(run, retry=False)

    def __iter__(self) -> Iterator[str]:
        # Rows whose id is not valid are left out here and in len(); verify() reports them.
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
        old_atime = fmt.times(rec)[0]
        self._run(lambda conn: conn.execute(self._q_retime, (new, now, sid, old_atime)))

    def clean(self, progress: Callable[[int, int], None] | None = None, *, max_idle: float | None = None) -> int:
        """Remove every expired session, or every one idle over *max_idle* seconds (in batches,
        skipping rows an edit holds)."""
        idle = self._max_idle(max_idle)
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
            "clean_limit": self.clean_limit,
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
            batch = [(sid if is_valid_id(sid) else None, sid, bytes(raw)) for sid, raw in rows]
            yield from self._decode_batch(batch, self.clock(), expired, on_error)

    def put_record(self, sid: str, value: Any, *, created: float, last_access: float) -> None:
        validate_id(sid)
        rec = self._codec.record(sid.encode(), self._codec.encode(value), float(last_access), float(created))
        self._run(lambda conn: conn.execute(self._q_upsert, (sid, rec, float(last_access))))

    def put_record_if(self, sid: str, value: Any, *, created: float, last_access: float, expect: float | None) -> bool:
        """Store *value* under *sid* with the given times only if the stored live record's last access is
        *expect* exactly, or, with *expect* None, only if there is no live record (absent or expired);
        True if it wrote. Atomic: one transaction holds the session's row (``FOR UPDATE``, or the
        ``INSERT ... ON CONFLICT`` that claims an absent one) from the check to the write.

        Liveness is judged by the record's times, without decoding it (a record too short to hold them
        is not live).
        """
        validate_id(sid)
        atime = float(last_access)
        rec = self._codec.record(sid.encode(), self._codec.encode(value), atime, float(created))

        def put(conn: psycopg.Connection[Any]) -> bool:
            with conn.transaction():
                for _ in range(100):
                    row = conn.execute(self._q_lock, (sid,)).fetchone()
                    if row is not None:
                        if not self._may_put(bytes(row[0]) or None, expect, self.clock()):
                            return False
                        conn.execute(self._q_update, (rec, atime, sid))
                        return True
                    if expect is not None:
                        return False
                    # Absent: claim it. An insert at the same time makes this one wait for it, then do
                    # nothing; the loop then locks and checks that row.
                    if conn.execute(self._q_claim, (sid, rec, atime)).fetchone() is not None:
                        return True
            raise LockTimeout(f"session {describe_id(sid)} kept appearing and disappearing; try again")

        # Not retried: after a lost reply, whether it wrote cannot be told from a second attempt.
        wrote: bool = self._run(put, retry=False)
        return wrote

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if GENERATION[0] == self._gen:
            self._pool.close(timeout=self.connect_timeout)


def open_postgres(
    url: str,
    *,
    table: str = "lockstore_sessions",
    codec: str | None = None,
    max_age: float | None = None,
    touch_interval: float = 60,
    timeout: float = 10.0,
    max_value_size: int = 1 << 20,
    secret: bytes | str | None = None,
    clock: Clock | None = None,
    clean_interval: float | None = None,
    clean_limit: int | None = None,
    connect_timeout: float = 5.0,
    lock_ttl: float = 30.0,
    pool_size: int = 20,
) -> PostgresStore:
    """Open the store in *table* of the PostgreSQL database at *url*, creating the table if needed.

    Parameters
    ----------
    url
        A libpq URL or conninfo string: ``postgresql://user:password@host:port/dbname``. Only the user,
        host, port and database are ever shown (``repr()``, ``stats()``, messages); passwords and every
        keyword or query parameter whose name contains ``pass``, ``secret``, ``token`` or ``key`` are
        scrubbed from the client's error texts.
    table
        The table holding the sessions (``[a-z_][a-z0-9_]*``, at most 48 characters). Its settings are
        recorded in ``lockstore_meta``.
    codec
        ``"json"`` (the default for a new table), ``"msgpack"`` or ``"pickle"``. None opens an existing
        table with its recorded codec, except unsigned pickle, which runs code from whoever can write to
        the table: such a table opens only with ``codec="pickle"`` passed explicitly (:class:`UnsafeStore`
        otherwise). To move an existing pickle table off pickle, copy it into a new json table with
        ``lockstore copy``. Another codec than the recorded one raises :class:`StoreMismatch`.
    max_age, clean_interval, clean_limit
        The sweep rule, recorded when the table is created (defaults 1800 s, 300 s, 1000): a write sweeps
        at most *clean_limit* expired rows once *clean_interval* seconds have passed in this process (0
        turns it off; ``clean()`` sweeps everything). None takes the recorded value; an explicit
        different value raises :class:`StoreMismatch`. A table created before lockstore recorded them
        must be opened once with ``max_age=``, which is then recorded.
    touch_interval, max_value_size, secret, clock
        As for :func:`lockstore.open`. Whether a secret is used is recorded; opening the other way raises
        :class:`StoreMismatch`. Signatures bind the store's identity (table and a random store id), so
        a signed record copied from another table that shares the secret does not verify.
    timeout
        Seconds to wait for a session's row lock (``lock_timeout``), then :class:`LockTimeout`.
    connect_timeout
        Seconds to wait for a connection (the server, or a free pooled connection), then
        :class:`BackendUnavailable`.
    lock_ttl
        Seconds an ``edit()`` may hold its transaction idle; a stalled holder's transaction is then
        ended by the server (its write fails with :class:`LockTimeout`) and the row freed.
    pool_size
        Connections this store keeps at most (one per thread in use at once).

    Every option is checked before anything is written to the server.

    Raises
    ------
    BackendUnavailable
        The server cannot be reached.
    StoreMismatch
        The table was created with another codec, or with(out) a secret, or records another sweep rule;
        or its recorded settings are not valid.
    UnsafeStore
        The table records unsigned pickle and *codec* is not ``"pickle"``.
    ValueError, TypeError
        An option is out of range, or *url* does not parse (nothing was written).
    """
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
