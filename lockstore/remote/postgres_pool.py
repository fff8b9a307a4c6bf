"""The connections of the PostgreSQL store: a ``psycopg_pool`` pool per process (a forked child never touches
the one it inherited), client errors mapped to lockstore's with credentials scrubbed, one retry on a
connection a server restart left dead, and how the store shows its URL.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .._process import GENERATION
from ..errors import BackendUnavailable, LockTimeout, StoreClosed
from .base import is_secret_name, redact_url

logger = logging.getLogger(__name__)
_CONNINFO_PAIR = re.compile(r"([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'?|[^\s&]+)")
T = TypeVar("T")


def display(url: str) -> tuple[str, list[str]]:
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


class Connections:
    """The pool of a :class:`~lockstore.remote.postgres.PostgresStore` (a base class of it)."""

    name: str
    path: str
    timeout: float
    connect_timeout: float
    lock_ttl: float
    durability: str
    _pool_size: int
    _closed: bool
    _close_lock: threading.Lock
    _conninfo: str
    _gen: int
    _pool: psycopg_pool.ConnectionPool[Any]
    _orphans: list[psycopg_pool.ConnectionPool[Any]]
    _scrub: Callable[[object], str]

    def _open_pool(self, url: str) -> None:
        """The pool for *url*, opened on first use; ValueError for a URL libpq cannot use."""
        self._orphans = []
        # synchronous_commit: "system" acknowledges a commit once its WAL is flushed (written and fsynced by the
        # server: it needs the server's fsync on); "process" acknowledges it before, so a crash of the server
        # (never of this process) may lose the last few hundred ms of acknowledged commits, never corrupting any.
        # Server-side keepalives: a host that dies without closing its connections (power, network) is noticed.
        options = (
            f"-c lock_timeout={math.ceil(self.timeout * 1000)} "
            f"-c idle_in_transaction_session_timeout={math.ceil(self.lock_ttl * 1000)} "
            f"-c synchronous_commit={'on' if self.durability == 'system' else 'off'} "
            "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
        )
        try:
            self._conninfo = make_conninfo(
                url,
                connect_timeout=max(2, math.ceil(self.connect_timeout)),
                options=options,
                application_name="lockstore",
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=3,
            )
        except psycopg.Error as exc:
            raise ValueError(f"not a usable PostgreSQL URL or conninfo string: {self._scrub(exc)}") from None
        self._gen = GENERATION[0]
        self._pool = self._new_pool()

    def _disconnect(self) -> None:
        if GENERATION[0] == self._gen:
            self._pool.close(timeout=self.connect_timeout)

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
            name=f"lockstore-{self.name}",
        )

    def _current_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        if self._closed:
            raise StoreClosed(f"store {self.name!r} at {self.path} is closed")
        if GENERATION[0] != self._gen:
            with self._close_lock:
                if GENERATION[0] != self._gen:
                    # In a forked child: keep the inherited pool referenced forever, never closed, so that
                    # no goodbye message goes out on the parent's connections; use a new pool.
                    self._orphans.append(self._pool)
                    self._pool = self._new_pool()
                    self._gen = GENERATION[0]
        pool = self._pool
        if pool.closed:
            with self._close_lock:
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
            return LockTimeout(f"{doing}: a session's row stayed locked in {self.name!r} for {self.timeout} s")
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


__all__ = ["Connections", "display"]
