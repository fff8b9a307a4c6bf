"""lockstore.flask, issue 10: Flask users reach ``regenerate()``, ``invalidate()`` and ``id`` type-checked,
through :func:`lockstore.flask.current_session`.  ``mypy --strict`` runs on a sample app kept in
``tests/typing_samples/flask_app.py``, which also runs here with Flask's test client.

mypy follows the imports into lockstore, so lockstore's own modules must pass ``--strict`` too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from servers import require

flask = require("flask")  # skips outside CI, fails under CI=true
require("mypy")

from typing_samples.flask_app import create_app  # noqa: E402

import lockstore  # noqa: E402
from lockstore.flask import current_session  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = "tests/typing_samples/flask_app.py"


def mypy(*paths: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_mypy_strict_passes_on_the_sample_flask_app() -> None:
    done = mypy(SAMPLE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found in 1 source file" in done.stdout


def test_mypy_strict_catches_the_untyped_way(tmp_path: Path) -> None:
    """What the helper is for: on ``flask.session`` (a SessionMixin to mypy) regenerate() is an error."""
    bad = tmp_path / "bad_app.py"
    bad.write_text(
        "from flask import session\n"
        "from lockstore.flask import current_session\n\n\n"
        "def login() -> None:\n"
        "    session.regenerate()\n\n\n"
        "def who() -> int:\n"
        "    return current_session().id\n"
    )
    done = mypy(str(bad))
    assert done.returncode == 1, done.stdout
    assert '"SessionMixin" has no attribute "regenerate"' in done.stdout
    assert 'Incompatible return value type (got "str | None", expected "int")' in done.stdout


def test_the_sample_app_runs(tmp_path: Path) -> None:
    app = create_app(tmp_path / "sessions")
    store = app.extensions["lockstore"]
    client = app.test_client()
    assert client.get("/whoami").data == b"None new=True id=False"
    sid = client.post("/login/alice").get_data(as_text=True)
    assert lockstore.is_valid_id(sid) and store[sid] == {"user": "alice"}
    assert client.get("/whoami").data == b"alice new=False id=True"
    assert client.post("/logout").data == b"bye"
    assert sid not in store and len(store) == 0


def test_current_session_needs_a_lockstore_session() -> None:
    app = flask.Flask(__name__)
    app.secret_key = "test-only"
    with app.test_request_context("/"), pytest.raises(lockstore.LockstoreError, match="not a lockstore session"):
        current_session()
    with pytest.raises(RuntimeError, match="request context"):
        current_session()
