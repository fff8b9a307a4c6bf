"""Django views on lockstore's session engine, kept type-checked by ``mypy --strict`` (tests/test_django_typing.py).

Django ships no type information (and django-stubs is not a dependency), so mypy sees Django's names as
``Any`` (``ignore_missing_imports``). Strict mode then checks this file's own annotations (no untyped
function, no ``Any`` returned where a type is declared) and every call into lockstore (the session engine's
methods, ``get_store()``, ``BaseStore``), not Django's own signatures.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

import lockstore
from lockstore.django import SessionLockMiddleware, SessionStore, get_store

MIDDLEWARE = [
    f"{SessionLockMiddleware.__module__}.{SessionLockMiddleware.__qualname__}",
    "django.contrib.sessions.middleware.SessionMiddleware",
]


def count(value: object) -> int:
    """A counter read back from a session: whatever is stored, an int comes out."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def visit(request: HttpRequest) -> HttpResponse:
    session: SessionStore = request.session
    visits = count(session.get("visits")) + 1
    session["visits"] = visits
    return HttpResponse(str(visits))


async def avisit(request: HttpRequest) -> HttpResponse:
    session: SessionStore = request.session
    visits = count(await session.aget("visits")) + 1
    await session.aset("visits", visits)
    return HttpResponse(str(visits))


async def alogout(request: HttpRequest) -> HttpResponse:
    session: SessionStore = request.session
    await session.aflush()
    return HttpResponse(status=204)


def who(request: HttpRequest) -> HttpResponse:
    session: SessionStore = request.session
    data: dict[str, object] = session.load()
    known: bool = session.exists(session.session_key)
    return HttpResponse(f"{sorted(data)} {known}")


def reset(request: HttpRequest, sid: str) -> HttpResponse:
    """An admin view: reset another user's session in place, atomically."""
    if not lockstore.is_valid_id(sid):
        return HttpResponse(status=404)
    store: lockstore.BaseStore = get_store()
    try:
        with store.edit(sid, create=False) as record:
            record["data"] = {}
    except KeyError:
        return HttpResponse(status=404)
    return HttpResponse(status=204)
