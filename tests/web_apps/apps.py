"""Counter applications served by gunicorn, flup and CGI in the tests and in ``stress/web_compare.py``.

Configured by environment variables, so a server process started by a test finds its store:

``LOCKSTORE_TEST_PATH``   the store directory
``LOCKSTORE_TEST_MODE``   Flask session kind: ``lockstore`` (default), ``cookie`` (Flask's own signed
                          cookies) or ``flask-session`` (Flask-Session's filesystem sessions on cachelib's
                          FileSystemCache)
``LOCKSTORE_TEST_LOCK``   ``0`` turns the request-long session lock off

Routes: ``/incr`` adds one to ``n``; ``/read`` only reads it; ``/slow?s=2`` adds one, then sleeps;
``/login`` regenerates the id; ``/logout`` invalidates; ``/plain`` never touches the session; ``/pid``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

import lockstore
from lockstore.wsgi import SessionMiddleware


def _store() -> lockstore.BaseStore:
    timeout = float(os.environ.get("LOCKSTORE_TEST_TIMEOUT", 10))
    return lockstore.open(os.environ["LOCKSTORE_TEST_PATH"], timeout=timeout)


def _locking() -> bool:
    return os.environ.get("LOCKSTORE_TEST_LOCK", "1") != "0"


def _seconds(query: str) -> float:
    return float(parse_qs(query).get("s", ["2"])[0])


def counter_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """The bare WSGI counter: the session is ``environ["lockstore.session"]``."""
    session = environ["lockstore.session"]
    path = environ.get("PATH_INFO", "/")
    body: str
    if path == "/incr":
        session["n"] = session.get("n", 0) + 1
        body = str(session["n"])
    elif path == "/slow":
        session["n"] = session.get("n", 0) + 1
        body = str(session["n"])
        time.sleep(_seconds(environ.get("QUERY_STRING", "")))
    elif path == "/read":
        body = str(session.get("n", 0))
    elif path == "/login":
        session.regenerate()
        session["user"] = "alice"
        body = str(session.id)
    elif path == "/logout":
        session.invalidate()
        body = "bye"
    elif path == "/pid":
        body = str(os.getpid())
    elif path == "/plain":
        body = "plain"
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]


def make_wsgi_app() -> Any:
    """The bare WSGI counter behind :class:`SessionMiddleware` (gunicorn: ``apps:make_wsgi_app()``)."""
    return SessionMiddleware(counter_app, _store(), request_lock=_locking())


# -- Flask ------------------------------------------------------------------------------------


def _flask_session(app: Any, directory: str) -> None:
    """Flask-Session's filesystem sessions (its ``cachelib`` type on a ``FileSystemCache``), as its
    documentation configures them, for comparison."""
    from cachelib import FileSystemCache
    from flask_session import Session

    app.config["SESSION_TYPE"] = "cachelib"
    app.config["SESSION_CACHELIB"] = FileSystemCache(directory, threshold=0, default_timeout=1800)
    Session(app)


def make_flask_app() -> Any:
    """The Flask counter (gunicorn: ``apps:make_flask_app()``)."""
    import flask

    app = flask.Flask(__name__)
    app.config["SECRET_KEY"] = "test-only-secret"
    app.config["SESSION_REFRESH_EACH_REQUEST"] = True
    app.config["SESSION_COOKIE_NAME"] = "lockstore_sid"
    mode = os.environ.get("LOCKSTORE_TEST_MODE", "lockstore")
    if mode == "lockstore":
        from lockstore.flask import LockstoreSessionInterface

        app.session_interface = LockstoreSessionInterface(_store(), request_lock=_locking())
    elif mode == "flask-session":
        _flask_session(app, os.path.join(os.environ["LOCKSTORE_TEST_PATH"], "flask-session"))
    elif mode != "cookie":
        raise ValueError(f"unknown LOCKSTORE_TEST_MODE {mode!r}")
    session = flask.session

    @app.route("/incr")
    def incr() -> str:
        session.permanent = True
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    @app.route("/slow")
    def slow() -> str:
        session["n"] = session.get("n", 0) + 1
        n = session["n"]
        time.sleep(_seconds(flask.request.query_string.decode()))
        return str(n)

    @app.route("/read")
    def read() -> str:
        return str(session.get("n", 0))

    @app.route("/login")
    def login() -> str:
        session.regenerate()  # type: ignore[attr-defined]
        session["user"] = "alice"
        return str(session.id)  # type: ignore[attr-defined]

    @app.route("/logout")
    def logout() -> str:
        session.invalidate()  # type: ignore[attr-defined]
        return "bye"

    @app.route("/plain")
    def plain() -> str:
        return "plain"

    @app.route("/pid")
    def pid() -> str:
        return str(os.getpid())

    return app


# -- two hosts sharing one server store (tests/web_apps/hosts.py) -----------------------------------
#
# ``LOCKSTORE_TEST_URL``           the store's URL (``redis://``, ``postgresql://``, ``redis+cluster://``)
# ``LOCKSTORE_TEST_OPTIONS``       a JSON object of ``lockstore.open`` keywords (``prefix``, ``table``)
# ``LOCKSTORE_TEST_REQUEST_LOCK``  ``dir``: the host's own ``LOCKSTORE_TEST_LOCK_DIR`` (today's only request lock
#                                  for a server store); ``server``: no ``lock_dir``, so the integration takes the
#                                  server-side request lock (issue 12); ``off``: ``request_lock=False``
# ``LOCKSTORE_TEST_SESSION``       Flask only: ``lockstore`` (default) or ``flask-session``: Flask-Session's Redis
#                                  backend as shipped, on the same URL, keys under ``<prefix>:``


def _host_options() -> dict[str, Any]:
    import json  # here, not at the top: this section is appended to a module others edit

    options: dict[str, Any] = json.loads(os.environ.get("LOCKSTORE_TEST_OPTIONS", "{}"))
    return options


def _host_store() -> lockstore.BaseStore:
    timeout = float(os.environ.get("LOCKSTORE_TEST_TIMEOUT", 10))
    return lockstore.open(os.environ["LOCKSTORE_TEST_URL"], timeout=timeout, **_host_options())


def _host_lock() -> dict[str, Any]:
    """The request-lock keywords of the integrations for ``LOCKSTORE_TEST_REQUEST_LOCK``."""
    mode = os.environ.get("LOCKSTORE_TEST_REQUEST_LOCK", "dir")
    if mode == "dir":
        return {"request_lock": True, "lock_dir": os.environ["LOCKSTORE_TEST_LOCK_DIR"]}
    if mode == "server":
        return {"request_lock": True}
    if mode == "off":
        return {"request_lock": False}
    raise ValueError(f"unknown LOCKSTORE_TEST_REQUEST_LOCK {mode!r}: use dir, server or off")


def make_wsgi_host_app() -> Any:
    """The bare WSGI counter on a server store (gunicorn: ``apps:make_wsgi_host_app()``)."""
    return SessionMiddleware(counter_app, _host_store(), **_host_lock())


def make_flask_host_app() -> Any:
    """The Flask counter on a server store (gunicorn: ``apps:make_flask_host_app()``): the routes of
    :func:`make_flask_app`, built with Flask's cookie sessions (``LOCKSTORE_TEST_MODE=cookie``), whose session
    interface is then replaced by lockstore's or by Flask-Session's Redis one."""
    if os.environ.get("LOCKSTORE_TEST_MODE") != "cookie":
        raise ValueError("make_flask_host_app needs LOCKSTORE_TEST_MODE=cookie (it replaces that session interface)")
    app = make_flask_app()
    kind = os.environ.get("LOCKSTORE_TEST_SESSION", "lockstore")
    if kind == "lockstore":
        from lockstore.flask import LockstoreSessionInterface

        app.session_interface = LockstoreSessionInterface(_host_store(), **_host_lock())
    elif kind == "flask-session":
        import redis
        from flask_session import Session

        prefix = _host_options().get("prefix", "session")
        app.config["SESSION_TYPE"] = "redis"
        app.config["SESSION_REDIS"] = redis.Redis.from_url(os.environ["LOCKSTORE_TEST_URL"])
        app.config["SESSION_KEY_PREFIX"] = f"{prefix}:"
        Session(app)
    else:
        raise ValueError(f"unknown LOCKSTORE_TEST_SESSION {kind!r}: use lockstore or flask-session")
    return app
