"""The recorded settings of a server store (the *metadata*: the ``PREFIX:meta`` hash in Redis, the
``lockstore_meta`` rows of a table in PostgreSQL), which are text written by whoever can write to the
server, so none of it is trusted:

- every field is checked against a fixed name, type and range (:func:`parse_meta`); a bad one raises
  :class:`StoreMismatch` naming the field and its value, and nothing is written;
- the codec is never chosen by the server alone: a new store defaults to ``"json"``, and a store that
  records unsigned ``"pickle"`` opens only when the application passes ``codec="pickle"`` itself
  (:class:`UnsafeStore` otherwise): whoever can write to the server could otherwise make every process
  unpickle what they planted. Signed pickle (``secret=``) opens as recorded: a record whose signature
  fails is never decoded.
- a store created since metadata format 2 records a random ``store_id``, bound with the backend and the
  prefix or table into every record's signature (:class:`~lockstore.codec.Codec` ``scope``), so a signed
  record copied into another store that shares the secret does not verify there;
- ``max_age``, ``clean_interval`` and ``clean_limit``, which decide what a sweep deletes, are recorded at
  creation; an option left out (None) takes the recorded value, an explicit different value raises
  :class:`StoreMismatch`, so no process sweeps by a rule other than the store's.

Stores created before format 2 (format 1: no ``store_id``, no sweep settings) still open, with an empty
scope so their signed records still verify; nothing new is recorded for them except, once, the sweep
settings: opening one without ``max_age=`` raises :class:`StoreMismatch` asking for it, and the value then
given is recorded for every process.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Iterable
from typing import Any, NamedTuple

from .._files import MAX_CLEAN_LIMIT, MAX_SECONDS, RULES
from ..errors import StoreMismatch, UnsafeStore
from ..options import Options

FORMAT = 2
"""Metadata format written for new stores; 1 (no store id, no sweep settings) still opens."""
CODECS = ("pickle", "json", "msgpack")
DEFAULT_CODEC = "json"
STORE_ID_LENGTH = 32
_FIELDS = ("format", "codec", "signed", "store_id", *RULES)
_FORMAT_OK = re.compile(r"[0-9]{1,4}").fullmatch
_FLOAT_OK = re.compile(r"[0-9]{1,20}(\.[0-9]{1,20})?(e[+-]?[0-9]{1,3})?").fullmatch  # what repr(float) writes
_INT_OK = re.compile(r"[0-9]{1,10}").fullmatch
_STORE_ID_OK = re.compile(f"[0-9a-f]{{{STORE_ID_LENGTH}}}").fullmatch

Pairs = Iterable[tuple[bytes | str, bytes | str]]


class Settings(NamedTuple):
    """A remote store's settings: as recorded, resolved against the options it was opened with."""

    format: int
    codec: str
    signed: bool
    store_id: str | None
    max_age: float
    clean_interval: float
    clean_limit: int


def creation_fields(options: Options) -> dict[str, str]:
    """The metadata of a new store opened with *options*."""
    return {
        "format": str(FORMAT),
        "codec": options.codec or DEFAULT_CODEC,
        "signed": "1" if options.secret is not None else "0",
        "store_id": secrets.token_hex(STORE_ID_LENGTH // 2),
        **{name: str(value) for name, value in options.rules_to_record({}).items()},
    }


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_meta(pairs: Pairs, where: str) -> dict[str, Any]:
    """The recorded settings of a store, every field checked; raises :class:`StoreMismatch` naming the
    first bad field and its value. Fields left out are absent from the result."""
    text: dict[str, str] = {}
    for raw_name, raw_value in pairs:
        try:
            name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
        except UnicodeDecodeError:
            raise StoreMismatch(f"{where}: metadata holds a field whose name is not UTF-8: {_show(raw_name)}") from None
        try:
            value = raw_value.decode() if isinstance(raw_value, bytes) else raw_value
        except UnicodeDecodeError:
            raise StoreMismatch(f"{where}: metadata field {_show(name)} is not UTF-8: {_show(raw_value)}") from None
        text[name] = value

    def bad(name: str, expected: str) -> StoreMismatch:
        return StoreMismatch(f"{where}: metadata field {name!r} is {_show(text[name])}, expected {expected}")

    if "format" not in text:
        raise StoreMismatch(f"{where}: metadata has no 'format' field (fields: {_show(sorted(text))})")
    if not _FORMAT_OK(text["format"]) or int(text["format"]) < 1:
        raise bad("format", f"a format number from 1 to {FORMAT}")
    fmt = int(text["format"])
    if fmt > FORMAT:
        raise StoreMismatch(
            f"{where} has metadata format {fmt}, newer than this lockstore reads ({FORMAT}): upgrade lockstore"
        )
    unknown = sorted(set(text) - set(_FIELDS))
    if unknown:
        raise StoreMismatch(f"{where}: metadata has an unknown field {_show(unknown[0])} = {_show(text[unknown[0]])}")
    required = _FIELDS if fmt >= 2 else ("format", "codec", "signed")
    for name in required:
        if name not in text:
            raise StoreMismatch(f"{where}: metadata format {fmt} lacks its {name!r} field")
    meta: dict[str, Any] = {"format": fmt}
    if text["codec"] not in CODECS:
        raise bad("codec", "one of " + ", ".join(map(repr, CODECS)))
    meta["codec"] = text["codec"]
    if text["signed"] not in ("0", "1"):
        raise bad("signed", "'0' or '1'")
    meta["signed"] = text["signed"] == "1"
    if "store_id" in text:
        if fmt < 2:
            raise StoreMismatch(f"{where}: metadata format {fmt} has a 'store_id' field, which it never records")
        if not _STORE_ID_OK(text["store_id"]):
            raise bad("store_id", f"{STORE_ID_LENGTH} lowercase hex digits")
        meta["store_id"] = text["store_id"]
    for name, zero in (("max_age", False), ("clean_interval", True)):
        if name in text:
            number = float(text[name]) if _FLOAT_OK(text[name]) else math.nan  # no nan, inf, 1_0, " 1"
            if not (math.isfinite(number) and (number >= 0 if zero else number > 0) and number <= MAX_SECONDS):
                raise bad(name, f"a number of seconds {'>= 0' if zero else '> 0'}, at most {MAX_SECONDS:g}")
            meta[name] = number
    if "clean_limit" in text:
        if not _INT_OK(text["clean_limit"]) or not 1 <= int(text["clean_limit"]) <= MAX_CLEAN_LIMIT:
            raise bad("clean_limit", f"an int from 1 to {MAX_CLEAN_LIMIT}")
        meta["clean_limit"] = int(text["clean_limit"])
    return meta


def resolve(meta: dict[str, Any], where: str, options: Options) -> tuple[Settings | None, dict[str, str]]:
    """Resolve the *options* a store is opened with against its checked metadata.

    Returns (settings, {}) when the store can open, or (None, fields) when a store created before format 2
    lacks sweep settings that these options supply: the caller records *fields* where absent (atomically:
    another process may record its own first), reads the metadata back and resolves again.

    Raises
    ------
    StoreMismatch
        The store was created with(out) a secret, or another codec, or records another value of an
        option given explicitly; or it records no ``max_age`` and none was given.
    UnsafeStore
        The store records unsigned pickle and the application did not pass ``codec="pickle"``.
    """
    codec, signed = options.codec, options.secret is not None
    if meta["signed"] != signed:
        raise StoreMismatch(
            f"{where} was created {'with' if meta['signed'] else 'without'} a secret; "
            f"open it {'with its secret=' if meta['signed'] else 'without secret='}"
        )
    if codec is not None and meta["codec"] != codec:
        raise StoreMismatch(
            f"{where} was created with codec={meta['codec']!r}; opened with codec={codec!r} "
            "(open it without codec= to use the recorded one, or move it with `lockstore copy`)"
        )
    if codec is None and meta["codec"] == "pickle" and not meta["signed"]:
        raise UnsafeStore(
            f"{where} records codec 'pickle' without a secret: lockstore never unpickles because a server says so "
            "(anyone who can write to it could run code here). If this store is yours, pass codec='pickle' "
            "explicitly; better, copy it to a json store with `lockstore copy`, or use signed records (secret=)"
        )
    for name, value in options.rules().items():
        if value is not None and name in meta and meta[name] != value:
            raise StoreMismatch(
                f"{where} records {name}={meta[name]!r}; opened with {name}={value!r}. Every process must sweep "
                f"by the store's rule: open it without {name}= to use the recorded value"
            )
    if "max_age" not in meta and options.max_age is None:
        raise StoreMismatch(
            f"{where} was created before lockstore recorded max_age: open it once with max_age= (the value its "
            "applications use, in seconds) to record it; every process then uses the recorded value"
        )
    missing = [name for name in RULES if name not in meta]
    if missing:
        wanted = options.rules_to_record({})
        return None, {name: str(wanted[name]) for name in missing}
    return Settings(*(meta.get(name) for name in _FIELDS)), {}  # type: ignore[arg-type]  # checked by parse_meta


__all__ = ["CODECS", "DEFAULT_CODEC", "FORMAT", "Pairs", "Settings", "creation_fields", "parse_meta", "resolve"]
