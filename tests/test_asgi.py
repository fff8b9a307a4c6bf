"""lockstore.asgi (issue 13): Starlette's session contract in process, then the guarantees on real servers.

In process: Starlette's TestClient for the contract (``request.session``, just-in-time creation, only changed keys,
regenerate/invalidate, cookie options, 503), and the ASGI app called directly on an event loop for the lock's
release on a client disconnect and on cancellation.  On real servers (``uvicorn --workers 4`` and gunicorn with 4
uvicorn workers, Starlette and FastAPI apps of ``web_apps/asgi_apps.py``): the workloads of
``stress/_web_workloads.py`` lose nothing, a slow request blocks neither the loop nor the same user's updates.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import require, running_redis

require("starlette")  # each skips outside CI, fails under CI=true
require("fastapi")
require("uvicorn")
require("uvicorn_worker")

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import PlainTextResponse, StreamingResponse  # noqa: E402
from starlette.routing import Route, WebSocketRoute  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocket  # noqa: E402
from web_apps.servers import COOKIE, Client, get, gunicorn_uvicorn, uvicorn  # noqa: E402

import lockstore  # noqa: E402
from lockstore.asgi import SessionMiddleware  # noqa: E402
from lockstore.web.stripes import StripeLocks  # noqa: E402
from stress._web_workloads import during, readers, shared, users  # noqa: E402

pytestmark = pytest.mark.timeout(180)

# -- in process: the contract ---------------------------------------------------------------------------------


async def incr(request: Request) -> PlainTextResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return PlainTextResponse(str(request.session["n"]))


async def read(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(request.session.get("n", 0)))


async def plain(request: Request) -> PlainTextResponse:
    return PlainTextResponse("plain")


async def login(request: Request) -> PlainTextResponse:
    request.session["user"] = "ann"
    request.session.regenerate()  # type: ignore[attr-defined]
    return PlainTextResponse("in")


async def logout(request: Request) -> PlainTextResponse:
    request.session.invalidate()  # type: ignore[attr-defined]
    return PlainTextResponse("out")


async def clear(request: Request) -> PlainTextResponse:
    request.session.clear()
    return PlainTextResponse("cleared")


async def other_key(request: Request) -> PlainTextResponse:
    # another writer (the request lock off for it) changes key "b" while this request changes "a"
    store: lockstore.BaseStore = request.app.state.store
    sid = request.query_params["sid"]
    request.session["a"] = 1
    with store.edit(sid) as record:
        record["b"] = 2
    return PlainTextResponse("ok")


async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(str("session" in websocket.scope))
    await websocket.close()


def starlette_app(store: lockstore.BaseStore, **options: Any) -> Starlette:
    routes = [
        Route(path, fn)
        for path, fn in {"/incr": incr, "/read": read, "/plain": plain, "/login": login, "/logout": logout,
                         "/clear": clear, "/other": other_key}.items()
    ]  # fmt: skip
    app = Starlette(routes=[*routes, WebSocketRoute("/ws", ws)])
    app.add_middleware(SessionMiddleware, store=store, secret_key="ignored", **options)
    app.state.store = store
    return app


@pytest.fixture
def store(tmp_path: Path) -> Iterator[lockstore.BaseStore]:
    with lockstore.open(tmp_path / "store", timeout=5) as opened:
        yield opened


def test_request_session_contract_just_in_time_only_changed_keys(store: lockstore.BaseStore) -> None:
    with TestClient(starlette_app(store)) as client:  # the lifespan scope passes through
        reply = client.get("/plain")
        assert "set-cookie" not in reply.headers and len(store) == 0
        reply = client.get("/read")  # read, nothing stored: no session created
        assert reply.text == "0" and "set-cookie" not in reply.headers and len(store) == 0
        assert [client.get("/incr").text for _ in range(3)] == ["1", "2", "3"]
        sid = client.cookies["session"]  # Starlette's default cookie name
        assert store[sid] == {"n": 3} and client.get("/incr").headers["vary"] == "Cookie"  # n: 4
        assert client.get(f"/other?sid={sid}").text == "ok"
        assert store[sid] == {"n": 4, "a": 1, "b": 2}  # only "a" was written back: "b" is kept
        with client.websocket_connect("/ws") as websocket:
            assert websocket.receive_text() == "False"  # websocket scopes pass through untouched
        assert client.get("/clear").headers["set-cookie"].startswith("session=;")
        assert sid not in store


def test_regenerate_and_invalidate(store: lockstore.BaseStore) -> None:
    client = TestClient(starlette_app(store))
    client.get("/incr")
    before = client.cookies["session"]
    assert client.get("/login").text == "in"
    after = client.cookies["session"]
    assert after != before and before not in store and store[after] == {"n": 1, "user": "ann"}
    reply = client.get("/logout")
    assert reply.headers["set-cookie"].startswith("session=;") and after not in store and len(store) == 0


def test_cookie_options_follow_starlettes_names(store: lockstore.BaseStore) -> None:
    app = starlette_app(
        store, session_cookie="sid", max_age=600, path="/app", same_site="strict", https_only=True,
        domain="example.test", partitioned=True,
    )  # fmt: skip
    cookie = TestClient(app, base_url="https://example.test").get("/incr").headers["set-cookie"]
    parts = [part.strip() for part in cookie.split(";")]
    assert parts[0].startswith("sid=")
    for wanted in ("Max-Age=600", "Path=/app", "SameSite=strict", "Secure", "HttpOnly", "Domain=example.test",
                   "Partitioned"):  # fmt: skip
        assert wanted in parts, (wanted, cookie)
    session_only = TestClient(starlette_app(store, max_age=None)).get("/incr").headers["set-cookie"]
    assert "Max-Age" not in session_only and "Expires" not in session_only


def test_store_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="store_path"):
        SessionMiddleware(plain)  # type: ignore[arg-type]
    with lockstore.open(tmp_path / "a") as store, pytest.raises(ValueError, match="store="):
        SessionMiddleware(plain, tmp_path / "b", store=store)  # type: ignore[arg-type]
    # the store opened by the middleware: first positional argument, lockstore.open's options as keywords
    app = Starlette(routes=[Route("/incr", incr)])
    app.add_middleware(SessionMiddleware, store_path=tmp_path / "c", backend="shelve")
    assert TestClient(app).get("/incr").text == "1"
    assert (tmp_path / "c" / "lockstore.json").exists()


def test_busy_session_answers_503_with_retry_after(store: lockstore.BaseStore, tmp_path: Path) -> None:
    client = TestClient(starlette_app(store, lock_timeout=0.3))
    client.get("/incr")
    sid = client.cookies["session"]
    other = StripeLocks(Path(store.path) / "stripes")  # its own descriptor: as another process's flock
    hold = other.acquire(sid)
    assert hold is not None
    try:
        started = time.monotonic()
        reply = client.get("/incr")
        assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
        assert 0.3 <= time.monotonic() - started < 3
    finally:
        hold.release()
        other.close()
    assert client.get("/incr").text == "2"  # the 503 wrote nothing


# -- in process, on an event loop: disconnect and cancellation ------------------------------------------------


class Call:
    """One HTTP request to an ASGI app as a task: its messages, and a disconnect to deliver on demand."""

    def __init__(self, app: Any, path: str, sid: str | None = None) -> None:
        headers = [(b"cookie", f"session={sid}".encode())] if sid else []
        scope = {"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": headers,
                 "asgi": {"version": "3.0", "spec_version": "2.3"}}  # fmt: skip
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()
        self.started = asyncio.Event()
        self._requested = False
        self.task = asyncio.create_task(app(scope, self.receive, self.send))

    async def receive(self) -> dict[str, Any]:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.start":
            self.started.set()

    def cookie(self) -> str | None:
        for name, value in self.sent[0].get("headers", []):
            if name == b"set-cookie":
                return bytes(value).decode().split(";")[0].partition("=")[2]
        return None


def event_app(store: lockstore.BaseStore, gate: asyncio.Event) -> Any:
    async def hold(request: Request) -> PlainTextResponse:
        request.session["n"] = request.session.get("n", 0) + 1
        await gate.wait()  # the session's lock is held meanwhile
        return PlainTextResponse(str(request.session["n"]))

    async def stream(request: Request) -> StreamingResponse:
        request.session["n"] = request.session.get("n", 0) + 1

        async def chunks() -> Any:
            while True:
                request.session["n"] += 1  # changes made while the body streams
                yield b"x"
                await asyncio.sleep(0.01)

        return StreamingResponse(chunks())

    async def linger(request: Request) -> PlainTextResponse:
        request.session["n"] = request.session.get("n", 0) + 1
        while not await request.is_disconnected():
            await asyncio.sleep(0.01)
        request.session["n"] += 100  # work after the client left: never saved
        await gate.wait()
        return PlainTextResponse("late")

    routes = [Route("/incr", incr), Route("/hold", hold), Route("/stream", stream), Route("/linger", linger)]
    app = Starlette(routes=routes)
    return SessionMiddleware(app, store=store, lock_timeout=5)


def test_a_task_cancelled_waiting_for_the_lock_or_holding_it_frees_it_and_writes_nothing(
    store: lockstore.BaseStore,
) -> None:
    async def main() -> None:
        gate = asyncio.Event()
        app = event_app(store, gate)
        first = Call(app, "/incr")
        await first.task
        sid = first.cookie()
        assert sid is not None and store[sid] == {"n": 1}
        holder = Call(app, "/hold", sid)
        await asyncio.sleep(0.05)
        waiter = Call(app, "/incr", sid)  # waits for the holder's lock
        await asyncio.sleep(0.05)
        assert not waiter.task.done()
        waiter.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter.task
        assert waiter.sent == []
        gate.set()
        await holder.task
        assert store[sid] == {"n": 2}  # the holder's update, none of the cancelled request's
        # a request cancelled while it holds the lock (in the handler): the lock is free, nothing written
        gate.clear()
        holder = Call(app, "/hold", sid)
        await asyncio.sleep(0.05)
        holder.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder.task
        started = time.monotonic()
        after = Call(app, "/incr", sid)
        await after.task
        assert time.monotonic() - started < 0.5 and store[sid] == {"n": 3}

    asyncio.run(main())


def test_a_client_disconnect_frees_the_lock_at_once_and_drops_the_changes_made_while_streaming(
    store: lockstore.BaseStore,
) -> None:
    async def main() -> None:
        app = event_app(store, asyncio.Event())
        first = Call(app, "/incr")
        await first.task
        sid = first.cookie()
        assert sid is not None
        streaming = Call(app, "/stream", sid)
        await streaming.started.wait()
        assert store[sid] == {"n": 2}  # saved with the headers
        await asyncio.sleep(0.1)
        streaming.gone.set()  # the client goes away mid-body
        after = Call(app, "/incr", sid)
        await asyncio.wait_for(after.task, 2)
        await asyncio.wait_for(streaming.task, 2)
        # the stream's later increments were never written, not even partly: the next request saw n == 2
        assert store[sid] == {"n": 3}
        assert streaming.sent[-1].get("more_body", False)  # the body never completed
        # an application that notices the hang-up and goes on working: the lock is free at once all the same
        gate = asyncio.Event()
        app = event_app(store, gate)
        lingering = Call(app, "/linger", sid)
        await asyncio.sleep(0.05)
        lingering.gone.set()
        after = Call(app, "/incr", sid)
        await asyncio.wait_for(after.task, 2)
        assert store[sid] == {"n": 4} and not lingering.task.done()
        gate.set()
        await lingering.task
        assert store[sid] == {"n": 4}

    asyncio.run(main())


# -- real servers -----------------------------------------------------------------------------------------------

SERVERS = {"uvicorn": uvicorn, "gunicorn-uvicorn": gunicorn_uvicorn}
REQUESTS = 200  # per client of the shared cookie: 8 x 200 = 1,600 increments of one session


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("server", "app", "backend"),
    [(server, app, "lmdb") for server in SERVERS for app in ("starlette", "fastapi")]
    + [("uvicorn", "fastapi", "redis")],
)
def test_no_update_is_lost_under_four_workers(server: str, app: str, backend: str, tmp_path: Path) -> None:
    env = {"LOCKSTORE_TEST_PATH": str(tmp_path / "store")}
    with contextlib.ExitStack() as stack:
        if backend == "redis":  # its own server: the store's metadata and keys start empty
            env["LOCKSTORE_TEST_URL"] = stack.enter_context(running_redis(tmp_path / "redis")).url
        port = stack.enter_context(SERVERS[server](f"make_{app}_app", workers=4, env=env))
        result = shared(port, clients=8, requests=REQUESTS)
        assert result["errors"] == 0 and result["lost"] == 0 and result["final"] == 8 * REQUESTS + 1, result
        own = users(port, clients=8, requests=25)
        assert own["lost"] == 0 and own["finals"] == [25] * 8, own
        kept = readers(port)
        assert kept["reads"] > 0 and kept["lost"] == 0 and kept["final"] == 41, kept


def latencies(port: int, count: int) -> list[float]:
    """Seconds each of *count* requests of fresh users takes, one after another."""
    times = []
    for _ in range(count):
        started = time.monotonic()
        assert get(port, "/incr").status == 200
        times.append(time.monotonic() - started)
    return times


def test_a_slow_request_blocks_neither_the_loop_nor_the_same_users_updates(tmp_path: Path) -> None:
    env = {"LOCKSTORE_TEST_PATH": str(tmp_path / "store")}
    with uvicorn("make_starlette_app", workers=1, env=env) as port:  # one worker: one event loop serves all
        latencies(port, 10)  # warm up
        normal = statistics.median(latencies(port, 40))
        slow_user = Client(port)
        slow_user.get("/incr")
        slow = threading.Thread(target=slow_user.get, args=("/slow?s=2",))
        slow.start()
        time.sleep(0.2)
        meanwhile = latencies(port, 40)  # other users, while the slow request holds its session on the loop
        slow.join()
        assert len(meanwhile) == 40 and max(meanwhile) < 1.0
        assert statistics.median(meanwhile) < max(3 * normal, normal + 0.02), (normal, meanwhile)
        # the same user's requests made meanwhile wait for the slow one's lock, then each is kept
        result = during(port, seconds=2.0)
        assert result["updates"] >= 2 and result["lost"] == 0, result


def stream_then_hang_up(port: int, cookie: str) -> str:
    """GET ``/stream`` (40 chunks, 0.1 s apart), read up to the first chunk, then close the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        request = f"GET /stream?chunks=40&s=0.1 HTTP/1.1\r\nHost: x\r\nCookie: {COOKIE}={cookie}\r\n\r\n"
        sock.sendall(request.encode())
        received = b""
        while b"\r\n\r\n" not in received or not received.split(b"\r\n\r\n", 1)[1].count(b"\r\n") >= 2:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
    head, body = received.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.split(b"\r\n")[1].decode().strip()  # chunked encoding: size line, then the data "3\n"


@pytest.mark.parametrize("app", ["starlette", "fastapi"])
def test_a_client_hanging_up_mid_stream_frees_the_lock_and_writes_nothing_half(app: str, tmp_path: Path) -> None:
    env = {"LOCKSTORE_TEST_PATH": str(tmp_path / "store")}
    with uvicorn(f"make_{app}_app", workers=2, env=env) as port:
        user = Client(port)
        assert user.get("/incr").body == "1"
        assert user.cookie is not None
        assert stream_then_hang_up(port, user.cookie) == "3"  # +1 before the headers, +1 for the first chunk
        started = time.monotonic()
        reply = user.get("/incr")  # the stream would hold the lock for 4 s: its hang-up released it
        assert reply.status == 200 and time.monotonic() - started < 2.0
        # saved with the headers: 2; the chunks' increments (made after the headers) never written
        assert reply.body == "3", reply.body
        time.sleep(0.5)
        assert user.get("/read").body == "3"


def test_a_lock_not_obtained_in_time_answers_503_with_retry_after(tmp_path: Path) -> None:
    env = {"LOCKSTORE_TEST_PATH": str(tmp_path / "store"), "LOCKSTORE_TEST_TIMEOUT": "0.5"}
    with gunicorn_uvicorn("make_fastapi_app", workers=2, env=env) as port:
        user = Client(port)
        user.get("/incr")
        slow = threading.Thread(target=user.get, args=("/slow?s=2",))
        slow.start()
        time.sleep(0.3)
        assert user.cookie is not None
        reply = get(port, "/incr", user.cookie)
        slow.join()
        assert reply.status == 503 and reply.header("Retry-After") == "1", reply
        assert user.get("/read").body == "2"  # the slow request's update; nothing of the 503
