"""A Flask app using lockstore's session as a user would: ``mypy --strict`` must pass on it (tests/test_flask_typing.py)."""

from __future__ import annotations

from pathlib import Path

from flask import Flask, session

from lockstore.flask import LockstoreSession, current_session, init_app

app = Flask(__name__)
store = init_app(app, Path(app.instance_path) / "sessions")


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
    user = session.get("user")  # plain flask.session still works for the mapping part
    return str(user)


def session_id(current: LockstoreSession) -> str | None:
    return current.id


def is_new() -> bool:
    return current_session().new
