"""lockstore.flask, issue 10: the session lock ends with the request context, never with a response somebody
must close; a ``stream_with_context`` body keeps it to its last chunk; a busy session answers a 503 that says
nothing about the server and carries ``Retry-After: 1``; and a failing request saves exactly when Flask's own
cookie session saves.

Every test uses Flask's own test client, unbuffered (its default): a response nobody closes is what a test
suite leaves behind.  The lock timeout is short, so a lock left held shows as a 503 within a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from servers import require

flask = require("flask")  # skips outside CI, fails under CI=true

from flask.sessions import SecureCookieSessionInterface  # noqa: E402

import lockstore  # noqa: E402
from lockstore.flask import LockstoreSessionInterface  # noqa: E402
from lockstore.web.stripes import StripeLocks  # noqa: E402

COOKIE = "lockstore_sid"
TESTS = Path(__file__).resolve().parent
WAIT = 0.5  # seconds a request waits for a session lock before its 503


class Unencodable:
    """A value neither pickle nor Flask's JSON cookie serializer can encode."""

    def __reduce__(self) -> Any:
        raise TypeError("not encodable")


def make_app(store: Path | None, *, propagate: bool = False) -> Any:
    """A counter app; *store* None: Flask's own signed-cookie session, for comparison."""
    app = flask.Flask(__name__)
    app.config.update(SECRET_KEY="test-only", SESSION_COOKIE_NAME=COOKIE, PROPAGATE_EXCEPTIONS=propagate)
    if store is not None:
        app.session_interface = LockstoreSessionInterface(lockstore.open(store, timeout=WAIT), lock_timeout=WAIT)
    else:
        app.session_interface = SecureCookieSessionInterface()
    session = flask.session

    class Handled(Exception):
        pass

    @app.errorhandler(Handled)
    def handled_error(exc: Handled) -> tuple[str, int]:
        return "handled", 418

    @app.route("/incr")
    def incr() -> str:
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    @app.route("/read")
    def read() -> str:
        return str(session.get("n", 0))

    @app.route("/fail/<how>")
    def fail(how: str) -> str:
        session["n"] = session.get("n", 0) + 1
        if how == "raise":
            raise RuntimeError("the view failed")
        if how == "handled":
            raise Handled
        if how == "abort":
            flask.abort(403)
        if how == "unencodable":
            session["bad"] = Unencodable()
        return "ok"  # "after": the after_request function fails

    @app.after_request
    def after(response: Any) -> Any:
        if flask.request.path == "/fail/after":
            raise RuntimeError("after_request failed")
        return response

    @app.route("/stream")
    def stream() -> Any:
        session["n"] = session.get("n", 0) + 1

        def body() -> Iterator[str]:
            yield f"{session['n']}|"
            yield "middle|"
            yield str(session["n"])

        return flask.Response(flask.stream_with_context(body()))

    return app


def get(app: Any, path: str, sid: str | None) -> Any:
    """One request from a fresh test client sending *sid* (its response read and closed)."""
    client = app.test_client()
    if sid is not None:
        client.set_cookie(COOKIE, sid)
    response = client.get(path)
    response.get_data()
    response.close()
    return response


def sid_of(response: Any) -> str:
    for header in response.headers.getlist("Set-Cookie"):
        name, _, rest = header.partition("=")
        if name == COOKIE:
            return rest.split(";", 1)[0]
    raise AssertionError(f"no session cookie in {response.headers}")


def from_another_thread(app: Any, path: str, sid: str) -> tuple[int, str]:
    with ThreadPoolExecutor(1) as pool:
        response = pool.submit(get, app, path, sid).result(30)
    return response.status_code, response.get_data(as_text=True)


PROCESS = f"""
import sys
import flask
import lockstore
from lockstore.flask import LockstoreSessionInterface
app = flask.Flask("other")
app.config["SESSION_COOKIE_NAME"] = "lockstore_sid"
app.session_interface = LockstoreSessionInterface(lockstore.open(sys.argv[1], timeout={WAIT}), lock_timeout={WAIT})
@app.route("/incr")
def incr():
    flask.session["n"] = flask.session.get("n", 0) + 1
    return str(flask.session["n"])
client = app.test_client()
client.set_cookie("lockstore_sid", sys.argv[2])
response = client.get("/incr")
print(response.status_code, response.get_data(as_text=True))
"""


def from_another_process(store: Path, sid: str) -> tuple[int, str]:
    """``/incr`` for *sid* by another process (its own app on the same store, real flock stripes)."""
    done = subprocess.run(
        [sys.executable, "-c", PROCESS, str(store), sid],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=TESTS,
        env={**os.environ, "PYTHONPATH": str(TESTS.parent)},
    )
    status, _, body = done.stdout.strip().partition(" ")
    return int(status), body


def stripe_free(store: Path, sid: str) -> bool:
    """True when nobody holds *sid*'s lock stripe (a non-blocking try, released at once)."""
    hold = StripeLocks(store / "stripes").acquire(sid, blocking=False)
    if hold is None:
        return False
    hold.release()
    return True


# -- 1. the lock ends with the request context --------------------------------------------------


def test_a_response_never_closed_holds_no_lock(tmp_path: Path) -> None:
    store = tmp_path / "store"
    app = make_app(store)
    client = app.test_client()
    first = client.get("/incr")  # never closed, as in most test suites
    sid = sid_of(first)
    second = client.get("/incr")  # the same session again, in the same thread
    assert (second.status_code, second.get_data(as_text=True)) == (200, "2")
    assert stripe_free(store, sid)
    assert from_another_thread(app, "/incr", sid) == (200, "3")
    assert from_another_process(store, sid) == (200, "4")
    first.close()
    second.close()


def test_session_transaction_holds_no_lock(tmp_path: Path) -> None:
    store = tmp_path / "store"
    app = make_app(store)
    client = app.test_client()
    with client.session_transaction() as session:  # a new session, set up by the test
        session["n"] = 40
    sid = client.get_cookie(COOKIE).value
    assert stripe_free(store, sid)
    assert from_another_thread(app, "/incr", sid) == (200, "41")
    with client.session_transaction() as session:  # an existing one
        assert session["n"] == 41
        session["n"] = 50
    assert stripe_free(store, sid)
    assert from_another_process(store, sid) == (200, "51")
    assert client.get("/incr").get_data() == b"52"


def test_a_failed_session_transaction_saves_nothing_and_holds_no_lock(tmp_path: Path) -> None:
    store = tmp_path / "store"
    app = make_app(store)
    client = app.test_client()
    sid = sid_of(client.get("/incr"))
    with pytest.raises(AssertionError, match="the test failed"), client.session_transaction() as session:
        session["n"] = 99
        raise AssertionError("the test failed")
    assert stripe_free(store, sid)
    assert from_another_thread(app, "/incr", sid) == (200, "2")


def test_preserved_contexts_hold_no_lock(tmp_path: Path) -> None:
    """``with client:`` keeps the last request's context for the test to inspect; it keeps no lock."""
    store = tmp_path / "store"
    app = make_app(store)
    with app.test_client() as client:
        client.get("/incr")
        assert flask.session["n"] == 1  # the preserved context still shows the session
        sid = client.get_cookie(COOKIE).value
        assert stripe_free(store, sid)
        assert from_another_thread(app, "/incr", sid) == (200, "2")
    with app.test_request_context("/", headers={"Cookie": f"{COOKIE}={sid}"}):  # a hand-made request
        flask.session["n"] += 10
        assert not stripe_free(store, sid)  # used by this request: locked until its context ends
    assert stripe_free(store, sid)
    assert from_another_thread(app, "/read", sid) == (200, "2")  # no response was made: nothing saved


def test_stream_with_context_reads_the_session_and_frees_it_by_its_end(tmp_path: Path) -> None:
    """Flask >= 3.1.1 tears a stream_with_context request down twice: when the view returns (the body has not
    run yet) and after the last chunk.  The body reads the session as loaded; the lock is free, at the latest,
    once the body has ended, even though nobody closes the response."""
    store = tmp_path / "store"
    app = make_app(store)
    sid = sid_of(get(app, "/incr", None))
    client = app.test_client()
    client.set_cookie(COOKIE, sid)
    response = client.get("/stream")
    chunks = iter(response.response)
    assert next(chunks) == b"2|"  # the body reads the session while it streams
    assert b"".join(chunks) == b"middle|2"
    assert stripe_free(store, sid)
    assert from_another_thread(app, "/incr", sid) == (200, "3")
    assert from_another_process(store, sid) == (200, "4")
    response.close()


def test_a_session_first_used_by_a_streamed_body_is_freed_by_its_end(tmp_path: Path) -> None:
    store = tmp_path / "store"
    app = make_app(store)

    @app.route("/late")
    def late() -> Any:
        def body() -> Iterator[str]:
            yield "n="
            yield str(flask.session.get("n", 0))  # the first use of the session, after the view returned

        return flask.Response(flask.stream_with_context(body()))

    sid = sid_of(get(app, "/incr", None))
    client = app.test_client()
    client.set_cookie(COOKIE, sid)
    response = client.get("/late")
    assert response.get_data() == b"n=1"
    assert stripe_free(store, sid)
    assert from_another_thread(app, "/incr", sid) == (200, "2")
    response.close()


# -- 2. the 503 ---------------------------------------------------------------------------------


def test_busy_session_answers_a_generic_503_with_retry_after(tmp_path: Path) -> None:
    store = tmp_path / "store"
    app = make_app(store)
    sid = sid_of(get(app, "/incr", None))
    hold = StripeLocks(store / "stripes").acquire(sid)
    assert hold is not None
    try:
        response = get(app, "/incr", sid)
    finally:
        hold.release()
    body = response.get_data(as_text=True)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "session is busy" in body
    assert str(tmp_path) not in body and "stripe" not in body and ".lock" not in body
    assert not response.headers.getlist("Set-Cookie")
    assert get(app, "/incr", sid).get_data() == b"2"  # nothing was written by the 503


# -- 4. errors: lockstore saves exactly when Flask's own session saves ----------------------------


def outcome(app: Any, how: str) -> tuple[int | str, str]:
    """Status of ``/fail/<how>`` after one ``/incr`` (or "raised"), then what ``/read`` sees after it."""
    client = app.test_client()
    client.get("/incr").close()
    try:
        response = client.get(f"/fail/{how}")
        status: int | str = response.status_code
        response.close()
    except RuntimeError:
        status = "raised"
    return status, client.get("/read").get_data(as_text=True)


CASES = [
    # (how the request fails, PROPAGATE_EXCEPTIONS, Flask's own outcome: (status, n read afterwards))
    ("raise", False, (500, "2")),  # an unhandled exception: the 500 page is a response, the session is saved
    ("handled", False, (418, "2")),  # an errorhandler's response: saved
    ("abort", False, (403, "2")),  # abort(): saved
    ("after", False, (500, "1")),  # an after_request that fails: not saved
    ("unencodable", False, (500, "1")),  # the session cannot be encoded: not saved
    ("raise", True, ("raised", "1")),  # propagated (testing, debug): not saved
    ("handled", True, (418, "2")),
    ("after", True, ("raised", "1")),
]


@pytest.mark.parametrize(("how", "propagate", "flask_outcome"), CASES)
def test_errors_follow_flasks_own_session(
    tmp_path: Path, how: str, propagate: bool, flask_outcome: tuple[int | str, str]
) -> None:
    assert outcome(make_app(None, propagate=propagate), how) == flask_outcome  # Flask's rule, measured
    store = tmp_path / "store"
    app = make_app(store, propagate=propagate)
    assert outcome(app, how) == flask_outcome  # its /read would be a 503 if the failed request kept the lock
    for sid in app.session_interface.store:
        assert stripe_free(store, sid)


def test_a_save_that_fails_releases_the_lock(tmp_path: Path) -> None:
    """The response a failed save_session was handed to is dropped by Flask: the release cannot wait for it."""
    store = tmp_path / "store"
    app = make_app(store)
    sid = sid_of(get(app, "/incr", None))
    assert get(app, "/fail/unencodable", sid).status_code == 500
    assert stripe_free(store, sid)
    assert from_another_thread(app, "/incr", sid) == (200, "2")


def test_threads_share_the_app_and_count_exactly(tmp_path: Path) -> None:
    """Many threads, one session, unclosed responses: the lock serialises them and every one is released."""
    store = tmp_path / "store"
    app = make_app(store)
    app.session_interface = LockstoreSessionInterface(app.session_interface.store, lock_timeout=30)
    sid = sid_of(get(app, "/incr", None))
    barrier = threading.Barrier(8)

    def run(_: int) -> None:
        client = app.test_client()
        client.set_cookie(COOKIE, sid)
        barrier.wait(10)
        for _ in range(25):
            response = client.get("/incr")  # not closed
            assert response.status_code == 200

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(run, range(8)))
    assert get(app, "/read", sid).get_data() == b"201"
    assert stripe_free(store, sid)
