"""PostgreSQL's server-side locks with leases: connections kept across calls, and the request-long lock.

A :class:`Kept` connection is one that a holder keeps across several calls: an ``edit()``'s open transaction, or a
request's lock. The server ends it when it idles past the lease (``lock_ttl``): ``idle_in_transaction_session_timeout``
inside a transaction, ``idle_session_timeout`` outside one (a request lock). :data:`~lockstore.remote.lease.RENEWER`
sends it ``SELECT 1`` every third of the lease while its holder lives, so

- a holder killed closes its connection: the server rolls back and frees its locks at once; a host lost without a
  goodbye goes silent: the server ends its session after the lease (and its keepalives notice it too);
- a holder paused past its lease (SIGSTOP, a long GC pause, a partition) finds its session ended when it resumes:
  its write fails, nothing of it is committed, and it gets :class:`~lockstore.LockLost`;
- a slow live holder keeps its lock as long as it needs.

The server is the judge, so the fencing is exact: a write runs on the holder's own connection, and that connection
exists only as long as its session, which holds the lock.

:class:`PostgresLocks` (``store.request_locks()``) is the request-long lock: a session-level advisory lock,
``pg_advisory_lock(<table's key>, <session's key>)`` (the two-int form: a keyspace apart from the one-int setup
locks), on a connection of its own pool kept for the request. Why an advisory lock and not a row lock: a row lock
lives in a transaction, and a request commits its session (``edit()``) before it ends, which would let the lock go
early; an advisory lock held by the session survives the commits made on its connection, needs no row (a new
session has none yet), and takes no table space. ``edit()`` of a session whose request lock this process holds
runs on the hold's connection (in a transaction there), so the request's write is fenced by the request lock.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import zlib
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from .._process import GENERATION
from ..errors import LockLost, LockstoreError, LockTimeout
from ..ids import describe_id
from .base import RemoteEdit
from .lease import RENEWER
from .postgres_pool import Connections

if TYPE_CHECKING:
    from collections.abc import Callable

    from .postgres import PostgresStore

logger = logging.getLogger(__name__)
T = TypeVar("T")
_ENDED = ("57P05", "25P03")  # idle_session_timeout, idle_in_transaction_session_timeout: the lease ran out
_IDLE = psycopg.pq.TransactionStatus.IDLE


def key(text: str) -> int:
    """A stable signed 32-bit advisory lock key of *text* (``crc32``, never ``hash()``: random per process)."""
    return zlib.crc32(text.encode()) - (1 << 31)


def holding(store: PostgresStore, sid: str) -> ServerHold | None:
    """The request lock of *sid* this process holds on *store*, if any: writes of *sid* then run on its connection,
    fenced by it."""
    holds = store._request_holds
    hold = holds.get(key(sid)) if holds else None
    return hold if hold is not None and hold.gen == GENERATION[0] else None


class Kept:
    """A connection kept across calls by one holder, renewed by the process's renewal thread until :meth:`end`.

    *lock* serialises statements on it; the renewal only tries it: a statement running already keeps the
    session busy, so nothing needs sending then.
    """

    __slots__ = ("conn", "done", "lease", "lock")

    def __init__(self, conn: psycopg.Connection[Any], seconds: float) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.done = False
        self.lease = RENEWER.hold(self._renew, seconds)

    def _renew(self) -> bool:
        if not self.lock.acquire(blocking=False):
            return True
        try:
            if self.done:
                return True
            if self.conn.broken or self.conn.closed:
                return False
            self.conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return not (self.conn.broken or self.conn.closed)  # else: the server ended the session
        finally:
            self.lock.release()

    def lost(self, exc: psycopg.Error) -> bool:
        """Whether *exc*, raised on this connection, means the server ended the session for its idle lease."""
        if not (self.conn.broken or self.conn.closed):
            return False
        return exc.sqlstate in _ENDED or self.lease.lost or time.monotonic() >= self.lease.expires

    def end(self) -> None:
        """Stop renewing (the holder is about to let go)."""
        self.lease.end()
        with self.lock:
            self.done = True


def lost_lock(what: str, lease: float) -> LockLost:
    """The error of a holder whose session the server ended."""
    return LockLost(
        f"{what}: its lock lapsed (the holder was paused or cut off for over lock_ttl={lease:g} s and the server "
        "ended its session, freeing the lock for others); nothing was written"
    )


class PostgresEdit(RemoteEdit):
    """The context manager returned by :meth:`PostgresStore.edit`: one transaction, the row locked, its connection
    kept alive by a lease (:class:`~lockstore.remote.postgres_locks.Kept`) while the holder lives; on the connection
    of the session's request lock when this process holds it (the write is then fenced by that lock)."""

    _store: PostgresStore
    _conn: psycopg.Connection[Any] | None = None
    _kept: Kept | None = None
    _hold: ServerHold | None = None

    def _begin(self) -> bytes | None:
        store = self._store
        hold = holding(store, self._sid)
        if hold is not None:
            return self._begin_held(hold)
        self._conn, found = store._run(self._begin_txn, keep=True)
        self._kept = Kept(self._conn, store.lock_ttl)
        rec: bytes | None = found
        return rec

    def _begin_held(self, hold: ServerHold) -> bytes | None:
        hold.enter(self._sid, self._store.timeout)
        try:
            rec = hold.run(self._begin_txn, self._sid)
        except BaseException:
            hold.busy.release()
            raise
        self._hold = hold
        return rec

    def _begin_txn(self, conn: psycopg.Connection[Any]) -> bytes | None:
        """BEGIN and lock the session's row, creating it (uncommitted, empty) if absent and wanted."""
        store = self._store
        # No pipeline mode here: a server does not apply idle_in_transaction_session_timeout to a
        # transaction opened in a pipeline, and the lease relies on it (measured: no faster either).
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

    def _finish(self, conn: psycopg.Connection[Any], rec: bytes | None, now: float) -> None:
        if rec is None:
            conn.execute("ROLLBACK")
        else:
            conn.execute(self._store._q_update, (rec, now, self._sid))
            conn.execute("COMMIT")

    def _end(self, rec: bytes | None, now: float) -> None:
        """COMMIT *rec* (if not None), else ROLLBACK; always give the connection back. :class:`LockLost` if the
        server ended the transaction (its holder stalled past the lease): nothing was written."""
        store = self._store
        hold, self._hold = self._hold, None
        if hold is not None:
            try:
                hold.run(lambda conn: self._finish(conn, rec, now), self._sid)
            except LockstoreError:
                if rec is not None:
                    raise
            finally:
                hold.busy.release()
        else:
            conn, self._conn = self._conn, None
            if conn is None or self._kept is None:
                return
            self._kept.end()
            try:
                self._finish(conn, rec, now)
            except psycopg.Error as exc:
                if rec is None:
                    logger.debug("rollback of %s failed: %s", describe_id(self._sid), store._scrub(exc))
                    return
                if self._kept.lost(exc):
                    raise lost_lock(f"the edit of session {describe_id(self._sid)}", store.lock_ttl) from None
                raise store._error(exc, f"saving session {describe_id(self._sid)}") from None
            finally:
                store._putconn(conn)
        if rec is not None:
            store._clean_on_write(now)


class HoldPool(Connections):
    """The pool of the request locks' connections: apart from the store's, so that requests holding every
    connection can never starve the store's own calls."""

    def __init__(self, store: PostgresStore) -> None:
        self.name = f"{store.name}-locks"
        self.path = store.path
        self.timeout = store.timeout
        self.connect_timeout = store.connect_timeout
        self.lock_ttl = store.lock_ttl
        self.durability = store.durability
        self._pool_size = store._pool_size
        self._closed = False
        self._close_lock = threading.Lock()
        self._conninfo = store._conninfo
        self._scrub = store._scrub
        self._orphans = []
        self._gen = GENERATION[0]
        self._pool = self._new_pool()

    def close(self) -> None:
        """Close the pool (with the store)."""
        self._closed = True
        self._disconnect()


class ServerHold:
    """One request's hold of a session's advisory lock: its connection, kept (and renewed) until :meth:`release`."""

    def __init__(self, locks: PostgresLocks, index: int, conn: psycopg.Connection[Any]) -> None:
        self._locks = locks
        self.index = index
        self.kept = Kept(conn, locks.lease)
        self.owner = threading.get_ident()
        self.count = 1
        self.gen = GENERATION[0]
        self.busy = threading.Lock()  # one edit at a time on the hold's connection

    def enter(self, sid: str, timeout: float) -> None:
        """Take the hold's connection for one write (a transaction) of *sid*, waiting for one in progress."""
        if not self.busy.acquire(timeout=timeout):
            raise LockTimeout(f"another write of {describe_id(sid)} in this process kept its request lock busy")

    def call(self, fn: Callable[[psycopg.Connection[Any]], T], sid: str, timeout: float) -> T:
        """:meth:`run` within :meth:`enter`."""
        self.enter(sid, timeout)
        try:
            return self.run(fn, sid)
        finally:
            self.busy.release()

    def run(self, fn: Callable[[psycopg.Connection[Any]], T], sid: str) -> T:
        """``fn(conn)`` on the hold's connection; :class:`LockLost` if the server has ended its session."""
        kept = self.kept
        with kept.lock:
            try:
                return fn(kept.conn)
            except BaseException as exc:
                conn = kept.conn
                if not (conn.closed or conn.broken) and conn.info.transaction_status != _IDLE:
                    with contextlib.suppress(psycopg.Error):
                        conn.rollback()
                if not isinstance(exc, psycopg.Error):
                    raise
                if conn.broken or conn.closed:
                    # A session gone (lease ended, server restarted) holds nothing: the lock is not ours now.
                    raise lost_lock(f"the request lock of session {describe_id(sid)}", self._locks.lease) from None
                raise self._locks.pool._error(exc, f"editing session {describe_id(sid)}") from None

    def release(self) -> None:
        """Let go: unlock and give the connection back (closed instead if in doubt: the server then frees it)."""
        locks = self._locks
        if self.gen != GENERATION[0]:
            return  # a forked child: the lock and its connection are the parent's
        with locks.mutex:
            if self.count <= 0:
                return
            self.count -= 1
            if self.count:
                return
            if locks.held.get(self.index) is self:
                del locks.held[self.index]
        self.kept.end()
        conn = self.kept.conn
        try:
            if conn.closed or conn.broken or conn.info.transaction_status != _IDLE:
                raise psycopg.InterfaceError("not reusable")
            conn.execute("SELECT pg_advisory_unlock_all(); RESET idle_session_timeout")
        except psycopg.Error:
            conn.close()  # the server frees every lock of a session that ends
        locks.pool._putconn(conn)


class PostgresLocks:
    """The request-long locks of a :class:`~lockstore.remote.postgres.PostgresStore`, one per session, on the
    server (see the module docstring): a :class:`~lockstore.web.requestlock.RequestLocks`.

    Notes
    -----
    Thread safe; re-entrant per thread. Another thread (or process, or host) waits on the server. A forked child
    holds nothing its parent held, and releasing an inherited hold does nothing.
    """

    def __init__(self, store: PostgresStore, *, timeout: float) -> None:
        self._store = store
        self._timeout = float(timeout)
        self.lease = store.lock_ttl
        self._space = key(f"lockstore:request:{store.table}")
        self.pool = store._hold_pool()
        self.mutex = threading.Lock()
        self.held = store._request_holds

    @property
    def timeout(self) -> float:
        """Default seconds a blocking :meth:`acquire` waits."""
        return self._timeout

    def index(self, sid: str) -> int:
        """The session's advisory lock key (ids whose keys collide share a lock: rare and harmless)."""
        return key(sid)

    def where(self, index: int) -> str:
        """The lock, as shown in messages."""
        return f"advisory lock ({self._space}, {index}) of table {self._store.table!r} at {self._store.path}"

    def acquire(self, sid: str, *, timeout: float | None = None, blocking: bool = True) -> ServerHold | None:
        """Hold *sid*'s lock: wait up to *timeout* (:class:`LockTimeout`), or with *blocking* False, one try
        (``None`` if busy). :class:`BackendUnavailable` if the server cannot be reached within ``connect_timeout``."""
        index = key(sid)
        with self.mutex:
            mine = self.held.get(index)
            if mine is not None and mine.owner == threading.get_ident() and mine.gen == GENERATION[0]:
                mine.count += 1
                return mine
        wait = self._timeout if timeout is None else max(0.0, float(timeout))
        lease_ms = math.ceil(self.lease * 1000)
        if blocking:
            # One round trip, one implicit transaction: a lock not granted rolls the settings back too.
            query = (
                f"SET lock_timeout = {max(1, math.ceil(wait * 1000))}; SET idle_session_timeout = {lease_ms}; "
                f"SELECT pg_advisory_lock({self._space}, {index}), true"
            )
        else:
            query = (
                f"SELECT CASE WHEN pg_try_advisory_lock({self._space}, {index}) "
                f"THEN set_config('idle_session_timeout', '{lease_ms}', false) IS NOT NULL ELSE false END"
            )

        def take(conn: psycopg.Connection[Any]) -> bool:
            cur = conn.execute(query)
            while cur.description is None and cur.nextset():
                pass  # past the SET statements' results
            row = cur.fetchone()
            return bool(row and row[-1])

        try:
            conn, got = self.pool._run(take, keep=True)
        except LockTimeout:
            raise LockTimeout(
                f"session lock not obtained within {wait:g} s ({self.where(index)}): another request of this "
                "session is still running"
            ) from None
        if not got:
            self.pool._putconn(conn)
            return None
        hold = ServerHold(self, index, conn)
        with self.mutex:
            self.held[index] = hold
        return hold

    def close(self) -> None:
        """Nothing to drop: the connections are the store's (closed with it); held locks stay held."""


__all__ = ["HoldPool", "Kept", "PostgresEdit", "PostgresLocks", "ServerHold", "holding", "key", "lost_lock"]
