"""lockstore.django: Django's expectations of a session engine, checked with Django's test utilities."""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from servers import require

django = require("django")

from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(
        SECRET_KEY="test-only-secret",
        SESSION_ENGINE="lockstore.django",
        LOCKSTORE={"PATH": tempfile.mkdtemp(prefix="lockstore-django-")},
        INSTALLED_APPS=["django.contrib.sessions"],
        MIDDLEWARE=[
            "lockstore.django.SessionLockMiddleware",
            "django.contrib.sessions.middleware.SessionMiddleware",
        ],
        ROOT_URLCONF=__name__,
        USE_TZ=True,
        DATABASES={},
        ALLOWED_HOSTS=["testserver"],
    )
    django.setup()

from django.contrib.sessions.backends.base import CreateError, UpdateError  # noqa: E402
from django.core import management  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.test import Client, SimpleTestCase, override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from django.utils import timezone  # noqa: E402

import lockstore  # noqa: E402
import lockstore.django  # noqa: E402
from lockstore.django import SessionStore  # noqa: E402
from lockstore.web.stripes import StripeLocks  # noqa: E402


def incr(request: HttpRequest) -> HttpResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return HttpResponse(str(request.session["n"]))


def read(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(request.session.get("n", 0)))


urlpatterns = [path("incr", incr), path("read", read)]


def forget_sites(fragment: str) -> None:
    """Close and forget the stores lockstore.django opened for settings mentioning *fragment*."""
    for key, site in list(lockstore.django._opened.items()):
        if fragment in key:
            store, locks = site[0], site[1]  # the store and its request-long locks
            store.close()
            if locks is not None:
                locks.close()
            del lockstore.django._opened[key]


class LockstoreSessionTests(SimpleTestCase):
    """The behaviour Django's own session tests ask of every engine."""

    def setUp(self) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.settings_override = override_settings(LOCKSTORE={"PATH": self.dir.name})
        self.settings_override.enable()
        self.session = SessionStore()

    def tearDown(self) -> None:
        self.session.delete()
        self.settings_override.disable()
        forget_sites(self.dir.name)
        self.dir.cleanup()

    def test_new_session(self) -> None:
        assert not self.session.modified and not self.session.accessed

    def test_get_empty(self) -> None:
        assert self.session.get("cat") is None

    def test_store_and_pop(self) -> None:
        self.session["cat"] = "dog"
        assert self.session.modified
        assert self.session.pop("cat") == "dog"
        assert self.session.pop("cat", "gone") == "gone"

    def test_setdefault_update_keys_values_items(self) -> None:
        assert self.session.setdefault("foo", "bar") == "bar"
        assert self.session.setdefault("foo", "baz") == "bar"
        self.session.update({"x": 1})
        assert self.session.accessed and self.session.modified
        assert sorted(self.session.keys()) == ["foo", "x"]
        assert sorted(self.session.items()) == [("foo", "bar"), ("x", 1)]
        assert "x" in self.session

    def test_clear(self) -> None:
        self.session["x"] = 1
        self.session.save()
        self.session.modified = self.session.accessed = False
        self.session.clear()
        assert list(self.session.items()) == []
        assert self.session.accessed and self.session.modified
        self.session.save()
        assert SessionStore(self.session.session_key).load() == {}

    def test_save_exists_delete(self) -> None:
        self.session.save()
        key = self.session.session_key
        assert key and lockstore.is_valid_id(key) and len(key) >= 32  # a lockstore.new_id()
        assert self.session.exists(key)
        self.session.delete(key)
        assert not self.session.exists(key)

    def test_flush(self) -> None:
        self.session["foo"] = "bar"
        self.session.save()
        prev = self.session.session_key
        self.session.flush()
        assert not self.session.exists(prev)
        assert self.session.session_key != prev
        assert self.session.modified and self.session.accessed

    def test_cycle(self) -> None:
        self.session["a"], self.session["b"] = "c", "d"
        self.session.save()
        prev_key, prev_data = self.session.session_key, list(self.session.items())
        self.session.cycle_key()
        assert self.session.session_key != prev_key
        assert list(self.session.items()) == prev_data
        assert not self.session.exists(prev_key)  # the old id is unusable
        assert SessionStore(self.session.session_key).load() == dict(prev_data)

    def test_cycle_with_no_session_cache(self) -> None:
        self.session["a"] = "b"
        self.session.save()
        fresh = SessionStore(self.session.session_key)
        fresh.cycle_key()
        assert fresh.get("a") == "b" and fresh.session_key != self.session.session_key

    def test_save_doesnt_clear_data(self) -> None:
        self.session["a"] = "b"
        self.session.save()
        assert self.session["a"] == "b"

    def test_invalid_and_forged_keys_start_fresh_without_touching_files(self) -> None:
        store = lockstore.django.get_store()
        before = sorted(Path(self.dir.name).rglob("*"))
        for bad in ("1", "", "short", "../../../etc/passwd", "a/b/c/d/e/f", "x" * 300, "ok-but-unknown-1234"):
            session = SessionStore(bad)
            assert session.get("cat") is None
            assert session.load() == {}
        assert sorted(Path(self.dir.name).rglob("*")) == before
        session = SessionStore("../../../etc/passwd")
        session["cat"] = "dog"
        session.save()
        assert session.session_key != "../../../etc/passwd"
        assert list(store) == [session.session_key]
        session.delete()

    def test_session_key_validation(self) -> None:
        assert SessionStore("").session_key is None
        assert SessionStore("1234567").session_key is None
        assert SessionStore("12345678").session_key == "12345678"
        with pytest.raises(AttributeError):
            self.session.session_key = "abcdefgh"  # type: ignore[misc]

    def test_load_does_not_create_record(self) -> None:
        session = SessionStore("someunknownkey")
        session.load()
        assert session.session_key is None
        assert not session.exists("someunknownkey")

    def test_save_does_not_resurrect_a_session_logged_out_elsewhere(self) -> None:
        s1 = SessionStore()
        s1["test_data"] = "value1"
        s1.save(must_create=True)
        s2 = SessionStore(s1.session_key)
        s2.delete()
        s1["test_data"] = "value2"
        with pytest.raises(UpdateError):
            s1.save()
        assert s1.load() == {}

    def test_must_create_collision(self) -> None:
        self.session["a"] = 1
        self.session.save()
        other = SessionStore(self.session.session_key)
        other["b"] = 2
        with pytest.raises(CreateError):
            other.save(must_create=True)
        assert SessionStore(self.session.session_key).load() == {"a": 1}

    def test_default_and_custom_expiry(self) -> None:
        assert self.session.get_expiry_age() == settings.SESSION_COOKIE_AGE
        modification = timezone.now()
        self.session.set_expiry(10)
        assert self.session.get_expiry_age(modification=modification) == 10
        self.session.set_expiry(modification + timedelta(seconds=20))
        assert self.session.get_expiry_date(modification=modification) == modification + timedelta(seconds=20)
        self.session.set_expiry(None)
        assert self.session.get_expiry_age() == settings.SESSION_COOKIE_AGE

    def test_actual_expiry(self) -> None:
        self.session["foo"] = "bar"
        self.session.set_expiry(-10)
        self.session.save()
        old = self.session.session_key
        new_session = SessionStore(old)
        assert "foo" not in new_session
        assert new_session.session_key is None
        assert not self.session.exists(old)

    def test_store_max_age_follows_session_cookie_age(self) -> None:
        assert lockstore.django.get_store().max_age == settings.SESSION_COOKIE_AGE

    def test_clearsessions_command(self) -> None:
        store = lockstore.django.get_store()
        self.session["foo"] = "bar"
        self.session.set_expiry(3600)
        self.session.save()
        other = SessionStore()
        other["foo"] = "bar"
        other.set_expiry(-3600)
        other.save()
        assert len(store) == 2
        management.call_command("clearsessions")
        assert list(store) == [self.session.session_key]

    def test_concurrent_saves_merge_changed_keys(self) -> None:
        self.session["base"] = 0
        self.session.save()
        key = self.session.session_key
        a, b = SessionStore(key), SessionStore(key)
        assert a["base"] == 0 and b["base"] == 0  # both loaded before either saves
        a["from_a"] = 1
        b["from_b"] = 2
        a.save()
        b.save()
        assert SessionStore(key).load() == {"base": 0, "from_a": 1, "from_b": 2}


@pytest.fixture
def site(tmp_path: Path) -> Any:
    with override_settings(LOCKSTORE={"PATH": str(tmp_path / "s"), "LOCK_TIMEOUT": 5}):
        yield lockstore.django.get_store()
        forget_sites(str(tmp_path))


def test_middleware_threads_share_one_session_exactly(site: Any) -> None:
    first = Client()
    assert first.get("/incr").content == b"1"
    cookie = first.cookies[settings.SESSION_COOKIE_NAME].value
    assert "HttpOnly" in first.cookies[settings.SESSION_COOKIE_NAME].output()

    def client(_: int) -> None:
        c = Client()
        c.cookies[settings.SESSION_COOKIE_NAME] = cookie
        for _ in range(25):
            assert c.get("/incr").status_code == 200

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client, range(8)))
    assert first.get("/read").content == b"201"


def test_middleware_lock_timeout_is_503(tmp_path: Path) -> None:
    with override_settings(LOCKSTORE={"PATH": str(tmp_path / "s"), "LOCK_TIMEOUT": 0.2}):
        client = Client()
        client.get("/incr")
        sid = client.cookies[settings.SESSION_COOKIE_NAME].value
        holder = StripeLocks(tmp_path / "s" / "stripes")
        hold = holder.acquire(sid)
        assert hold is not None
        try:
            response = client.get("/incr")
            assert response.status_code == 503
        finally:
            hold.release()
        assert client.get("/incr").content == b"2"
        probe = holder.acquire(sid, blocking=False)
        assert probe is not None  # the response's close released the stripe
        probe.release()
        forget_sites(str(tmp_path))


def test_a_settings_typo_is_an_error_naming_the_closest_key(tmp_path: Path) -> None:
    typo = override_settings(LOCKSTORE={"PATH": str(tmp_path / "d"), "CLEAN_LIMT": 5})
    with typo, pytest.raises(lockstore.LockstoreError, match=r'LOCKSTORE\["CLEAN_LIMT"\].*"CLEAN_LIMIT"'):
        lockstore.django.get_store()
    assert not (tmp_path / "d").exists()
