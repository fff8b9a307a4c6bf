"""ASGI counter applications (plain Starlette, FastAPI) that uvicorn serves in the tests and ``stress/web_compare.py``.

The same routes and meaning as the WSGI counter of ``apps.py``, written once (``SESSION_ROUTES``) and mounted by
both frameworks. The session layer is the one thing that changes between kinds, chosen by environment
variables so that a server process started by a test or the harness finds it:

``LOCKSTORE_TEST_MODE``     ``lockstore`` (default): ``lockstore.asgi.SessionMiddleware``;
                            ``starlette``: Starlette's ``SessionMiddleware`` (signed cookies);
                            ``starsessions``: starsessions with its Redis store (``LOCKSTORE_TEST_URL``)
``LOCKSTORE_TEST_URL``      a store URL (``redis://...``): starsessions' server; for ``lockstore``, a remote store
``LOCKSTORE_TEST_PATH``     the store directory of ``lockstore`` when no URL is given (with a URL: where the
                            request-long lock stripes live, shared by the workers of this machine)
``LOCKSTORE_TEST_TIMEOUT``  lockstore's lock timeout in seconds (default 10)

Every kind uses the cookie name ``lockstore_sid`` (``web_apps.servers.COOKIE``), so one client drives them all.

Routes: ``/incr`` adds one to ``n``; ``/read`` only reads it; ``/slow?s=2`` adds one, then awaits
``asyncio.sleep(s)`` with the session open; ``/logout`` clears the session; ``/plain`` never touches the
session; ``/pid`` is the worker's pid; ``/stream?chunks=k&s=t`` adds one, then streams k chunks t s apart,
adding one more before each (changes made while the body streams).

uvicorn: ``--factory tests.web_apps.asgi_apps:make_starlette_app`` (or ``make_fastapi_app``); gunicorn:
``tests.web_apps.asgi_apps:make_starlette_app()``. ``lockstore.asgi`` is imported only when a ``lockstore`` app
is built, so this module imports without it.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

COOKIE = "lockstore_sid"
SECRET = "test-only-secret"  # Starlette's cookie signing key: a test app, never deployed

Session = MutableMapping[str, Any]  # what the handlers need of ``scope["session"]``, whichever layer provides it


# -- the counter, once: each handler gets the session and the query, returns the body --------------------------


async def _incr(session: Session, query: dict[str, str]) -> str:
    session["n"] = session.get("n", 0) + 1
    return str(session["n"])


async def _slow(session: Session, query: dict[str, str]) -> str:
    session["n"] = session.get("n", 0) + 1
    n = session["n"]
    await asyncio.sleep(float(query.get("s", "2")))  # the session stays open while the loop serves others
    return str(n)


async def _read(session: Session, query: dict[str, str]) -> str:
    return str(session.get("n", 0))


async def _logout(session: Session, query: dict[str, str]) -> str:
    session.clear()
    return "bye"


Handler = Callable[[Session, dict[str, str]], Awaitable[str]]
SESSION_ROUTES: dict[str, Handler] = {"/incr": _incr, "/slow": _slow, "/read": _read, "/logout": _logout}


# -- the session layer: the only line that differs between kinds -----------------------------------------------


def mode() -> str:
    return os.environ.get("LOCKSTORE_TEST_MODE", "lockstore")


def session_middleware() -> list[Any]:
    """The ``starlette.middleware.Middleware`` list for the kind named by ``LOCKSTORE_TEST_MODE``."""
    from starlette.middleware import Middleware

    kind = mode()
    if kind == "starlette":
        from starlette.middleware.sessions import SessionMiddleware

        return [Middleware(SessionMiddleware, secret_key=SECRET, session_cookie=COOKIE)]
    if kind == "starsessions":
        from redis.asyncio import Redis
        from starsessions import SessionAutoloadMiddleware
        from starsessions import SessionMiddleware as StarSessions
        from starsessions.stores.redis import RedisStore

        # starsessions' documented set-up: its middleware, then autoload so that request.session is loaded
        redis_store = RedisStore(connection=Redis.from_url(os.environ["LOCKSTORE_TEST_URL"]))
        return [
            Middleware(StarSessions, store=redis_store, cookie_name=COOKIE, cookie_https_only=False),
            Middleware(SessionAutoloadMiddleware),
        ]
    if kind == "lockstore":
        import lockstore

        # imported here, by name: lockstore.asgi is written after this harness (issue 13)
        asgi = importlib.import_module("lockstore.asgi")
        timeout = float(os.environ.get("LOCKSTORE_TEST_TIMEOUT", 10))
        url, path = os.environ.get("LOCKSTORE_TEST_URL"), os.environ["LOCKSTORE_TEST_PATH"]
        store = lockstore.open(url or path, timeout=timeout)
        # a remote store's request-long locks: stripes in a local directory every worker of this machine shares
        lock_dir = os.path.join(path, "stripes") if url else None
        return [Middleware(asgi.SessionMiddleware, store=store, session_cookie=COOKIE, lock_dir=lock_dir)]
    raise ValueError(f"unknown LOCKSTORE_TEST_MODE {kind!r}: lockstore, starlette or starsessions")


def stream(session: Session, query: dict[str, str]) -> Any:
    """``/stream``: the body iterator of a streaming response (changes made while it streams)."""
    session["n"] = session.get("n", 0) + 1

    async def chunks() -> Any:
        for _ in range(int(query.get("chunks", "3"))):
            await asyncio.sleep(float(query.get("s", "0.2")))
            session["n"] += 1
            yield f"{session['n']}\n".encode()

    return chunks()


# -- the two frameworks -------------------------------------------------------------------------------------


def make_starlette_app() -> Any:
    """The counter as a plain Starlette application."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    def endpoint(handler: Handler) -> Callable[[Request], Awaitable[PlainTextResponse]]:
        async def respond(request: Request) -> PlainTextResponse:
            return PlainTextResponse(await handler(request.session, dict(request.query_params)))

        return respond

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("plain")

    async def pid(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(os.getpid()))

    async def streaming(request: Request) -> StreamingResponse:
        return StreamingResponse(stream(request.session, dict(request.query_params)), media_type="text/plain")

    routes = [Route(path, endpoint(handler)) for path, handler in SESSION_ROUTES.items()]
    routes += [Route("/plain", plain), Route("/pid", pid), Route("/stream", streaming)]
    return Starlette(routes=routes, middleware=session_middleware())


def make_fastapi_app() -> Any:
    """The counter as a FastAPI application (``request.session`` in path operations)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import PlainTextResponse, StreamingResponse

    app = FastAPI(middleware=session_middleware(), openapi_url=None, docs_url=None, redoc_url=None)

    def add(path: str, handler: Handler) -> None:
        async def respond(request: Request) -> str:
            return await handler(request.session, dict(request.query_params))

        # FastAPI resolves string annotations in the module's globals, where Request is not (imported lazily)
        respond.__annotations__ = {"request": Request, "return": str}
        app.get(path, response_class=PlainTextResponse)(respond)

    for path, handler in SESSION_ROUTES.items():
        add(path, handler)

    @app.get("/plain", response_class=PlainTextResponse)
    async def plain() -> str:
        return "plain"

    @app.get("/pid", response_class=PlainTextResponse)
    async def pid() -> str:
        return str(os.getpid())

    async def streaming(request: Request) -> StreamingResponse:
        return StreamingResponse(stream(request.session, dict(request.query_params)), media_type="text/plain")

    streaming.__annotations__ = {"request": Request}
    app.get("/stream", response_class=StreamingResponse)(streaming)

    return app
