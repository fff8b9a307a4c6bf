"""A Django session engine on a lockstore store: ``SESSION_ENGINE = "lockstore.django"``.

Settings::

    SESSION_ENGINE = "lockstore.django"
    LOCKSTORE = {"PATH": BASE_DIR / "sessions"}      # and any lockstore.open option, upper case:
                                                     # BACKEND, SHARDS, CODEC, MAX_AGE, TIMEOUT, SECRET...
    MIDDLEWARE = [
        "lockstore.django.SessionLockMiddleware",    # optional: the request-long session lock
        "django.contrib.sessions.middleware.SessionMiddleware",
        ...
    ]

:class:`SessionStore` follows Django's ``SessionBase`` contract (``exists``,
``create``, ``save(must_create=...)``, ``delete``, ``load``, ``cycle_key``,
``clear_expired`` for ``manage.py clearsessions``).  Unlike Django's own
engines, ``save()`` writes only the keys this request changed, onto the record
as stored now (through :meth:`lockstore.Store.edit`), so concurrent requests of
one user changing different keys keep each other's changes, and a session
logged out elsewhere is never resurrected (``UpdateError``).  With
:class:`SessionLockMiddleware` the session is also locked from its first access
until the response is closed, so even a counter incremented by two concurrent
requests ends exact; a lock not obtained in time answers 503.

Django's expiry (``SESSION_COOKIE_AGE``, ``set_expiry``) is stored with the data
and enforced on load and by ``clear_expired``; the store's own idle expiry
(``MAX_AGE``, by default ``SESSION_COOKIE_AGE``) removes sessions nobody uses.

Django is imported only when this module is, never by ``import lockstore``.
"""

from __future__ import annotations

import contextvars
import pickle
import threading
import time
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.sessions.backends.base import CreateError, SessionBase, UpdateError
from django.http import HttpResponse

import lockstore

from .opener import options_from_settings
from .wsgi import BUSY_BODY, stripe_locks_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from django.http import HttpRequest

    from .stripes import StripeHold, StripeLocks

_OWN = {"PATH": "path", "REQUEST_LOCK": "request_lock", "LOCK_DIR": "lock_dir", "LOCK_TIMEOUT": "lock_timeout"}
_opened: dict[str, tuple[lockstore.BaseStore, StripeLocks | None]] = {}
_opening = threading.Lock()
_scope: contextvars.ContextVar[dict[int, StripeHold] | None] = contextvars.ContextVar(
    "lockstore_django_scope", default=None
)


def _config() -> dict[str, Any]:
    config = dict(getattr(settings, "LOCKSTORE", None) or {})
    if "PATH" not in config:
        msg = 'set LOCKSTORE = {"PATH": "/a/private/directory"} in the Django settings'
        raise lockstore.LockstoreError(msg)
    return config


def get_store() -> lockstore.BaseStore:
    """The store the ``LOCKSTORE`` setting describes, opened once per process."""
    return _open()[0]


def _open() -> tuple[lockstore.BaseStore, StripeLocks | None]:
    config = _config()
    key = repr(sorted(config.items()))
    with _opening:
        opened = _opened.get(key)
        if opened is None:
            options, _ = options_from_settings(config, _OWN, 'LOCKSTORE["{}"]')
            options.setdefault("max_age", settings.SESSION_COOKIE_AGE)
            store = lockstore.open(config["PATH"], **options)
            locks = (
                stripe_locks_for(store, lock_dir=config.get("LOCK_DIR"), timeout=config.get("LOCK_TIMEOUT"))
                if config.get("REQUEST_LOCK", True)
                else None
            )
            opened = _opened[key] = (store, locks)
    return opened


def _dump(value: object) -> bytes | None:
    try:
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except Exception:  # unpicklable: counted as changed
        return None


class SessionStore(SessionBase):
    """Django's session interface over the ``LOCKSTORE`` store.

    Records are ``{"data": <the session dict>, "expires": <unix time>}``.

    Notes
    -----
    One instance serves one request, as with every Django engine; the store
    under it is shared by the threads and processes of the site.
    """

    _session_key: str | None  # a validating property of SessionBase

    def __init__(self, session_key: str | None = None) -> None:
        self._snapshot: dict[str, bytes | None] | None = None
        super().__init__(session_key)

    @property
    def store(self) -> lockstore.BaseStore:
        """The store sessions live in."""
        return get_store()

    def _validate_session_key(self, key: str | None) -> bool:
        # A forged, over-long or path-like cookie becomes "no session" before any lookup.
        return bool(key) and len(key or "") >= 8 and lockstore.is_valid_id(key)

    def _get_new_session_key(self) -> str:
        while True:
            key = lockstore.new_id()
            if not self.exists(key):
                return key

    def _lock(self, key: str) -> None:
        holds = _scope.get()
        locks = _open()[1]
        if holds is None or locks is None:
            return
        index = locks.index(key)
        if index not in holds:
            hold = locks.acquire(key)
            assert hold is not None  # a blocking acquire returns a hold or raises
            holds[index] = hold

    def load(self) -> dict[str, Any]:
        """Read the session; an absent, expired or unreadable one reads as empty with no key."""
        key = self.session_key
        if key is None:
            return {}
        self._lock(key)
        try:
            record = self.store.get(key)
        except lockstore.CorruptRecord:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("data"), dict):
            self._session_key = None
            return {}
        if record.get("expires", 0) <= time.time():
            self.store.pop(key, None)
            self._session_key = None
            return {}
        data: dict[str, Any] = record["data"]
        self._snapshot = {name: _dump(value) for name, value in data.items()}
        return data

    def exists(self, session_key: str | None) -> bool:
        """True if a live session has this key."""
        return lockstore.is_valid_id(session_key) and session_key in self.store

    def create(self) -> None:
        """Save an empty session under a new unique key."""
        while True:
            self._session_key = self._get_new_session_key()
            try:
                self.save(must_create=True)
            except CreateError:
                continue
            self.modified = True
            return

    def save(self, must_create: bool = False) -> None:
        """Write the session: the keys this request changed, or all of it when *must_create*.

        Raises
        ------
        CreateError
            *must_create* and the key exists.
        UpdateError
            Not *must_create* and the session no longer exists (deleted or
            expired meanwhile): it is not resurrected.
        """
        if self.session_key is None:
            self.create()
            return
        key = self.session_key
        data = self._get_session(no_load=must_create)
        expires = time.time() + self.get_expiry_age(expiry=data.get("_session_expiry"))
        if must_create:
            with self.store.edit(key, create=True) as record:
                if record:
                    raise CreateError
                record["data"] = dict(data)
                record["expires"] = expires
        else:
            snapshot = self._snapshot
            try:
                with self.store.edit(key, create=False) as record:
                    stored = record.get("data")
                    if snapshot is None or not isinstance(stored, dict):
                        stored = dict(data)  # never loaded (e.g. after clear()): the whole session
                    else:
                        for name in snapshot.keys() - data.keys():
                            stored.pop(name, None)
                        for name, value in data.items():
                            old = snapshot.get(name)
                            if name not in snapshot or old is None or _dump(value) != old:
                                stored[name] = value
                    record["data"] = stored
                    record["expires"] = expires
            except KeyError:
                raise UpdateError from None
        self._snapshot = {name: _dump(value) for name, value in data.items()}

    def delete(self, session_key: str | None = None) -> None:
        """Delete the session under *session_key* (default: this one)."""
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        if lockstore.is_valid_id(session_key):
            self.store.pop(session_key, None)

    @classmethod
    def clear_expired(cls) -> None:
        """Remove sessions past Django's expiry and those idle past the store's ``max_age``."""
        store = get_store()
        now = time.time()
        for sid, record in list(store.records()):
            value = record.value
            if not isinstance(value, dict) or value.get("expires", 0) <= now:
                store.pop(sid, None)
        store.clean()


class SessionLockMiddleware:
    """Hold each session's lock stripe from its first access until the response is closed.

    Put it before ``django.contrib.sessions.middleware.SessionMiddleware`` in
    ``MIDDLEWARE``.  Without it (or with ``LOCKSTORE["REQUEST_LOCK"] = False``)
    only the save is atomic.  A session lock not obtained within the store's
    timeout (or ``LOCKSTORE["LOCK_TIMEOUT"]``) answers 503.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        holds: dict[int, StripeHold] = {}
        token = _scope.set(holds)

        def release() -> None:
            for hold in list(holds.values()):
                hold.release()
            holds.clear()

        try:
            response = self.get_response(request)
        except BaseException:
            release()
            raise
        finally:
            _scope.reset(token)
        response._resource_closers.append(release)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """Answer 503 when a view could not get its session's lock in time."""
        if isinstance(exception, lockstore.LockTimeout):
            response = HttpResponse(BUSY_BODY, status=503, content_type="text/plain; charset=utf-8")
            response["Retry-After"] = "1"
            return response
        return None


__all__ = ["SessionLockMiddleware", "SessionStore", "get_store"]
