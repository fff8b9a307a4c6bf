"""lockstore.flask, issue 10: Flask's cookie rule (a changed session re-sends its cookie), Flask-Session's
``SESSION_PERMANENT`` and ``session_cleanup`` (here ``flask lockstore clean``), and every ``lockstore.open``
option given as a ``LOCKSTORE_*`` setting reaching a remote store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock
from servers import require

flask = require("flask")  # skips outside CI, fails under CI=true

import lockstore  # noqa: E402
from lockstore.flask import LockstoreSessionInterface, cli, init_app  # noqa: E402

COOKIE = "lockstore_sid"


def new_app(tmp_path: Path, **config: Any) -> Any:
    app = flask.Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(SESSION_COOKIE_NAME=COOKIE, **config)
    session = flask.session

    @app.route("/incr")
    def incr() -> str:
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    @app.route("/read")
    def read() -> str:
        return str(session.get("n", 0))

    @app.route("/cart")
    def cart() -> str:
        session.setdefault("cart", []).append(1)  # a change inside a value: found by comparison
        return str(len(session["cart"]))

    @app.route("/flag/<value>")
    def flag(value: str) -> str:
        session.permanent = value == "on"  # a flag alone: no data
        return str(session.permanent)

    @app.route("/touch")
    def touch() -> str:
        session.modified = True
        return "ok"

    @app.route("/plain")
    def plain() -> str:
        return "plain"

    @app.route("/permanent")
    def permanent() -> str:
        return str(session.permanent)

    return app


def cookie(response: Any) -> str | None:
    """The session's Set-Cookie header, or None."""
    for header in response.headers.getlist("Set-Cookie"):
        if header.startswith(f"{COOKIE}="):
            return str(header)
    return None


def files(path: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file())


# -- 3. a changed session sends its cookie (Flask's rule) ------------------------------------------


@pytest.mark.parametrize("permanent", [True, False])
def test_a_changed_session_resends_its_cookie_without_refresh_each_request(tmp_path: Path, permanent: bool) -> None:
    """``should_set_cookie`` is ``session.modified or (session.permanent and SESSION_REFRESH_EACH_REQUEST)``."""
    app = new_app(tmp_path, SESSION_REFRESH_EACH_REQUEST=False, SESSION_PERMANENT=permanent)
    init_app(app)
    client = app.test_client()
    first = cookie(client.get("/incr"))
    assert first is not None and ("Expires=" in first) is permanent
    again = cookie(client.get("/incr"))  # changed: the cookie goes out again (a permanent one with a new expiry)
    assert again is not None and again.split(";")[0] == first.split(";")[0]
    assert ("Expires=" in again) is permanent
    assert cookie(client.get("/cart")) is not None  # a new key
    assert cookie(client.get("/cart")) is not None  # a change inside a value
    assert cookie(client.get("/touch")) is not None  # session.modified = True
    assert cookie(client.get("/read")) is None  # unchanged, no refresh asked: no cookie
    assert client.get("/read").data == b"2"


def test_refresh_each_request_refreshes_an_unchanged_permanent_session_only(tmp_path: Path) -> None:
    app = new_app(tmp_path)  # SESSION_REFRESH_EACH_REQUEST: Flask's default True
    store = init_app(app)
    client = app.test_client()
    sid = client.get("/incr") and client.get_cookie(COOKIE).value
    before = store.record(sid)
    assert cookie(client.get("/read")) is not None  # permanent (the default), refreshed
    after = store.record(sid)
    assert before is not None and after is not None and after.last_access == before.last_access  # never a write
    assert cookie(client.get("/plain")) is None  # a request that never used the session refreshes nothing
    app.config["SESSION_PERMANENT"] = False
    assert cookie(client.get("/read")) is None
    assert cookie(client.get("/incr")) is not None


# -- 6. Flask-Session parity: SESSION_PERMANENT ------------------------------------------------------


def test_sessions_are_permanent_by_default(tmp_path: Path) -> None:
    app = new_app(tmp_path)
    store = init_app(app)
    client = app.test_client()
    header = cookie(client.get("/incr"))
    assert header is not None and "Expires=" in header  # a cookie that outlives the browser
    assert client.get("/permanent").data == b"True"
    sid = client.get_cookie(COOKIE).value
    assert store[sid] == {"n": 1}  # the default is the config's, not a key in every session


def test_session_permanent_false_gives_browser_session_cookies(tmp_path: Path) -> None:
    app = new_app(tmp_path, SESSION_PERMANENT=False)
    init_app(app)
    client = app.test_client()
    header = cookie(client.get("/incr"))
    assert header is not None and "Expires=" not in header
    assert client.get("/permanent").data == b"False"


@pytest.mark.parametrize("default", [True, False])
def test_requests_that_never_put_data_create_nothing(tmp_path: Path, default: bool) -> None:
    app = new_app(tmp_path, SESSION_PERMANENT=default)
    store = init_app(app)
    before = files(Path(store.path))
    client = app.test_client()
    for path in ("/plain", "/read", "/permanent", "/flag/on", "/flag/off", "/touch"):
        response = client.get(path)
        assert response.status_code == 200 and cookie(response) is None, path
    assert len(store) == 0
    assert files(Path(store.path)) == before  # nothing written, not even a lock file


def test_a_flag_set_before_any_data_is_kept_with_the_data(tmp_path: Path) -> None:
    app = new_app(tmp_path)  # permanent by default

    @app.route("/remember-not")
    def remember_not() -> str:
        flask.session.permanent = False  # before the session holds anything
        flask.session["n"] = 1
        return "ok"

    store = init_app(app)
    client = app.test_client()
    header = cookie(client.get("/remember-not"))
    assert header is not None and "Expires=" not in header
    assert store[client.get_cookie(COOKIE).value] == {"n": 1, "_permanent": False}
    assert client.get("/permanent").data == b"False"
    assert cookie(client.get("/flag/on")) is not None  # an existing session: the flag is a change
    assert client.get("/permanent").data == b"True"


# -- 6. Flask-Session parity: flask lockstore clean ----------------------------------------------------


def test_flask_lockstore_clean(tmp_path: Path, clock: Clock) -> None:
    app = new_app(tmp_path)
    store = init_app(app, tmp_path / "s", max_age=600, clock=clock)
    for i in range(5):
        store[f"old{i}"] = {"n": i}
    clock.now += 400
    store["idle"] = {"n": 1}
    clock.now += 300  # the old ones are expired (700 s), "idle" is 300 s idle
    store["fresh"] = {"n": 2}
    runner = app.test_cli_runner()
    assert "clean" in runner.invoke(args=["lockstore", "--help"]).output
    result = runner.invoke(args=["lockstore", "clean"])
    assert result.exit_code == 0, result.output
    assert result.output == "removed 5 session(s)\n"
    assert sorted(store) == ["fresh", "idle"]
    result = runner.invoke(args=["lockstore", "clean", "--max-idle", "200"])
    assert (result.exit_code, result.output) == (0, "removed 1 session(s)\n")
    assert list(store) == ["fresh"]


def test_flask_lockstore_clean_refuses_bad_input(tmp_path: Path) -> None:
    app = new_app(tmp_path)
    store = init_app(app, tmp_path / "s")
    store["a"] = {"n": 1}
    runner = app.test_cli_runner()
    for bad in ("-1", "soon", "nan"):
        result = runner.invoke(args=["lockstore", "clean", "--max-idle", bad])
        assert result.exit_code == 2 and "--max-idle" in result.output, (bad, result.output)
    assert list(store) == ["a"]
    store.close()  # a store that fails (here: closed) is one line and exit 1, no traceback
    result = runner.invoke(args=["lockstore", "clean"])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "closed" in result.output
    assert "Traceback" not in result.output
    other = flask.Flask(__name__)  # Flask's own sessions: the command says so, and touches nothing
    other.cli.add_command(cli)
    result = other.test_cli_runner().invoke(args=["lockstore", "clean"])
    assert result.exit_code == 1 and "does not keep its sessions in lockstore" in result.output


def test_the_command_works_with_the_interface_alone(tmp_path: Path, clock: Clock) -> None:
    app = new_app(tmp_path)
    store = lockstore.open(tmp_path / "s", max_age=60, clock=clock)
    app.session_interface = LockstoreSessionInterface(store)
    app.cli.add_command(cli)
    store["a"] = {"n": 1}
    clock.now += 61
    assert app.test_cli_runner().invoke(args=["lockstore", "clean"]).output == "removed 1 session(s)\n"


# -- 5. every lockstore.open option is a setting: the remote ones reach the store ----------------------


def test_remote_options_from_flask_settings_reach_redis(tmp_path: Path, redis_server: str) -> None:
    redis = require("redis")
    prefix = f"flask{os.urandom(4).hex()}"
    app = new_app(tmp_path)
    app.config.update(
        LOCKSTORE_PATH=redis_server,
        LOCKSTORE_PREFIX=prefix,
        LOCKSTORE_LOCK_TTL=7,
        LOCKSTORE_CONNECT_TIMEOUT=3,
        LOCKSTORE_POOL_SIZE=4,
        LOCKSTORE_TIMEOUT=2,
        LOCKSTORE_MAX_AGE=900,
        LOCKSTORE_CODEC="json",
        LOCKSTORE_LOCK_DIR=str(tmp_path / "stripes"),
    )
    store = init_app(app)
    try:
        assert (store.prefix, store.lock_ttl, store.connect_timeout) == (prefix, 7.0, 3.0)  # type: ignore[attr-defined]
        assert (store.timeout, store.max_age, store.stats()["codec"]) == (2.0, 900.0, "json")
        client = app.test_client()
        assert client.get("/incr").data == b"1"
        sid = client.get_cookie(COOKIE).value
        raw = redis.Redis.from_url(redis_server)
        assert raw.exists(f"{prefix}:{{{sid}}}")
        assert client.get("/incr").data == b"2"
        assert store[sid] == {"n": 2}
    finally:
        store.close()


def test_redis_store_without_lock_dir_takes_the_request_lock_on_the_server(tmp_path: Path, redis_server: str) -> None:
    """Issue 12: no ``LOCKSTORE_LOCK_DIR`` used to be refused (ValueError); now the lock is kept on the server."""
    from lockstore.remote.redis_locks import RedisRequestLocks

    app = new_app(tmp_path)
    app.config.update(LOCKSTORE_PATH=redis_server, LOCKSTORE_PREFIX=f"flask{os.urandom(4).hex()}")
    store = init_app(app)
    try:
        assert isinstance(app.session_interface.locks, RedisRequestLocks)
        client = app.test_client()
        assert client.get("/incr").data == b"1"
        assert client.get("/incr").data == b"2"
    finally:
        store.close()


def test_table_from_flask_settings_reaches_postgres(tmp_path: Path, postgres_server: str) -> None:
    table = f"flask_{os.urandom(4).hex()}"
    app = new_app(tmp_path)
    app.config.update(LOCKSTORE_PATH=postgres_server, LOCKSTORE_TABLE=table, LOCKSTORE_REQUEST_LOCK=False)
    store = init_app(app)
    try:
        assert store.table == table  # type: ignore[attr-defined]
        client = app.test_client()
        assert client.get("/incr").data == b"1"
        assert store[client.get_cookie(COOKIE).value] == {"n": 1}
    finally:
        store.close()
