"""The async store API (issue 13): ``await store.aget(sid)``, ``aset``, ``adelete``, ``apop``, ``aclean`` and
``async with store.aedit(sid) as session:``, for code running on an asyncio event loop.

:class:`AsyncStoreMixin` gives these methods to every store (:class:`~lockstore.base.BaseStore` inherits it).
The rule they keep: a wait for a lock or for a server never blocks the event loop.

- **Embedded stores** (LMDB, shelve, dumb, memory) run on the loop, inline: their operations take microseconds.
  The shard lock is taken without blocking: a non-blocking attempt and, while another process or thread holds
  it, ``asyncio.sleep`` from 0.2 ms doubling to 2 ms (with jitter), until the store's ``timeout``.
- **Remote stores** (Redis, PostgreSQL) run each operation in a thread of two small pools of the store's own:
  one for what may wait for a session's lock (``aedit``'s start, ``aset``, ``adelete``, ``apop``, ``aclean``)
  and one for what never waits for one (``aedit``'s save or release, ``aget``). A lock's holder therefore
  always finds a thread to give it back, however many tasks wait: a burst cannot deadlock on its own threads
  (it would on one shared pool, such as asyncio's default executor of ``min(32, cpus + 4)`` threads, once
  every thread waits for a lock whose holder's release is queued behind them). Their edit locks belong to
  no thread (a Redis lock key holds a token; a PostgreSQL edit holds a connection, which psycopg lets any
  thread use in turn), so an edit may start in one thread and end in another.
- **Any other store** (the memory tier of :mod:`lockstore.tiered`) holds a thread's lock across an edit: each
  ``aedit`` runs its start and its end on one thread of its own.

Within one event loop, tasks first meet at a *gate*: an :class:`asyncio.Lock` per shard (embedded) or per
session (other stores), held across the ``async with`` body. A shard lock is re-entrant per thread and every
task of a loop runs on the loop's thread, so without the gate a second task would walk into the shard the
first one holds; for a server, the gate keeps a session's other tasks off the threads and connections
while they wait (FIFO, so no task of the process is starved by its neighbours).

Cancellation: a task cancelled while it waits for a lock holds nothing afterwards (a thread still waiting
on the server gives the lock back the moment it gets it, writing nothing). A task cancelled in the body of
``aedit`` discards its changes, as an exception does. A task cancelled while ``aedit`` saves waits for the
save to finish (all of it, or none of it, in one server call or one engine write) before it sees
:class:`asyncio.CancelledError`. ``aset``, ``adelete`` and ``apop`` on a remote store, cancelled while their
thread has started, still complete there, whole.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ._process import GENERATION
from .errors import LockTimeout
from .ids import describe_id, shard_of, validate_id
from .locks import ShardLocks, await_lock

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from .base import BaseStore
    from .store import Store

logger = logging.getLogger(__name__)
T = TypeVar("T")

WAIT_THREADS = 16
"""Threads per remote store for operations that may wait for a session's lock."""
QUICK_THREADS = 8
"""Threads per remote store for operations that never wait for one (saves, releases, reads)."""
_FIRST_DELAY = 0.0002
_MAX_DELAY = 0.002

INLINE = "inline"  # embedded: on the loop, shard locks tried without blocking
THREADS = "threads"  # remote: in the store's pools, an edit's start and end in any thread
PINNED = "pinned"  # anything else: an edit's start and end on one thread of its own


def _mode(store: BaseStore) -> str:
    if isinstance(getattr(store, "_locks", None), ShardLocks):
        return INLINE
    # remote/ is a higher layer: looked up rather than imported (no RemoteStore exists before it is loaded)
    remote = sys.modules.get("lockstore.remote.base")
    if remote is not None and isinstance(store, remote.RemoteStore):
        return THREADS
    return PINNED


class _Gates:
    """The gates of one event loop: an :class:`asyncio.Lock` per key (a shard, a session id), kept while
    a task holds or awaits it. Used from the loop's thread only."""

    def __init__(self) -> None:
        self._locks: dict[object, list[Any]] = {}  # key -> [lock, tasks holding or awaiting it]

    async def enter(self, key: object, deadline: float, what: Callable[[], str]) -> None:
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = [asyncio.Lock(), 0]
        entry[1] += 1
        if entry[1] == 1:  # nobody holds or awaits it: taken without a wait, or a timer
            await entry[0].acquire()
            return
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                await entry[0].acquire()
        except TimeoutError:
            self._drop(key, entry)
            raise LockTimeout(what()) from None
        except BaseException:
            self._drop(key, entry)
            raise

    def leave(self, key: object) -> None:
        entry = self._locks[key]
        entry[0].release()
        self._drop(key, entry)

    def _drop(self, key: object, entry: list[Any]) -> None:
        entry[1] -= 1
        if not entry[1]:
            del self._locks[key]


class _State:
    """A store's async machinery in one process (one fork generation): how it runs, its gates per event
    loop, its thread pools (made on first use)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.gen = GENERATION[0]
        self._guard = threading.Lock()
        self._gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Gates] = weakref.WeakKeyDictionary()
        self._last: tuple[asyncio.AbstractEventLoop | None, _Gates] = (None, _Gates())
        self._pools: dict[str, ThreadPoolExecutor] = {}

    def gates(self) -> _Gates:
        """The gates of the running loop."""
        loop = asyncio.get_running_loop()
        last = self._last  # one tuple read: another loop's thread may replace it meanwhile
        if last[0] is loop:
            return last[1]
        with self._guard:
            gates = self._gates.get(loop)
            if gates is None:
                gates = self._gates[loop] = _Gates()
            self._last = (loop, gates)
        return gates

    def pool(self, kind: str) -> ThreadPoolExecutor:
        """The ``"wait"`` or ``"quick"`` pool."""
        pool = self._pools.get(kind)
        if pool is None:
            with self._guard:
                pool = self._pools.get(kind)
                if pool is None:
                    size = WAIT_THREADS if kind == "wait" else QUICK_THREADS
                    pool = self._pools[kind] = ThreadPoolExecutor(size, thread_name_prefix=f"lockstore-{kind}")
        return pool


def _state(store: BaseStore) -> _State:
    attrs = vars(store)
    state: _State | None = attrs.get("_aio")
    if state is None:
        state = attrs.setdefault("_aio", _State(_mode(store)))
    elif state.gen != GENERATION[0]:
        # a forked child: the parent's pool threads and the loops' gates do not exist here
        state = attrs["_aio"] = _State(state.mode)
    return state


async def _take_shard(store: Store, shard: int, deadline: float, what: Callable[[], str]) -> None:
    """Take *shard*'s lock for the loop's thread without blocking the loop: tried at once, then again after
    ``asyncio.sleep`` back-off while another process (or thread) holds it."""
    locks = store._locks

    def attempt() -> bool:
        try:
            locks.acquire(shard, 0.0)
        except LockTimeout:
            return False
        return True

    if not await await_lock(attempt, deadline, first=_FIRST_DELAY, cap=_MAX_DELAY):
        raise LockTimeout(what())


async def _enter(state: _State, store: BaseStore, sid: str) -> tuple[_Gates, object]:
    """Enter *sid*'s gate on the running loop and, for an embedded store, take its shard lock for the loop's
    thread; (the gates, the gate's key: the shard of an embedded store, whose lock tasks share; else the id),
    given back by :func:`_leave`."""
    validate_id(sid)
    key = shard_of(sid, cast("Store", store).shards) if state.mode is INLINE else sid
    gates = state.gates()
    deadline = time.monotonic() + store.timeout

    def what() -> str:
        where = f"session {describe_id(sid)} at {store.path}"
        return f"{where} stayed locked for {store.timeout} s (by another task, thread or process)"

    await gates.enter(key, deadline, what)
    if state.mode is INLINE:
        try:
            await _take_shard(cast("Store", store), cast(int, key), deadline, what)
        except BaseException:
            gates.leave(key)
            raise
    return gates, key


def _leave(state: _State, store: BaseStore, gates: _Gates, key: object) -> None:
    try:
        if state.mode is INLINE:
            cast("Store", store)._locks.release(cast(int, key))
    finally:
        gates.leave(key)


async def _settle(job: Future[T]) -> T:
    """The result of *job*, waited for even if the task is cancelled meanwhile (the cancellation is then
    raised once *job* is done): giving a lock back, or saving, is never left half done."""
    inner = asyncio.wrap_future(job)
    cancelled = False
    while not inner.done():
        try:
            await asyncio.wait((inner,))  # never cancels *inner*
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if inner.exception() is not None:
            logger.debug("an edit ended by a cancelled task failed: %r", inner.exception())
        raise asyncio.CancelledError
    return inner.result()


def _exit_later(job: Future[Any], edit: AbstractContextManager[Any], pool: ThreadPoolExecutor, pinned: bool) -> None:
    """Once *job*, an edit's start that a cancelled task abandoned, has taken the lock: give it back."""
    if not job.cancelled() and job.exception() is None:
        pool.submit(edit.__exit__, asyncio.CancelledError, asyncio.CancelledError(), None)
    if pinned:
        pool.shutdown(wait=False)  # its thread ends after the exit queued above


async def _start(
    edit: AbstractContextManager[dict[str, Any]], start: ThreadPoolExecutor, end: ThreadPoolExecutor, pinned: bool
) -> dict[str, Any]:
    """``edit.__enter__()`` in a thread of *start*; if the task is cancelled meanwhile, the lock, once taken,
    is given back in a thread of *end*."""
    job = start.submit(edit.__enter__)
    try:
        return await asyncio.shield(asyncio.wrap_future(job))
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError) and not job.cancel():  # it runs: it may still get the lock
            job.add_done_callback(functools.partial(_exit_later, edit=edit, pool=end, pinned=pinned))
        elif pinned:
            start.shutdown(wait=False)
        raise


class AsyncEdit:
    """The async context manager returned by :meth:`AsyncStoreMixin.aedit`.

    Notes
    -----
    One use, by one task, on one event loop.
    """

    __slots__ = ("_create", "_edit", "_end", "_gates", "_key", "_sid", "_state", "_store")

    def __init__(self, store: BaseStore, sid: str, create: bool) -> None:
        self._store = store
        self._sid = sid
        self._create = create

    async def __aenter__(self) -> dict[str, Any]:
        store, sid = self._store, self._sid
        state = self._state = _state(store)
        edit = self._edit = store.edit(sid, create=self._create)  # checks the id
        self._gates, self._key = await _enter(state, store, sid)
        try:
            if state.mode is INLINE:
                return edit.__enter__()  # takes the shard lock again: the loop's thread holds it
            if state.mode is THREADS:
                start, self._end = state.pool("wait"), state.pool("quick")
            else:
                start = self._end = ThreadPoolExecutor(1, "lockstore-edit")
            return await _start(edit, start, self._end, state.mode is PINNED)
        except BaseException:
            _leave(state, store, self._gates, self._key)
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._state.mode is INLINE:
                self._edit.__exit__(exc_type, exc, tb)
            else:
                try:
                    await _settle(self._end.submit(self._edit.__exit__, exc_type, exc, tb))
                finally:
                    if self._state.mode is PINNED:
                        self._end.shutdown(wait=False)
        finally:
            _leave(self._state, self._store, self._gates, self._key)


class AsyncStoreMixin:
    """The async API of a store, for code on an asyncio event loop: every wait for a lock or a server
    happens off the loop (see :mod:`lockstore.aio`).

    Notes
    -----
    Thread safe and usable from several event loops at once (one per thread); tasks of one loop meet at the
    loop's gates, threads and processes at the store's locks. Fork safe: a child makes its own pools and gates.
    On one loop, use the async API for a session while an ``aedit`` of its shard may be open in another task:
    a synchronous call from the loop's thread would re-enter the shard lock that thread holds.
    """

    __slots__ = ()

    async def aget(self, sid: str, default: Any = None) -> Any:
        """The value of *sid*, or *default* if it has no live session; refreshes its last access as
        ``store.get`` does."""
        store = cast("BaseStore", self)
        state = _state(store)
        if state.mode is not INLINE:
            return await asyncio.get_running_loop().run_in_executor(state.pool("quick"), store.get, sid, default)
        if cast("Store", store)._engine.lock_reads:
            return await self._locked(state, sid, store.get, sid, default)
        found = store.record(sid)  # lock-free read; the touch, if due, takes the shard lock
        if found is None:
            return default
        if store.clock() - found.last_access >= store.touch_interval:
            await self._locked(state, sid, store.touch, sid)
        return found.value

    async def aset(self, sid: str, value: Any) -> None:
        """``store[sid] = value``."""
        store = cast("BaseStore", self)
        await self._locked(_state(store), sid, store.__setitem__, sid, value)

    async def adelete(self, sid: str) -> None:
        """``del store[sid]``: :class:`KeyError` if *sid* has no live session."""
        store = cast("BaseStore", self)
        await self._locked(_state(store), sid, store.__delitem__, sid)

    async def apop(self, sid: str, *default: Any) -> Any:
        """``store.pop(sid[, default])``: removes *sid* and returns its value, atomically across processes."""
        store = cast("BaseStore", self)
        return await self._locked(_state(store), sid, store.pop, sid, *default)

    def aedit(self, sid: str, *, create: bool = True) -> AsyncEdit:
        """Atomic read-modify-write of one session, as ``edit()``::

            async with store.aedit(sid) as session:     # a dict, locked across tasks, threads, processes
                session["n"] = session.get("n", 0) + 1

        Saved on a clean exit if changed; discarded on an exception, cancellation included. Waits at most
        the store's ``timeout`` for tasks of this loop and other processes, then :class:`LockTimeout`.
        """
        return AsyncEdit(cast("BaseStore", self), sid, create)

    async def aclean(self, *, max_idle: float | None = None) -> int:
        """``store.clean(max_idle=max_idle)``, in a thread (it visits every shard, or scans the server)."""
        store = cast("BaseStore", self)
        clean = functools.partial(store.clean, max_idle=max_idle)
        return await asyncio.get_running_loop().run_in_executor(_state(store).pool("wait"), clean)

    async def _locked(self, state: _State, sid: str, fn: Callable[..., T], *args: Any) -> T:
        """*fn(\\*args)*, an operation that takes *sid*'s lock, with *sid*'s gate held: on the loop under its shard
        lock (which *fn* takes again, re-entrant for the loop's thread, without waiting), or in a thread."""
        store = cast("BaseStore", self)
        gates, key = await _enter(state, store, sid)
        try:
            if state.mode is INLINE:
                return fn(*args)
            return await asyncio.get_running_loop().run_in_executor(state.pool("wait"), fn, *args)
        finally:
            _leave(state, store, gates, key)


__all__ = ["QUICK_THREADS", "WAIT_THREADS", "AsyncEdit", "AsyncStoreMixin"]
