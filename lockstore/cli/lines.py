"""The JSON lines of ``lockstore export`` and ``import``: one session per line,
``{"id", "created", "last_access", "value"}``, times in seconds since the epoch.

A line read back is untrusted input: it is checked field by field, and a bad one is a
:class:`CommandError` (exit 1) naming its line number and what is wrong with it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import IO, Any

from lockstore.ids import is_valid_id

from .output import CommandError, dumps, size

FIELDS = ("id", "created", "last_access", "value")
FUTURE_SLACK = 86400.0
"""How far in the future an imported time may be (clock skew between machines), in seconds: a time
further ahead would keep a session alive for ever."""


class Unencodable(Exception):
    """A value that JSON cannot carry exactly."""


class BadLine(CommandError):
    """A line of an export that cannot be imported."""

    def __init__(self, lineno: int, message: str) -> None:
        super().__init__(f"line {lineno}: {message}", status=1)


def export_line(sid: str, created: float, last_access: float, value: Any) -> str:
    """One line of ``lockstore export``: a JSON object with the session's id, times and value.

    Raises :class:`Unencodable` for a value JSON would not read back equal (bytes, sets, tuples, keys that
    are not strings, NaN...)."""
    doc = {"id": sid, "created": created, "last_access": last_access, "value": value}
    try:
        text = dumps(doc, exact=True)
    except (TypeError, ValueError, RecursionError) as exc:
        raise Unencodable(str(exc)) from None
    if json.loads(text)["value"] != value:
        raise Unencodable("JSON would not read it back the same (a tuple, or a key that is not a string)")
    return text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_line(raw: bytes, lineno: int, now: float) -> tuple[str, float, float, Any] | None:
    """(id, created, last access, value) of one line of an export, checked like untrusted input; None for
    a blank line; :class:`BadLine` naming the line and what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadLine(lineno, f"not UTF-8 (byte {exc.start + 1})") from None
    if not text.strip():
        return None
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise BadLine(lineno, f"not JSON: {exc.msg} (column {exc.colno})") from None
    except ValueError as exc:  # an int too long, NaN, Infinity
        raise BadLine(lineno, f"not JSON: {exc}") from None
    except RecursionError:
        raise BadLine(lineno, "not JSON: nested too deeply") from None
    if type(doc) is not dict:
        raise BadLine(lineno, f"a JSON {type(doc).__name__}, not an object with {', '.join(FIELDS)}")
    for name in FIELDS:
        if name not in doc:
            raise BadLine(lineno, f"no {name!r}")
    for name in doc:
        if name not in FIELDS:
            raise BadLine(lineno, f"unknown field {name[:40]!r} (expected {', '.join(FIELDS)})")
    sid = doc["id"]
    if not is_valid_id(sid):
        shown = repr(sid[:40]) if isinstance(sid, str) else f"a JSON {type(sid).__name__}"
        raise BadLine(lineno, f"'id' is not a valid session id: {shown}")
    times = []
    for name in ("created", "last_access"):
        value = doc[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadLine(lineno, f"{name!r} is not a number of seconds: {type(value).__name__}")
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if not math.isfinite(seconds) or seconds < 0:
            raise BadLine(lineno, f"{name!r} is not a finite number of seconds >= 0: {str(value)[:40]}")
        if seconds > now + FUTURE_SLACK:
            raise BadLine(lineno, f"{name!r} is more than a day in the future: {str(value)[:40]}")
        times.append(seconds)
    return sid, times[0], times[1], doc["value"]


def read_lines(f: IO[bytes], limit: int, now: float) -> Iterator[tuple[int, bytes, tuple[str, float, float, Any]]]:
    """(line number, raw line, parsed line) of every line of *f* that is not blank; each at most *limit*
    bytes (a longer one is a :class:`BadLine`)."""
    lineno = 0
    while True:
        raw = f.readline(limit + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > limit:
            raise BadLine(lineno, f"longer than {size(limit)}")
        parsed = parse_line(raw, lineno, now)
        if parsed is not None:
            yield lineno, raw, parsed


__all__ = ["FIELDS", "FUTURE_SLACK", "BadLine", "Unencodable", "export_line", "parse_line", "read_lines"]
