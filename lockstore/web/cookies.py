"""The session cookie, read and written the same way by every integration that sets it itself (WSGI, ASGI).

Reading keeps only a value that is a valid session id, so a cookie never reaches the store as anything else.
"""

from __future__ import annotations

import time
from email.utils import formatdate

from ..ids import is_valid_id


def read_cookie(header: str | None, name: str) -> str | None:
    """Return the first value of cookie *name* in a ``Cookie`` header that is a valid session id."""
    if not header:
        return None
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if not sep or key.strip() != name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if is_valid_id(value):
            return value
    return None


def cookie_header(
    name: str,
    value: str,
    *,
    max_age: float | None,
    path: str = "/",
    domain: str | None = None,
    secure: bool = False,
    httponly: bool = True,
    samesite: str | None = "Lax",
) -> str:
    """Format a ``Set-Cookie`` value; ``max_age=None`` makes a browser-session cookie, 0 deletes it."""
    parts = [f"{name}={value}"]
    if max_age is not None:
        seconds = max(0, int(max_age))
        expires = formatdate(time.time() + seconds if seconds else 0, usegmt=True)
        parts += [f"Expires={expires}", f"Max-Age={seconds}"]
    if domain:
        parts.append(f"Domain={domain}")
    parts.append(f"Path={path}")
    if secure:
        parts.append("Secure")
    if httponly:
        parts.append("HttpOnly")
    if samesite:
        parts.append(f"SameSite={samesite}")
    return "; ".join(parts)


__all__ = ["cookie_header", "read_cookie"]
