"""lockstore.wsgi: the session middleware in process, then under gunicorn with real clients."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from web_apps.apps import counter_app
from web_apps.servers import Client, cookie_value, get, gunicorn

import lockstore
from lockstore.web.stripes import StripeLocks, stripe_index
from lockstore.wsgi import SessionMiddleware, read_cookie

# -- an in-process driver: a real WSGI call, as a server makes it ------------------------------


class Result:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = int(status.split()[0])
        self.headers = headers
        self.body = body.decode()

    def set_cookies(self) -> list[str]:
        return [v for k, v in self.headers if k.lower() == "set-cookie"]

    def cookie(self) -> str | None:
        for header in self.set_cookies():
            name, _, rest = header.partition("=")
            if name == "lockstore_sid":
                return rest.split(";", 1)[0]
        return None


def call(app: Any, path: str, cookie: str | None = None, raw_cookie: str | None = None) -> Result:
    environ: dict[str, Any] = {"PATH_INFO": path, "wsgi.input": io.BytesIO(b"")}
    setup_testing_defaults(environ)
    if cookie is not None:
        environ["HTTP_COOKIE"] = f"other=1; lockstore_sid={cookie}"
    if raw_cookie is not None:
        environ["HTTP_COOKIE"] = raw_cookie
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, headers
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return Result(seen["status"], seen["headers"], body)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with lockstore.open(tmp_path / "store", timeout=5) as store:
        yield store


@pytest.fixture
def app(store: Any) -> SessionMiddleware:
    return SessionMiddleware(counter_app, store)


def test_just_in_time_no_cookie_no_record(app: SessionMiddleware, store: Any) -> None:
    for path in ("/plain", "/read", "/logout"):
        result = call(app, path)
        assert result.status == 200
        assert result.set_cookies() == []
    assert len(store) == 0
    first = call(app, "/incr")
    sid = first.cookie()
    assert sid and lockstore.is_valid_id(sid) and len(sid) >= 22
    assert store[sid] == {"n": 1}
    assert len(store) == 1


def test_cookie_attributes(store: Any) -> None:
    header = call(SessionMiddleware(counter_app, store), "/incr").set_cookies()[0]
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Path=/" in header
    assert f"Max-Age={int(store.max_age)}" in header and "Secure" not in header
    secure = SessionMiddleware(counter_app, store, secure=True, samesite="Strict", domain="example.org")
    header = call(secure, "/incr").set_cookies()[0]
    assert "; Secure" in header and "SameSite=Strict" in header and "Domain=example.org" in header


def test_existing_session_counts_and_refreshes_cookie(app: SessionMiddleware, store: Any) -> None:
    sid = call(app, "/incr").cookie()
    for expected in range(2, 6):
        result = call(app, "/incr", sid)
        assert result.body == str(expected)
        assert result.cookie() == sid  # sliding cookie, like the store's idle expiry
    assert call(app, "/plain", sid).set_cookies() == []  # not touched: no lock, no cookie
    assert store[sid] == {"n": 5}


@pytest.mark.parametrize(
    "bad",
    [
        "../../../../etc/passwd",
        "..",
        "a/b",
        "x" * 300,
        "sid with spaces",
        "\u00e9t\u00e9",
        "%2e%2e%2f",
        "",
        "nul\x00byte",
    ],
)
def test_bad_cookie_starts_fresh_and_never_reaches_the_filesystem(
    app: SessionMiddleware, store: Any, tmp_path: Path, bad: str
) -> None:
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    result = call(app, "/read", raw_cookie=f"lockstore_sid={bad}")
    assert result.status == 200 and result.body == "0" and result.set_cookies() == []
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # not a single file created
    result = call(app, "/incr", raw_cookie=f"lockstore_sid={bad}")
    assert result.status == 200 and result.body == "1"
    new = result.cookie()
    assert new and new != bad and lockstore.is_valid_id(new)
    assert list(store) == [new]


def test_unknown_or_expired_id_gets_a_new_id(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    with lockstore.open(tmp_path / "s", max_age=60, clock=lambda: now[0]) as store:
        app = SessionMiddleware(counter_app, store)
        forged = lockstore.new_id()
        result = call(app, "/incr", forged)
        assert result.cookie() != forged and forged not in store  # never adopt the client's id
        sid = result.cookie()
        assert sid is not None
        now[0] += 61  # idle past max_age
        result = call(app, "/incr", sid)
        assert result.body == "1" and result.cookie() not in (None, sid)


def test_read_cookie_takes_the_first_valid_value() -> None:
    assert read_cookie("a=1; lockstore_sid=../x; lockstore_sid=good-id", "lockstore_sid") == "good-id"
    assert read_cookie('lockstore_sid="quoted"', "lockstore_sid") == "quoted"
    assert read_cookie("nothing here", "lockstore_sid") is None
    assert read_cookie(None, "lockstore_sid") is None


def test_regenerate_moves_data_and_kills_the_old_id(app: SessionMiddleware, store: Any) -> None:
    old = call(app, "/incr", None).cookie()
    assert old is not None
    result = call(app, "/login", old)
    new = result.cookie()
    assert new and new != old and result.body == new
    assert old not in store
    assert store[new] == {"n": 1, "user": "alice"}
    # the old id is unusable: it starts an empty session and is not adopted
    result = call(app, "/incr", old)
    assert result.body == "1" and result.cookie() not in (old, new)


def test_invalidate_deletes_record_and_cookie(app: SessionMiddleware, store: Any) -> None:
    sid = call(app, "/incr").cookie()
    assert sid is not None
    result = call(app, "/logout", sid)
    assert sid not in store
    assert result.set_cookies() and result.cookie() == ""
    assert "Max-Age=0" in result.set_cookies()[0]
    assert call(app, "/read", sid).body == "0"


def test_session_api(store: Any) -> None:
    seen: dict[str, Any] = {}

    def api_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["lockstore.session"]
        seen["new"], seen["id_before"] = session.new, session.id
        session["cart"] = session.get("cart", [])
        session["cart"].append(len(session["cart"]))  # in-place change: found by comparison
        seen["modified"] = session.modified
        seen["id"] = session.id
        start_response("200 OK", [])
        return [b"ok"]

    app = SessionMiddleware(api_app, store)
    sid = call(app, "/").cookie()
    assert seen == {"new": True, "id_before": None, "modified": True, "id": sid}
    call(app, "/", sid)
    assert seen["new"] is False and seen["id_before"] == sid
    assert store[sid] == {"cart": [0, 1]}


def test_read_only_request_never_writes(store: Any) -> None:
    app = SessionMiddleware(counter_app, store)
    sid = call(app, "/incr").cookie()
    assert sid is not None
    before = store.record(sid)
    for _ in range(5):
        assert call(app, "/read", sid).body == "1"
    after = store.record(sid)
    assert after is not None and before is not None
    assert (after.value, after.last_access) == (before.value, before.last_access)


def _paused_reader(store: Any, sid: str, **options: Any) -> tuple[threading.Thread, threading.Event, threading.Event]:
    """A request that reads the session, then waits before finishing."""
    loaded, go = threading.Event(), threading.Event()

    def slow_reader(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        value = environ["lockstore.session"].get("n")
        loaded.set()
        go.wait(10)
        start_response("200 OK", [])
        return [str(value).encode()]

    app = SessionMiddleware(slow_reader, store, **options)
    thread = threading.Thread(target=call, args=(app, "/", sid))
    thread.start()
    return thread, loaded, go


def test_without_request_lock_reads_never_erase_writes_and_keys_merge(store: Any) -> None:
    app = SessionMiddleware(counter_app, store, request_lock=False)
    sid = call(app, "/incr").cookie()
    assert sid is not None
    thread, loaded, go = _paused_reader(store, sid, request_lock=False)
    assert loaded.wait(10)
    assert call(app, "/incr", sid).body == "2"  # not blocked: the opt-out takes no request lock
    go.set()
    thread.join(10)
    assert store[sid]["n"] == 2  # the reader wrote nothing back

    def set_key(name: str) -> Any:
        def key_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            environ["lockstore.session"][name] = True
            start_response("200 OK", [])
            return [b""]

        return SessionMiddleware(key_app, store, request_lock=False)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda name: call(set_key(name), "/", sid), ["a", "b", "c", "d"]))
    assert store[sid] == {"n": 2, "a": True, "b": True, "c": True, "d": True}


class _WatchedStripes(StripeLocks):
    """The middleware's lock stripes, telling the test when the thread named *watch* asks for one (blocking).

    The request-long lock is taken before the session is read, so once that thread asks, it has read
    nothing yet; a middleware that read first and locked afterwards would already hold a stale copy.
    """

    def __init__(self, directory: Path, watch: str) -> None:
        super().__init__(directory)
        self.watch = watch
        self.asked = threading.Event()

    def acquire(self, sid: str, *, timeout: float | None = None, blocking: bool = True) -> Any:
        if blocking and threading.current_thread().name == self.watch:
            self.asked.set()
        return super().acquire(sid, timeout=timeout, blocking=blocking)


def test_request_lock_serialises_one_session_only(store: Any) -> None:
    """A paused read-modify-write holds its session: the same user's next request reads only its result,
    another user's request runs meanwhile. Fails if the lock is taken after the read, or not at all."""
    setup = SessionMiddleware(counter_app, store)
    locks = _WatchedStripes(Path(store.path) / "stripes", watch="same-user")
    sid = call(setup, "/incr").cookie()
    assert sid is not None
    other = call(setup, "/incr").cookie()
    while other is not None and locks.index(other) == locks.index(sid):
        other = call(setup, "/incr").cookie()  # another user on another stripe (1 in 1,024 share one)
    assert other is not None
    changed, go = threading.Event(), threading.Event()

    def paused_increment(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["lockstore.session"]
        session["n"] = session.get("n", 0) + 1  # read-modify-write; saved when the response starts
        changed.set()
        if not go.wait(30):
            raise RuntimeError("the test never let the paused request go")
        start_response("200 OK", [])
        return [str(session["n"]).encode()]

    paused = SessionMiddleware(paused_increment, store)
    app = SessionMiddleware(counter_app, store)
    paused.locks = app.locks = locks  # one process: both share its stripes, as one middleware's threads do
    bodies: dict[str, str] = {}

    def request(name: str, middleware: SessionMiddleware, path: str) -> None:
        bodies[name] = call(middleware, path, sid).body

    first = threading.Thread(target=request, args=("first", paused, "/"), name="first")
    second = threading.Thread(target=request, args=("second", app, "/incr"), name="same-user")
    first.start()
    try:
        assert changed.wait(10)
        assert call(app, "/incr", other).body == "2"  # another user finishes while the first request pauses
        second.start()
        assert locks.asked.wait(10)  # the same user's request now waits for the stripe the first one holds
        assert StripeLocks(Path(store.path) / "stripes").acquire(sid, blocking=False) is None
        assert bodies == {}  # neither request has finished: the first is paused, the second waits for it
    finally:
        go.set()
        first.join(30)
        if second.ident is not None:
            second.join(30)
    assert not first.is_alive() and not second.is_alive()
    assert bodies == {"first": "2", "second": "3"}  # the second request read what the first one wrote...
    assert store[sid]["n"] == 3  # ...and neither increment is lost


def test_lock_timeout_is_a_503_and_never_proceeds(store: Any) -> None:
    app = SessionMiddleware(counter_app, store, lock_timeout=0.2)
    sid = call(app, "/incr").cookie()
    assert sid is not None
    holder = StripeLocks(Path(store.path) / "stripes")  # another "process": its own descriptor
    hold = holder.acquire(sid)
    assert hold is not None
    try:
        started = time.monotonic()
        result = call(app, "/incr", sid)
        assert result.status == 503 and "busy" in result.body
        assert 0.15 < time.monotonic() - started < 3
    finally:
        hold.release()
    assert store[sid] == {"n": 1}
    assert call(app, "/incr", sid).body == "2"


def test_lock_released_on_close_and_on_errors(store: Any) -> None:
    def streaming(environ: dict[str, Any], start_response: Any) -> Any:
        session = environ["lockstore.session"]
        session["n"] = session.get("n", 0) + 1
        start_response("200 OK", [])
        yield b"a"
        yield b"b"

    def failing(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["lockstore.session"]["n"] = 99
        raise RuntimeError("boom")

    sid = call(SessionMiddleware(counter_app, store), "/incr").cookie()
    assert sid is not None
    probe = StripeLocks(Path(store.path) / "stripes")
    environ: dict[str, Any] = {"PATH_INFO": "/", "HTTP_COOKIE": f"lockstore_sid={sid}"}
    setup_testing_defaults(environ)
    response = SessionMiddleware(streaming, store)(environ, lambda *a: None)
    iterator = iter(response)
    assert next(iterator) == b"a"
    assert probe.acquire(sid, blocking=False) is None  # held while the body is sent
    assert getattr(response, "close", None) is not None
    response.close()  # type: ignore[attr-defined]
    hold = probe.acquire(sid, blocking=False)
    assert hold is not None
    hold.release()
    assert store[sid] == {"n": 2}

    with pytest.raises(RuntimeError):
        call(SessionMiddleware(failing, store), "/", sid)
    hold = probe.acquire(sid, blocking=False)
    assert hold is not None  # released although the application failed
    hold.release()
    assert store[sid] == {"n": 2}  # the failed request's change is discarded


def test_stripes_are_bounded_stable_and_private(store: Any, tmp_path: Path) -> None:
    app = SessionMiddleware(counter_app, store, stripes=8)
    for _ in range(40):
        call(app, "/incr")
    files = sorted((Path(store.path) / "stripes").iterdir())
    assert 0 < len(files) <= 8
    assert all(f.name.endswith(".lock") and (f.stat().st_mode & 0o077) == 0 for f in files)
    assert ((Path(store.path) / "stripes").stat().st_mode & 0o077) == 0
    code = "from lockstore.web.stripes import stripe_index; print(stripe_index('abc', 1024))"
    assert int(subprocess.check_output([sys.executable, "-c", code])) == stripe_index("abc", 1024)
    assert len({stripe_index(lockstore.new_id(), 1024) for _ in range(2000)}) > 800


def test_memory_store_uses_in_process_locks(tmp_path: Path) -> None:
    with lockstore.open(tmp_path / "m", backend="memory") as store:
        app = SessionMiddleware(counter_app, store)
        assert app.locks is not None and app.locks.directory is None
        sid = call(app, "/incr").cookie()
        assert call(app, "/incr", sid).body == "2"


# -- gunicorn, 4 sync workers, real HTTP clients ------------------------------------------------

CLIENTS = 8
REQUESTS = 200


@pytest.fixture(scope="module")
def wsgi_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    store = tmp_path_factory.mktemp("gunicorn-wsgi") / "store"
    with gunicorn("make_wsgi_app()", store, workers=4) as port:
        yield port, store


def test_gunicorn_shared_cookie_exact_count(wsgi_server: Any) -> None:
    port, _ = wsgi_server
    pids = set()
    first = get(port, "/incr")
    sid = cookie_value(first)
    assert first.status == 200 and sid

    def client(_: int) -> None:
        for _ in range(REQUESTS):
            reply = get(port, "/incr", sid)
            assert reply.status == 200, reply.body
        pids.add(get(port, "/pid", sid).body)

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    assert get(port, "/read", sid).body == str(CLIENTS * REQUESTS + 1)
    assert len(pids) >= 2  # really served by several worker processes


def test_gunicorn_many_clients_own_cookies(wsgi_server: Any) -> None:
    port, _ = wsgi_server
    clients = [Client(port) for _ in range(24)]

    def run(client: Client) -> str:
        for _ in range(20):
            assert client.get("/incr").status == 200
        return client.get("/read").body

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(run, clients)) == ["20"] * 24
    assert len({c.cookie for c in clients}) == 24


def test_gunicorn_reads_never_erase_writes(wsgi_server: Any) -> None:
    port, _ = wsgi_server
    writer = Client(port)
    writer.get("/incr")
    stop = threading.Event()

    def reader() -> int:
        n = 0
        while not stop.is_set():
            assert get(port, "/read", writer.cookie).status == 200
            n += 1
        return n

    with ThreadPoolExecutor(7) as pool:
        readers = [pool.submit(reader) for _ in range(7)]
        for _ in range(40):
            assert writer.get("/incr").status == 200
        stop.set()
        reads = sum(r.result() for r in readers)
    assert writer.get("/read").body == "41"
    assert reads > 0


def test_gunicorn_slow_request_delays_nobody_else(wsgi_server: Any) -> None:
    port, store = wsgi_server
    slow_user = Client(port)
    slow_user.get("/incr")
    others = [Client(port) for _ in range(3)]
    for other in others:
        other.get("/incr")
    assert slow_user.cookie is not None
    probe = StripeLocks(store / "stripes")  # this process's own descriptors: sees the workers' flocks

    def timed_get(path: str) -> tuple[str, float]:
        t = time.monotonic()
        reply = slow_user.get(path)
        assert reply.status == 200, reply.body
        return reply.body, time.monotonic() - t

    def timed(client: Client) -> float:
        worst = 0.0
        for _ in range(10):
            t = time.monotonic()
            assert client.get("/incr").status == 200
            worst = max(worst, time.monotonic() - t)
        return worst

    with ThreadPoolExecutor(6) as pool:
        slow = pool.submit(timed_get, "/slow?s=2")
        deadline = time.monotonic() + 10
        while (hold := probe.acquire(slow_user.cookie, blocking=False)) is not None:  # until a worker holds it
            hold.release()
            assert time.monotonic() < deadline and not slow.done(), "the slow request never took its lock"
            time.sleep(0.005)
        started = time.monotonic()
        same_user = pool.submit(timed_get, "/incr")  # must wait for the slow one, and not be lost
        latencies = list(pool.map(timed, others))
        others_done = time.monotonic() - started
        slow_body, slow_took = slow.result(10)
        same_body, same_took = same_user.result(10)
    probe.close()
    assert max(latencies) < 1.0, latencies  # other users never waited for the slow request
    assert others_done < 1.5
    assert slow_took > 1.9 and slow_body == "2"
    # measured by the request itself: it was sent while the slow one held the session (~2 s to go)
    assert same_took > 1.5, same_took
    assert same_body == "3"  # it read the slow request's increment...
    assert slow_user.get("/read").body == "3"  # ...and both count
    assert [o.get("/read").body for o in others] == ["11"] * 3


def test_gunicorn_lock_files_stay_bounded(wsgi_server: Any) -> None:
    _, store = wsgi_server
    stripes = store / "stripes"
    assert 0 < len(os.listdir(stripes)) <= 1024


def test_stripes_survive_fork(tmp_path: Path) -> None:
    locks = StripeLocks(tmp_path / "stripes")
    probe = StripeLocks(tmp_path / "stripes")
    sid, other = "held-by-parent", "free-in-child"
    hold = locks.acquire(sid)
    assert hold is not None
    pid = os.fork()
    if pid == 0:  # the child: inherits the held descriptor, must neither use nor free it
        code = 0
        try:
            if locks.acquire(sid, blocking=False) is not None:
                code = 1  # would mean the child thinks it holds the parent's lock
            child_hold = locks.acquire(other, timeout=2)
            if child_hold is None:
                code = 2
            else:
                child_hold.release()
            hold.release()  # inherited hold: inert in the child
            locks.close()
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert probe.acquire(sid, blocking=False) is None  # the parent still holds its stripe
    hold.release()
    again = probe.acquire(sid, blocking=False)
    assert again is not None
    again.release()


def test_gunicorn_preload_forked_workers_exact_count(tmp_path: Path) -> None:
    """--preload: the store and lock stripes are built in the master and inherited by the workers."""
    with gunicorn("make_wsgi_app()", tmp_path / "store", workers=4, preload=True) as port:
        sid = cookie_value(get(port, "/incr"))
        assert sid

        def client(_: int) -> None:
            for _ in range(25):
                assert get(port, "/incr", sid).status == 200

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(client, range(8)))
        assert get(port, "/read", sid).body == str(8 * 25 + 1)
