"""The web session every integration shares.

:class:`Session` is one request's view of one session (WSGI, Flask and ASGI wrap it with their cookie and response;
Django keeps its ``SessionBase`` contract and shares :func:`read`, the diff-and-merge and the lock).  The site it
lives in (:class:`Site`, :func:`request_locks_for`, :func:`call`, ...) is :mod:`lockstore.web.site`'s, re-exported
here.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator, MutableMapping
from functools import partial
from typing import TYPE_CHECKING, Any

from ..ids import is_valid_id, new_id
from .changes import changes, merge, snapshot
from .requestlock import RequestHold
from .site import Site, call, choose_codec, open_site, read, request_locks_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..base import BaseStore
    from .requestlock import Gates, RequestLocks

logger = logging.getLogger(__name__)

_NEW_ID_TRIES = 64


class Session(MutableMapping[str, Any]):
    """One request's view of one session: a lazily loaded mapping.

    Parameters
    ----------
    store
        The store holding the sessions.
    cookie_id
        The id the client sent, or ``None``.  An id that is not valid
        (:func:`lockstore.is_valid_id`) is ignored before anything is opened.
    locks
        The request-long locks (:func:`request_locks_for`), or ``None`` for no request-long lock.
    lock_timeout
        Seconds to wait for the lock (``None``: the locks' default).
    gates
        The site's :class:`~lockstore.web.requestlock.Gates` when requests share a thread (asyncio), else ``None``.

    Notes
    -----
    A session belongs to one request: it is not meant to be shared between threads.  The first access takes the
    session's lock (``LockTimeout`` when it does not come within the timeout) and reads the record; :meth:`release`
    frees the locks and must be called when the response is finished.  Async code calls :meth:`aload` first and
    :meth:`asave` at the end: the lock wait and the store's I/O then never block the event loop.
    """

    def __init__(
        self,
        store: BaseStore,
        cookie_id: str | None,
        *,
        locks: RequestLocks | None = None,
        lock_timeout: float | None = None,
        gates: Gates | None = None,
    ) -> None:
        self.store = store
        self.cookie_id = cookie_id if is_valid_id(cookie_id) else None
        self._hold = None if locks is None else RequestHold(locks, gates=gates, timeout=lock_timeout)
        self.loaded = False
        self.accessed = False
        self._data: dict[str, Any] = {}
        self._snapshot: dict[str, bytes | None] = {}
        self._id: str | None = None
        self._stored = False  # a record exists under self._id (as far as this request knows)
        self._was_stored = False
        self._rewrite = False  # write every key (a new id after regenerate)
        self._old_ids: list[str] = []
        self._invalidated = False
        self._force = False

    def _claim_id(self) -> str:
        """A fresh id whose lock this request holds.

        Only a non-blocking try is made for a new id's lock: waiting for it while holding another could deadlock two
        requests that each wait for the other's, and any fresh id will do.
        """
        hold = self._hold
        if hold is None:
            return new_id()
        for _ in range(_NEW_ID_TRIES):
            sid = new_id()
            if hold.try_lock(sid):
                return sid
        sid = new_id()  # pragma: no cover - 64 busy slots in a row
        hold.lock(sid)  # pragma: no cover
        return sid  # pragma: no cover

    def load(self) -> dict[str, Any]:
        """Read the session now if not yet done (taking its lock first) and return its data.

        Raises
        ------
        LockTimeout
            The request-long lock was not obtained in time.
        """
        self.accessed = True
        if not self.loaded:
            sid = self.cookie_id
            if sid is not None and self._hold is not None:
                self._hold.lock(sid)
            self._loaded(None if sid is None else read(self.store, sid))
        return self._data

    async def aload(self) -> None:
        """:meth:`load` for async code, without counting as an access: the lock is awaited (asyncio back-off), the
        record read by :func:`call`.  Afterwards every access is served from memory."""
        if self.loaded:
            return
        sid = self.cookie_id
        if sid is not None and self._hold is not None:
            await self._hold.alock(sid)
        self._loaded(None if sid is None else await call(self.store, read, self.store, sid))

    def _loaded(self, value: Any) -> None:
        sid = self.cookie_id
        if isinstance(value, dict):
            self._data = value
            self._id = sid
            self._stored = self._was_stored = True
            self._snapshot = snapshot(value)
        elif sid is not None and self._hold is not None:
            # Unknown, expired or forged: a fresh session under a new id (never
            # the client's id, against session fixation).
            self._hold.unlock(sid)
        self.loaded = True

    def release(self) -> None:
        """Release the request-long locks (idempotent)."""
        if self._hold is not None:
            self._hold.release()

    def __getitem__(self, key: str) -> Any:
        return self.load()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        data = self.load()
        if self._id is None:
            self._id = self._claim_id()
        data[key] = value

    def __delitem__(self, key: str) -> None:
        del self.load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.load())

    def __len__(self) -> int:
        return len(self.load())

    def __contains__(self, key: object) -> bool:
        return key in self.load()

    def __repr__(self) -> str:
        if not self.loaded:
            return f"<{type(self).__name__} (not loaded)>"
        return f"<{type(self).__name__} {self._id and self._id[:8]!s}... {self._data!r}>"

    @property
    def id(self) -> str | None:
        """The session id; ``None`` while a new session holds no data."""
        self.load()
        return self._id

    @property
    def new(self) -> bool:
        """True when the session did not exist in the store when the request began."""
        self.load()
        return not self._was_stored

    @property
    def modified(self) -> bool:
        """True when the end of the request will write the session (or forget it)."""
        if not self.loaded:
            return False
        return self._force or self._invalidated or bool(self._old_ids) or self._changes() != ({}, [])

    @modified.setter
    def modified(self, value: bool) -> None:
        # Changes inside values are found by comparison anyway; an explicit flag
        # only makes sure the cookie is sent.
        if value:
            self.load()
        self._force = bool(value)

    def regenerate(self) -> None:
        """Move the data to a new id and delete the old one (call it at login, against session fixation)."""
        self.load()
        if self._id is None:
            return
        if self._stored:
            self._old_ids.append(self._id)
        self._id = self._claim_id()
        self._stored = False
        self._rewrite = True

    def invalidate(self) -> None:
        """Delete the session from the store now and start an empty one (logout)."""
        self.load()
        doomed = [*self._old_ids, *([self._id] if self._stored and self._id else [])]
        self._old_ids = []
        self._forget(doomed)
        self._data = {}
        self._snapshot = {}
        self._id = None
        self._stored = False
        self._rewrite = False
        self._invalidated = True

    def _forget(self, ids: list[str]) -> None:
        """Delete the sessions *ids* (:meth:`invalidate`); a subclass may leave them to :meth:`save` instead."""
        for sid in ids:
            self.store.pop(sid, None)

    def _changes(self) -> tuple[dict[str, Any], list[str]]:
        if self._rewrite or not self._stored:
            return dict(self._data), []
        return changes(self._snapshot, self._data)

    def save(self) -> str | None:
        """Write this request's changes; return the cookie to send: ``"set"``, ``"delete"`` or ``None``.

        ``"set"`` means the client must learn the id (new or changed); refreshing the cookie of an existing session is
        the caller's choice. Safe to call more than once: a second call writes only later changes.
        """
        steps = self._saving()
        try:
            step = next(steps)
            while True:
                step = steps.send(step())
        except StopIteration as done:
            action: str | None = done.value
            return action

    async def asave(self) -> str | None:
        """:meth:`save` for async code: each store operation runs by :func:`call`."""
        steps = self._saving()
        try:
            step = next(steps)
            while True:
                step = steps.send(await call(self.store, step))
        except StopIteration as done:
            action: str | None = done.value
            return action

    def _saving(self) -> Generator[Callable[[], Any], Any, str | None]:
        """The steps of :meth:`save`, written once for both callers: each store operation is yielded, and its
        result sent back, by the caller that runs it (blocking, or from async code)."""
        if not self.loaded:
            return None
        action: str | None = "set" if self._force and self._id else None
        changed, deleted = self._changes()
        sid = self._id
        if sid is not None and not self._stored:
            if changed:
                yield partial(self._create, sid, changed)
                self._stored = True
                action = "set"
            elif self._was_stored or self.cookie_id is not None:
                action = "delete"
        elif sid is not None and (changed or deleted) and (yield partial(self._update, sid, changed, deleted)):
            yield partial(self.store.pop, sid, None)
            self._id = None
            self._stored = False
            self._data = {}
            action = "delete"
        for old in self._old_ids:
            yield partial(self.store.pop, old, None)
        self._old_ids = []
        self._rewrite = False
        if self._invalidated and self._id is None and action is None and self.cookie_id is not None:
            action = "delete"
        self._snapshot = snapshot(self._data)
        return action

    def _create(self, sid: str, data: dict[str, Any]) -> None:
        with self.store.edit(sid, create=True) as record:
            record.clear()
            record.update(data)

    def _update(self, sid: str, changed: dict[str, Any], deleted: list[str]) -> bool:
        """Merge this request's changes onto *sid*; whether it is left empty (then to be deleted)."""
        try:
            with self.store.edit(sid, create=False) as record:
                merge(record, changed, deleted)
                return not record
        except KeyError:
            # Deleted meanwhile (logout in another request, or expired): never resurrect it.
            logger.info("session %.8s... vanished during the request; changes dropped", sid)
            return True

    def cookie_value(self, action: str | None, *, refresh: bool) -> str | None:
        """The value the session cookie must be set to after :meth:`save` returned *action*: ``""`` deletes it,
        ``None`` leaves it alone; an existing session's cookie is sent again when *refresh*."""
        if action == "delete":
            return ""
        sid = self.stored_id
        return sid if sid is not None and (action == "set" or refresh) else None

    @property
    def stored(self) -> bool:
        """True when the session exists in the store under :attr:`id` (after :meth:`save`)."""
        return self._stored

    @property
    def stored_id(self) -> str | None:
        """The id the session is stored under (after :meth:`save`), without loading it: the cookie's value."""
        return self._id if self._stored else None


__all__ = ["Session", "Site", "call", "choose_codec", "open_site", "read", "request_locks_for"]
