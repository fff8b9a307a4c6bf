"""Session ids: generation, validation and the stable shard hash."""

from __future__ import annotations

import re
import secrets
import zlib

from .errors import InvalidSessionId

MAX_ID_LENGTH = 256
_VALID = re.compile(r"[A-Za-z0-9_.~-]{1,256}").fullmatch


def new_id() -> str:
    """A new session id: 192 random bits from :mod:`secrets`, 32 URL- and cookie-safe characters."""
    return secrets.token_urlsafe(24)


def _describe(sid: object) -> str:
    text = repr(sid)
    return text if len(text) <= 40 else text[:37] + "..."


def validate_id(sid: object) -> str:
    """Return *sid* if it is a valid session id, else raise :class:`InvalidSessionId`."""
    if type(sid) is str and _VALID(sid) and sid != "." and sid != "..":
        return sid
    if not isinstance(sid, str):
        raise InvalidSessionId(f"session id must be a str, not {type(sid).__name__}: {_describe(sid)}")
    if not sid:
        raise InvalidSessionId("session id is empty")
    if len(sid) > MAX_ID_LENGTH:
        raise InvalidSessionId(f"session id is {len(sid)} characters long, at most {MAX_ID_LENGTH}: {_describe(sid)}")
    raise InvalidSessionId(f"session id may only use A-Z a-z 0-9 _ . ~ - and not be '.' or '..': {_describe(sid)}")


def is_valid_id(sid: object) -> bool:
    """True if *sid* is a valid session id (see :func:`validate_id`)."""
    return type(sid) is str and _VALID(sid) is not None and sid != "." and sid != ".."


def shard_of(sid: str, shards: int) -> int:
    """The shard of a valid id: CRC-32 of its UTF-8 bytes modulo *shards*, the same in every process and run."""
    return zlib.crc32(sid.encode()) % shards


def describe_id(sid: str) -> str:
    """The id as messages show it: truncated to 24 characters."""
    return sid if len(sid) <= 24 else sid[:21] + "..."
