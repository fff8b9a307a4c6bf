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
  lock (:class:`~lockstore.LockTimeout`); a server that is down or refuses connections raises
  :class:`~lockstore.BackendUnavailable` within ``connect_timeout``. An ``edit()`` keeps its transaction on a
  lease of ``lock_ttl`` renewed while its holder lives (:mod:`lockstore.remote.postgres_locks`): a holder killed
  frees the row at once, one paused past the lease gets :class:`~lockstore.LockLost` and writes nothing.
- :meth:`PostgresStore.request_locks` gives the web integrations a request-long lock kept on the server (an
  advisory lock per session: see :mod:`lockstore.remote.postgres_locks`, which says why not a row lock).
- ``durability="system"`` sets ``synchronous_commit = on``: a write is acknowledged once the server has flushed
  its WAL, so a crash of the server loses no acknowledged write (this needs the server's ``fsync`` on, its
  default: with ``fsync = off`` only a crash of the server process, not of its machine, is survived).
  ``"process"`` (the default) sets ``synchronous_commit = off``: a commit is acknowledged before its WAL is
  flushed, so a crash of the server (not of this process) may lose the last few hundred milliseconds of
  acknowledged writes (up to three times ``wal_writer_delay``); it never corrupts or half-writes one.
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

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, Unpack

import psycopg
from psycopg import sql

from .. import record as fmt
from ..errors import BackendUnavailable, LockTimeout, StoreMismatch
from ..ids import describe_id, is_valid_id, validate_id
from ..options import Options, PostgresOptions
from ..record import HEADER_SIZE
from .base import Make, RemoteStore
from .meta import Pairs, Settings, creation_fields
from .postgres_locks import HoldPool, PostgresEdit, PostgresLocks, ServerHold, holding
from .postgres_pool import Connections, display

logger = logging.getLogger(__name__)
T = TypeVar("T")

PAGE = 500
CLEAN_BATCH = 5000
# The ids validate_id accepts, for the queries that list and count sessions.
_VALID_ID_SQL = "sid ~ '^[A-Za-z0-9_.~-]+$' AND length(sid) <= 256 AND sid <> '.' AND sid <> '..'"


class PostgresStore(Connections, RemoteStore):
    """A store in a PostgreSQL table: see :func:`open_postgres` and :func:`lockstore.open`.

    Notes
    -----
    Thread safe: threads share one connection pool, each operation on its own connection. Process
    safe: every process (or machine) opens its own store; ``edit()`` is atomic across all of them
    through row locks. Fork safe: a child never touches the connections it inherited (closing them
    would end the parent's sessions); it opens a new pool on first use.
    """

    backend = "postgres"
    name_option = "table"
    defaults = {"table": "lockstore_sessions", "pool_size": 20}
    edit_class = PostgresEdit
    _display = staticmethod(display)

    @property
    def table(self) -> str:
        """The table holding the sessions."""
        return self.name

    def __init__(self, url: str, options: Options | None = None, *, create: bool = True) -> None:
        # durability is taken here until the shared options list it for server stores (issue 12)
        options = Options() if options is None else options
        self.durability = options.durability
        super().__init__(url, dataclasses.replace(options, durability="process"), create=create)
        self.options = options

    def _connect(self, url: str) -> None:
        self._next_clean = -math.inf
        self._request_holds: dict[int, ServerHold] = {}
        self._holds: HoldPool | None = None
        self._build_queries()
        self._open_pool(url)

    def request_locks(self, *, stripes: int = 0, timeout: float | None = None) -> PostgresLocks:
        """The request-long locks of this store, kept on the server (one advisory lock per session: *stripes* is
        not needed there): what the web integrations use with no ``lock_dir``. See
        :mod:`lockstore.remote.postgres_locks`; *timeout* defaults to the store's."""
        return PostgresLocks(self, timeout=self.timeout if timeout is None else timeout)

    def _hold_pool(self) -> HoldPool:
        with self._close_lock:
            if self._holds is None:
                self._holds = HoldPool(self)
            return self._holds

    def _disconnect(self) -> None:
        super()._disconnect()
        if self._holds is not None:
            self._holds.close()

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

    def setup(self, codec: str | None = None, signed: bool | None = None) -> Settings:
        """Create the table, its index and its settings if missing, and check the recorded settings against
        the options this store was opened with (and *codec*, *signed* if given); returns them resolved. Safe
        to run again, and from several processes at once."""
        if signed is not None and signed != self._codec.signed:
            raise StoreMismatch(f"store {self.table!r} at {self.path} is {'' if self._codec.signed else 'not '}signed")
        options = self.options if codec is None else dataclasses.replace(self.options, codec=codec)
        return self._settle(creation_fields(options), options)

    def _record_meta(
        self, new: dict[str, str] | None, settle: Callable[[Callable[[dict[str, str]], Pairs]], Settings]
    ) -> Settings:
        # One transaction: if the settings are refused, the database is left as it was.
        t = sql.Identifier(self.table)
        select = "SELECT name, value FROM lockstore_meta WHERE store = %s"
        insert = "INSERT INTO lockstore_meta VALUES (%s, %s, %s) ON CONFLICT (store, name) DO NOTHING"

        def run(conn: psycopg.Connection[Any]) -> Settings:
            def exchange(fill: dict[str, str]) -> Pairs:
                if new is None and conn.execute("SELECT to_regclass('lockstore_meta')").fetchone() == (None,):
                    return []
                conn.cursor().executemany(insert, [(self.table, name, value) for name, value in fill.items()])
                rows = conn.execute(select, (self.table,)).fetchall()
                if not rows and new is not None:
                    conn.cursor().executemany(insert, [(self.table, name, value) for name, value in new.items()])
                    rows = list(new.items())
                return rows

            with conn.transaction():
                # One lock for every store of the database (lockstore_meta is shared: two stores created
                # at once would race to create it), and the per-table one older versions take.
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('lockstore:setup'))")
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"lockstore:{self.table}",))
                if new is not None:
                    conn.execute(
                        "CREATE TABLE IF NOT EXISTS lockstore_meta (store text NOT NULL, name text NOT NULL, "
                        "value text NOT NULL, PRIMARY KEY (store, name))"
                    )
                settings = settle(exchange)
                if new is not None:
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

    def _fetch_one(self, query: sql.Composed, params: tuple[Any, ...], *, retry: bool = True) -> Any:
        def run(conn: psycopg.Connection[Any]) -> Any:
            row = conn.execute(query, params).fetchone()
            return None if row is None else row[0]

        return self._run(run, retry=retry)

    def _get(self, sid: str) -> bytes | None:
        rec = self._fetch_one(self._q_get, (validate_id(sid),))
        return None if rec is None else bytes(rec)

    def _last_access(self, sid: str) -> float | None:
        atime: float | None = self._fetch_one(self._q_atime, (sid,))
        return atime

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

    def _put(self, sid: str, make: Make, *, retry: bool) -> bool:
        def put(conn: psycopg.Connection[Any]) -> float | None:
            with conn.transaction():
                for _ in range(100):
                    now = self.clock()
                    row = conn.execute(self._q_lock_header, (sid,)).fetchone()
                    rec = make(None if row is None else bytes(row[0]) or None, now)
                    if rec is None:
                        return None
                    atime = fmt.times(rec)[0]
                    if row is not None:
                        conn.execute(self._q_update, (rec, atime, sid))
                        return now
                    # Absent: claim it. An insert at the same time makes this one wait for it, then do
                    # nothing; the loop then locks and checks that row.
                    if conn.execute(self._q_claim, (sid, rec, atime)).fetchone() is not None:
                        return now
            raise LockTimeout(f"session {describe_id(sid)} kept appearing and disappearing; try again")

        now: float | None = self._write(sid, put, retry=retry)
        if now is None:
            return False
        self._clean_on_write(now)
        return True

    def _take(self, sid: str) -> tuple[bytes | None, float]:
        def take(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
            return conn.execute(self._q_delete, (sid,)).fetchone()  # DELETE ... RETURNING: one step

        row = self._write(validate_id(sid), take, retry=False)
        return (None if row is None else bytes(row[0])), self.clock()

    def _write(self, sid: str, fn: Callable[[psycopg.Connection[Any]], T], *, retry: bool) -> T:
        """``fn(conn)``, a write of *sid*: on the connection of its request lock if this process holds it (fenced
        by it: :class:`LockLost` if the server ended it), else on a pooled one."""
        hold = holding(self, sid)
        if hold is None:
            result: T = self._run(fn, retry=retry)
            return result
        return hold.call(fn, sid, self.timeout)

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

    def _counts(self) -> tuple[int, int, int, str]:
        cutoff = self.clock() - self.max_age

        def run(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
            row = conn.execute(self._q_stats, (cutoff, cutoff)).fetchone()
            assert row is not None
            return (*row, conn.info.server_version)

        live, expired, size, version = self._run(run)
        return live, expired, size, f"postgresql {version // 10000}.{version % 10000}"

    def _batches(self) -> Iterator[list[tuple[str | None, str, bytes | None]]]:
        for rows in self._pages(self._q_page):
            yield [(sid if is_valid_id(sid) else None, sid, bytes(raw)) for sid, raw in rows]


def open_postgres(url: str, *, create: bool = True, **options: Unpack[PostgresOptions]) -> PostgresStore:
    """Open the store in *table* of the PostgreSQL database at *url*, creating the table if needed.

    *url* is a libpq URL or conninfo string (``postgresql://user:password@host:port/dbname``): only its user,
    host, port and database are ever shown; passwords, and every keyword or query parameter named like one
    (see :mod:`lockstore.remote.base`), are scrubbed from the client's error texts. *table* holds the
    sessions (``[a-z_][a-z0-9_]*``, at most 48 characters; default ``"lockstore_sessions"``); its settings
    are rows of ``lockstore_meta``. *create* False: the table's store must exist (:class:`StoreMismatch`
    otherwise), and nothing is created.

    The options, their checks and errors are those of :func:`lockstore.open`. Here ``timeout`` bounds the
    wait for a session's row lock (``lock_timeout``), ``connect_timeout`` (default 5) the wait for a
    connection, ``lock_ttl`` (default 30) the lease of an ``edit()`` and of a request lock: renewed while the holder
    lives, it ends the session of a holder silent for that long (the write then fails with :class:`LockLost`),
    ``durability`` maps to ``synchronous_commit`` (module docstring), ``pool_size`` defaults to 20; a write
    sweeps at most ``clean_limit`` expired rows once ``clean_interval`` has passed in this process.
    """
    return PostgresStore(url, Options(**options), create=create)


__all__ = ["PostgresStore", "open_postgres"]
