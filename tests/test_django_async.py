"""lockstore.django in async code: Django's AsyncClient through async middleware, and the a* methods directly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import ThreadSensitiveContext
from servers import require

require("django")

from django.conf import settings  # noqa: E402
from django.contrib.sessions.backends.base import CreateError, UpdateError  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.test import AsyncClient, Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from test_django import forget_sites  # noqa: E402  (configures Django's settings)

import lockstore  # noqa: E402
import lockstore.django  # noqa: E402
from lockstore.django import SessionLockMiddleware, SessionStore  # noqa: E402
from lockstore.web.stripes import StripeLocks  # noqa: E402
from lockstore.wsgi import BUSY_BODY  # noqa: E402

COOKIE = settings.SESSION_COOKIE_NAME


async def aincr(request: HttpRequest) -> HttpResponse:
    n = await request.session.aget("n", 0)
    await asyncio.sleep(0.001)  # let the other requests run in between: a lost update would show
    await request.session.aset("n", n + 1)
    return HttpResponse(str(n + 1))


def incr(request: HttpRequest) -> HttpResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return HttpResponse(str(request.session["n"]))


async def aread(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(await request.session.aget("n", 0)))


async def aslow(request: HttpRequest) -> HttpResponse:
    n = await request.session.aget("n", 0)
    await asyncio.sleep(0.5)
    await request.session.aset("n", n + 1)
    return HttpResponse(str(n + 1))


async def async_view_sync_access(request: HttpRequest) -> HttpResponse:
    request.session["n"] = request.session.get("n", 0) + 1  # the sync API, on the event loop's thread
    return HttpResponse(str(request.session["n"]))


async def anoop(request: HttpRequest) -> HttpResponse:
    return HttpResponse("noop")


urlpatterns = [
    path("aincr", aincr),
    path("incr", incr),
    path("aread", aread),
    path("aslow", aslow),
    path("sync-access", async_view_sync_access),
    path("anoop", anoop),
]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    with override_settings(ROOT_URLCONF=__name__, LOCKSTORE={"PATH": str(tmp_path / "s"), "LOCK_TIMEOUT": 5}):
        yield tmp_path / "s"
        forget_sites(str(tmp_path))


def new_session() -> str:
    client = Client()
    client.get("/incr")
    return client.cookies[COOKIE].value


def async_client(sid: str, *, raise_request_exception: bool = True) -> AsyncClient:
    client = AsyncClient(raise_request_exception=raise_request_exception)
    client.cookies[COOKIE] = sid
    return client


async def asgi_get(sid: str, url: str) -> Any:
    """A request as Django's ASGIHandler serves it: its sync parts on a thread of its own.

    AsyncClient runs the sync parts of every request (sync views, SessionMiddleware) on one shared thread;
    a sync view waiting there for a session lock would stall the request holding it until LOCK_TIMEOUT.
    """
    async with ThreadSensitiveContext():
        return await async_client(sid).get(url)


def two_sessions_on_different_stripes() -> tuple[str, str]:
    locks = StripeLocks(None)
    first = new_session()
    while True:
        other = new_session()
        if locks.index(other) != locks.index(first):
            return first, other


def test_async_views_lose_no_increment(site: Path) -> None:
    sid = new_session()  # n == 1

    async def main() -> list[int]:
        responses = await asyncio.gather(*(async_client(sid).get("/aincr") for _ in range(30)))
        return [r.status_code for r in responses]

    assert asyncio.run(main()) == [200] * 30
    assert asyncio.run(async_client(sid).get("/aread")).content == b"31"


def test_async_and_sync_views_share_one_session_exactly(site: Path) -> None:
    sid = new_session()

    async def main() -> list[int]:
        urls = ["/aincr", "/incr"] * 15
        responses = await asyncio.gather(*(asgi_get(sid, url) for url in urls))
        return [r.status_code for r in responses]

    assert asyncio.run(main()) == [200] * 30
    assert asyncio.run(async_client(sid).get("/aread")).content == b"31"


def test_a_busy_session_delays_no_other_sessions_request(site: Path) -> None:
    """While one session's request waits for its lock, another session's request is answered at once."""
    busy, free = two_sessions_on_different_stripes()
    holder = StripeLocks(site / "stripes")  # as another process would hold it
    hold = holder.acquire(busy)
    assert hold is not None

    async def main() -> tuple[Any, float, Any, float, float]:
        start = time.monotonic()
        gaps: list[float] = []

        async def ticker() -> None:
            last = time.monotonic()
            while time.monotonic() - start < 0.8:
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        async def timed(sid: str, url: str) -> tuple[Any, float]:
            response = await async_client(sid).get(url)
            return response, time.monotonic() - start

        tick = asyncio.create_task(ticker())
        waiting = asyncio.create_task(timed(busy, "/aincr"))
        await asyncio.sleep(0.05)  # the busy request is now waiting for its lock
        answered, answered_after = await timed(free, "/aincr")
        loop.call_later(0.3, hold.release)
        waited, waited_after = await waiting
        await tick
        return answered, answered_after, waited, waited_after, max(gaps)

    loop = asyncio.new_event_loop()
    try:
        answered, answered_after, waited, waited_after, max_gap = loop.run_until_complete(main())
    finally:
        hold.release()
        loop.close()
    assert answered.status_code == 200 and answered_after < 0.3
    assert waited.status_code == 200 and waited_after >= 0.3  # it waited for the lock, then got it
    assert max_gap < 0.1  # the wait never blocked the event loop


def test_a_lock_timeout_is_a_generic_503_in_async_views(site: Path) -> None:
    sid = new_session()
    holder = StripeLocks(site / "stripes")
    hold = holder.acquire(sid)
    assert hold is not None
    try:
        with override_settings(LOCKSTORE={"PATH": str(site), "LOCK_TIMEOUT": 0.2}, DEBUG=True):
            response = asyncio.run(async_client(sid).get("/aincr"))
            assert (response.status_code, response["Retry-After"], response.content) == (503, "1", BUSY_BODY)
            # the wait runs out in SessionMiddleware's save, below the view: still a 503, no debug page
            with override_settings(SESSION_SAVE_EVERY_REQUEST=True):
                # (Django turned the error into a 500 first: the client would re-raise it, as for any 500)
                response = asyncio.run(async_client(sid, raise_request_exception=False).get("/anoop"))
            assert (response.status_code, response["Retry-After"], response.content) == (503, "1", BUSY_BODY)
    finally:
        hold.release()
    assert asyncio.run(async_client(sid).get("/aincr")).content == b"2"  # nothing was saved meanwhile


def test_sync_session_access_in_an_async_view_keeps_the_lock(site: Path) -> None:
    """The sync API on the event loop's thread: never inside another task's lock, never a hang."""
    sid = new_session()

    async def main() -> tuple[list[int], float]:
        slow = asyncio.create_task(async_client(sid).get("/aslow"))
        await asyncio.sleep(0.1)  # the slow request holds the session now
        start = time.monotonic()
        fast = await async_client(sid).get("/sync-access")
        took = time.monotonic() - start
        return [(await slow).status_code, fast.status_code], took

    statuses, took = asyncio.run(main())
    assert statuses == [200, 503] and took < 1  # answered at once: waiting would stall the holder's loop
    assert asyncio.run(async_client(sid).get("/aread")).content == b"2"  # 1 + one increment: none lost


def test_async_middleware_keeps_concurrent_tasks_apart(site: Path) -> None:
    """Tasks of one event loop share a thread; the session lock must still keep them apart."""
    sid = new_session()

    async def handler(request: HttpRequest) -> HttpResponse:
        session = SessionStore(sid)
        n = await session.aget("n", 0)
        await asyncio.sleep(0.002)
        await session.aset("n", n + 1)
        await session.asave()
        return HttpResponse(str(n + 1))

    middleware = SessionLockMiddleware(handler)
    assert asyncio.iscoroutinefunction(middleware)

    async def one() -> None:
        response = await middleware(HttpRequest())
        await asyncio.sleep(0.001)
        response.close()  # what the server does once the response is sent: releases the lock

    async def main() -> None:
        await asyncio.gather(*(one() for _ in range(20)))

    asyncio.run(main())
    assert SessionStore(sid).load()["n"] == 21


def test_the_async_methods_directly(site: Path) -> None:
    async def main() -> None:
        session = SessionStore()
        assert await session.aget("a") is None
        await session.aset("a", 1)
        await session.aupdate({"b": 2, "c": 3})
        assert await session.asetdefault("d", 4) == 4 and await session.asetdefault("d", 5) == 4
        assert await session.apop("c") == 3 and await session.apop("c", "gone") == "gone"
        assert await session.ahas_key("a") and not await session.ahas_key("c")
        assert sorted(await session.akeys()) == ["a", "b", "d"]
        assert sorted(await session.avalues()) == [1, 2, 4]
        assert sorted(await session.aitems()) == [("a", 1), ("b", 2), ("d", 4)]
        await session.aset_expiry(600)
        assert await session.aget_expiry_age() == 600
        assert not await session.aget_expire_at_browser_close()
        assert (await session.aget_expiry_date()).timestamp() == pytest.approx(time.time() + 600, abs=5)
        await session.asave()
        key = session.session_key
        assert key is not None and lockstore.is_valid_id(key)
        assert await session.aexists(key)

        assert await SessionStore(key).aload() == {"a": 1, "b": 2, "d": 4, "_session_expiry": 600}
        with pytest.raises(CreateError):
            await SessionStore(key).asave(must_create=True)

        # concurrent saves merge the keys each changed, as the sync save() does
        first, second = SessionStore(key), SessionStore(key)
        await first.aget("a")
        await second.aget("a")
        await first.aset("from_first", 1)
        await second.aset("from_second", 2)
        await first.asave()
        await second.asave()
        assert {"from_first", "from_second"} <= (await SessionStore(key).aload()).keys()

        loaded = SessionStore(key)
        await loaded.acycle_key()
        new_key = loaded.session_key
        assert new_key != key and not await loaded.aexists(key) and await loaded.aexists(new_key)
        assert (await SessionStore(new_key).aload())["a"] == 1

        stale = SessionStore(new_key)
        await stale.aget("a")
        await loaded.aflush()
        assert loaded.session_key is None and not await loaded.aexists(new_key)
        await stale.aset("a", 2)
        with pytest.raises(UpdateError):  # never resurrected
            await stale.asave()

        created = SessionStore()
        await created.acreate()
        assert created.session_key is not None and await created.aexists(created.session_key)
        await created.adelete()
        assert not await created.aexists(created.session_key)

        expired = SessionStore()
        await expired.aset("x", 1)
        await expired.aset_expiry(-10)
        await expired.asave()
        kept = SessionStore()
        await kept.aset("x", 1)
        await kept.asave()
        store = lockstore.django.get_store()
        assert expired.session_key in store
        await SessionStore.aclear_expired()
        assert expired.session_key not in store and kept.session_key in store

    asyncio.run(main())
