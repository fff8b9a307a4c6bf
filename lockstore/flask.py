"""Flask sessions kept in a lockstore store: :class:`LockstoreSessionInterface` and :func:`init_app`.

``flask.session`` becomes a :class:`LockstoreSession`: the web session of :mod:`lockstore.web.session` under Flask's
conventions (``permanent`` and ``SESSION_PERMANENT``, default True as in Flask-Session; ``SESSION_REFRESH_EACH_REQUEST``
refreshes the cookie, never writes; ``modified = True`` forces the cookie out; ``SESSION_COOKIE_*``, SameSite Lax when
unset).  Its lock is taken on first access and released when the request context is torn down, whether or not anybody
closes the response; Flask >= 3.1.1 tears a ``stream_with_context`` request down when the view returns, and the lock
goes then.  A ``session_transaction()`` session takes no lock (no request runs).  A busy session is a 503 with
``Retry-After: 1`` and a body that names nothing of the server.

Errors follow Flask's own sessions: the session is saved whenever Flask builds the response (an error handler's and
the 500 page included); nothing is saved when the exception propagates (``PROPAGATE_EXCEPTIONS``), when an
``after_request`` function fails, nor what a streamed body changes (the cookie left with the headers).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from weakref import WeakSet

import click
import flask
from flask.cli import AppGroup
from flask.sessions import SessionInterface, SessionMixin
from flask.signals import request_tearing_down
from werkzeug.exceptions import ServiceUnavailable

import lockstore

from .errors import LockstoreError
from .options import options_from_settings
from .web.session import Session, request_locks_for
from .web.stripes import DEFAULT_STRIPES

if TYPE_CHECKING:
    from flask import Flask
    from flask.wrappers import Request, Response

    from .web.requestlock import RequestLocks

logger = logging.getLogger(__name__)

BUSY = "The session is busy with another request; retry shortly."
"""The 503's description: nothing about the server (no lock path, no store)."""

_SESSIONS = "lockstore.flask.sessions"
"""The environ key listing the sessions opened for a request, released when its context is torn down."""


class LockstoreSession(Session, SessionMixin):  # type: ignore[override]
    """``flask.session`` with lockstore: a :class:`lockstore.web.session.Session` that is a Flask ``SessionMixin``.

    Parameters
    ----------
    store, cookie_id, locks, lock_timeout
        See :class:`lockstore.web.session.Session`.
    permanent
        Whether a session is permanent when it does not say otherwise (``SESSION_PERMANENT``).

    Notes
    -----
    One request's session, used by that request's thread only.  :attr:`modified`
    is Flask's: True once this request changed the session, also after the save.
    """

    def __init__(
        self,
        store: lockstore.BaseStore,
        cookie_id: str | None,
        *,
        locks: RequestLocks | None = None,
        lock_timeout: float | None = None,
        permanent: bool = True,
    ) -> None:
        super().__init__(store, cookie_id, locks=locks, lock_timeout=lock_timeout)
        self._default_permanent = permanent
        self._pending_permanent: bool | None = None  # set on a session that holds no data yet
        self._saved_changes = False

    def load(self) -> dict[str, Any]:
        """Read the session now if not yet done; a lock not obtained in time is a 503."""
        try:
            return super().load()
        except lockstore.LockTimeout as exc:
            # The details (the lock file's path) go to the log, never to the client (issue 10).
            logger.warning("503: %s", exc)
            raise ServiceUnavailable(description=BUSY, retry_after=1) from exc

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        pending, self._pending_permanent = self._pending_permanent, None
        if pending is not None and key != "_permanent":
            super().__setitem__("_permanent", pending)

    @property
    def permanent(self) -> bool:
        """The ``_permanent`` key, or ``SESSION_PERMANENT`` when the session does not have it."""
        if self._pending_permanent is not None:
            return self._pending_permanent
        return bool(self.get("_permanent", self._default_permanent))

    @permanent.setter
    def permanent(self, value: bool) -> None:
        value = bool(value)
        if self.id is None:
            # A flag alone makes no session (as in Flask-Session): kept until data is put.
            self._pending_permanent = value
        else:
            self["_permanent"] = value

    @property
    def modified(self) -> bool:
        """True when this request changed the session (written or still to be written), or set it to True."""
        return self._saved_changes or bool(Session.modified.fget(self))  # type: ignore[attr-defined]

    @modified.setter
    def modified(self, value: bool) -> None:
        Session.modified.fset(self, value)  # type: ignore[attr-defined]

    def save(self) -> str | None:
        """Write this request's changes (see :meth:`lockstore.wsgi.Session.save`); :attr:`modified` stays True."""
        changed = self.modified  # computed from a diff: read it before the save makes the diff empty
        action = super().save()
        self._saved_changes = changed
        return action


class LockstoreSessionInterface(SessionInterface):
    """A Flask session interface storing sessions in *store*.

    Parameters
    ----------
    store
        A store from :func:`lockstore.open`.
    request_lock, lock_timeout, lock_dir, stripes
        As for :class:`lockstore.wsgi.SessionMiddleware`; the lock is held until the request context is torn down.

    Notes
    -----
    Thread-safe and fork-safe: one instance serves every thread and worker process of the application.  Flask's settings
    are read on each request: ``SESSION_PERMANENT`` (default True), ``SESSION_REFRESH_EACH_REQUEST`` and
    ``SESSION_COOKIE_*``.  Without :func:`init_app`, ``app.cli.add_command(cli)`` adds ``flask lockstore clean``.
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
        self.locks = request_locks_for(
            store, request_lock=request_lock, lock_dir=lock_dir, stripes=stripes, timeout=lock_timeout
        )
        self._apps: WeakSet[Flask] = WeakSet()

    def open_session(self, app: Flask, request: Request) -> LockstoreSession:
        """Return the request's session; nothing is read before it is used."""
        if app not in self._apps:
            request_tearing_down.connect(_teardown, app, weak=False)
            self._apps.add(app)
        opened = request.environ.setdefault(_SESSIONS, [])
        session = self.session_class(
            self.store,
            request.cookies.get(self.get_cookie_name(app)),
            # The request's own session (the first one opened for it) holds the request-long lock.  Another
            # one opened for the same request, as the test client's session_transaction() does, is used
            # outside any request: it takes no lock its request could release, and its save is one
            # atomic edit of the keys it changed.
            locks=None if opened else self.locks,
            lock_timeout=self.lock_timeout,
            permanent=bool(app.config.get("SESSION_PERMANENT", True)),
        )
        opened.append(session)
        return session

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        """Write the request's changes and set, refresh or delete the cookie (Flask's rules).

        The lock is released when the request context is torn down, not here: Flask may call this again (an
        ``after_request`` that fails), and a ``stream_with_context`` body still uses the session after it.
        """
        if not isinstance(session, LockstoreSession) or not session.loaded:
            return
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
        sid = session.stored_id
        if sid is None:
            return
        if action == "set" or self.should_set_cookie(app, session):
            response.set_cookie(name, sid, expires=self.get_expiration_time(app, session), **attrs)

    def get_cookie_samesite(self, app: Flask) -> str | None:
        """``SESSION_COOKIE_SAMESITE``, or ``"Lax"`` when the application leaves it unset."""
        return app.config["SESSION_COOKIE_SAMESITE"] or "Lax"

    def should_set_cookie(self, app: Flask, session: SessionMixin) -> bool:
        """Flask's rule: ``session.modified or (session.permanent and SESSION_REFRESH_EACH_REQUEST)``.

        *modified* means this request changed the session (a refresh alone writes nothing to the store).
        """
        # the same result in the cheaper order: modified compares every value with the stored one
        return bool((session.permanent and app.config["SESSION_REFRESH_EACH_REQUEST"]) or session.modified)


def _teardown(app: Flask, exc: BaseException | None = None, **extra: object) -> None:
    # Every session opened for this request: flask.session, and any other (session_transaction()).
    # Torn down more than once (the test client's preserved contexts): release is idempotent.
    for session in flask.request.environ.get(_SESSIONS, ()):
        session.release()


def current_session() -> LockstoreSession:
    """``flask.session``, typed as the :class:`LockstoreSession` it is, for :meth:`~LockstoreSession.regenerate`,
    :meth:`~LockstoreSession.invalidate` and :attr:`~LockstoreSession.id` in type-checked code.

    Raises
    ------
    LockstoreError
        The application's session interface is not lockstore's.
    RuntimeError
        Outside a request (Flask's "Working outside of request context").
    """
    if not flask.has_request_context():
        raise RuntimeError("Working outside of request context: current_session() needs a request")
    session = flask.session  # the proxy: isinstance() and every attribute reach the request's session
    if not isinstance(session, LockstoreSession):
        raise LockstoreError(
            f"flask.session is a {session.__class__.__name__}, not a lockstore session: "
            "call lockstore.flask.init_app(app) or set app.session_interface = LockstoreSessionInterface(store)"
        )
    return session


cli = AppGroup("lockstore", help="The application's lockstore session store.")
"""The ``flask lockstore`` commands; :func:`init_app` adds them, else ``app.cli.add_command(cli)``."""


def _seconds(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of seconds")
    return value


@cli.command("clean")
@click.option(
    "--max-idle",
    type=click.FloatRange(min=0),
    default=None,
    callback=_seconds,
    metavar="SECONDS",
    help="Also remove the sessions idle longer than this (default: only the expired ones).",
)
def clean_command(max_idle: float | None) -> None:
    """Remove the expired sessions (Flask-Session's session_cleanup); run it from cron."""
    interface = flask.current_app.session_interface
    if not isinstance(interface, LockstoreSessionInterface):
        raise click.ClickException(
            "this application does not keep its sessions in lockstore: call lockstore.flask.init_app(app)"
        )
    try:
        removed = interface.store.clean(max_idle=max_idle)
    except LockstoreError as exc:  # a busy shard, changed rules, an unreachable server: one line, exit 1
        raise click.ClickException(str(exc)) from exc
    click.echo(f"removed {removed} session(s)")


_INTERFACE_OPTIONS = {
    "PATH": "path",
    "REQUEST_LOCK": "request_lock",
    "LOCK_TIMEOUT": "lock_timeout",
    "LOCK_DIR": "lock_dir",
    "STRIPES": "stripes",
}


def init_app(app: Flask, path: str | os.PathLike[str] | None = None, **options: Any) -> lockstore.BaseStore:
    """Open the store and make it *app*'s session interface; return the store.

    Settings come from *options* first, then ``LOCKSTORE_*`` config keys: ``LOCKSTORE_PATH`` (default ``<instance
    folder>/sessions``), every option of :func:`lockstore.open` in upper case (``_MAX_AGE`` defaults to
    ``PERMANENT_SESSION_LIFETIME``) and the interface's (``_REQUEST_LOCK``, ``_LOCK_TIMEOUT``, ``_LOCK_DIR``,
    ``_STRIPES``); an unknown key raises :class:`lockstore.LockstoreError` naming the closest valid one.  The store
    is also ``app.extensions["lockstore"]``; ``flask lockstore clean [--max-idle SECONDS]`` sweeps it.

    With a Redis or PostgreSQL store and no ``LOCKSTORE_LOCK_DIR``, the request lock is kept on the server.
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
    try:
        app.session_interface = LockstoreSessionInterface(store, **interface_options)
    except BaseException:
        store.close()  # a remote store without lock_dir: no connection pool left behind
        raise
    app.extensions["lockstore"] = store
    app.cli.add_command(cli)
    return store


__all__ = ["BUSY", "LockstoreSession", "LockstoreSessionInterface", "cli", "current_session", "init_app"]
