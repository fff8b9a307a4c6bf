"""A Django session engine on a lockstore store: ``SESSION_ENGINE = "lockstore.django"``.

Settings (the README's "Django" section tells the whole story: codec, async, expiry, the request lock)::

    SESSION_ENGINE = "lockstore.django"
    LOCKSTORE = {"PATH": BASE_DIR / "sessions"}      # and any lockstore.open option, upper case; an unknown key
                                                     # raises a LockstoreError naming it, at start-up
    MIDDLEWARE = [
        "lockstore.django.SessionLockMiddleware",    # optional: the request-long session lock, and the 503
        "django.contrib.sessions.middleware.SessionMiddleware",
        ...
    ]

:class:`SessionStore` follows Django's ``SessionBase`` contract and its ``a``-prefixed async twins; its ``save()``
writes only the keys this request changed, onto the record as stored now (:meth:`lockstore.Store.edit`), and never
resurrects a session deleted meanwhile (``UpdateError``). A new store's codec follows ``SESSION_SERIALIZER``
(:func:`serializer_codec`). As in Django's ``SessionMiddleware``, a response of status 500 or more saves nothing.
Django is imported only when this module is, never by ``import lockstore``.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from functools import cached_property
from importlib import import_module
from typing import TYPE_CHECKING, Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.contrib.sessions.backends.base import CreateError, SessionBase, UpdateError
from django.core import signing
from django.http import HttpResponse
from django.utils.module_loading import import_string

import lockstore

from .options import options_from_settings
from .web.changes import changes, merge, snapshot
from .web.requestlock import BUSY_BODY, BUSY_HEADERS, RequestScope, current_scope, watch
from .web.session import Site, call, choose_codec, open_site, read

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from django.http import HttpRequest

    from .web.requestlock import RequestHold

_CODEC = "LOCKSTORE['CODEC']"
_OWN = {"PATH": "path", "REQUEST_LOCK": "request_lock", "LOCK_DIR": "lock_dir", "LOCK_TIMEOUT": "lock_timeout"}


_opened: dict[str, Site] = {}
_opening = threading.Lock()


def _config() -> dict[str, Any]:
    config = dict(getattr(settings, "LOCKSTORE", None) or {})
    if "PATH" not in config:
        msg = 'set LOCKSTORE = {"PATH": "/a/private/directory"} in the Django settings'
        raise lockstore.LockstoreError(msg)
    return config


def _same_as(serializer: object, model: type) -> bool:
    return serializer is model or (
        isinstance(serializer, type)
        and issubclass(serializer, model)
        and getattr(serializer, "dumps", None) is getattr(model, "dumps", None)
        and getattr(serializer, "loads", None) is getattr(model, "loads", None)
    )


def _pickles(serializer: Any) -> bool:
    """Whether *serializer* writes pickles (Django 4.2's ``PickleSerializer`` or a copy of it)."""
    probe = {"lockstore": [1, "probe"]}
    try:
        data = serializer().dumps(probe)
        return isinstance(data, bytes) and data[:1] == b"\x80" and pickle.loads(data) == probe
    except Exception:  # not a serializer we can run: not a pickle one
        return False


def serializer_codec() -> str:
    """The codec ``SESSION_SERIALIZER`` asks for: ``"json"`` or ``"pickle"``.

    Raises
    ------
    lockstore.LockstoreError
        The serializer cannot be imported, or is neither Django's ``JSONSerializer`` nor a pickle one.
    """
    name = settings.SESSION_SERIALIZER
    where = f"SESSION_SERIALIZER = {name!r}"
    try:
        serializer = import_string(name)
    except ImportError as exc:
        msg = f"{where} cannot be imported: {exc}"
        raise lockstore.LockstoreError(msg) from None
    if _same_as(serializer, signing.JSONSerializer):
        return "json"
    # Django 4.2 has PickleSerializer, Django 5 removed it; any serializer writing pickles counts too
    legacy = getattr(import_module("django.contrib.sessions.serializers"), "PickleSerializer", None)
    if (legacy is not None and _same_as(serializer, legacy)) or _pickles(serializer):
        return "pickle"
    msg = (
        f"{where} is not supported by lockstore.django: a store keeps sessions as JSON "
        "(django.core.signing.JSONSerializer, Django's default) or as pickles (a pickle serializer); "
        'choose one of those, or set LOCKSTORE["CODEC"] ("json", "msgpack" or "pickle")'
    )
    raise lockstore.LockstoreError(msg)


def _options(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The :func:`lockstore.open` options and this module's own ones that *config* gives (the codec as documented)."""
    options, own = options_from_settings(config, _OWN, 'LOCKSTORE["{}"]')
    options.setdefault("max_age", settings.SESSION_COOKIE_AGE)
    if "codec" not in options:
        wanted, insist = serializer_codec(), settings.is_overridden("SESSION_SERIALIZER")
        choose_codec(config["PATH"], options, wanted, asked_by="SESSION_SERIALIZER", option=_CODEC, insist=insist)
    return options, own


def check_settings() -> None:
    """Check ``LOCKSTORE`` and ``SESSION_SERIALIZER`` without opening the store.

    Raises
    ------
    lockstore.LockstoreError
        A key is missing or unknown, or the serializer cannot be followed.
    """
    _options(_config())


def get_store() -> lockstore.BaseStore:
    """The store the ``LOCKSTORE`` setting describes, opened once per process."""
    return _open().store


def _open() -> Site:
    config = _config()
    key = repr(sorted(config.items()))
    with _opening:
        site = _opened.get(key)
        if site is None:
            options, own = _options(config)
            own.pop("path", None)
            site = _opened[key] = open_site(config["PATH"], options, **own)
    return site


class SessionStore(SessionBase):  # type: ignore[misc,unused-ignore]  # Django: no type information (Any)
    """Django's session interface over the ``LOCKSTORE`` store.

    Records are ``{"data": <the session dict>, "expires": <unix time>}``.

    Notes
    -----
    One instance serves one request, as with every Django engine; the store under it is shared by the threads and
    processes of the site.
    """

    _session_key: str | None  # a validating property of SessionBase

    def __init__(self, session_key: str | None = None) -> None:
        self._snapshot: dict[str, bytes | None] | None = None
        super().__init__(session_key)

    @cached_property
    def _site(self) -> Site:
        return _open()

    @property
    def store(self) -> lockstore.BaseStore:
        """The store sessions live in."""
        return self._site.store

    def _validate_session_key(self, key: str | None) -> bool:
        # A forged, over-long or path-like cookie becomes "no session" before any lookup.
        return bool(key) and len(key or "") >= 8 and lockstore.is_valid_id(key)

    def _get_new_session_key(self) -> str:
        while True:
            key = lockstore.new_id()
            if not self.exists(key):
                return key

    async def _aget_new_session_key(self) -> str:
        while True:
            key = lockstore.new_id()
            if not await self.aexists(key):
                return key

    def _hold(self) -> RequestHold | None:
        """This request's hold; None outside the middleware or with ``REQUEST_LOCK`` off."""
        scope, site = current_scope(), self._site
        return None if scope is None or site.locks is None else scope.hold(site.locks, site.gates)

    def load(self) -> dict[str, Any]:
        """Read the session; an absent, expired or unreadable one reads as empty with no key."""
        key = self.session_key
        if key is None:
            return {}
        with watch:
            hold = self._hold()
            if hold is not None:
                hold.lock(key)
            return self._read(key)

    async def aload(self) -> dict[str, Any]:
        """:meth:`load` for async code."""
        key = self.session_key
        if key is None:
            return {}
        with watch:
            hold = self._hold()
            if hold is not None:
                await hold.alock(key)
            return await call(self.store, self._read, key)

    def _read(self, key: str) -> dict[str, Any]:
        record = read(self.store, key)
        whole = isinstance(record, dict) and isinstance(record.get("data"), dict)
        if not whole or record.get("expires", 0) <= time.time():
            if whole:
                self.store.pop(key, None)  # past Django's expiry
            self._session_key = None
            return {}
        data: dict[str, Any] = record["data"]
        self._snapshot = snapshot(data)
        return data

    def exists(self, session_key: str | None) -> bool:
        """True if a live session has this key."""
        with watch:
            return lockstore.is_valid_id(session_key) and session_key in self.store

    async def aexists(self, session_key: str | None) -> bool:
        """:meth:`exists` for async code."""
        return await call(self.store, self.exists, session_key)

    def create(self) -> None:
        """Save an empty session under a new unique key."""
        while True:
            self._session_key = self._get_new_session_key()
            try:
                self.save(must_create=True)
            except CreateError:
                continue
            self.modified = True
            return

    async def acreate(self) -> None:
        """:meth:`create` for async code."""
        while True:
            self._session_key = await self._aget_new_session_key()
            try:
                await self.asave(must_create=True)
            except CreateError:
                continue
            self.modified = True
            return

    def save(self, must_create: bool = False) -> None:
        """Write the session: the keys this request changed, or all of it when *must_create*.

        Raises
        ------
        CreateError
            *must_create* and the key exists.
        UpdateError
            Not *must_create* and the session no longer exists (deleted or expired meanwhile): it is not resurrected.
        lockstore.EncodeError
            A value the store's codec cannot encode (with ``"json"``, as with Django's ``JSONSerializer``: a
            ``datetime``, a ``set``...); it is a ``TypeError``, as Django's own engines raise.  Nothing is written.
        """
        if self.session_key is None:
            self.create()
            return
        data = self._get_session(no_load=must_create)
        with watch:
            self._write(self.session_key, data, must_create=must_create)

    async def asave(self, must_create: bool = False) -> None:
        """:meth:`save` for async code."""
        if self.session_key is None:
            await self.acreate()
            return
        data = await self._aget_session(no_load=must_create)
        with watch:
            await call(self.store, self._write, self.session_key, data, must_create=must_create)

    def _write(self, key: str, data: dict[str, Any], *, must_create: bool) -> None:
        expires = time.time() + self.get_expiry_age(expiry=data.get("_session_expiry"))
        before = self._snapshot
        try:
            with self.store.edit(key, create=must_create) as record:
                if must_create and record:
                    raise CreateError
                stored = record.get("data")
                if must_create or before is None or not isinstance(stored, dict):
                    stored = dict(data)  # a new session, or one never loaded (e.g. after clear()): all of it
                else:
                    merge(stored, *changes(before, data))
                record["data"] = stored
                record["expires"] = expires
        except KeyError:
            raise UpdateError from None
        self._snapshot = snapshot(data)

    def delete(self, session_key: str | None = None) -> None:
        """Delete the session under *session_key* (default: this one)."""
        key = self.session_key if session_key is None else session_key
        if lockstore.is_valid_id(key):
            with watch:
                self.store.pop(key, None)

    async def adelete(self, session_key: str | None = None) -> None:
        """:meth:`delete` for async code."""
        await call(self.store, self.delete, session_key)

    @classmethod
    def clear_expired(cls) -> None:
        """Remove sessions past Django's expiry and those idle past the store's ``max_age``."""
        store = get_store()
        now = time.time()
        for sid, record in list(store.records()):
            value = record.value
            if not isinstance(value, dict) or value.get("expires", 0) <= now:
                store.pop(sid, None)
        store.clean()

    @classmethod
    async def aclear_expired(cls) -> None:
        """:meth:`clear_expired` for async code, in a thread: it reads the whole store."""
        await asyncio.to_thread(cls.clear_expired)


def _busy_response() -> HttpResponse:
    return HttpResponse(BUSY_BODY, status=503, headers=dict(BUSY_HEADERS))


class SessionLockMiddleware:
    """Hold each session's lock stripe from its first access until the response is closed.

    Put it before ``django.contrib.sessions.middleware.SessionMiddleware`` in ``MIDDLEWARE``.  Without it (or with
    ``LOCKSTORE["REQUEST_LOCK"] = False``) only the save is atomic.  A session lock not obtained within the store's
    timeout (or ``LOCKSTORE["LOCK_TIMEOUT"]``) answers 503 with ``Retry-After: 1`` and a generic body, wherever below
    this middleware the wait ran out (the view, ``SessionMiddleware``, another middleware).  Under ASGI it runs as async
    middleware, its lock waits never blocking the loop.

    Raises
    ------
    lockstore.LockstoreError
        At start-up (when Django loads the middleware): the ``LOCKSTORE`` or ``SESSION_SERIALIZER`` setting is wrong.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        check_settings()
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self._async:
            return self.__acall__(request)
        with RequestScope().active() as scope:
            response = self.get_response(request)
        return self._finish(scope, response)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        with RequestScope().active() as scope:
            response = await self.get_response(request)
        return self._finish(scope, response)

    @staticmethod
    def _finish(scope: RequestScope, response: HttpResponse) -> HttpResponse:
        if scope.busy and response.status_code == 500:
            # a lock wait ran out below us and Django made a 500 of it (a debug page may show a path)
            response = _busy_response()
        response._resource_closers.append(scope.release)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """Answer 503 when a view could not get its session's lock (or a shard lock) in time."""
        if isinstance(exception, lockstore.LockTimeout):
            return _busy_response()
        return None


__all__ = ["SessionLockMiddleware", "SessionStore", "check_settings", "get_store", "serializer_codec"]
