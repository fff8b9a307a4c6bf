"""The Redis backend: ``lockstore.open("redis://host:port/db", prefix="lockstore")``.

Redis's own mechanisms do the work the embedded design does with files:

- A session is one string key ``PREFIX:{SID}`` holding the same record as the embedded stores (times,
  optional signature, payload). The hash tag ``{SID}`` puts a session's keys in one Redis Cluster slot.
- Expiry is native: every write sets the key's TTL to what is left of ``max_age`` since the last
  access, so a touch slides it. Reads also check the record's last access against the store's clock,
  so an expired session is never returned even before the server drops it.
- ``edit()`` takes a per-session lock key ``PREFIX:{SID}:lock`` (a random token with a lease: ``PX lock_ttl``,
  default 5 s) in the same server-side script that reads the record, and commits with a script that writes only
  if the token still holds. A ``with`` block cannot be replayed, which optimistic ``WATCH``/``MULTI`` needs on
  conflict. The lease is renewed while the holder lives (:mod:`lockstore.remote.redis_locks`): a holder that
  dies leaves the lock for at most ``lock_ttl``; one paused past it gets :class:`~lockstore.LockLost` on exit
  and writes nothing, so no update is ever lost silently. :meth:`RedisStore.request_locks` gives the
  request-long lock the integrations hold on the server (same module).
- ``durability="system"``: every acknowledged write (an ``edit()`` commit, a set, a delete) is sent with
  ``WAIT 1`` on the same connection and returns once a replica has it, so a master that dies and is replaced by
  its replica loses no acknowledged write; no replica within ``connect_timeout / 2`` raises
  :class:`~lockstore.BackendUnavailable` (the write is on the master, not confirmed anywhere else). With
  ``"process"`` a write is acknowledged by the master alone: replication is asynchronous, so a failover in the
  moment after loses the writes the replica had not received (a restart of the same master keeps what its
  append-only file kept). Touches (last-access times) are never waited for.
- Connections come from a bounded pool; every socket has a timeout. A server that is down or does not
  answer raises :class:`~lockstore.BackendUnavailable`, never a hang.
- The store's settings live in the hash ``PREFIX:meta``: metadata format, codec, whether records are
  signed, a random store id bound into every signature, and the sweep rule (``max_age``,
  ``clean_interval``, ``clean_limit``). Nothing there is trusted: see :mod:`lockstore.remote.base`.
- Keys under the prefix that lockstore did not write (an id that is not a valid session id, a record
  too short for its header) are reported by :meth:`RedisStore.verify`; reading one raises
  :class:`~lockstore.CorruptRecord`, never another exception.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator
from itertools import chain
from typing import Any, Unpack

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .. import record as fmt
from ..errors import BackendUnavailable, LockTimeout, StoreClosed, StoreMismatch
from ..ids import describe_id, is_valid_id, validate_id
from ..options import Options, RedisOptions
from ..record import HEADER_SIZE
from .base import Make, RemoteStore, redact_url
from .meta import Pairs, Settings
from .redis_locks import RedisEdit, RedisRequestLocks, acquire, commit, release
from .redis_lua import ACQUIRE, COMMIT, GIVE, META, RENEW, RETIME, SWEEP, TAKE

logger = logging.getLogger(__name__)

SCAN_BATCH = 500


class RedisStore(RemoteStore):
    """A store on a Redis server: see :func:`open_redis` and :func:`lockstore.open`.

    Notes
    -----
    Thread safe: threads share one bounded connection pool. Process safe: every process (or machine)
    opens its own store; ``edit()`` is atomic across all of them through the server. Fork safe: the
    redis client drops inherited connections in a child and reconnects.
    """

    backend = "redis"
    name_option = "prefix"
    defaults = {"prefix": "lockstore", "pool_size": 50, "lock_ttl": 5.0}
    edit_class = RedisEdit
    _display = staticmethod(redact_url)

    @property
    def prefix(self) -> str:
        """Every key of the store starts with ``PREFIX:``."""
        return self.name

    def _connect(self, url: str) -> None:
        # Native expiry runs on the server's clock; an injected clock (tests, replays) is the store's
        # only judge of expiry, so native expiry is then left off and clean() removes what expired.
        self._native_expiry = self.options.clock is None
        self._durable = self.options.durability == "system"
        self._block_cap = min(self.connect_timeout / 2, 1.0)  # a blocking wait returns before the socket times out
        self._fences: dict[str, tuple[int, str]] = {}  # sid -> (fork generation, token): see redis_locks
        self._client = self._new_client(url)
        self._acquire_script = self._client.register_script(ACQUIRE)
        self._commit_script = self._client.register_script(COMMIT)
        self._renew_script = self._client.register_script(RENEW)
        self._take_script = self._client.register_script(TAKE)
        self._give_script = self._client.register_script(GIVE)
        self._retime_script = self._client.register_script(RETIME)
        self._sweep_script = self._client.register_script(SWEEP)
        self._pattern = re.sub(r"([\\*?\[\]])", r"\\\1", self.name) + ":{*}"

    def _new_client(self, url: str) -> Any:
        """The client of *url* over a bounded pool (a cluster store gives a ``RedisCluster``)."""
        try:
            self._pool = redis.BlockingConnectionPool.from_url(
                url,
                max_connections=self._pool_size,
                timeout=self.timeout,
                socket_timeout=self.connect_timeout,
                socket_connect_timeout=self.connect_timeout,
                retry=Retry(NoBackoff(), 0),  # retries are decided here, per operation (see _do)
            )
        except ValueError as exc:
            raise ValueError(f"not a usable Redis URL: {self.path}: {self._scrub(exc)}") from None
        return redis.Redis(connection_pool=self._pool)

    def _send_commit(self, keys: list[str], args: list[str | bytes]) -> int:
        """Run the commit script (:func:`~lockstore.remote.redis_locks.commit` retries it on a ``RedisError``).

        With ``durability="system"``, a write is followed by ``WAIT 1`` in one pipeline: WAIT covers the writes
        of the connection it is sent on only. :class:`BackendUnavailable` if no replica confirms it within
        ``connect_timeout / 2`` (a cluster store sends both to the session's master: it overrides this)."""
        if not self._durable or args[1] == "r":
            done: int = self._commit_script(keys=keys, args=args)
            return done
        pipe = self._node_client(keys[0]).pipeline(transaction=False)
        pipe.eval(COMMIT, len(keys), *keys, *args)  # EVAL: a pipeline checks EVALSHA's script first (a round trip)
        wait = self.connect_timeout / 2
        pipe.execute_command("WAIT", 1, math.ceil(wait * 1000))
        done, replicas = pipe.execute()
        if done in (1, 2) and replicas < 1:
            sid = describe_id(self._sid_of(keys[0].encode()) or "?")
            raise BackendUnavailable(
                f"redis at {self.path}: no replica confirmed the write of {sid}"
                f" within {wait:g} s (durability='system'): it is on the master only, lost if the master failed"
            )
        return int(done)

    def _node_client(self, key: str) -> Any:
        """The client of the server that holds *key* (a cluster store gives its master's own client)."""
        return self._client

    def _disconnect(self) -> None:
        self._pool.disconnect()

    def _record_meta(
        self, new: dict[str, str] | None, settle: Callable[[Callable[[dict[str, str]], Pairs]], Settings]
    ) -> Settings:
        meta = f"{self.prefix}:meta"
        create = new or {}

        def exchange(fill: dict[str, str]) -> Pairs:
            args = [str(len(create)), *chain(*create.items()), *chain(*fill.items())]
            reply = self._do(self._client.eval, META, 1, meta, *args)
            if not isinstance(reply, list):
                where = f"store {self.prefix!r} at {self.path}"
                raise StoreMismatch(f"{where}: {meta} is a Redis {reply!r}, not lockstore metadata (a hash)")
            return zip(reply[::2], reply[1::2], strict=True)

        return settle(exchange)

    # -- plumbing ----------------------------------------------------------------------------

    def _data_key(self, sid: str) -> str:
        return f"{self.prefix}:{{{sid}}}"

    def _sid_of(self, key: bytes) -> str | None:
        """The session id of a data key (it matched ``PREFIX:{*}``), or None if it holds no valid id."""
        try:
            sid = key.decode()[len(self.prefix) + 2 : -1]
        except UnicodeDecodeError:
            return None
        return sid if is_valid_id(sid) else None

    def _do(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one server call, mapping the client's errors to :class:`BackendUnavailable`.

        A connection error is retried once at once on a fresh connection: after a server restart the
        pooled connections are dead, and every call made here is safe to repeat (the scripts are
        idempotent per lock token). A timeout is not retried: the caller has waited long enough.

        The client's error is not chained (``from None``): a traceback would print its text as it is, and
        only the scrubbed text, in this message, is sure to hold no credential.
        """
        if self._closed:
            raise StoreClosed(f"store at {self.path} is closed")
        for attempt in (0, 1):
            try:
                return fn(*args, **kwargs)
            except redis.ConnectionError as exc:
                if attempt == 0:
                    self._pool.disconnect(inuse_connections=False)
                    continue
                raise BackendUnavailable(
                    f"redis at {self.path} is unavailable: {type(exc).__name__}: {self._scrub(exc)}"
                ) from None
            except redis.TimeoutError as exc:
                raise BackendUnavailable(
                    f"redis at {self.path} did not answer within {self.connect_timeout} s: {self._scrub(exc)}"
                ) from None
            except redis.RedisError as exc:
                raise BackendUnavailable(
                    f"redis at {self.path} refused the command: {type(exc).__name__}: {self._scrub(exc)}"
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _px(self, last_access: float, now: float) -> str | None:
        """The native TTL of a record in milliseconds ('' for none), or None if it has expired."""
        if now - last_access > self.max_age:
            return None
        if not self._native_expiry:
            return ""
        return str(max(1, math.ceil((last_access + self.max_age - now) * 1000)))

    def request_locks(self, *, stripes: int = 0, timeout: float | None = None) -> RedisRequestLocks:
        """The request-long session locks kept on this server (:mod:`lockstore.remote.redis_locks`): what the
        integrations use given no ``lock_dir``. One lock key per session; *stripes* is not used."""
        return RedisRequestLocks(self, timeout=self.timeout if timeout is None else timeout)

    def _get(self, sid: str) -> bytes | None:
        value: bytes | None = self._do(self._client.get, self._data_key(validate_id(sid)))
        return value

    def _last_access(self, sid: str) -> float | None:
        header = self._do(self._client.getrange, self._data_key(sid), 0, HEADER_SIZE - 1)
        return fmt.times(header)[0] if header else None

    def _put(self, sid: str, make: Make, *, retry: bool) -> bool:
        # Every commit is idempotent per lock token (retry is always safe here), and checks that the record
        # still has the header make() saw: a touch does not take the lock.
        for _ in range(100):
            token, old = acquire(self, sid)
            try:
                now = self.clock()
                rec = make(old, now)
            except BaseException:
                release(self, sid, token)
                raise
            if rec is None:
                release(self, sid, token)
                return False
            if commit(self, sid, token, rec, now, header=b"" if old is None else old[:HEADER_SIZE]):
                return True
        raise LockTimeout(f"session {describe_id(sid)} kept changing; try again")

    def _take(self, sid: str) -> tuple[bytes | None, float]:
        validate_id(sid)
        token, old = acquire(self, sid)
        now = self.clock()
        if old is None:
            release(self, sid, token)
        else:
            commit(self, sid, token, None, now)
        return old, now

    def _scan(self, client: Any = None) -> Iterator[list[bytes]]:
        """Batches of the store's data keys (each key once) on *client* (default: the store's)."""
        seen: set[bytes] = set()
        cursor = 0
        scan = (client or self._client).scan
        while True:
            cursor, keys = self._do(scan, cursor, match=self._pattern, count=SCAN_BATCH, _type="string")
            batch = [k for k in keys if k not in seen]
            seen.update(batch)
            if batch:
                yield batch
            if cursor == 0:
                return

    def _fetch(self, keys: list[bytes], header_only: bool = False) -> list[bytes | None]:
        """The records (or headers) of *keys*; None for a key gone since (or, for a header, empty)."""

        def run() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                if header_only:
                    pipe.getrange(key, 0, HEADER_SIZE - 1)
                else:
                    pipe.get(key)
            return pipe.execute()

        return [r if r or (r is not None and not header_only) else None for r in self._do(run)]

    def _times(self) -> Iterator[tuple[str, bytes]]:
        """(id, header) of every record whose key holds a valid id."""
        for keys in self._scan():
            for key, header in zip(keys, self._fetch(keys, header_only=True), strict=True):
                sid = self._sid_of(key)
                if header is not None and sid is not None:
                    yield sid, header

    def _listed(self, header: bytes, now: float) -> bool:
        """Live, or too short to hold its times: such a record is listed (reading it raises
        :class:`CorruptRecord`, ``verify()`` reports it, ``del`` removes it) rather than hidden."""
        return len(header) < HEADER_SIZE or now - fmt.last_access(header) <= self.max_age

    def __iter__(self) -> Iterator[str]:
        for sid, header in self._times():
            if self._listed(header, self.clock()):
                yield sid

    def __len__(self) -> int:
        now = self.clock()
        return sum(1 for _, header in self._times() if self._listed(header, now))

    def clear(self) -> None:
        """Delete every session of this prefix, live or expired."""
        for keys in self._scan():
            self._do(self._client.unlink, *keys)

    def _touch_record(self, sid: str, rec: bytes, now: float) -> None:
        new = self._codec.retime(sid.encode(), rec, now)
        self._do(self._retime_script, keys=[self._data_key(sid)], args=[rec, new, self._px(now, now)])

    def clean(self, progress: Callable[[int, int], None] | None = None, *, max_idle: float | None = None) -> int:
        """Remove the sessions expired by the store's clock that the server has not dropped yet, or with
        *max_idle*, every session idle longer than that many seconds (each deleted only if unchanged)."""
        idle = self._max_idle(max_idle)
        removed = batches = 0
        for keys in self._scan():
            now = self.clock()
            stale = [
                (k, h)
                for k, h in zip(keys, self._fetch(keys, header_only=True), strict=True)
                if h is not None and -math.inf < fmt.last_access(h) < now - idle
            ]
            if stale:
                removed += self._sweep(stale)
            batches += 1
            if progress is not None:
                progress(batches, batches + 1)
        if progress is not None:
            progress(batches, batches)
        return removed

    def _sweep(self, stale: list[tuple[bytes, bytes]]) -> int:
        """Delete each (key, header) whose record still has that header; how many were deleted."""

        def run() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for key, header in stale:
                self._sweep_script(keys=[key], args=[header], client=pipe)
            return pipe.execute()

        return sum(self._do(run))

    def _counts(self) -> tuple[int, int, int, str]:
        now = self.clock()
        live = expired = size = 0
        for keys in self._scan():

            def run(keys: list[bytes] = keys) -> list[Any]:
                pipe = self._client.pipeline(transaction=False)
                for key in keys:
                    pipe.getrange(key, 0, HEADER_SIZE - 1)
                    pipe.strlen(key)
                return pipe.execute()

            reply = self._do(run)
            for key, header, length in zip(keys, reply[::2], reply[1::2], strict=True):
                if header and self._sid_of(key) is not None:
                    size += length
                    if self._listed(header, now):
                        live += 1
                    else:
                        expired += 1
        info = self._do(self._client.info, "server")
        return live, expired, size, f"redis {info.get('redis_version', '?')}"

    def _batches(self) -> Iterator[list[tuple[str | None, str, bytes | None]]]:
        for keys in self._scan():
            sids = [self._sid_of(key) for key in keys]
            yield [(sid, sid or repr(key), rec) for sid, key, rec in zip(sids, keys, self._fetch(keys), strict=True)]


def open_redis(url: str, *, create: bool = True, **options: Unpack[RedisOptions]) -> RedisStore:
    """Open the store under *prefix* on the Redis server at *url* (``redis://`` or ``rediss://``).

    *url* is ``redis://[user:password@]host:port/db``; its password, and any query parameter named like one
    (see :mod:`lockstore.remote.base`), never appear in ``repr()``, ``stats()`` or a message. Every key of
    the store starts with ``PREFIX:`` (default ``"lockstore"``), so several stores can share a database;
    its settings are the hash ``PREFIX:meta``. *create* False: the store must exist
    (:class:`StoreMismatch` otherwise), and nothing is created.

    The options, their checks and errors are those of :func:`lockstore.open`. Here ``timeout`` bounds the
    wait for a session's lock or a pooled connection, ``connect_timeout`` (default 5) the wait for the
    server, ``lock_ttl`` (default 5) the lease of a session's locks (``edit()``'s and the request lock): renewed
    while the holder lives, so a holder that dies blocks the session this long at most, and one paused past it
    gets :class:`LockLost` and writes nothing. ``durability="system"`` waits for a replica after every write
    (module docstring). ``pool_size`` defaults to 50. Redis drops expired keys itself (a key's TTL follows
    ``max_age``); ``clean()`` removes what the store's clock expired first.
    """
    return RedisStore(url, Options(**options), create=create)


__all__ = ["RedisStore", "open_redis"]
