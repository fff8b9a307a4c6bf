"""The Redis store's locks on the server: leases on them, the request-long lock, and fencing (issue 12).

Every lock is a key holding a random token with a ``PX`` lease (the store's ``lock_ttl``, default 5 s for Redis),
taken atomically with ``SET``-if-free in a script, renewed by :data:`~lockstore.remote.lease.RENEWER` every third
of the lease (``RENEW``: the token still holds it, then ``PEXPIRE``) while its holder lives, and given back by
compare-and-delete, which pushes one wake-up on a list where waiters block (``BLPOP``) instead of polling:

- ``edit()``'s lock ``PREFIX:{SID}:lock`` (:class:`RedisEdit`; :func:`acquire` and :func:`commit` serve a set
  and a delete too, which hold it for one round trip and are not renewed): a holder killed inside ``edit()``
  stops renewing and its lock clears within one lease; a slow live one keeps it;
- the request-long lock ``PREFIX:{SID}:req`` (:class:`RedisRequestLocks`, :meth:`RedisStore.request_locks`), one
  key per session, not per stripe: it shares the hash tag ``{SID}`` with the session's record, so a commit script
  can read both in one step, on Redis Cluster too. The ``stripes`` of the integrations are not used.

Fencing. A holder paused past its lease (SIGSTOP, a long GC pause, a partition) may resume believing it holds the
lock while another holds it now. Nothing it writes lands:

- ``edit()``: the commit script writes only if the lock key still holds the edit's token; otherwise
  :class:`~lockstore.LockLost` and nothing is written (also for ``store[sid] = v``, ``put_record`` and ``pop``);
- the request lock: while this process holds a session's request lock, every commit of that session from this
  process (any thread: a request's writes may run in a worker thread, ``asyncio.to_thread``) passes the hold's
  token, and the commit script writes only if ``PREFIX:{SID}:req`` still holds it; otherwise
  :class:`~lockstore.LockLost`, nothing written. The tokens are registered per process on the store
  (``RedisStore._fences``, by session id, tagged with the fork generation: a forked child's writes are not
  fenced by its parent's holds), not per thread: a hold may be released from another thread than the one that
  took it, and a request's writes may run in another.

Re-entrant per thread, like the lock stripes: a thread holding a session's request lock may take it again
(counted). Another thread of the process waits on the server like any other process.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import redis

from .. import record as fmt
from .._process import GENERATION
from ..errors import BackendUnavailable, LockLost, LockTimeout, StoreClosed
from ..ids import describe_id, validate_id
from .base import RemoteEdit
from .lease import RENEWER

if TYPE_CHECKING:
    from .redis import RedisStore

logger = logging.getLogger(__name__)

DONE_TTL_MS = 5000
"""How long a done commit's marker tells a retry that it went through."""


class KeyLease:
    """The lease of one lock key held by *token*: renewed by :data:`RENEWER` until :meth:`end`."""

    __slots__ = ("_ended", "_lease")

    def __init__(self, store: RedisStore, key: str, token: str) -> None:
        self._ended = False
        ms = str(math.ceil(store.lock_ttl * 1000))

        def renew() -> bool:
            held = store._do(store._renew_script, keys=[key], args=[token, ms])
            # A renewal in flight while the holder lets go finds the key released: over, not lost.
            return bool(held) or self._ended

        self._lease = RENEWER.hold(renew, store.lock_ttl)

    @property
    def lost(self) -> bool:
        """The lease lapsed before :meth:`end` (the server refused a renewal, or stayed unreachable)."""
        return self._lease.lost

    def end(self) -> None:
        """Stop renewing: the holder is letting go."""
        self._ended = True
        self._lease.end()


# -- edit()'s lock ----------------------------------------------------------------------------------------


def acquire(store: RedisStore, sid: str) -> tuple[str, bytes | None]:
    """Take the session's lock (waiting up to ``timeout``); returns (token, record or None)."""
    key, lock = store._data_key(sid), store._data_key(sid) + ":lock"
    token = secrets.token_hex(12)
    ttl = str(math.ceil(store.lock_ttl * 1000))
    deadline = time.monotonic() + store.timeout
    while True:
        got, value = store._do(store._acquire_script, keys=[key, lock], args=[token, ttl])
        if got:
            return token, value
        left = deadline - time.monotonic()
        if left <= 0:
            raise LockTimeout(
                f"session {describe_id(sid)} at {store.path} stayed locked for {store.timeout} s "
                f"(its holder may have died: its lock expires after lock_ttl={store.lock_ttl} s)"
            )
        # Block until a release pushes a wake-up (or the holder's lock would lapse), then try again;
        # the socket timeout must not fire first. Measured: twice the throughput of polling with
        # backoff on a hot session.
        lapse = value / 1000 if isinstance(value, int) and value > 0 else 0.05
        wait = max(0.001, min(left, lapse + 0.001, store._block_cap))
        store._do(store._client.blpop, [key + ":wake"], timeout=wait)


def lock_keys(store: RedisStore, sid: str) -> list[str]:
    """The keys of COMMIT: the record, its edit lock, that lock's wake list, the request lock."""
    key = store._data_key(sid)
    return [key, key + ":lock", key + ":wake", key + ":req"]


def release(store: RedisStore, sid: str, token: str) -> None:
    """Give the session's lock back, writing nothing."""
    try:
        store._do(store._commit_script, keys=lock_keys(store, sid), args=[token, "r", b"", "0", "0", ""])
    except (BackendUnavailable, StoreClosed):
        # Nothing was to be written; the lock expires by itself after lock_ttl.
        logger.debug("could not release the lock of %s; it expires after %s s", describe_id(sid), store.lock_ttl)


def commit(store: RedisStore, sid: str, token: str, rec: bytes | None, now: float, header: bytes | None = None) -> bool:
    """Write *rec* (or delete, if None or already expired) and release, if the lock still holds (and the
    session's request lock, if this process holds it: see :mod:`lockstore.remote.redis_locks`).

    With *header*, only if the stored record still starts with it (b"": there is none); returns False
    (lock released, nothing written) if it does not. :class:`LockLost` if a lease lapsed: nothing written.
    """
    px = store._px(fmt.times(rec)[0], now) if rec is not None else None
    op, data = ("w", rec) if rec is not None and px is not None else ("d", b"")
    gen, fence = store._fences.get(sid, (0, ""))
    args: list[str | bytes] = [token, op, data, px or "", str(DONE_TTL_MS), fence if gen == GENERATION[0] else ""]
    if header is not None:
        args.append(header)
    keys = lock_keys(store, sid)
    try:
        done = store._send_commit(keys, args)
    except redis.RedisError:
        # The reply was lost: ask again. 2 means the first attempt went through; 0 that the lock is
        # gone, and whether the first attempt wrote cannot be known.
        done = store._do(store._send_commit, keys, args)
        if done == 0:
            raise BackendUnavailable(
                f"redis at {store.path} failed while saving session {describe_id(sid)}; "
                "whether the write happened is unknown"
            ) from None
    if done in (0, 4):
        which = "its lock" if done == 0 else "this request's lock on it (:req)"
        raise LockLost(
            f"session {describe_id(sid)}: {which} lapsed before the write (a holder paused or cut off from the "
            f"server longer than its lease, lock_ttl={store.lock_ttl:g} s), and another may hold it now: "
            "nothing was written"
        )
    return bool(done != 3)


class RedisEdit(RemoteEdit):
    """The context manager returned by :meth:`RedisStore.edit`: the session's lock key held by a token."""

    _store: RedisStore

    def _begin(self) -> bytes | None:
        self._token, rec = acquire(self._store, self._sid)
        self._lease = KeyLease(self._store, self._store._data_key(self._sid) + ":lock", self._token)
        return rec

    def _end(self, rec: bytes | None, now: float) -> None:
        self._lease.end()
        if rec is None:
            release(self._store, self._sid, self._token)
        else:
            commit(self._store, self._sid, self._token, rec, now)


# -- the request lock ------------------------------------------------------------------------------------


class _Held:
    """One session's request lock held by this process: its token, lease, owning thread and count."""

    __slots__ = ("count", "lease", "owner", "token")

    def __init__(self, token: str, lease: KeyLease) -> None:
        self.token = token
        self.lease = lease
        self.owner = threading.get_ident()
        self.count = 1


class RedisHold:
    """One acquisition of a session's request lock; :meth:`release` is idempotent, from any thread, and inert in a
    forked child (the lock is the parent's)."""

    __slots__ = ("_gen", "_give")

    def __init__(self, locks: RedisRequestLocks, sid: str) -> None:
        self._give: Callable[[], None] | None = partial(locks._release, sid)
        self._gen = GENERATION[0]

    def release(self) -> None:
        """Give the lock back (once)."""
        give, self._give = self._give, None
        if give is not None and self._gen == GENERATION[0]:
            give()


class RedisRequestLocks:
    """The request-long session locks of a :class:`~lockstore.remote.redis.RedisStore`, kept on its server: the
    :class:`~lockstore.web.requestlock.RequestLocks` an integration uses when it is given no ``lock_dir``.

    Notes
    -----
    Thread safe: one instance serves every thread of a process (see the module docstring for re-entrance).
    Process and machine safe through the server. Fork safe: a child drops what it inherited without releasing
    it (the parent still holds those locks) and takes its own.
    """

    def __init__(self, store: RedisStore, *, timeout: float) -> None:
        self.store = store
        self.timeout = timeout
        self._guard = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._gen = GENERATION[0]
        self._held: dict[str, _Held] = {}

    def index(self, sid: str) -> int:
        """The slot of *sid*, the same in every process: 64 bits of a hash, one per session in effect (two ids
        sharing one would only make a request holding both count them as one)."""
        return int.from_bytes(hashlib.blake2b(sid.encode(), digest_size=8, person=b"lockstore-req").digest(), "big")

    def where(self, index: int) -> str:
        """Where the lock of slot *index* is kept, for messages."""
        return f"request lock {self.store.prefix}:{{SID}}:req #{index:x} on redis at {self.store.path}"

    def _keys(self, sid: str) -> tuple[str, str]:
        key = self.store._data_key(sid) + ":req"
        return key, key + "wake"

    def acquire(self, sid: str, *, timeout: float | None = None, blocking: bool = True) -> RedisHold | None:
        """Hold *sid*'s request lock; ``None`` if busy and not *blocking*.

        Raises
        ------
        LockTimeout
            Not obtained within *timeout* seconds (default :attr:`timeout`).
        BackendUnavailable
            The server cannot be reached.
        """
        validate_id(sid)
        with self._guard:
            if self._gen != GENERATION[0]:
                self._reset()
            held = self._held.get(sid)
            if held is not None and held.owner == threading.get_ident():
                held.count += 1
                return RedisHold(self, sid)
        store = self.store
        key, wake = self._keys(sid)
        token = secrets.token_hex(12)
        ms = str(math.ceil(store.lock_ttl * 1000))
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            got, *pttl = store._do(store._take_script, keys=[key], args=[token, ms])
            if got:
                break
            left = deadline - time.monotonic()
            if not blocking:
                return None
            if left <= 0:
                raise LockTimeout(
                    f"session lock not obtained within {wait:g} s ({key} on redis at {store.path}): another request "
                    f"of this session holds it (a dead holder's lock lapses after lock_ttl={store.lock_ttl:g} s)"
                )
            lapse = pttl[0] / 1000 if pttl and pttl[0] > 0 else 0.05
            store._do(store._client.blpop, [wake], timeout=max(0.001, min(left, lapse + 0.001, store._block_cap)))
        held = _Held(token, KeyLease(store, key, token))
        with self._guard:
            self._held[sid] = held
        store._fences[sid] = (GENERATION[0], token)
        logger.debug("request lock of %s taken", describe_id(sid))
        return RedisHold(self, sid)

    def _release(self, sid: str) -> None:
        with self._guard:
            if self._gen != GENERATION[0]:
                return
            held = self._held.get(sid)
            if held is None:
                return
            held.count -= 1
            if held.count:
                return
            del self._held[sid]
        held.lease.end()
        store = self.store
        if store._fences.get(sid, (0, ""))[1] == held.token:
            del store._fences[sid]
        try:
            store._do(store._give_script, keys=list(self._keys(sid)), args=[held.token])
        except (BackendUnavailable, StoreClosed):
            # It lapses by itself within one lease.
            logger.debug(
                "could not release the request lock of %s; it lapses after %s s", describe_id(sid), store.lock_ttl
            )

    def close(self) -> None:
        """Nothing idle to drop: connections belong to the store's pool; held locks stay held."""

    def __repr__(self) -> str:
        return f"RedisRequestLocks({self.store.path!r}, prefix={self.store.prefix!r})"


__all__ = ["KeyLease", "RedisEdit", "RedisHold", "RedisRequestLocks", "acquire", "commit", "lock_keys", "release"]
