"""lockstore.django against Django's own rules: SESSION_SERIALIZER and the codec, the error rule, the 503,
and every lockstore.open option as a setting (remote ones included)."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import require

require("django")

from django.conf import settings  # noqa: E402
from django.core.serializers.json import DjangoJSONEncoder  # noqa: E402
from django.http import Http404, HttpRequest, HttpResponse  # noqa: E402
from django.test import AsyncClient, Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from test_django import forget_sites  # noqa: E402  (configures Django's settings)

import lockstore  # noqa: E402
import lockstore.django  # noqa: E402
from lockstore.opener import read_meta  # noqa: E402
from lockstore.web.stripes import StripeLocks  # noqa: E402
from lockstore.wsgi import BUSY_BODY  # noqa: E402

COOKIE = settings.SESSION_COOKIE_NAME
LOCKSTORE_ENGINE = "lockstore.django"
DJANGO_ENGINE = "django.contrib.sessions.backends.cache"  # Django's own server-side engine, no database needed
DJANGO_JSON_ENGINE = "django.contrib.sessions.backends.signed_cookies"  # Django's engine that uses the serializer


class PickleSerializer:
    """Django 4.2's ``PickleSerializer`` (removed in Django 5), as projects that still pickle keep it."""

    protocol = pickle.HIGHEST_PROTOCOL

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj, self.protocol)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


class ExtendedJSONSerializer:
    """JSON with Django's encoder (datetimes as strings): not what codec "json" does."""

    def dumps(self, obj: Any) -> bytes:
        import json

        return json.dumps(obj, cls=DjangoJSONEncoder).encode()

    def loads(self, data: bytes) -> Any:
        import json

        return json.loads(data)


# -- views ---------------------------------------------------------------------------------------------


def set_view(request: HttpRequest) -> HttpResponse:
    request.session["x"] = request.GET.get("v", "1")
    return HttpResponse("ok")


def get_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(repr(request.session.get("x")))


def store_view(request: HttpRequest) -> HttpResponse:
    kind = request.GET["kind"]
    request.session["value"] = {
        "tuple": (1, 2),
        "int-keys": {1: "one"},
        "datetime": __import__("datetime").datetime(2024, 1, 2, 3, 4, 5),
        "set": {1, 2},
    }[kind]
    return HttpResponse("ok")


def show_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(repr(request.session.get("value")))


def fail_view(request: HttpRequest) -> HttpResponse:
    """Change the session, then end as *mode* says."""
    mode = request.GET["mode"]
    if mode == "cycle-then-raise":
        request.session.cycle_key()
    request.session["x"] = "changed"
    if mode in ("raise", "cycle-then-raise"):
        raise ValueError("the view failed")
    if mode == "http404":
        raise Http404
    if mode == "denied":
        from django.core.exceptions import PermissionDenied

        raise PermissionDenied
    return HttpResponse(mode, status=int(mode))  # "500", "503", "400", "302"


async def afail_view(request: HttpRequest) -> HttpResponse:
    mode = request.GET["mode"]
    if mode == "cycle-then-raise":
        await request.session.acycle_key()
    await request.session.aset("x", "changed")
    if mode in ("raise", "cycle-then-raise"):
        raise ValueError("the view failed")
    if mode == "http404":
        raise Http404
    if mode == "denied":
        from django.core.exceptions import PermissionDenied

        raise PermissionDenied
    return HttpResponse(mode, status=int(mode))


def incr(request: HttpRequest) -> HttpResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return HttpResponse(str(request.session["n"]))


def noop(request: HttpRequest) -> HttpResponse:
    return HttpResponse("noop")


def touching_middleware(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    """A middleware below SessionMiddleware that reads the session (as auth or messages do)."""

    def middleware(request: HttpRequest) -> HttpResponse:
        request.session.get("n")
        return get_response(request)

    return middleware


urlpatterns = [
    path("set", set_view),
    path("get", get_view),
    path("store", store_view),
    path("show", show_view),
    path("fail", fail_view),
    path("afail", afail_view),
    path("incr", incr),
    path("noop", noop),
]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    with override_settings(ROOT_URLCONF=__name__, LOCKSTORE={"PATH": str(tmp_path / "s")}):
        yield tmp_path / "s"
        forget_sites(str(tmp_path))


# -- SESSION_SERIALIZER and the codec ------------------------------------------------------------------


def test_a_new_store_follows_djangos_default_serializer_json(site: Path) -> None:
    assert lockstore.django.serializer_codec() == "json"
    Client().get("/set")
    meta = read_meta(str(site))
    assert meta is not None and meta["codec"] == "json"


def test_a_pickle_serializer_makes_a_pickle_store(site: Path) -> None:
    with override_settings(SESSION_SERIALIZER=f"{__name__}.PickleSerializer"):
        client = Client()
        client.get("/store?kind=tuple")
        assert client.get("/show").content == b"(1, 2)"  # a pickle keeps the tuple
    meta = read_meta(str(site))
    assert meta is not None and meta["codec"] == "pickle"


@pytest.mark.parametrize(
    ("serializer", "why"),
    [
        (f"{__name__}.ExtendedJSONSerializer", "is not supported"),
        (f"{__name__}.NoSuchSerializer", "cannot be imported"),
    ],
)
def test_a_serializer_lockstore_cannot_follow_fails_at_start_up_naming_the_setting(
    site: Path, serializer: str, why: str
) -> None:
    with override_settings(SESSION_SERIALIZER=serializer):
        match = rf"SESSION_SERIALIZER = '{serializer}' {why}"
        with pytest.raises(lockstore.LockstoreError, match=match):
            Client().get("/noop")  # Django loads the middleware: start-up
        with pytest.raises(lockstore.LockstoreError, match=match):
            lockstore.django.get_store()
    assert not site.exists()


def test_an_existing_store_keeps_its_recorded_codec(site: Path) -> None:
    """A store made by an older lockstore.django (pickle) stays pickle, its sessions intact."""
    old = lockstore.open(str(site), codec="pickle", max_age=settings.SESSION_COOKIE_AGE)
    sid = lockstore.new_id()
    old[sid] = {"data": {"x": (1, 2)}, "expires": time.time() + 600}
    old.close()
    client = Client()
    client.cookies[COOKIE] = sid
    assert client.get("/get").content == b"(1, 2)"
    assert lockstore.django.get_store().stats()["codec"] == "pickle"
    meta = read_meta(str(site))
    assert meta is not None and meta["codec"] == "pickle"


def test_an_existing_json_store_stays_json_under_a_pickle_serializer(site: Path) -> None:
    lockstore.open(str(site), codec="json", max_age=settings.SESSION_COOKIE_AGE).close()
    with override_settings(SESSION_SERIALIZER=f"{__name__}.PickleSerializer"):
        assert lockstore.django.get_store().stats()["codec"] == "json"


def test_an_explicit_codec_wins_and_a_mismatch_is_an_error(tmp_path: Path) -> None:
    with override_settings(LOCKSTORE={"PATH": str(tmp_path / "m"), "CODEC": "msgpack"}):
        assert lockstore.django.get_store().stats()["codec"] == "msgpack"
    lockstore.open(str(tmp_path / "p"), codec="pickle", max_age=settings.SESSION_COOKIE_AGE).close()
    with (
        override_settings(LOCKSTORE={"PATH": str(tmp_path / "p"), "CODEC": "json"}),
        pytest.raises(lockstore.StoreMismatch, match="codec"),
    ):
        lockstore.django.get_store()
    forget_sites(str(tmp_path))


@pytest.mark.parametrize("engine", [LOCKSTORE_ENGINE, DJANGO_JSON_ENGINE])
def test_json_sessions_hold_what_djangos_json_sessions_hold(site: Path, engine: str) -> None:
    """Tuples come back as lists, int keys as strings, and a datetime or a set fails the request with a
    TypeError while the stored session stays as it was: exactly as with Django's own engines."""
    with override_settings(SESSION_ENGINE=engine):
        client = Client()
        client.get("/store?kind=tuple")
        assert client.get("/show").content == b"[1, 2]"
        client.get("/store?kind=int-keys")
        assert client.get("/show").content == b"{'1': 'one'}"
        for kind in ("datetime", "set"):
            with pytest.raises(TypeError):
                client.get(f"/store?kind={kind}")
            assert client.get("/show").content == b"{'1': 'one'}"


# -- the error rule: Django's SessionMiddleware saves nothing for a response of status >= 500 ------------

MODES = ["raise", "cycle-then-raise", "http404", "denied", "500", "503", "400", "302"]


def outcomes(engine: str, *, use_async: bool) -> dict[str, tuple[int, str]]:
    """For each way a view can end after changing the session: (status, what the next request reads)."""
    result = {}
    with override_settings(SESSION_ENGINE=engine):
        for mode in MODES:
            client = Client(raise_request_exception=False)
            client.get("/set?v=before")
            if use_async:
                aclient = AsyncClient(raise_request_exception=False)
                aclient.cookies = client.cookies
                status = asyncio.run(aclient.get(f"/afail?mode={mode}")).status_code
            else:
                status = client.get(f"/fail?mode={mode}").status_code
            result[mode] = (status, client.get("/get").content.decode())
    return result


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_failed_request_saves_as_djangos_own_engine_does(site: Path, use_async: bool) -> None:
    django_rule = outcomes(DJANGO_ENGINE, use_async=use_async)
    # Django's rule, as observed: saved if and only if the response's status is below 500
    assert django_rule == {
        "raise": (500, "'before'"),
        "cycle-then-raise": (500, "None"),  # cycle_key() deleted the old session at once; no cookie followed
        "http404": (404, "'changed'"),
        "denied": (403, "'changed'"),
        "500": (500, "'before'"),
        "503": (503, "'before'"),
        "400": (400, "'changed'"),
        "302": (302, "'changed'"),
    }
    assert outcomes(LOCKSTORE_ENGINE, use_async=use_async) == django_rule


# -- 503: generic body, Retry-After: 1, wherever the lock wait ran out --------------------------------


def busy(site: Path, sid: str) -> Any:
    hold = StripeLocks(site / "stripes").acquire(sid)  # as another process holding the session would
    assert hold is not None
    return hold


@pytest.mark.parametrize("where", ["view", "session-middleware", "middleware-below"])
@pytest.mark.parametrize("debug", [False, True])
def test_a_lock_timeout_is_a_generic_503_with_retry_after(site: Path, where: str, debug: bool) -> None:
    client = Client(raise_request_exception=False)
    client.get("/incr")
    sid = client.cookies[COOKIE].value
    overrides: dict[str, Any] = {"LOCKSTORE": {"PATH": str(site), "LOCK_TIMEOUT": 0.1}, "DEBUG": debug}
    url = "/incr"
    if where == "session-middleware":  # the view never reads the session: SessionMiddleware's save does
        overrides["SESSION_SAVE_EVERY_REQUEST"] = True
        url = "/noop"
    if where == "middleware-below":
        overrides["MIDDLEWARE"] = [*settings.MIDDLEWARE, f"{__name__}.touching_middleware"]
        url = "/noop"
    hold = busy(site, sid)
    try:
        with override_settings(**overrides):
            other = Client(raise_request_exception=False)
            other.cookies[COOKIE] = sid
            response = other.get(url)
    finally:
        hold.release()
    assert (response.status_code, response.get("Retry-After"), response.content) == (503, "1", BUSY_BODY)
    assert str(site).encode() not in response.content
    assert client.get("/incr").content == b"2"  # the 503 saved nothing, and released what it held


def test_a_shard_lock_timeout_while_saving_is_a_503(tmp_path: Path) -> None:
    with override_settings(ROOT_URLCONF=__name__, LOCKSTORE={"PATH": str(tmp_path / "s"), "TIMEOUT": 0.1}):
        client = Client(raise_request_exception=False)
        client.get("/incr")
        sid = client.cookies[COOKIE].value
        store = lockstore.django.get_store()
        held, done = threading.Event(), threading.Event()

        def hold_the_shard() -> None:
            with store.edit(sid):  # the shard lock stays taken for the whole block
                held.set()
                done.wait(10)

        holder = threading.Thread(target=hold_the_shard)
        holder.start()
        try:
            assert held.wait(10)
            response = client.get("/incr")
        finally:
            done.set()
            holder.join(10)
        assert (response.status_code, response.get("Retry-After"), response.content) == (503, "1", BUSY_BODY)
        assert client.get("/incr").content == b"2"
        forget_sites(str(tmp_path))


# -- every lockstore.open option is a setting, the remote ones too -------------------------------------


def test_remote_options_reach_a_redis_store(redis_server: str, tmp_path: Path) -> None:
    redis = require("redis")
    config = {
        "PATH": redis_server,
        "PREFIX": "django-settings",
        "LOCK_TTL": 12.5,
        "CONNECT_TIMEOUT": 2.5,
        "POOL_SIZE": 7,
        "TIMEOUT": 3,
        "LOCK_DIR": str(tmp_path / "locks"),
    }
    with override_settings(ROOT_URLCONF=__name__, LOCKSTORE=config):
        store = lockstore.django.get_store()
        try:
            assert (store.prefix, store.lock_ttl, store.connect_timeout, store.timeout) == (  # type: ignore[attr-defined]
                "django-settings",
                12.5,
                2.5,
                3.0,
            )
            assert store._pool.max_connections == 7  # type: ignore[attr-defined]
            assert store.stats()["codec"] == "json"  # Django's JSONSerializer
            locks = lockstore.django._open().locks
            assert locks is not None and locks.directory == tmp_path / "locks"
            client = Client()
            client.get("/set?v=remote")
            assert client.get("/get").content == b"'remote'"
            server = redis.Redis.from_url(redis_server)
            sid = client.cookies[COOKIE].value
            assert any(sid in key.decode() for key in server.keys("django-settings:*"))
            server.close()
        finally:
            forget_sites("django-settings")


def test_the_table_and_pool_size_reach_a_postgres_store(postgres_server: str) -> None:
    require("psycopg")
    config = {"PATH": postgres_server, "TABLE": "django_settings_test", "POOL_SIZE": 3, "REQUEST_LOCK": False}
    with override_settings(ROOT_URLCONF=__name__, LOCKSTORE=config):
        store = lockstore.django.get_store()
        try:
            assert store.table == "django_settings_test"  # type: ignore[attr-defined]
            assert store._pool_size == 3  # type: ignore[attr-defined]
            assert lockstore.django._open().locks is None
            client = Client()
            client.get("/set?v=pg")
            assert client.get("/get").content == b"'pg'"
        finally:
            forget_sites("django_settings_test")
