"""The options of :func:`lockstore.open`, in one :class:`Options`: names, types, defaults, checks, the sweep
rules a store records, and the framework settings that give them.

Everything that takes options (the opener, the embedded store and its pickled copy, the remote stores, the
Flask and Django integrations) takes an :class:`Options`, so a name, a default or a range is written once.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypedDict

from ._files import MAX_CLEAN_LIMIT, MAX_SECONDS, MAX_SHARDS, RULES, _is_int, _is_seconds
from .codec import check_secret, codec_functions
from .errors import LockstoreError, StoreMismatch

DEFAULTS = {"backend": "lmdb", "shards": 16, "codec": "pickle"}
"""What a new directory store records when open() names none (a server store defaults to ``"json"``)."""
RULE_DEFAULTS: dict[str, float | int] = {"max_age": 1800.0, "clean_interval": 300.0, "clean_limit": 1000}
"""The sweep rules a new store records when open() names none."""
BACKENDS = ("lmdb", "shelve", "memory")
DURABILITY = ("process", "system")
EMBEDDED = ("backend", "shards", "dbm", "map_size", "durability")
"""Options of a directory store only."""
SERVER = ("lock_ttl", "connect_timeout", "pool_size", "durability")
"""Options of every server store (Redis's ``prefix`` and PostgreSQL's ``table`` are each its own); ``durability``
is both a directory's and a server's (each says what ``"system"`` waits for)."""
SERVER_DEFAULTS = {"lock_ttl": 30.0, "connect_timeout": 5.0}
"""A server store's defaults of its server options (``pool_size`` and the name are each server's own)."""
_PREFIX_OK = re.compile(r"[A-Za-z0-9_.:~-]{1,100}").fullmatch
_TABLE_OK = re.compile(r"[a-z_][a-z0-9_]{0,47}").fullmatch


class _StoreOptions(TypedDict, total=False):
    codec: str | None
    max_age: float | None
    clean_interval: float | None
    clean_limit: int | None
    touch_interval: float
    timeout: float
    max_value_size: int
    secret: bytes | str | None
    clock: Callable[[], float] | None
    durability: str


class EmbeddedOptions(_StoreOptions, total=False):
    """The keywords of :func:`lockstore.open` for a directory, for type checkers (see :class:`Options`)."""

    backend: str | None
    shards: int | None
    dbm: str | None
    map_size: int | None


class ServerOptions(_StoreOptions, total=False):
    """The keywords of every server store (see :class:`Options`)."""

    lock_ttl: float | None
    connect_timeout: float | None
    pool_size: int | None


class RedisOptions(ServerOptions, total=False):
    """The keywords of :func:`~lockstore.remote.redis.open_redis`."""

    prefix: str | None


class PostgresOptions(ServerOptions, total=False):
    """The keywords of :func:`~lockstore.remote.postgres.open_postgres`."""

    table: str | None


class OpenOptions(EmbeddedOptions, RedisOptions, PostgresOptions, total=False):
    """Every keyword of :func:`lockstore.open` (a URL takes its server's options)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """Every option of :func:`lockstore.open` (documented there), checked when it is built.

    None means "not given": a recorded setting (``backend``, ``shards``, ``codec``, ``dbm`` and the sweep
    rules ``max_age``, ``clean_interval``, ``clean_limit``) is then taken from the store, a server option
    from the server store's default. A rejected option raises before anything is created or sent.

    Raises
    ------
    ValueError, TypeError
        A number out of range or of the wrong type, a secret too short or not bytes/str, a bad prefix/table.
    StoreMismatch
        An unknown backend or codec (or msgpack without its package), or ``dbm`` for another backend.
    """

    backend: str | None = None
    shards: int | None = None
    codec: str | None = None
    max_age: float | None = None
    clean_interval: float | None = None
    clean_limit: int | None = None
    touch_interval: float = 60
    timeout: float = 10.0
    max_value_size: int = 1 << 20
    secret: bytes | str | None = None
    durability: str = "process"
    dbm: str | None = None
    map_size: int | None = None
    clock: Callable[[], float] | None = None
    prefix: str | None = None
    table: str | None = None
    lock_ttl: float | None = None
    connect_timeout: float | None = None
    pool_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_age", "clean_interval", "touch_interval", "timeout", "lock_ttl", "connect_timeout"):
            value = getattr(self, name)
            if value is None and (name in RULES or name in SERVER):
                continue
            positive = name in ("max_age", "lock_ttl", "connect_timeout")
            if not _is_seconds(value, positive=positive):
                raise ValueError(
                    f"{name} must be a number of seconds {'> 0' if positive else '>= 0'}, "
                    f"at most {MAX_SECONDS:g}, not {value!r}"
                )
        for name, low, high in (
            ("max_value_size", 1, None),
            ("clean_limit", 1, MAX_CLEAN_LIMIT),
            ("shards", 1, MAX_SHARDS),
            ("pool_size", 1, None),
            ("map_size", 1 << 20, None),
        ):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and low <= value and (high is None or value <= high)):
                raise ValueError(f"{name} must be an int from {low}{f' to {high}' if high else ''}, not {value!r}")
        if self.backend is not None and self.backend not in BACKENDS:
            raise StoreMismatch(f"unknown backend {self.backend!r}: use one of {', '.join(BACKENDS)}")
        if self.durability not in DURABILITY:
            raise ValueError(f"durability must be 'process' or 'system', not {self.durability!r}")
        if self.dbm is not None and self.backend not in (None, "shelve"):
            raise StoreMismatch("dbm= applies to the shelve backend only")
        if self.codec is not None:
            codec_functions(self.codec)  # unknown codec or missing package: a clear error before any write
        check_secret(self.secret)
        if self.prefix is not None and not (isinstance(self.prefix, str) and _PREFIX_OK(self.prefix)):
            raise ValueError(f"prefix must be 1-100 characters from A-Z a-z 0-9 _ . : ~ -, not {self.prefix!r}")
        if self.table is not None and not (isinstance(self.table, str) and _TABLE_OK(self.table)):
            raise ValueError(f"table must match [a-z_][a-z0-9_]{{0,47}}, not {self.table!r}")

    def only(self, kind: str, own: tuple[str, ...]) -> None:
        """Raise :class:`TypeError` naming every option given that a store of *kind* does not take (of the
        kind-specific ones, it takes *own*)."""
        foreign = [
            f.name
            for f in fields(self)
            if f.name in (*EMBEDDED, *SERVER, "prefix", "table")
            and f.name not in own
            and getattr(self, f.name) != f.default
        ]
        if foreign:
            raise TypeError(f"option(s) not for {kind}: {', '.join(foreign)}")

    def rules(self) -> dict[str, float | int | None]:
        """The sweep rules as given (None: not given)."""
        return {name: getattr(self, name) for name in RULES}

    def rules_to_record(self, recorded: Mapping[str, Any]) -> dict[str, float | int]:
        """The sweep rules a store records: as given, else as *recorded*, else the defaults."""
        out: dict[str, float | int] = {}
        for name in RULES:
            value = getattr(self, name)
            if value is None:
                value = recorded.get(name, RULE_DEFAULTS[name])
            out[name] = int(value) if name == "clean_limit" else float(value)
        return out


OPEN_OPTIONS = tuple(f.name for f in fields(Options) if f.name != "clock")
"""Every option of :func:`open` a framework setting can give (``clock`` is for tests, a callable)."""
SETTINGS_KEYS = {name.upper(): name for name in OPEN_OPTIONS}
"""Framework settings (``LOCKSTORE_MAX_AGE`` in Flask, ``LOCKSTORE = {"MAX_AGE": ...}`` in Django) -> open()."""


def options_from_settings(
    settings: Mapping[str, Any], own: Mapping[str, str], where: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split framework settings into :func:`open` options and the integration's *own* options.

    *settings* maps upper-case names (``MAX_AGE``) to values; *own* maps the integration's own names
    (``REQUEST_LOCK``) to its keywords. A name that is neither raises :class:`LockstoreError` at start-up,
    naming the key as *where* shows it and the closest valid one: a typo never goes unnoticed.
    """
    store: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in settings.items():
        if key in SETTINGS_KEYS:
            store[SETTINGS_KEYS[key]] = value
        elif key in own:
            extra[own[key]] = value
        else:
            valid = sorted({*SETTINGS_KEYS, *own})
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
            hint = f"; did you mean {where.format(close[0])}?" if close else f" (valid: {', '.join(valid)})"
            raise LockstoreError(f"unknown lockstore setting {where.format(key)}{hint}")
    return store, extra


__all__ = [
    "BACKENDS",
    "DEFAULTS",
    "DURABILITY",
    "EMBEDDED",
    "OPEN_OPTIONS",
    "RULE_DEFAULTS",
    "SERVER",
    "SERVER_DEFAULTS",
    "SETTINGS_KEYS",
    "EmbeddedOptions",
    "OpenOptions",
    "Options",
    "PostgresOptions",
    "RedisOptions",
    "ServerOptions",
    "options_from_settings",
]
