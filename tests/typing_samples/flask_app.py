"""A Flask app using lockstore's session as its users would: ``mypy --strict`` passes on it (test_flask_typing.py).

``flask.session`` is typed by Flask as a ``SessionMixin``: the mapping, ``permanent`` and ``modified``.
:func:`lockstore.flask.current_session` returns the same session typed as a ``LockstoreSession``, for
``regenerate()``, ``invalidate()``, ``id`` and ``new``.
"""

from __future__ import annotations

import os

from flask import Flask, session

from lockstore.flask import LockstoreSession, current_session, init_app


def create_app(path: str | os.PathLike[str]) -> Flask:
    app = Flask(__name__)
    init_app(app, path)

    @app.post("/login/<user>")
    def login(user: str) -> str:
        current = current_session()
        current.regenerate()  # a new id at login, against session fixation
        current["user"] = user
        sid: str | None = current.id
        return sid or ""

    @app.post("/logout")
    def logout() -> str:
        current_session().invalidate()
        return "bye"

    @app.get("/whoami")
    def whoami() -> str:
        user: object = session.get("user")  # plain flask.session for the mapping part
        session.permanent = False
        return f"{user} {describe(current_session())}"

    return app


def describe(current: LockstoreSession) -> str:
    new: bool = current.new
    return f"new={new} id={current.id is not None}"
