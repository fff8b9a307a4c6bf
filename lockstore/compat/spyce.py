"""Spyce's ``session`` module API over a lockstore ``Store``.

Spyce pages used the session as a dictionary of the visitor's values::

    session.put("username", name)
    name = session.get("username")
    session.delete("username")

This module keeps that API. Sessions are still created just in time (nothing is written until
the first :meth:`SpyceSession.put`, so a crawler that never gets data costs no disk access), and
the last access time still drives expiry, but it lives in the record header instead of a
``_lastaccess`` key: it is never among the session's keys, and a value stored under
``"_lastaccess"`` is ordinary data that cannot change when the session expires.

Each ``put`` and ``delete`` is one atomic read-modify-write of the stored session under its lock
(a shard lock file, a Redis lock key, a PostgreSQL row lock), so two requests of the same visitor
in two processes, or on two hosts sharing a server store, that put different keys keep both
(Spyce's own docs: "it is remotely possible that sessions might blast each other").

Examples
--------
>>> import lockstore
>>> from lockstore.compat.spyce import SpyceSession
>>> store = lockstore.open("/var/lib/myapp/sessions")  # doctest: +SKIP
>>> session = SpyceSession(store, cookie_value)  # doctest: +SKIP
>>> session.put("username", "ada")  # doctest: +SKIP
>>> response.set_cookie("session", session.id)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import lockstore


class SpyceSession(MutableMapping[str, Any]):
    """The current visitor's session, with Spyce's ``get`` / ``put`` / ``delete``.

    Parameters
    ----------
    store
        An open store (:func:`lockstore.open`) whose sessions are dicts.
    sid
        The id from the visitor's cookie, or ``None``. An id that is malformed, unknown or
        expired is replaced by a fresh one (a client never chooses its own session id); read
        :attr:`id` to set the cookie.

    Notes
    -----
    Also a ``MutableMapping`` (``session[key]``, ``key in session``, iteration), as Spyce's
    session was a ``DictMixin``. Every read returns fresh copies, every write is one atomic
    ``store.edit``. Thread and process safety are those of the store (``memory`` is one process
    only, as Spyce's memory option was). Holds no handle of its own, so it survives ``fork``.
    """

    def __init__(self, store: lockstore.BaseStore, sid: str | None = None) -> None:
        self.store = store
        if sid is not None and lockstore.is_valid_id(sid) and sid in store:
            self.id = sid
            self.is_new = False
        else:
            self.id = lockstore.new_id()
            self.is_new = True

    def _data(self) -> dict[str, Any]:
        data = self.store.get(self.id)
        if data is None:
            return {}
        if not isinstance(data, dict):
            msg = f"session {self.id!r} holds a {type(data).__name__}, not a dict"
            raise TypeError(msg)
        return data

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value stored under *key*, or *default*. Never writes."""
        return self._data().get(key, default)

    def put(self, key: str, value: Any) -> None:
        """Store *value* under *key*; the first put creates the session.

        Raises
        ------
        lockstore.EncodeError
            *value* cannot be encoded by the store's codec (nothing is written).
        lockstore.ValueTooLarge
            The session would exceed the store's ``max_value_size`` (nothing is written).
        """
        with self.store.edit(self.id, create=True) as data:
            data[key] = value

    def delete(self, key: str) -> None:
        """Remove *key* from the session; a missing key or session is not an error."""
        try:
            with self.store.edit(self.id) as data:
                data.pop(key, None)
        except KeyError:  # no session yet: nothing to delete, nothing to write
            pass

    @property
    def last_access(self) -> float | None:
        """When the session was last used (what Spyce kept in ``_lastaccess``), or ``None``."""
        record = self.store.record(self.id)
        return None if record is None else record.last_access

    def __getitem__(self, key: str) -> Any:
        return self._data()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.put(key, value)

    def __delitem__(self, key: str) -> None:
        # Checked under the session's lock: a KeyError inside edit() discards the edit.
        with self.store.edit(self.id, create=True) as data:
            del data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._data()))

    def __len__(self) -> int:
        return len(self._data())

    def __contains__(self, key: object) -> bool:
        return key in self._data()

    def update(  # type: ignore[override]  # one signature for the mapping's three overloads
        self, other: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), /, **kwargs: Any
    ) -> None:
        """Store several values in one atomic write."""
        items = dict(other, **kwargs)
        if items:
            with self.store.edit(self.id, create=True) as data:
                data.update(items)

    def clear(self) -> None:
        """Delete the whole session from the store (the next put creates it again)."""
        self.store.pop(self.id, None)

    def __repr__(self) -> str:
        return f"SpyceSession(id={self.id!r}, new={self.is_new})"


__all__ = ["SpyceSession"]
