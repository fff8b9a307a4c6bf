"""The options of :func:`lockstore.open`: their names, defaults, checks, and the framework settings that give them.

Everything that reads options (the opener, the remote stores, the Flask and Django integrations) takes them
from here, so a name, a default or a range is written once.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

from ._files import MAX_CLEAN_LIMIT, MAX_SECONDS, MAX_SHARDS, RULES
from .errors import LockstoreError

DEFAULTS = {"backend": "lmdb", "shards": 16, "codec": "pickle"}
RULE_DEFAULTS: dict[str, float | int] = {"max_age": 1800.0, "clean_interval": 300.0, "clean_limit": 1000}
"""The sweep rules a new store records when open() names none."""
BACKENDS = ("lmdb", "shelve", "memory")
DURABILITY = ("process", "system")
OPEN_OPTIONS = (
    "backend",
    "shards",
    "codec",
    "max_age",
    "clean_interval",
    "clean_limit",
    "touch_interval",
    "timeout",
    "max_value_size",
    "secret",
    "durability",
    "dbm",
    "map_size",
    "prefix",
    "table",
    "lock_ttl",
    "connect_timeout",
    "pool_size",
)
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


def check_numbers(
    max_age: float | None,
    clean_interval: float | None,
    touch_interval: float,
    timeout: float,
    max_value_size: int,
    clean_limit: int | None,
    shards: int | None,
) -> None:
    """Check the numeric options (None: the recorded value, checked when it is read)."""
    for name, value in (
        ("max_age", max_age),
        ("clean_interval", clean_interval),
        ("touch_interval", touch_interval),
        ("timeout", timeout),
    ):
        if value is None and name in RULES:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value < 0:
            raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
        if value > MAX_SECONDS:
            raise ValueError(f"{name} must be at most {MAX_SECONDS:g} seconds, not {value!r}")
    if max_age is not None and max_age <= 0:
        raise ValueError(f"max_age must be > 0, not {max_age!r}")
    if isinstance(max_value_size, bool) or not isinstance(max_value_size, int) or max_value_size < 1:
        raise ValueError(f"max_value_size must be a positive int, not {max_value_size!r}")
    if clean_limit is not None and (
        isinstance(clean_limit, bool) or not isinstance(clean_limit, int) or not 1 <= clean_limit <= MAX_CLEAN_LIMIT
    ):
        raise ValueError(f"clean_limit must be a positive int, not {clean_limit!r}")
    if shards is not None and (
        isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS
    ):
        raise ValueError(f"shards must be an int from 1 to {MAX_SHARDS}, not {shards!r}")



__all__ = [
    "BACKENDS",
    "DEFAULTS",
    "DURABILITY",
    "OPEN_OPTIONS",
    "RULE_DEFAULTS",
    "SETTINGS_KEYS",
    "check_numbers",
    "options_from_settings",
]
