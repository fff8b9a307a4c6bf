"""Aquarium's ``SessionContainer`` API over a lockstore ``Store``.

Aquarium applications asked a session container for the request's session and let it clean up
now and then::

    session = container.open(sid)      # None, unknown or expired: a new session, new sid
    session["cart"] = [...]
    container.save(session)
    container.adjust_time(-3600)       # shift every last-access time (tests, clock fixes)

What Aquarium promised and lockstore keeps: ``open`` creates or opens; a session that exists is by definition not
expired (an expired one is never returned, even before it is swept); sids are generated (``lockstore.new_id()``, 192
random bits); and since CGI and FastCGI applications have no scheduler, cleanup runs at random on about one ``open`` in
``cleanup_frequency`` (``SESSION_CLEANUP_FREQUENCY``; 0 disables it, then run ``container.cleanup()`` or ``lockstore
clean`` from cron).

What is new: Aquarium left locking to the database; here :meth:`SessionContainer.save` writes
only the keys the request changed, in one atomic edit under the session's lock (a shard lock file,
a Redis lock key, a PostgreSQL row lock), so two concurrent requests of the same user that change
different keys keep both changes, on every backend.
"""

from __future__ import annotations

import math
import random
from typing import Any

import lockstore
from lockstore.ids import describe_id
from lockstore.web.changes import changes, merge, snapshot


class Session(dict[str, Any]):
    """A session: a dict with its ``sid``, as Aquarium's containers handed out.

    It remembers what it held when opened, so :meth:`SessionContainer.save` can write only the
    keys that changed (:mod:`lockstore.web.changes`: values are compared by their pickle, so a
    change made inside a value counts; a value that cannot be pickled counts as changed).
    """

    def __init__(self, sid: str, data: dict[str, Any], *, is_new: bool) -> None:
        super().__init__(data)
        self.sid = sid
        self.is_new = is_new
        self._snapshot = snapshot(data)


class SessionContainer:
    """Aquarium's session container over a lockstore store.

    Parameters
    ----------
    store
        An open store (:func:`lockstore.open`) whose sessions are dicts. Its ``max_age`` is the session lifetime.
    cleanup_frequency
        On average one :meth:`open` in this many runs :meth:`cleanup` (chosen at random, as
        Aquarium's ``SESSION_CLEANUP_FREQUENCY``, default 100); 0 never does.
    rng
        The random source for that choice (seed it in tests).

    Notes
    -----
    Holds no lock or handle of its own: thread, process and fork safety are the store's. The random cleanup is a full
    sweep of every shard; the store already sweeps one shard on a write every ``clean_interval``, so a cleanup frequency
    of 0 plus a cron job is the choice with the steadiest latency. On a remote store the random cleanup is a full scan
    of the server's sessions (Redis: SCAN of the prefix; PostgreSQL: a DELETE through the index) run by a request,
    while the server already drops expired sessions (Redis by their TTL, PostgreSQL by sweeping on write): pass
    ``cleanup_frequency=0`` there.
    """

    SESSION_CLEANUP_FREQUENCY = 100
    ADJUST_ATTEMPTS = 100  # compare-and-put tries per session in adjust_time, as BaseStore.setdefault

    def __init__(
        self,
        store: lockstore.BaseStore,
        *,
        cleanup_frequency: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if cleanup_frequency is None:
            cleanup_frequency = self.SESSION_CLEANUP_FREQUENCY
        if cleanup_frequency < 0:
            msg = f"cleanup_frequency must be >= 0, got {cleanup_frequency!r}"
            raise ValueError(msg)
        self.store = store
        self.cleanup_frequency = cleanup_frequency
        self._rng = rng if rng is not None else random.Random()
        self.cleanups = 0

    def open(self, sid: str | None = None) -> Session:
        """Open the session *sid*, or create a new one with a generated sid.

        A new session is also created when *sid* is malformed, unknown or expired: read the returned session's ``sid``
        to set the cookie. A new session is stored at once (empty), so that it exists for the next request.
        """
        if self.cleanup_frequency and self._rng.randrange(self.cleanup_frequency) == 0:
            self.cleanup()
        if sid is not None and lockstore.is_valid_id(sid):
            data = self.store.get(sid)
            if isinstance(data, dict):
                return Session(sid, data, is_new=False)
        sid = lockstore.new_id()
        self.store[sid] = {}
        return Session(sid, {}, is_new=True)

    def exists(self, sid: str) -> bool:
        """Return whether a session *sid* exists; an existing session is never expired."""
        return lockstore.is_valid_id(sid) and sid in self.store

    def save(self, session: Session) -> None:
        """Write the keys *session* changed since it was opened, atomically.

        Keys another process changed meanwhile are kept; a key both changed is the last writer's. If the session expired
        or was deleted meanwhile, it is created again with the whole of *session*.
        """
        changed, removed = changes(session._snapshot, session)
        if not changed and not removed:
            return
        try:
            with self.store.edit(session.sid, create=False) as data:
                merge(data, changed, removed)
        except KeyError:  # expired or deleted since it was opened: store it whole again
            with self.store.edit(session.sid, create=True) as data:
                data.update(session)
        session._snapshot = snapshot(session)

    def delete(self, sid: str) -> None:
        """Delete the session *sid* permanently (Aquarium's ``_unlink``); absent is not an error."""
        if lockstore.is_valid_id(sid):
            self.store.pop(sid, None)

    def cleanup(self) -> int:
        """Delete every expired session now; return how many were removed."""
        self.cleanups += 1
        return self.store.clean()

    def adjust_time(self, delta_seconds: float) -> int:
        """Add *delta_seconds* to the last-access time of every live session.

        A negative delta ages the sessions (``adjust_time(-store.max_age - 1)`` expires them
        all); a positive one makes them younger. Returns the number of sessions adjusted.

        Raises
        ------
        ValueError
            *delta_seconds* is not a finite number.
        lockstore.LockTimeout
            A session changed under every one of ``ADJUST_ATTEMPTS`` tries (the sessions before it
            are adjusted, the ones after it are not).

        Notes
        -----
        Each session is rewritten by ``store.put_record_if(..., expect=last_access)``, the store's
        compare-and-put: it writes only if the stored record still has the last access that was
        read, checked and written in one hold of the session's lock. If a concurrent save won, the
        session is read again and the new record is shifted instead, so a concurrent save is never
        overwritten. No write is nested inside ``store.edit()``: a store's lock is not re-entrant
        across its connections (Redis takes a new lock token, PostgreSQL a second connection that
        would wait on the row lock), so the nested write of earlier versions waited ``timeout`` and
        raised :class:`lockstore.LockTimeout` on a remote store (issue 12). The compare is on the
        last access alone: a save that lands in the same clock tick as the write it replaces cannot
        be told from it (with ``time.time`` a tick is well under a microsecond on Linux).

        The listing is read a batch at a time (a shard, a Redis SCAN batch, a PostgreSQL page), so
        memory stays bounded on a large remote store; each session costs one write, plus one read
        per lost race. Sessions must be dicts, as everywhere in this module.
        """
        if not math.isfinite(delta_seconds):
            msg = f"delta_seconds must be a finite number, got {delta_seconds!r}"
            raise ValueError(msg)
        store = self.store
        adjusted = 0
        for sid, listed in store.records():
            record: lockstore.Record | None = listed
            for _ in range(self.ADJUST_ATTEMPTS):
                if record is None:  # deleted or expired since the listing
                    break
                if store.put_record_if(
                    sid,
                    record.value,
                    created=record.created,
                    last_access=record.last_access + delta_seconds,
                    expect=record.last_access,
                ):
                    adjusted += 1
                    break
                record = store.record(sid)  # a concurrent save or touch won: shift what it left
            else:
                msg = f"session {describe_id(sid)} changed {self.ADJUST_ATTEMPTS} times while adjust_time ran"
                raise lockstore.LockTimeout(msg)
        return adjusted

    # The old camelCase name, for code that called it.
    adjustTime = adjust_time


__all__ = ["Session", "SessionContainer"]
