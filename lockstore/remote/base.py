"""The template of a store on a server (Redis, PostgreSQL): everything the two share, written once.

:class:`RemoteStore` checks the options, reads and records the settings (:mod:`lockstore.remote.meta`, which
trusts nothing the server says), builds the codec, warns, and gives the whole mapping API (``store[sid]``,
``edit()``, ``touch``, ``put_record_if``, ``records``, ``stats``) on a few primitives a server module
supplies:

- ``_connect`` / ``_disconnect``: the pool; ``_record_meta``: the metadata exchange, atomic on the server;
- ``_get`` (one record), ``_last_access``, ``_touch_record`` (compare-and-set of the times);
- ``_put`` (under the session's lock, write what a function of the stored record returns), ``_take``
  (remove and return), and the :class:`RemoteEdit` pair ``_begin`` / ``_end`` (hold the lock across a
  ``with`` block); ``_batches`` and ``_counts`` for listing.

Credentials never appear in ``repr()``, ``stats()["path"]`` or any message: the password of a URL's
userinfo is shown as ``***`` (the user name is kept), and so is every query parameter or conninfo keyword
whose name contains ``pass``, ``secret``, ``token`` or ``key`` (any case: ``password``, ``sslpassword``,
``sslkey``, ``auth_token``...). Texts of the client libraries' errors have those values scrubbed too.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

from .. import record as fmt
from ..base import BaseStore, Edit
from ..codec import Codec, Record
from ..errors import CorruptRecord, StoreMismatch
from ..ids import validate_id
from ..options import SERVER, SERVER_DEFAULTS, Options
from ..record import HEADER_SIZE
from .meta import DEFAULT_CODEC, FORMAT, Pairs, Settings, creation_fields, parse_meta, resolve

logger = logging.getLogger(__name__)
_SECRET_NAME = re.compile(r"pass|secret|token|key", re.IGNORECASE).search
Make = Callable[[bytes | None, float], bytes | None]
"""What :meth:`RemoteStore._put` writes: (the stored record or its header, or None; now) -> record, or None
to write nothing."""


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


class RemoteEdit(Edit):
    """``edit()`` of a server store: :class:`~lockstore.base.Edit`, the one template, over the server's lock. A
    server gives its two primitives: :meth:`_begin` (take the session's lock, return its record) and
    :meth:`_end` (write *rec* and let go, or with None only let go)."""

    def __init__(self, store: RemoteStore, sid: str, create: bool) -> None:
        sid = validate_id(sid)
        super().__init__(store, sid, sid.encode(), create)


class RemoteStore(BaseStore):
    """A store on a server; a subclass gives the primitives listed in the module docstring.

    Notes
    -----
    Thread safe: threads share one bounded connection pool. Process safe: every process (or machine) opens
    its own store; ``edit()`` and every write are atomic across all of them through the server.
    """

    name_option: ClassVar[str]
    """``"prefix"`` or ``"table"``: the option that names the store on its server."""
    defaults: ClassVar[dict[str, Any]]
    """This server's defaults of its name and ``pool_size`` (and of ``lock_ttl``, if not the servers' one)."""
    edit_class: ClassVar[type[RemoteEdit]]
    _codec: Codec
    _secrets: list[str]

    def __init__(self, url: str, options: Options | None = None, *, create: bool = True) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        options = Options() if options is None else options  # checked when built
        options.only(self.backend, (self.name_option, *SERVER))
        self.options = options
        self.name: str = getattr(options, self.name_option) or self.defaults[self.name_option]
        self.touch_interval = float(options.touch_interval)
        self.timeout = float(options.timeout)
        self.connect_timeout = float(options.connect_timeout or SERVER_DEFAULTS["connect_timeout"])
        self.lock_ttl = float(options.lock_ttl or self.defaults.get("lock_ttl") or SERVER_DEFAULTS["lock_ttl"])
        self._pool_size: int = options.pool_size or self.defaults["pool_size"]
        self.clock = options.clock or time.time
        self._closed = False
        self._close_lock = threading.Lock()
        self.path, self._secrets = self._display(url)
        self._connect(url)
        try:
            settings = self._settle(creation_fields(options) if create else None, options)
            self.max_age, self.clean_interval, self.clean_limit = settings[4:]
            # the signatures bind the store's identity (none for a format 1 store, so that its records verify)
            scope = "" if settings.store_id is None else f"{self.backend}\0{self.name}\0{settings.store_id}"
            self._codec = Codec(settings.codec, options.secret, options.max_value_size, scope=scope.encode())
        except BaseException:
            self.close()
            raise
        if self._codec.name == "pickle" and not self._codec.signed:
            # Unpickling runs code: whoever can write to the server could run code here.
            logger.warning(
                "store at %s uses pickle without a secret: anyone who can write to this %s server can run code in "
                "this process; pass secret= (signed records) or move to codec='json' with `lockstore copy`",
                self.path,
                self.backend,
            )

    def _settle(self, new: dict[str, str] | None, options: Options) -> Settings:
        """Record the settings of a new store (*new*; None: never create one), or read and check those of an
        existing one, through the server's atomic :meth:`_record_meta`."""
        where = f"store {self.name!r} at {self.path}"

        def settle(exchange: Callable[[dict[str, str]], Pairs]) -> Settings:
            fill: dict[str, str] = {}
            for _ in range(3):
                rows = list(exchange(fill))
                if not rows:
                    raise StoreMismatch(f"no {where}: the server holds no lockstore metadata for it (create=False)")
                settings, fill = resolve(parse_meta(rows, where), where, options)
                if settings is not None:
                    return settings
            raise StoreMismatch(f"{where}: its metadata kept changing while it was opened; try again")

        return self._record_meta(new, settle)

    # -- the primitives a server gives ------------------------------------------------------------

    @staticmethod
    @abstractmethod
    def _display(url: str) -> tuple[str, list[str]]:
        """(how the store shows *url*, every secret value it holds)."""

    @abstractmethod
    def _connect(self, url: str) -> None:
        """Build the pool (no connection is needed yet); ValueError for a URL the client cannot use."""

    @abstractmethod
    def _disconnect(self) -> None:
        """Close the pool (called once)."""

    @abstractmethod
    def _record_meta(
        self, new: dict[str, str] | None, settle: Callable[[Callable[[dict[str, str]], Pairs]], Settings]
    ) -> Settings:
        """Return ``settle(exchange)`` where ``exchange(fill)`` records *new* if the store has no metadata (with
        *new* None, records nothing), records the fields of *fill* where absent, and returns the metadata's
        (name, value) pairs, empty if there is none; atomic against other processes opening the store."""

    @abstractmethod
    def _get(self, sid: str) -> bytes | None:
        """The stored record of *sid* (validated here), live or not, or None."""

    @abstractmethod
    def _last_access(self, sid: str) -> float | None:
        """The last access of the stored record of *sid*, or None if there is none."""

    @abstractmethod
    def _touch_record(self, sid: str, rec: bytes, now: float) -> None:
        """Set the last access of *sid* to *now*, if its record is still *rec*."""

    @abstractmethod
    def _put(self, sid: str, make: Make, *, retry: bool) -> bool:
        """Under the session's lock, store ``make(stored record or header, now)``, unless it returns None;
        True if it wrote. *retry*: the write may be repeated after a lost reply."""

    @abstractmethod
    def _batches(self) -> Iterator[list[tuple[str | None, str, bytes | None]]]:
        """Every stored record, by batch: (its id if valid, else None; the id as shown; the record or None)."""

    @abstractmethod
    def _counts(self) -> tuple[int, int, int, str]:
        """(live, expired, bytes, server version) for :meth:`stats`."""

    # -- written once on them ---------------------------------------------------------------------

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

    def __contains__(self, sid: object) -> bool:
        atime = self._last_access(validate_id(sid))
        return atime is not None and self.clock() - atime <= self.max_age

    def __setitem__(self, sid: str, value: Any) -> None:
        key = validate_id(sid).encode()
        payload = self._codec.encode(value)  # before the lock: an unencodable value touches nothing

        def make(old: bytes | None, now: float) -> bytes:
            created = now
            if old is not None and len(old) >= HEADER_SIZE and self._live(old, now):  # a damaged one is replaced
                created = fmt.times(old)[1]
            return self._codec.record(key, payload, now, created)

        self._put(sid, make, retry=True)

    def put_record(self, sid: str, value: Any, *, created: float, last_access: float) -> None:
        key = validate_id(sid).encode()
        rec = self._codec.record(key, self._codec.encode(value), float(last_access), float(created))
        self._put(sid, lambda old, now: rec, retry=True)

    def put_record_if(self, sid: str, value: Any, *, created: float, last_access: float, expect: float | None) -> bool:
        """Store *value* under *sid* with the given times only if the stored live record's last access is
        *expect* exactly, or, with *expect* None, only if there is no live record (absent or expired);
        True if it wrote. Atomic: the check and the write happen in one hold of the session's lock.

        Liveness is judged by the record's times, without decoding it (a record too short to hold them
        is not live). Not retried after a lost reply: whether it wrote could not be told.
        """
        key = validate_id(sid).encode()
        rec = self._codec.record(key, self._codec.encode(value), float(last_access), float(created))
        return self._put(sid, lambda old, now: rec if self._may_put(old, expect, now) else None, retry=False)

    def edit(self, sid: str, *, create: bool = True) -> RemoteEdit:
        """Atomic read-modify-write of one session, across processes and machines::

            with store.edit(sid) as session:     # a dict; the session's lock is held on the server
                session["n"] = session.get("n", 0) + 1

        Saved on a clean exit if changed, discarded on an exception. A new empty dict if the session is
        absent (or :class:`KeyError` with ``create=False``). The value must be a dict.
        """
        return self.edit_class(self, sid, create)

    def records(
        self, *, expired: bool = False, on_error: Callable[[str, CorruptRecord], None] | None = None
    ) -> Iterator[tuple[str, Record]]:
        for batch in self._batches():
            yield from self._decode_batch(batch, self.clock(), expired, on_error)

    def verify(self) -> list[tuple[str, str]]:
        bad: list[tuple[str, str]] = []
        for batch in self._batches():
            for sid, shown, rec in batch:
                try:
                    if rec is not None and sid is None:
                        raise CorruptRecord(f"the stored id {shown[:60]} is not a valid session id (not lockstore's)")
                    if rec is not None and sid is not None:
                        self._codec.decode(sid.encode(), rec)
                except Exception as exc:
                    bad.append((shown, str(exc)))
        return bad

    def stats(self) -> dict[str, Any]:
        live, expired, size, server = self._counts()
        return {
            "backend": self.backend,
            "path": self.path,
            self.name_option: self.name,
            "shards": 1,
            "codec": self._codec.name,
            "signed": self._codec.signed,
            "max_age": self.max_age,
            "clean_interval": self.clean_interval,
            "clean_limit": self.clean_limit,
            "live": live,
            "expired": expired,
            "bytes": size,
            "per_shard": [{"shard": 0, "live": live, "expired": expired, "last_clean": None}],
            "server": server,
        }

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._disconnect()


__all__ = [
    "DEFAULT_CODEC",
    "FORMAT",
    "Make",
    "RemoteEdit",
    "RemoteStore",
    "is_secret_name",
    "redact_url",
    "scrub",
]
