"""What the Redis and PostgreSQL stores share: their recorded settings, the rules that resolve them against
the options an application passes, the redaction of credentials, and reads built on fetching one whole
record by id.

Recorded settings (the *metadata*: the ``PREFIX:meta`` hash in Redis, the ``lockstore_meta`` rows of a
table in PostgreSQL) are text written by whoever can write to the server, so none of it is trusted:

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

Credentials never appear in ``repr()``, ``stats()["path"]`` or any message: the password of a URL's
userinfo is shown as ``***`` (the user name is kept), and so is every query parameter or conninfo keyword
whose name contains ``pass``, ``secret``, ``token`` or ``key`` (any case: ``password``, ``sslpassword``,
``sslkey``, ``auth_token``...). Texts of the client libraries' errors have those values scrubbed too.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
from abc import abstractmethod
from collections.abc import Iterable
from typing import Any, NamedTuple
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

from .. import record as fmt
from ..base import BaseStore
from ..codec import Codec, Record
from ..errors import StoreMismatch, UnsafeStore
from ..ids import describe_id, validate_id
from ..options import check_numbers
from ..record import HEADER_SIZE

logger = logging.getLogger(__name__)

FORMAT = 2
"""Metadata format written for new stores; 1 (no store id, no sweep settings) still opens."""
CODECS = ("pickle", "json", "msgpack")
DEFAULT_CODEC = "json"
DEFAULT_MAX_AGE = 1800.0
DEFAULT_CLEAN_INTERVAL = 300.0
DEFAULT_CLEAN_LIMIT = 1000
MAX_SECONDS = 10 * 366 * 86400.0
"""The largest ``max_age`` / ``clean_interval`` accepted or read back: ten years."""
MAX_CLEAN_LIMIT = 10**9
STORE_ID_LENGTH = 32
_FIELDS = ("format", "codec", "signed", "store_id", "max_age", "clean_interval", "clean_limit")
_SWEEP = ("max_age", "clean_interval", "clean_limit")
_FORMAT_OK = re.compile(r"[0-9]{1,4}").fullmatch
_FLOAT_OK = re.compile(r"[0-9]{1,20}(\.[0-9]{1,20})?(e[+-]?[0-9]{1,3})?").fullmatch  # what repr(float) writes
_INT_OK = re.compile(r"[0-9]{1,10}").fullmatch
_STORE_ID_OK = re.compile(f"[0-9a-f]{{{STORE_ID_LENGTH}}}").fullmatch
_SECRET_NAME = re.compile(r"pass|secret|token|key", re.IGNORECASE).search


class Settings(NamedTuple):
    """A remote store's settings: as recorded, resolved against the options it was opened with."""

    format: int
    codec: str
    signed: bool
    store_id: str | None
    max_age: float
    clean_interval: float
    clean_limit: int


# -- options ------------------------------------------------------------------------------------------


def _seconds(name: str, value: object, *, zero: bool) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not (value >= 0 if zero else value > 0)
        or value > MAX_SECONDS
    ):
        low = ">= 0" if zero else "> 0"
        raise ValueError(f"{name} must be a finite number of seconds {low}, at most {MAX_SECONDS:g}, not {value!r}")
    return float(value)


def check_options(
    *,
    codec: str | None,
    touch_interval: float,
    secret: bytes | str | None,
    max_value_size: int,
    max_age: float | None,
    clean_interval: float | None,
    clean_limit: int | None,
    timeout: float,
    connect_timeout: float,
    lock_ttl: float,
    pool_size: int,
) -> None:
    """Check every option of a remote store before anything is sent to the server: a rejected option
    must never leave a half-created store behind (a store recorded as signed that nobody can open).

    Raises
    ------
    ValueError, TypeError
        A number out of range, a secret of the wrong type or too short.
    StoreMismatch
        An unknown codec, or msgpack without its package.
    """
    check_numbers(
        DEFAULT_MAX_AGE if max_age is None else max_age,
        DEFAULT_CLEAN_INTERVAL if clean_interval is None else clean_interval,
        touch_interval,
        timeout,
        max_value_size,
        DEFAULT_CLEAN_LIMIT if clean_limit is None else clean_limit,
        None,
    )
    for name, number in (("timeout", timeout), ("connect_timeout", connect_timeout), ("lock_ttl", lock_ttl)):
        _seconds(name, number, zero=name == "timeout")
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise ValueError(f"pool_size must be a positive int, not {pool_size!r}")
    if max_age is not None:
        _seconds("max_age", max_age, zero=False)
    if clean_interval is not None:
        _seconds("clean_interval", clean_interval, zero=True)
    if clean_limit is not None and (
        isinstance(clean_limit, bool) or not isinstance(clean_limit, int) or not 1 <= clean_limit <= MAX_CLEAN_LIMIT
    ):
        raise ValueError(f"clean_limit must be an int from 1 to {MAX_CLEAN_LIMIT}, not {clean_limit!r}")
    # The codec as it will be built, without a scope: checks the codec's name (and package) and the
    # secret's type and length.
    Codec(codec or DEFAULT_CODEC, secret, max_value_size)


def creation_fields(
    codec: str | None, signed: bool, max_age: float | None, clean_interval: float | None, clean_limit: int | None
) -> dict[str, str]:
    """The metadata of a new store opened with these (already checked) options."""
    return {
        "format": str(FORMAT),
        "codec": codec or DEFAULT_CODEC,
        "signed": "1" if signed else "0",
        "store_id": secrets.token_hex(STORE_ID_LENGTH // 2),
        **_sweep_fields(max_age, clean_interval, clean_limit),
    }


def _sweep_fields(max_age: float | None, clean_interval: float | None, clean_limit: int | None) -> dict[str, str]:
    return {
        "max_age": repr(float(DEFAULT_MAX_AGE if max_age is None else max_age)),
        "clean_interval": repr(float(DEFAULT_CLEAN_INTERVAL if clean_interval is None else clean_interval)),
        "clean_limit": str(DEFAULT_CLEAN_LIMIT if clean_limit is None else clean_limit),
    }


# -- recorded settings --------------------------------------------------------------------------------


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_meta(pairs: Iterable[tuple[bytes | str, bytes | str]], where: str) -> dict[str, Any]:
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


def resolve(
    meta: dict[str, Any],
    where: str,
    *,
    codec: str | None,
    signed: bool,
    max_age: float | None,
    clean_interval: float | None,
    clean_limit: int | None,
) -> tuple[Settings | None, dict[str, str]]:
    """Resolve the options a store is opened with against its checked metadata.

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
    given: dict[str, float | int | None] = {
        "max_age": max_age,
        "clean_interval": clean_interval,
        "clean_limit": clean_limit,
    }
    for name, value in given.items():
        if value is not None and name in meta and meta[name] != value:
            raise StoreMismatch(
                f"{where} records {name}={meta[name]!r}; opened with {name}={value!r}. Every process must sweep "
                f"by the store's rule: open it without {name}= to use the recorded value"
            )
    if "max_age" not in meta and max_age is None:
        raise StoreMismatch(
            f"{where} was created before lockstore recorded max_age: open it once with max_age= (the value its "
            "applications use, in seconds) to record it; every process then uses the recorded value"
        )
    missing = [name for name in _SWEEP if name not in meta]
    if missing:
        wanted = _sweep_fields(max_age, clean_interval, clean_limit)
        return None, {name: wanted[name] for name in missing}
    return (
        Settings(
            meta["format"],
            meta["codec"],
            meta["signed"],
            meta.get("store_id"),
            meta["max_age"],
            meta["clean_interval"],
            meta["clean_limit"],
        ),
        {},
    )


def make_codec(
    backend: str, name: str, settings: Settings, secret: bytes | str | None, max_value_size: int, path: str
) -> Codec:
    """The store's codec, its signatures bound to the store's identity (empty for a format 1 store)."""
    scope = b"" if settings.store_id is None else f"{backend}\0{name}\0{settings.store_id}".encode()
    codec = Codec(settings.codec, secret, max_value_size, scope=scope)
    if codec.name == "pickle" and not codec.signed:
        # Unpickling runs code: whoever can write to the server could run code here.
        logger.warning(
            "store at %s uses pickle without a secret: anyone who can write to this %s server can run code in "
            "this process; pass secret= (signed records) or move to codec='json' with `lockstore copy`",
            path,
            backend,
        )
    return codec


# -- credentials ---------------------------------------------------------------------------------------


def is_secret_name(name: str) -> bool:
    """True for a URL query parameter or conninfo keyword whose value is redacted (see the module docs)."""
    return _SECRET_NAME(name) is not None


def _forms(value: str) -> list[str]:
    """*value* as a URL carries it and as a client decodes it."""
    return [v for v in {value, unquote(value), unquote_plus(value)} if v]


def redact_url(url: str) -> tuple[str, list[str]]:
    """(url with its credentials replaced by ``***``, the secret values found, in every form)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"{url.partition(':')[0][:10]}://?", [url]
    found: list[str] = []
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if colon:
            found += _forms(password)
            netloc = f"{user}:***@{hostport}"
    query = []
    for piece in parts.query.split("&") if parts.query else []:
        name, eq, value = piece.partition("=")
        if is_secret_name(unquote_plus(name)):
            found += _forms(value)
            piece = f"{name}=***" if eq else piece
        query.append(piece)
    fragment = parts.fragment
    if fragment:  # a '#' in an unquoted password starts the fragment: the rest of the password is here
        found += _forms(fragment)
        fragment = "***"
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(query), fragment)), found


def scrub(text: str, values: Iterable[str]) -> str:
    """*text* with every secret value replaced by ``***`` (a client's error message may echo one)."""
    for value in sorted(set(values), key=len, reverse=True):
        if value:
            text = text.replace(value, "***")
    return text


# -- reads --------------------------------------------------------------------------------------------


class RemoteEdit:
    """``edit()`` of a server store, written once: the session is read under its lock, decoded and yielded as
    a dict; on a clean exit it is written if it changed (or its touch is due), else the lock is just given
    back. A server gives two primitives: :meth:`_begin` (take the session's lock, return its record) and
    :meth:`_end` (write *rec* and let go, or with None only let go)."""

    def __init__(self, store: RemoteStore, sid: str, create: bool) -> None:
        self._store = store
        self._sid = validate_id(sid)
        self._create = create

    def _begin(self) -> bytes | None:
        """Take the session's lock; its stored record (live or not) or None."""
        raise NotImplementedError

    def _end(self, rec: bytes | None, now: float) -> None:
        """Write *rec* (at time *now*) and give the lock back, or with None only give it back."""
        raise NotImplementedError

    def __enter__(self) -> dict[str, Any]:
        store = self._store
        sid = self._sid
        rec = self._begin()
        try:
            now = store.clock()
            value: dict[str, Any] = {}
            self._old: bytes | None = None
            self._created = now
            self._atime = -math.inf
            if not fmt.is_live(rec, now, store.max_age):
                if not self._create:
                    raise KeyError(sid)
            else:
                assert rec is not None
                self._atime, self._created = fmt.times(rec)
                body = store._codec.body(sid.encode(), rec)
                decoded = store._codec.loads(body, sid.encode())
                if not isinstance(decoded, dict):
                    raise TypeError(f"edit() needs a dict session; {describe_id(sid)} holds a {type(decoded).__name__}")
                value = decoded
                self._old = bytes(body)
            self._value = value
            return value
        except BaseException:
            self._end(None, 0.0)
            raise

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._end(None, 0.0)
            return
        store = self._store
        try:
            rec = None
            now = store.clock()
            if self._old is not None or self._value:  # just in time: an absent session left empty is not created
                payload = store._codec.encode(self._value)
                if payload != self._old or now - self._atime >= store.touch_interval:
                    rec = store._codec.record(self._sid.encode(), payload, now, self._created)
        except BaseException:
            self._end(None, 0.0)
            raise
        self._end(rec, now)


class RemoteStore(BaseStore):
    """A :class:`BaseStore` whose subclass fetches a record (:meth:`_get`) and rewrites only its last-access
    time (:meth:`_touch_record`); reading, touching and expiry are the same for every server."""

    _codec: Codec
    _secrets: list[str]

    @abstractmethod
    def _get(self, sid: str) -> bytes | None:
        """The stored record of *sid* (validated here), live or not, or None."""

    @abstractmethod
    def _touch_record(self, sid: str, rec: bytes, now: float) -> None:
        """Set the last access of *sid* to *now*, if its record is still *rec*."""

    def _scrub(self, text: object) -> str:
        """The text of a client library's error, credentials removed."""
        return scrub(str(text), self._secrets)

    def _live(self, rec: bytes | None, now: float) -> bool:
        return rec is not None and now - fmt.times(rec)[0] <= self.max_age

    def _may_put(self, old: bytes | None, expect: float | None, now: float) -> bool:
        """Whether :meth:`put_record_if` writes over *old*: its last access is *expect*, or with *expect*
        None, it is not live. Judged by the record's header alone; one too short to hold its times is not
        live (there is nothing to keep)."""
        if old is None or len(old) < HEADER_SIZE:
            return expect is None
        atime = fmt.times(old)[0]
        if now - atime > self.max_age:
            return expect is None
        return expect is not None and atime == expect

    def __getitem__(self, sid: str) -> Any:
        rec = self._get(sid)
        now = self.clock()
        if rec is None or not self._live(rec, now):
            raise KeyError(sid)
        value = self._codec.decode(sid.encode(), rec)
        if now - fmt.times(rec)[0] >= self.touch_interval:
            self._touch_record(sid, rec, now)
        return value

    def touch(self, sid: str) -> bool:
        rec = self._get(sid)
        now = self.clock()
        if rec is None or not self._live(rec, now):
            return False
        if now - fmt.times(rec)[0] >= self.touch_interval:
            self._touch_record(sid, rec, now)
        return True

    def record(self, sid: str) -> Record | None:
        rec = self._get(sid)
        if rec is None or not self._live(rec, self.clock()):
            return None
        atime, created = fmt.times(rec)
        return Record(self._codec.decode(sid.encode(), rec), created, atime)


__all__ = [
    "FORMAT",
    "RemoteStore",
    "Settings",
    "check_options",
    "creation_fields",
    "is_secret_name",
    "make_codec",
    "parse_meta",
    "redact_url",
    "resolve",
    "scrub",
]
