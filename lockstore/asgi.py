"""Sessions for ASGI applications (Starlette, FastAPI, any ASGI app): :class:`SessionMiddleware`.

A drop-in for ``starlette.middleware.sessions.SessionMiddleware``: change the import, say where the sessions live,
and ``request.session`` (``scope["session"]``) works unchanged, held on the server instead of in a signed cookie::

    from lockstore.asgi import SessionMiddleware

    app.add_middleware(SessionMiddleware, store_path="/var/lib/myapp/sessions", secret_key=...)
    # or SessionMiddleware(app, "/var/lib/myapp/sessions"), or store=lockstore.open("redis://...", ...)

**Names.** The cookie options are Starlette's, with Starlette's meaning and defaults: ``session_cookie``,
``max_age`` (seconds, 14 days; ``None``: a browser-session cookie), ``path`` (the cookie's path), ``same_site``,
``https_only``, ``domain``, ``partitioned``.  So ``path`` is the cookie's, and the store is given as the first
positional argument or ``store_path=`` (with :func:`lockstore.open`'s options as further keywords), or built by the
application and given as ``store=``.  ``secret_key`` is accepted for the one-import switch and unused: the cookie
holds only a random session id, nothing to sign.

**The session** is :mod:`lockstore.web.session`'s, as in :mod:`lockstore.wsgi`: created just in time (no record and
no cookie until something is stored), only the keys a request changed are written, ``regenerate()`` (at login,
against session fixation) and ``invalidate()`` (logout) on ``request.session``.  It is a mutable mapping, not a
``dict``: pass ``dict(request.session)`` to ``json.dumps``.

**The lock.** A request carrying a session cookie holds that session's request-long lock from before the application
runs until the response is complete, so one user's concurrent requests never lose each other's updates.  It is
awaited without blocking the event loop (non-blocking tries with ``asyncio.sleep`` back-off, 0.2 ms doubling to
1 ms): the worker serves other users meanwhile.  Not obtained within ``lock_timeout`` (default: the store's
``timeout``), the answer is 503 with ``Retry-After: 1``.  Released when the last body message is sent, when the
client disconnects (an ``http.disconnect`` the application receives, as Starlette's streaming responses do: later
changes are discarded) and when the request ends otherwise (an exception, a cancellation).

**Saving.** Changes are saved before the response headers leave (the cookie must name a stored session), and changes
made while a streaming body is produced when it completes.  Nothing is saved when the application raises before
its response starts.  Each write is whole (one ``store.edit``).  Store operations run inline on an embedded store
(microseconds, under a shard lock others hold for microseconds) and in a thread on a remote one; ``invalidate()``'s
deletes wait for that end-of-request save, so that no network call is made from a synchronous handler.

Websocket and lifespan scopes pass through untouched (no ``scope["session"]`` there).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .errors import LockTimeout
from .web import session as web
from .web.cookies import cookie_header, read_cookie
from .web.requestlock import BUSY_BODY, BUSY_HEADERS, Gates
from .web.stripes import DEFAULT_STRIPES

if TYPE_CHECKING:
    import os
    from collections.abc import Awaitable, Callable, MutableMapping
    from pathlib import Path

    from .base import BaseStore

    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]
    ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

logger = logging.getLogger(__name__)

_BUSY_HEADERS = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in BUSY_HEADERS]


class Session(web.Session):
    """``scope["session"]``: the shared web session, with what Starlette's ``request.session`` calls on it.

    Notes
    -----
    Belongs to one request, used from its event loop.  :meth:`invalidate` deletes at the end of the request.
    """

    def mark_accessed(self) -> None:
        """Note a use of the session (Starlette's ``request.session`` calls it): its cookie is refreshed."""
        self.accessed = True

    def mark_modified(self) -> None:
        """Send the cookie even if nothing changed (as ``session.modified = True``)."""
        self.modified = True

    def _forget(self, ids: list[str]) -> None:
        self._old_ids.extend(ids)  # deleted by the end-of-request save, off the loop for a remote store


class SessionMiddleware:
    """ASGI middleware giving ``scope["session"]`` (``request.session``) a server-side, locked session.

    Parameters
    ----------
    app
        The ASGI application.
    store_path
        Where the sessions live (a directory, ``redis://...``, ``postgresql://...``): opened with
        :func:`lockstore.open` and *options*.  Or give *store*.
    store
        A store built by the application (any backend).
    session_cookie, max_age, path, same_site, https_only, domain, partitioned
        The session cookie, as Starlette's ``SessionMiddleware`` names them (``max_age`` in seconds, ``None`` for a
        browser-session cookie; HttpOnly always).  The cookie is sent again whenever a request uses the session.
    secret_key
        Accepted for compatibility with Starlette's ``SessionMiddleware`` and unused (see the module docstring).
    request_lock
        ``True`` (default): hold the session's lock across the request; ``False``: only the save is atomic.
    lock_timeout
        Seconds to wait for the session's lock before answering 503 (default: the store's ``timeout``).
    lock_dir, stripes
        Where the lock stripes live and how many (:func:`lockstore.web.session.request_locks_for`); a remote store
        needs *lock_dir*, a local directory shared by the workers of one machine.
    **options
        :func:`lockstore.open`'s options, with *store_path*.

    Raises
    ------
    ValueError
        Neither or both of *store_path* and *store*; options with *store*; a remote store without *lock_dir*.

    Notes
    -----
    One instance serves every request of a worker process; create it before or after a fork (``--preload``).
    Every wait (the session's lock, a remote store) happens off the event loop.
    """

    def __init__(
        self,
        app: ASGIApp,
        store_path: str | os.PathLike[str] | None = None,
        *,
        store: BaseStore | None = None,
        session_cookie: str = "session",
        max_age: int | None = 14 * 24 * 60 * 60,
        path: str = "/",
        same_site: str = "lax",
        https_only: bool = False,
        domain: str | None = None,
        partitioned: bool = False,
        secret_key: object = None,
        request_lock: bool = True,
        lock_timeout: float | None = None,
        lock_dir: str | Path | None = None,
        stripes: int = DEFAULT_STRIPES,
        **options: Any,
    ) -> None:
        del secret_key  # nothing to sign: the cookie holds a random id
        if store is None:
            if store_path is None:
                msg = "SessionMiddleware needs the sessions' store: store_path= (or the first argument), or store="
                raise ValueError(msg)
            site = web.open_site(
                store_path, options, request_lock=request_lock, lock_dir=lock_dir, stripes=stripes,
                lock_timeout=lock_timeout,
            )  # fmt: skip
            self.store, self.locks = site.store, site.locks
        elif store_path is not None or options:
            msg = f"store= is a store already opened: no store_path= or store options {sorted(options)} with it"
            raise ValueError(msg)
        else:
            self.store = store
            self.locks = web.request_locks_for(
                store, request_lock=request_lock, lock_dir=lock_dir, stripes=stripes, timeout=lock_timeout
            )
        self.gates = Gates()
        self.app = app
        self.session_cookie = session_cookie
        self.max_age = max_age
        self.lock_timeout = lock_timeout
        self._attrs: dict[str, Any] = {
            "path": path, "domain": domain, "secure": https_only, "httponly": True, "samesite": same_site,
        }  # fmt: skip
        self._suffix = "; Partitioned" if partitioned else ""

    def cookie(self, session: web.Session, action: str | None) -> bytes | None:
        """The ``Set-Cookie`` value after :meth:`Session.save` returned *action*, or ``None``."""
        value = session.cookie_value(action, refresh=session.accessed)
        if value is None:
            return None
        max_age = self.max_age if value else 0
        header = cookie_header(self.session_cookie, value, max_age=max_age, **self._attrs) + self._suffix
        return header.encode("latin-1")

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        """Serve one ASGI connection: an HTTP request gets ``scope["session"]``; other scopes pass through."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookies = "; ".join(value.decode("latin-1") for name, value in scope["headers"] if name == b"cookie")
        session = Session(
            self.store,
            read_cookie(cookies, self.session_cookie),
            locks=self.locks,
            lock_timeout=self.lock_timeout,
            gates=self.gates,
        )
        exchange = _Exchange(self, session, receive, send)
        try:
            await session.aload()
            scope["session"] = session
            await self.app(scope, exchange.receive, exchange.send)
        except LockTimeout as exc:
            if exchange.started:
                raise
            logger.warning("503: %s", exc)
            await send({"type": "http.response.start", "status": 503, "headers": list(_BUSY_HEADERS)})
            await send({"type": "http.response.body", "body": BUSY_BODY})
        finally:
            session.release()


class _Exchange:
    """One request's messages: saves the session with the headers and at the last body message, then releases it;
    a client gone (``http.disconnect``) releases it at once and nothing more is saved."""

    __slots__ = ("_receive", "_send", "cookie_sent", "done", "middleware", "session", "started")

    def __init__(self, middleware: SessionMiddleware, session: Session, receive: Receive, send: Send) -> None:
        self.middleware = middleware
        self.session = session
        self._receive = receive
        self._send = send
        self.started = False
        self.done = False  # saved for the last time, or the client is gone: the lock is released
        self.cookie_sent = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect" and not self.done:
            self.done = True
            self.session.release()
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start" and not self.started:
            self.started = True
            if not self.done:
                # saved before the headers leave: the client cannot send the new id before it is stored
                cookie = self.middleware.cookie(self.session, await self.session.asave())
                headers = list(message.get("headers", ()))
                if cookie is not None:
                    headers.append((b"set-cookie", cookie))
                    self.cookie_sent = True
                if self.session.accessed:
                    headers.append((b"vary", b"Cookie"))
                message = {**message, "headers": headers}
        elif kind == "http.response.body" and not message.get("more_body", False) and not self.done:
            self.done = True
            try:
                if await self.session.asave() == "set" and not self.cookie_sent:  # changes made during the body
                    logger.warning("session created after the headers were sent: its cookie is lost")
            finally:
                self.session.release()  # before the last bytes: the next request of the session may start
        await self._send(message)


__all__ = ["Session", "SessionMiddleware"]
