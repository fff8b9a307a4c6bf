"""The request-long session lock behind one seam (:class:`RequestLocks`), and what one request holds of it.

:class:`~lockstore.web.stripes.StripeLocks` implements the seam today; a lock kept on a server plugs in by giving
the same members.  :class:`RequestHold` takes a request's locks blocking, by one try, or from async code
without blocking the loop; :class:`Gates` keep two requests of one thread (asyncio) out of one slot;
:class:`RequestScope` carries a request's hold to code the framework calls on its own (Django's SessionStore).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from .._process import GENERATION
from ..errors import LockTimeout
from ..locks import await_lock

if TYPE_CHECKING:
    from collections.abc import Iterator

BUSY_STATUS = "503 Service Unavailable"
BUSY_BODY = b"503 Service Unavailable: the session is busy with another request; retry shortly.\n"
"""What every integration answers when a session's lock is not obtained in time."""
BUSY_HEADERS = [
    ("Content-Type", "text/plain; charset=utf-8"),
    ("Content-Length", str(len(BUSY_BODY))),
    ("Retry-After", "1"),
]
# back-off of an async wait for a session lock: 0.2 ms doubling to 1 ms, jittered; a try is a few µs, and a 5 ms
# cap (the stripes' blocking wait) left a busy session idle between requests: one cookie shared by 8 clients
# under 4 uvicorn workers went from 560-835 to 830-985 req/s (issue 13, this 2-core machine, loaded)
_FIRST_WAIT = 0.0002
_MAX_WAIT = 0.001
_SAME_LOOP = "another request on this event loop holds it (use the session's async methods in async code)"


class Hold(Protocol):
    """One acquisition of a request lock."""

    def release(self) -> None:
        """Release it: idempotent, from any thread, inert in a forked child."""


class RequestLocks(Protocol):
    """The request-long locks of a site, shared by every thread of a process: the seam to implement."""

    @property
    def timeout(self) -> float:
        """Default seconds a blocking :meth:`acquire` waits."""

    def index(self, sid: str) -> int:
        """The lock slot of *sid*, the same in every process; ids of one slot share one lock."""

    def where(self, index: int) -> str:
        """Where slot *index* is kept (a path, a key), for messages."""

    def acquire(self, sid: str, *, timeout: float | None = None, blocking: bool = True) -> Hold | None:
        """A hold of *sid*'s slot (re-entrant per thread); ``None`` if busy and not *blocking*; or ``LockTimeout``."""

    def close(self) -> None:
        """Drop what is idle (descriptors, connections); held slots stay held."""


def lock_timeout(where: str, wait: float, why: str = "") -> LockTimeout:
    """The error of a session lock not obtained within *wait* seconds."""
    why = why or "another request of this session (or one sharing its stripe) is still running"
    return LockTimeout(f"session lock not obtained within {wait:g} s ({where}): {why}")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Gates:
    """Which request of this process holds each slot: at most one, whatever thread or task runs it.

    A slot's holding thread may re-enter it, which is wrong for asyncio (every task runs on the loop's thread), so a
    request takes the gate before the slot and gives it back after.  The holder's loop is kept (None for a thread): a
    blocking wait on that loop's own thread could never end.  Thread-safe; a forked child starts with no gate taken.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._gen = GENERATION[0]
        self._cond = threading.Condition()
        self._holders: dict[int, asyncio.AbstractEventLoop | None] = {}

    def take(self, index: int, loop: asyncio.AbstractEventLoop | None, timeout: float) -> bool:
        """Take gate *index* for a request running on *loop*, waiting up to *timeout* s (0: try once)."""
        if self._gen != GENERATION[0]:
            self._reset()
        with self._cond:
            if index in self._holders and (
                timeout <= 0 or not self._cond.wait_for(lambda: index not in self._holders, timeout)
            ):
                return False
            self._holders[index] = loop
            return True

    def held_on(self, index: int, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether a request running on *loop* holds gate *index*."""
        with self._cond:
            return index in self._holders and self._holders[index] is loop

    def give(self, index: int) -> None:
        """Give gate *index* back."""
        if self._gen != GENERATION[0]:
            return
        with self._cond:
            self._holders.pop(index, None)
            self._cond.notify_all()


class RequestHold:
    """What one request holds of *locks*: one hold per slot, until :meth:`release` (idempotent, any thread).

    *gates*: the site's :class:`Gates` when requests may share a thread (asyncio, asgiref), ``None`` when each
    has its own (WSGI); *timeout*: seconds a wait lasts (``None``: the locks' default).
    """

    __slots__ = ("_gates", "_holds", "_locks", "_timeout")

    def __init__(self, locks: RequestLocks, *, gates: Gates | None = None, timeout: float | None = None) -> None:
        self._locks = locks
        self._gates = gates
        self._timeout = timeout
        self._holds: dict[int, Hold] = {}

    def lock(self, sid: str) -> None:
        """Hold *sid*'s slot, waiting up to the timeout (``LockTimeout``; at once if a request on this thread's
        running loop holds it: a wait would stop that holder)."""
        index = self._locks.index(sid)
        if index not in self._holds and not self._take(sid, index, blocking=True):  # pragma: no cover
            raise lock_timeout(self._locks.where(index), self._wait())  # a blocking acquire gave no hold

    def try_lock(self, sid: str) -> bool:
        """Hold *sid*'s slot if that takes no wait; whether it is held now."""
        index = self._locks.index(sid)
        return index in self._holds or self._take(sid, index, blocking=False)

    async def alock(self, sid: str) -> None:
        """:meth:`lock` for async code: tries, with ``asyncio.sleep`` back-off between them."""
        wait = self._wait()
        if not await await_lock(lambda: self.try_lock(sid), time.monotonic() + wait, first=_FIRST_WAIT, cap=_MAX_WAIT):
            raise lock_timeout(self._locks.where(self._locks.index(sid)), wait)

    def _take(self, sid: str, index: int, *, blocking: bool) -> bool:
        locks, gates = self._locks, self._gates
        hold: Hold | None = None
        if gates is None:
            hold = locks.acquire(sid, timeout=self._timeout, blocking=blocking)
        else:
            wait = self._wait() if blocking else 0.0
            deadline = time.monotonic() + wait
            loop = _running_loop()
            if blocking and loop is not None and gates.held_on(index, loop):
                raise lock_timeout(locks.where(index), 0, _SAME_LOOP)
            if not gates.take(index, loop, wait):
                if blocking:
                    raise lock_timeout(locks.where(index), wait)
                return False
            try:
                hold = locks.acquire(sid, timeout=max(0.0, deadline - time.monotonic()), blocking=blocking)
            finally:
                if hold is None:
                    gates.give(index)  # no hold came of it (busy, or the wait failed)
        if hold is None:
            return False
        self._holds[index] = hold
        return True

    def unlock(self, sid: str) -> None:
        """Release *sid*'s slot if this request holds it."""
        index = self._locks.index(sid)
        hold = self._holds.pop(index, None)
        if hold is not None:
            self._release(index, hold)

    def release(self) -> None:
        """Release every slot this request holds (idempotent)."""
        holds, self._holds = self._holds, {}
        for index, hold in holds.items():
            self._release(index, hold)

    def _release(self, index: int, hold: Hold) -> None:
        try:
            hold.release()
        finally:
            if self._gates is not None:
                self._gates.give(index)  # after the slot: the next request never re-enters it

    def _wait(self) -> float:
        return self._locks.timeout if self._timeout is None else self._timeout


_current: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar("lockstore_scope", default=None)


class RequestScope:
    """One request's locks, and whether a lock wait ran out, for code the framework calls on its own.

    A middleware runs the request in :meth:`active`; session code finds it with :func:`current_scope`; a
    ``LockTimeout`` leaving ``with watch:`` sets :attr:`busy` (a 503 where the framework made a 500 of it).
    """

    __slots__ = ("_hold", "busy")

    def __init__(self) -> None:
        self._hold: RequestHold | None = None  # made at the first lock
        self.busy = False

    def hold(self, locks: RequestLocks, gates: Gates) -> RequestHold:
        """This request's :class:`RequestHold` of *locks* (the same one on every call)."""
        if self._hold is None:
            self._hold = RequestHold(locks, gates=gates)
        return self._hold

    def release(self) -> None:
        """Release every lock the request holds."""
        if self._hold is not None:
            self._hold.release()

    @contextmanager
    def active(self) -> Iterator[RequestScope]:
        """Make this the current scope for the block; its locks are released if the block raises."""
        token = _current.set(self)
        try:
            yield self
        except BaseException:
            self.release()
            raise
        finally:
            _current.reset(token)


def current_scope() -> RequestScope | None:
    """The scope of the request being served here (``None`` outside :meth:`RequestScope.active`)."""
    return _current.get()


class _Watch:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None and issubclass(exc_type, LockTimeout):
            scope = _current.get()
            if scope is not None:
                scope.busy = True


watch = _Watch()
"""``with watch:`` marks the current request :attr:`~RequestScope.busy` when a ``LockTimeout`` leaves the block."""

__all__ = [
    "BUSY_BODY",
    "BUSY_HEADERS",
    "BUSY_STATUS",
    "Gates",
    "Hold",
    "RequestHold",
    "RequestLocks",
    "RequestScope",
    "current_scope",
    "lock_timeout",
    "watch",
]
