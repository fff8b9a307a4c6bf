"""Flask sessions kept in a lockstore store: :class:`LockstoreSessionInterface` and :func:`init_app`.

``flask.session`` becomes a :class:`LockstoreSession`: the same lazily loaded,
just-in-time session as :class:`lockstore.wsgi.Session` (no cookie and no write
until data is put; only the keys a request changed are written, onto the record
as stored at the end of the request), following Flask's conventions:
``session.permanent`` (the ``_permanent`` key) gives the cookie an expiry of
``PERMANENT_SESSION_LIFETIME``, ``SESSION_REFRESH_EACH_REQUEST`` re-sends the
cookie of a permanent session on each request that uses it (a cookie refresh,
never a write), ``session.modified = True`` forces the cookie out, and the
``SESSION_COOKIE_*`` settings shape the cookie (SameSite defaults to Lax here).  ``session.regenerate()`` gives
a new id at login; ``session.invalidate()`` forgets the session at logout.

The session's lock stripe is taken on first access and released when the
response is closed (or when the request is torn down after an error); a lock
not obtained in time answers 503 Service Unavailable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from weakref import WeakSet

import flask
from flask.sessions import SessionInterface, SessionMixin
from flask.signals import request_tearing_down
from werkzeug.exceptions import ServiceUnavailable

import lockstore

from .opener import options_from_settings
from .stripes import DEFAULT_STRIPES
from .wsgi import Session, stripe_locks_for

if TYPE_CHECKING:
    from flask import Flask
    from flask.wrappers import Request, Response


class LockstoreSession(Session, SessionMixin):  # type: ignore[override]
    """``flask.session`` with lockstore: a :class:`lockstore.wsgi.Session` that is a Flask ``SessionMixin``.

    Notes
    -----
    One request's session, used by that request's thread only.
    """

    handed_over = False

    def _load(self) -> dict[str, Any]:
        try:
            return super()._load()
        except lockstore.LockTimeout as exc:
            raise ServiceUnavailable(description=str(exc)) from exc

    @property
    def permanent(self) -> bool:
        """The ``_permanent`` key; False without loading when the request never used the session."""
        if not self.loaded:
            return False
        return bool(self.get("_permanent", False))

    @permanent.setter
    def permanent(self, value: bool) -> None:
        self["_permanent"] = bool(value)


class LockstoreSessionInterface(SessionInterface):
    """A Flask session interface storing sessions in *store*.

    Parameters
    ----------
    store
        A store from :func:`lockstore.open`.
    request_lock
        Hold the session's lock stripe from first access until the response is
        closed (default).  ``False`` opts out: only the save is atomic.
    lock_timeout
        Seconds to wait for the session lock (default: the store's ``timeout``).
    lock_dir, stripes
        See :func:`lockstore.wsgi.stripe_locks_for`.

    Notes
    -----
    Thread-safe and fork-safe: one instance serves every thread and worker
    process of the application.
    """

    session_class = LockstoreSession

    def __init__(
        self,
        store: lockstore.BaseStore,
        *,
        request_lock: bool = True,
        lock_timeout: float | None = None,
        lock_dir: str | Path | None = None,
        stripes: int = DEFAULT_STRIPES,
    ) -> None:
        self.store = store
        self.lock_timeout = lock_timeout
        self.locks = (
            stripe_locks_for(store, lock_dir=lock_dir, stripes=stripes, timeout=lock_timeout) if request_lock else None
        )
        self._apps: WeakSet[Flask] = WeakSet()

    def open_session(self, app: Flask, request: Request) -> LockstoreSession:
        """Return the request's session; nothing is read before it is used."""
        if app not in self._apps:
            # Released here only when no response took the session over (an
            # exception propagating out of the application).
            request_tearing_down.connect(_teardown, app, weak=False)
            self._apps.add(app)
        return self.session_class(
            self.store,
            request.cookies.get(self.get_cookie_name(app)),
            locks=self.locks,
            lock_timeout=self.lock_timeout,
        )

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        """Write the request's changes and set, refresh or delete the cookie; release on close."""
        if not isinstance(session, LockstoreSession) or not session.loaded:
            return
        session.handed_over = True
        response.call_on_close(session.release)
        name = self.get_cookie_name(app)
        attrs: dict[str, Any] = {
            "domain": self.get_cookie_domain(app),
            "path": self.get_cookie_path(app),
            "secure": self.get_cookie_secure(app),
            "samesite": self.get_cookie_samesite(app),
            "httponly": self.get_cookie_httponly(app),
        }
        if hasattr(self, "get_cookie_partitioned"):  # Flask >= 3.1
            attrs["partitioned"] = self.get_cookie_partitioned(app)
        response.vary.add("Cookie")
        action = session.save()
        if action == "delete":
            response.delete_cookie(name, **attrs)
            return
        sid = session._id
        if sid is None or not session.stored:
            return
        if action == "set" or self.should_set_cookie(app, session):
            response.set_cookie(name, sid, expires=self.get_expiration_time(app, session), **attrs)

    def get_cookie_samesite(self, app: Flask) -> str | None:
        """``SESSION_COOKIE_SAMESITE``, or ``"Lax"`` when the application leaves it unset."""
        return app.config["SESSION_COOKIE_SAMESITE"] or "Lax"

    def should_set_cookie(self, app: Flask, session: SessionMixin) -> bool:
        """Flask's rule, where *modified* means this request changed the session."""
        return bool(session.permanent and app.config["SESSION_REFRESH_EACH_REQUEST"])


def _teardown(app: Flask, exc: BaseException | None = None, **extra: object) -> None:
    session = flask.globals.request_ctx._session if flask.globals.request_ctx else None
    if isinstance(session, LockstoreSession) and not session.handed_over:
        session.release()


_INTERFACE_OPTIONS = {
    "PATH": "path",
    "REQUEST_LOCK": "request_lock",
    "LOCK_TIMEOUT": "lock_timeout",
    "LOCK_DIR": "lock_dir",
    "STRIPES": "stripes",
}


def init_app(app: Flask, path: str | os.PathLike[str] | None = None, **options: Any) -> lockstore.BaseStore:
    """Open the store and make it *app*'s session interface; return the store.

    Settings come from *options* first, then ``LOCKSTORE_*`` config keys:
    ``LOCKSTORE_PATH`` (default ``<instance folder>/sessions``), every option of
    :func:`lockstore.open` in upper case (``LOCKSTORE_BACKEND``, ``_SHARDS``, ``_CODEC``,
    ``_MAX_AGE`` (default ``PERMANENT_SESSION_LIFETIME``), ``_CLEAN_INTERVAL``, ``_CLEAN_LIMIT``,
    ``_TOUCH_INTERVAL``, ``_TIMEOUT``, ``_MAX_VALUE_SIZE``, ``_SECRET``, ``_DURABILITY``, ``_DBM``,
    ``_MAP_SIZE``, and for Redis or PostgreSQL ``_PREFIX``, ``_TABLE``, ``_LOCK_TTL``,
    ``_CONNECT_TIMEOUT``, ``_POOL_SIZE``) and the interface's (``LOCKSTORE_REQUEST_LOCK``,
    ``_LOCK_TIMEOUT``, ``_LOCK_DIR``, ``_STRIPES``).  An unknown ``LOCKSTORE_*`` key raises
    :class:`lockstore.LockstoreError` naming it and the closest valid one.  The store is also
    available as ``app.extensions["lockstore"]``.
    """
    config = app.config
    settings = {key[len("LOCKSTORE_") :]: value for key, value in config.items() if key.startswith("LOCKSTORE_")}
    store_options, interface_options = options_from_settings(settings, _INTERFACE_OPTIONS, "LOCKSTORE_{}")
    for name, value in options.items():
        (interface_options if name in _INTERFACE_OPTIONS.values() else store_options)[name] = value
    configured = interface_options.pop("path", None)
    path = path or configured or os.path.join(app.instance_path, "sessions")
    # a permanent ("remember me") session must outlive idle spells as long as its cookie does: the store
    # keeps sessions for PERMANENT_SESSION_LIFETIME unless told otherwise (as Django's follows SESSION_COOKIE_AGE)
    store_options.setdefault("max_age", app.permanent_session_lifetime.total_seconds())
    store = lockstore.open(path, **store_options)
    app.session_interface = LockstoreSessionInterface(store, **interface_options)
    app.extensions["lockstore"] = store
    return store


__all__ = ["LockstoreSession", "LockstoreSessionInterface", "init_app"]
