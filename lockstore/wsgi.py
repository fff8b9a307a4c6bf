"""Sessions for WSGI applications: :class:`SessionMiddleware` and the :class:`Session` it hands out.

The middleware puts a :class:`Session` at ``environ["lockstore.session"]``.  The
session is *just in time*: nothing is read before the application touches it,
no cookie is sent and nothing is written before it holds data.  On first access
the session's lock stripe is taken (see :mod:`lockstore.web.stripes`) and held until
the response iterable is closed, so two requests of one user run their session
code one after the other.  At the end of the request the keys this request set
or deleted are applied, through :meth:`lockstore.Store.edit`, onto the record
as stored now: a request that only read writes nothing, and two requests that
changed different keys keep both changes even without the request-long lock.

Works the same under a pre-fork server (gunicorn, uWSGI, mod_wsgi), FastCGI
(flup) and CGI (:class:`wsgiref.handlers.CGIHandler`, one process per request).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lockstore

from .web.changes import changes, merge, snapshot
from .web.stripes import BUSY_BODY, BUSY_STATUS, DEFAULT_STRIPES, StripeHold, StripeLocks, stripe_locks_for

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

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
        The request-long lock stripes, or ``None`` for no request-long lock.
    lock_timeout
        Seconds to wait for the stripe (``None``: the locks' default).

    Notes
    -----
    A session belongs to one request: it is not meant to be shared between
    threads.  The first access takes the stripe lock (``LockTimeout`` when it
    does not come within the timeout) and reads the record; :meth:`release`
    frees the stripes and must be called when the response is finished.
    """

    def __init__(
        self,
        store: lockstore.BaseStore,
        cookie_id: str | None,
        *,
        locks: StripeLocks | None = None,
        lock_timeout: float | None = None,
    ) -> None:
        self.store = store
        self.cookie_id = cookie_id if lockstore.is_valid_id(cookie_id) else None
        self._locks = locks
        self._lock_timeout = lock_timeout
        self._holds: dict[int, StripeHold] = {}
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

    # -- loading and locking ---------------------------------------------------------------

    def _lock(self, sid: str) -> None:
        if self._locks is None:
            return
        index = self._locks.index(sid)
        if index not in self._holds:
            hold = self._locks.acquire(sid, timeout=self._lock_timeout)
            assert hold is not None  # a blocking acquire returns a hold or raises
            self._holds[index] = hold

    def _unlock(self, sid: str) -> None:
        if self._locks is not None:
            hold = self._holds.pop(self._locks.index(sid), None)
            if hold is not None:
                hold.release()

    def _claim_id(self) -> str:
        """A fresh id whose stripe this request holds.

        Only a non-blocking try is made for a new id's stripe: waiting for it
        while holding another stripe could deadlock two requests that each wait
        for the other's stripe, and any fresh id will do.
        """
        if self._locks is None:
            return lockstore.new_id()
        for _ in range(_NEW_ID_TRIES):
            sid = lockstore.new_id()
            index = self._locks.index(sid)
            if index in self._holds:
                return sid
            hold = self._locks.acquire(sid, blocking=False)
            if hold is not None:
                self._holds[index] = hold
                return sid
        sid = lockstore.new_id()  # pragma: no cover - 64 busy stripes in a row
        self._lock(sid)  # pragma: no cover
        return sid  # pragma: no cover

    def _load(self) -> dict[str, Any]:
        self.accessed = True
        if self.loaded:
            return self._data
        sid = self.cookie_id
        if sid is not None:
            self._lock(sid)
            try:
                value = self.store.get(sid)
            except lockstore.CorruptRecord:
                logger.warning("session %.8s... does not decode; starting a fresh one", sid)
                value = None
            if isinstance(value, dict):
                self._data = value
                self._id = sid
                self._stored = self._was_stored = True
                self._snapshot = snapshot(value)
            else:
                # Unknown, expired or forged: a fresh session under a new id (never
                # the client's id, against session fixation).
                self._unlock(sid)
        self.loaded = True
        return self._data

    def release(self) -> None:
        """Release the request-long lock stripes (idempotent)."""
        holds, self._holds = self._holds, {}
        for hold in holds.values():
            hold.release()

    # -- the mapping -----------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        data = self._load()
        if self._id is None:
            self._id = self._claim_id()
        data[key] = value

    def __delitem__(self, key: str) -> None:
        del self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, key: object) -> bool:
        return key in self._load()

    def __repr__(self) -> str:
        if not self.loaded:
            return f"<{type(self).__name__} (not loaded)>"
        return f"<{type(self).__name__} {self._id and self._id[:8]!s}... {self._data!r}>"

    # -- session operations ----------------------------------------------------------------

    @property
    def id(self) -> str | None:
        """The session id; ``None`` while a new session holds no data."""
        self._load()
        return self._id

    @property
    def new(self) -> bool:
        """True when the session did not exist in the store when the request began."""
        self._load()
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
            self._load()
        self._force = bool(value)

    def regenerate(self) -> None:
        """Move the data to a new id and delete the old one (call it at login, against session fixation)."""
        self._load()
        if self._id is None:
            return
        if self._stored:
            self._old_ids.append(self._id)
        self._id = self._claim_id()
        self._stored = False
        self._rewrite = True

    def invalidate(self) -> None:
        """Delete the session from the store now and start an empty one (logout)."""
        self._load()
        for sid in [*self._old_ids, *([self._id] if self._stored and self._id else [])]:
            self.store.pop(sid, None)
        self._old_ids = []
        self._data = {}
        self._snapshot = {}
        self._id = None
        self._stored = False
        self._rewrite = False
        self._invalidated = True

    def _changes(self) -> tuple[dict[str, Any], list[str]]:
        if self._rewrite or not self._stored:
            return dict(self._data), []
        return changes(self._snapshot, self._data)

    def save(self) -> str | None:
        """Write this request's changes; return the cookie to send: ``"set"``, ``"delete"`` or ``None``.

        ``"set"`` means the client must learn the id (new or changed);
        refreshing the cookie of an existing session is the caller's choice.
        Safe to call more than once: a second call writes only later changes.
        """
        if not self.loaded:
            return None
        action: str | None = "set" if self._force and self._id else None
        changed, deleted = self._changes()
        sid = self._id
        if sid is not None and not self._stored:
            if changed:
                with self.store.edit(sid, create=True) as record:
                    record.clear()
                    record.update(changed)
                self._stored = True
                action = "set"
            elif self._was_stored or self.cookie_id is not None:
                action = "delete"
        elif sid is not None and (changed or deleted):
            try:
                with self.store.edit(sid, create=False) as record:
                    merge(record, changed, deleted)
                    empty = not record
            except KeyError:
                # Deleted meanwhile (logout in another request, or expired): never resurrect it.
                logger.info("session %.8s... vanished during the request; changes dropped", sid)
                empty = True
            if empty:
                self.store.pop(sid, None)
                self._id = None
                self._stored = False
                self._data = {}
                action = "delete"
        for old in self._old_ids:
            self.store.pop(old, None)
        self._old_ids = []
        self._rewrite = False
        if self._invalidated and self._id is None and action is None and self.cookie_id is not None:
            action = "delete"
        self._snapshot = snapshot(self._data)
        return action

    @property
    def stored(self) -> bool:
        """True when the session exists in the store under :attr:`id` (after :meth:`save`)."""
        return self._stored


def read_cookie(header: str | None, name: str) -> str | None:
    """Return the first value of cookie *name* in a ``Cookie`` header that is a valid session id."""
    if not header:
        return None
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if not sep or key.strip() != name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if lockstore.is_valid_id(value):
            return value
    return None


def cookie_header(
    name: str,
    value: str,
    *,
    max_age: float | None,
    path: str = "/",
    domain: str | None = None,
    secure: bool = False,
    httponly: bool = True,
    samesite: str | None = "Lax",
) -> str:
    """Format a ``Set-Cookie`` value; ``max_age=None`` makes a browser-session cookie, 0 deletes it."""
    parts = [f"{name}={value}"]
    if max_age is not None:
        seconds = max(0, int(max_age))
        expires = formatdate(time.time() + seconds if seconds else 0, usegmt=True)
        parts += [f"Expires={expires}", f"Max-Age={seconds}"]
    if domain:
        parts.append(f"Domain={domain}")
    parts.append(f"Path={path}")
    if secure:
        parts.append("Secure")
    if httponly:
        parts.append("HttpOnly")
    if samesite:
        parts.append(f"SameSite={samesite}")
    return "; ".join(parts)




class SessionMiddleware:
    """WSGI middleware giving the application a server-side session.

    Parameters
    ----------
    app
        The WSGI application.
    store
        A store from :func:`lockstore.open`.
    cookie_name, path, domain, secure, httponly, samesite
        The session cookie's attributes.  HttpOnly and SameSite=Lax by default;
        pass ``secure=True`` behind HTTPS.
    max_age
        Cookie lifetime in seconds; ``None`` follows the store's ``max_age``
        (the cookie is refreshed whenever a request uses the session, as the
        store's idle expiry is); 0 sends a browser-session cookie.
    environ_key
        Where the application finds the session.
    request_lock
        ``True`` (default): hold the session's lock stripe from its first access
        until the response is closed, so one user's requests never lose each
        other's updates.  ``False``: no request-long lock; only the save is
        atomic (changes to different keys merge, a counter may lose updates).
    lock_timeout
        Seconds to wait for the session lock (default: the store's ``timeout``);
        the request then gets a 503 response, never proceeds unlocked.
    lock_dir, stripes
        Where the lock stripes live and how many (see :func:`stripe_locks_for`).

    Notes
    -----
    Thread-safe and fork-safe: one instance serves every thread of a process,
    and may be created before a pre-fork server forks.
    """

    def __init__(
        self,
        app: WSGIApplication,
        store: lockstore.BaseStore,
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
        self.locks = (
            stripe_locks_for(store, lock_dir=lock_dir, stripes=stripes, timeout=lock_timeout) if request_lock else None
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
        if action == "delete":
            return cookie_header(self.cookie_name, "", max_age=0, **attrs)
        sid = session._id
        if sid is not None and session.stored and (action == "set" or session.accessed):
            return cookie_header(self.cookie_name, sid, max_age=max_age or None, **attrs)
        return None

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
        except lockstore.LockTimeout as exc:
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

    def busy(self, exc: lockstore.LockTimeout) -> list[bytes]:
        logger.warning("503: %s", exc)
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(BUSY_BODY))),
            ("Retry-After", "1"),
        ]
        self._start_response(BUSY_STATUS, headers, sys.exc_info() if self.started else None)
        return [BUSY_BODY]

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.result
        except lockstore.LockTimeout as exc:
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
