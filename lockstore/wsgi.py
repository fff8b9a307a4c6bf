"""Sessions for WSGI applications: :class:`SessionMiddleware` and the :class:`Session` it hands out.

The middleware puts a :class:`Session` (:mod:`lockstore.web.session`: just in time, locked from its first access,
only the changed keys written) at ``environ["lockstore.session"]``, holds its lock until the response iterable is
closed and sets the cookie.  Works the same under a pre-fork server (gunicorn, uWSGI, mod_wsgi), FastCGI (flup) and
CGI (:class:`wsgiref.handlers.CGIHandler`, one process per request).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .errors import LockTimeout
from .web.cookies import cookie_header, read_cookie
from .web.requestlock import BUSY_BODY, BUSY_HEADERS, BUSY_STATUS
from .web.session import Session, request_locks_for
from .web.stripes import DEFAULT_STRIPES

if TYPE_CHECKING:
    from pathlib import Path

    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .base import BaseStore

logger = logging.getLogger(__name__)

stripe_locks_for = request_locks_for  # its name in lockstore 0.1


class SessionMiddleware:
    """WSGI middleware giving the application a server-side session.

    Parameters
    ----------
    app
        The WSGI application.
    store
        A store from :func:`lockstore.open`.
    cookie_name, path, domain, secure, httponly, samesite
        The session cookie's attributes.  HttpOnly and SameSite=Lax by default; pass ``secure=True`` behind HTTPS.
    max_age
        Cookie lifetime in seconds; ``None`` follows the store's ``max_age`` (the cookie is refreshed whenever a request
        uses the session, as the store's idle expiry is); 0 sends a browser-session cookie.
    environ_key
        Where the application finds the session.
    request_lock
        ``True`` (default): hold the session's lock stripe from its first access until the response is closed, so one
        user's requests never lose each other's updates.  ``False``: no request-long lock; only the save is atomic
        (changes to different keys merge, a counter may lose updates).
    lock_timeout
        Seconds to wait for the session lock (default: the store's ``timeout``); then a 503, never unlocked.
    lock_dir, stripes
        Where the lock stripes live and how many (see :func:`lockstore.web.session.request_locks_for`).

    Notes
    -----
    Thread-safe and fork-safe: one instance serves every thread of a process, and may be created before a fork.
    """

    def __init__(
        self,
        app: WSGIApplication,
        store: BaseStore,
        *,
        cookie_name: str = "lockstore_sid",
        max_age: float | None = None,
        path: str = "/",
        domain: str | None = None,
        secure: bool = False,
        httponly: bool = True,
        samesite: str | None = "Lax",
        environ_key: str = "lockstore.session",
        request_lock: bool = True,
        lock_timeout: float | None = None,
        lock_dir: str | Path | None = None,
        stripes: int = DEFAULT_STRIPES,
    ) -> None:
        self.app = app
        self.store = store
        self.cookie_name = cookie_name
        self.max_age = max_age
        self.path = path
        self.domain = domain
        self.secure = secure
        self.httponly = httponly
        self.samesite = samesite
        self.environ_key = environ_key
        self.lock_timeout = lock_timeout
        self.locks = request_locks_for(
            store, request_lock=request_lock, lock_dir=lock_dir, stripes=stripes, timeout=lock_timeout
        )

    def _cookie(self, session: Session, action: str | None) -> str | None:
        max_age = self.store.max_age if self.max_age is None else self.max_age
        attrs: dict[str, Any] = {
            "path": self.path,
            "domain": self.domain,
            "secure": self.secure,
            "httponly": self.httponly,
            "samesite": self.samesite,
        }
        value = session.cookie_value(action, refresh=session.accessed)
        if value is None:
            return None
        return cookie_header(self.cookie_name, value, max_age=(max_age or None) if value else 0, **attrs)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        session = Session(
            self.store,
            read_cookie(environ.get("HTTP_COOKIE"), self.cookie_name),
            locks=self.locks,
            lock_timeout=self.lock_timeout,
        )
        environ[self.environ_key] = session
        response = _Response(self, session, start_response)
        try:
            response.result = self.app(environ, response.start_response)
        except LockTimeout as exc:
            session.release()
            return response.busy(exc)
        except BaseException:
            session.release()
            raise
        return response


class _Response:
    """The response iterable: saves the session with the headers, releases its lock on close()."""

    def __init__(self, middleware: SessionMiddleware, session: Session, start_response: StartResponse) -> None:
        self.middleware = middleware
        self.session = session
        self._start_response = start_response
        self.result: Iterable[bytes] = ()
        self.started = False
        self.cookie_sent = False
        self.failed = False

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
        /,
    ) -> Callable[[bytes], object]:
        if not self.started:
            # Saved before the headers leave: the client cannot send the new id
            # before the session exists under it.
            cookie = self.middleware._cookie(self.session, self.session.save())
            if cookie is not None:
                headers = [*headers, ("Set-Cookie", cookie)]
                self.cookie_sent = True
        self.started = True
        return self._start_response(status, headers, exc_info)

    def busy(self, exc: LockTimeout) -> list[bytes]:
        logger.warning("503: %s", exc)
        self._start_response(BUSY_STATUS, list(BUSY_HEADERS), sys.exc_info() if self.started else None)
        return [BUSY_BODY]

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.result
        except LockTimeout as exc:
            self.failed = True
            if self.started:
                raise
            self.started = True
            yield from self.busy(exc)
        except BaseException:
            self.failed = True  # changes made while the body failed are discarded, as in Store.edit
            raise

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            try:
                if self.started and not self.failed:
                    action = self.session.save()  # changes made while the body was produced
                    if action == "set" and not self.cookie_sent:
                        logger.warning("session created after the headers were sent: its cookie is lost")
            finally:
                self.session.release()


__all__ = [
    "BUSY_BODY",
    "BUSY_STATUS",
    "Session",
    "SessionMiddleware",
    "cookie_header",
    "read_cookie",
    "stripe_locks_for",
]
