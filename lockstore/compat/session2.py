"""The session2 / session3 ``SessionStore`` API over a lockstore ``Store``.

session2 (and its successor session3) let a framework's session manager keep sessions in a
pluggable store with this API::

    store.load_session(id, default=None)   # the session object, or default
    store.save_session(session)            # session.id is the key
    store.delete_session(session)
    store.has_session(id)
    store.iter_sessions()                  # (id, session) pairs, for admin tools
    store.delete_old_sessions(minutes)     # for a cron job
    store.setup()                          # for the application's set-up program
    store.is_multiprocess_safe, store.is_thread_safe

This module keeps that API and replaces the engine. ``ShelveSessionStore(filename)`` and
``DirectorySessionStore(directory)`` take the argument the old classes took;
``VolatileSessionStore()`` is the in-memory store of one process; ``SessionStore(store)`` wraps
any store already opened with :func:`lockstore.open`.

Examples
--------
>>> from lockstore.compat.session2 import DirectorySessionStore
>>> store = DirectorySessionStore("/var/lib/myapp/sessions")  # doctest: +SKIP
>>> store.setup()  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from typing import Any, Protocol

import lockstore

# (is_multiprocess_safe, is_thread_safe) per backend. The file backends take a per-shard lock
# file for every write and the Store keeps threads apart; the memory backend lives inside one
# process, so two processes each see their own sessions (like session2's VolatileSessionStore).
_SAFETY: dict[str, tuple[bool, bool]] = {
    "lmdb": (True, True),
    "shelve": (True, True),
    "memory": (False, True),
    "redis": (True, True),
    "postgres": (True, True),
}


class HasId(Protocol):
    """What session2's session manager passes to ``save_session``: any object with an ``id``."""

    @property
    def id(self) -> str:
        """The session id, used as the key in the store."""
        ...


class SessionStore:
    """session2's ``SessionStore`` API over a lockstore store.

    Parameters
    ----------
    store
        An open store (:func:`lockstore.open`). The adapter does not close it unless
        :meth:`close` is called.

    Notes
    -----
    Sessions are stored whole under ``session.id``, pickled (use a store with the default
    ``pickle`` codec: session objects are class instances). A Redis or PostgreSQL store defaults
    to ``json``: open it with ``codec="pickle"`` and a ``secret``, since whoever can write to the
    server could otherwise make the application unpickle their bytes. Every call is one atomic store
    operation, so two processes saving sessions at the same time never corrupt the store or lose
    each other's sessions, which the old shelve and directory stores did not promise. Two
    concurrent requests of the *same* user that each load, change and save the whole session
    still end with the last save, as in session2; for an atomic read-modify-write of a dict
    session use ``store.edit(id)`` on the underlying :attr:`store`.

    ``is_multiprocess_safe`` and ``is_thread_safe`` are class attributes on the backend-specific
    classes; on this generic class they are ``False`` (as on session2's base class) and each
    instance sets them from its store's backend: ``memory`` is thread safe but not multiprocess
    safe, the file and server backends are both.

    Fork: the underlying store reopens its handles in a forked child, so an adapter created
    before a pre-fork server forks keeps working in every worker.
    """

    is_multiprocess_safe: bool = False
    is_thread_safe: bool = False

    def __init__(self, store: lockstore.BaseStore) -> None:
        self._store: lockstore.BaseStore | None = store
        self._init_lock = threading.Lock()
        self._set_flags(store.backend)

    def _set_flags(self, backend: str) -> None:
        multiprocess, thread = _SAFETY.get(backend, (False, False))
        # Instance attributes shadow the conservative class defaults with the backend's truth.
        self.is_multiprocess_safe = multiprocess
        self.is_thread_safe = thread

    def _open(self) -> lockstore.BaseStore:
        """Open the store; subclasses that take a filename open it on first use."""
        raise NotImplementedError

    @property
    def store(self) -> lockstore.BaseStore:
        """The underlying lockstore store (opened on first use)."""
        if self._store is None:
            with self._init_lock:
                if self._store is None:
                    self._store = self._open()
        return self._store

    def setup(self) -> None:
        """Create the store if it does not exist yet; keep an existing one and its sessions.

        session2 allowed a store either to overwrite a previous store or to raise; lockstore
        keeps it, so running the set-up program again never logs every user out. An existing
        store created with other settings (backend, shards, codec) raises
        :class:`lockstore.StoreMismatch`.
        """
        _ = self.store

    def load_session(self, id: str, default: Any = None) -> Any:
        """Return the session stored under *id*, or *default* if there is none.

        An expired session, and an id that could never be a session id (a forged cookie), give
        *default* too.
        """
        if not lockstore.is_valid_id(id):
            return default
        return self.store.get(id, default)

    def save_session(self, session: HasId) -> None:
        """Store *session* under ``session.id``, replacing what was there.

        Raises
        ------
        lockstore.InvalidSessionId
            ``session.id`` is not a valid session id.
        lockstore.EncodeError
            The session cannot be pickled.
        lockstore.ValueTooLarge
            The pickled session is larger than the store's ``max_value_size``.
        """
        self.store[session.id] = session

    def delete_session(self, session: HasId) -> None:
        """Delete ``session.id`` from the store; deleting an absent session does nothing."""
        if lockstore.is_valid_id(session.id):
            self.store.pop(session.id, None)

    def has_session(self, id: str) -> bool:
        """Return whether a live session is stored under *id*."""
        return lockstore.is_valid_id(id) and id in self.store

    def iter_sessions(self) -> Iterator[tuple[str, Any]]:
        """Yield ``(id, session)`` for every live session, without refreshing their access time."""
        for sid, record in self.store.records():
            yield sid, record.value

    def delete_old_sessions(self, minutes: float) -> int:
        """Delete the sessions not used for *minutes* minutes; return how many were deleted.

        lockstore records the last access of a session (a load or a save), not its last
        modification, so a session that is only read stays alive. Sessions idle longer than the
        store's ``max_age`` are already gone: they are removed as well and counted.

        Each session's idle time is checked and the session removed under the same lock, so a
        session saved meanwhile is never deleted.
        """
        if minutes < 0:
            msg = f"minutes must be >= 0, got {minutes!r}"
            raise ValueError(msg)
        return self.store.clean(max_idle=minutes * 60.0)

    def close(self) -> None:
        """Close the underlying store (idempotent)."""
        with self._init_lock:
            if self._store is not None:
                self._store.close()


class _PathSessionStore(SessionStore):
    """A store opened from a path on first use, as the old file stores were."""

    is_multiprocess_safe: bool = True
    is_thread_safe: bool = True

    def __init__(self, path: str | os.PathLike[str], *, backend: str, **options: Any) -> None:
        if backend not in ("lmdb", "shelve"):
            msg = f"backend must be 'lmdb' or 'shelve' for a file store, got {backend!r}"
            raise ValueError(msg)
        self._store = None
        self._init_lock = threading.Lock()
        self.path = os.fspath(path)
        self.backend = backend
        self._options = options

    def _open(self) -> lockstore.BaseStore:
        return lockstore.open(self.path, backend=self.backend, **self._options)


class ShelveSessionStore(_PathSessionStore):
    """session3's ``ShelveSessionStore(filename)``, made safe for threads and processes.

    Parameters
    ----------
    filename
        Where the store lives. lockstore keeps a directory of shelve shards there (a lock file
        per shard), so pass a new name rather than an old session3 shelf file.
    **options
        Passed to :func:`lockstore.open` (``max_age``, ``timeout``, ...).

    Notes
    -----
    Unlike session3's class ("Shelve is not thread safe or multiprocess safe"), every access
    takes the shard's lock, so both flags are true. The store is opened on first use.
    """

    def __init__(self, filename: str | os.PathLike[str], **options: Any) -> None:
        super().__init__(filename, backend="shelve", **options)
        self.filename = self.path


class DirectorySessionStore(_PathSessionStore):
    """session2's ``DirectorySessionStore(directory)``: sessions in a directory.

    Parameters
    ----------
    directory
        The store directory, created with mode 0700 on first use or by :meth:`setup`.
    backend
        ``"lmdb"`` (default) or ``"shelve"``.
    **options
        Passed to :func:`lockstore.open`.

    Notes
    -----
    Thread and multiprocess safe (both flags true). The store is opened on first use.
    """

    def __init__(self, directory: str | os.PathLike[str], *, backend: str = "lmdb", **options: Any) -> None:
        super().__init__(directory, backend=backend, **options)
        self.directory = self.path


class VolatileSessionStore(SessionStore):
    """session2's ``VolatileSessionStore``: sessions in the memory of this one process.

    Parameters
    ----------
    **options
        Passed to :func:`lockstore.open` with ``backend="memory"``.

    Notes
    -----
    Thread safe, not multiprocess safe: every process (every CGI request, every pre-fork worker)
    has its own sessions, and they are lost when the process ends. Use it for tests and
    development only.
    """

    is_multiprocess_safe: bool = False
    is_thread_safe: bool = True

    def __init__(self, **options: Any) -> None:
        self._store = None
        self._init_lock = threading.Lock()
        self._options = options

    def _open(self) -> lockstore.BaseStore:
        # A memory store is shared by the stores opened on the same name in this process: a
        # fresh name per instance, which is never created on disk.
        name = os.path.join(tempfile.gettempdir(), f"lockstore-volatile-{lockstore.new_id()}")
        return lockstore.open(name, backend="memory", **self._options)


__all__ = [
    "DirectorySessionStore",
    "HasId",
    "SessionStore",
    "ShelveSessionStore",
    "VolatileSessionStore",
]
