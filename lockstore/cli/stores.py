"""How the command line names, probes and opens a store: a directory or a ``redis://``, ``rediss://``,
``postgresql://`` or ``postgres://`` URL; any other ``scheme://`` is an error, never a directory named after it.
"""

from __future__ import annotations

import argparse
import os
import urllib.parse
from typing import Any

import lockstore
from lockstore.opener import REMOTE_SCHEMES, read_meta

from .output import CommandError

SECRET_ENV = "LOCKSTORE_SECRET"
_UNKNOWN: Any = object()
"""What :func:`recorded` returns when it cannot tell whether a store exists (then open() says why)."""


def is_url(path: str) -> bool:
    return "://" in path


def check_scheme(path: str) -> str:
    """The scheme of a URL store; :class:`CommandError` for one lockstore does not know (``x://y`` would
    otherwise be a directory ``x:/y``)."""
    scheme = path.partition("://")[0]
    if scheme not in REMOTE_SCHEMES:
        raise CommandError(
            f"unknown scheme {scheme!r}: a store is a directory or a "
            + ", ".join(f"{s}://" for s in REMOTE_SCHEMES)
            + " URL"
        )
    return scheme


def location(
    path: str, prefix: str | None, table: str | None, names: tuple[str, str] = ("--prefix", "--table")
) -> dict[str, Any]:
    """The open() options that name a store on a server (checked against *path*'s kind)."""
    options: dict[str, Any] = {}
    scheme = check_scheme(path) if is_url(path) else None
    for option, value, schemes, key in (
        (names[0], prefix, ("redis", "rediss", "redis+cluster"), "prefix"),
        (names[1], table, ("postgresql", "postgres"), "table"),
    ):
        if value is None:
            continue
        if scheme not in schemes:
            raise CommandError(f"{option} names a store on a {schemes[0]}:// server; {path} is not one")
        options[key] = value
    return options


def read_secret(file: str | None) -> str | None:
    if file is None:
        return None
    try:
        with open(file, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        raise CommandError(f"cannot read the secret file {file}: {exc.strerror}") from None


def secret_of(args: argparse.Namespace) -> str | None:
    """The secret of the store a command names (``--secret-file``, else ``$LOCKSTORE_SECRET``)."""
    return read_secret(getattr(args, "secret_file", None)) or os.environ.get(SECRET_ENV) or None


def _probe_remote(path: str, where: dict[str, Any], timeout: float) -> Any:
    """Whether the store at a server URL is signed (``{"signed": bool}``); None if the server holds no such
    store; :data:`_UNKNOWN` if it cannot tell (the server is down, a client is missing...): then open()
    says what is wrong, with credentials scrubbed, which this probe never prints.

    It reads the metadata beside :mod:`lockstore.remote` (which parses it in ``parse_meta``): a read-only
    remote open will replace it."""
    scheme = check_scheme(path)
    if scheme == "redis+cluster":  # no single node to ask: open() reads the metadata through the cluster
        return _UNKNOWN
    try:
        if scheme in ("redis", "rediss"):
            import redis

            client = redis.Redis.from_url(path, socket_connect_timeout=timeout, socket_timeout=timeout)
            try:
                meta = client.hgetall(f"{where.get('prefix', 'lockstore')}:meta")
            finally:
                client.close()
            return {"signed": meta.get(b"signed") == b"1"} if meta else None
        import psycopg

        with psycopg.connect(path, connect_timeout=max(1, int(timeout)), autocommit=True) as conn:
            if conn.execute("SELECT to_regclass('lockstore_meta')").fetchone() == (None,):
                return None
            rows = conn.execute(
                "SELECT value FROM lockstore_meta WHERE store = %s AND name = 'signed'",
                (where.get("table", "lockstore_sessions"),),
            ).fetchall()
            return {"signed": rows[0][0] == "1"} if rows else None
    except Exception:
        return _UNKNOWN


def recorded(path: str, where: dict[str, Any], timeout: float) -> Any:
    """The recorded settings of the store at *path*; None if there is none; :data:`_UNKNOWN`."""
    if is_url(path):
        return _probe_remote(path, where, timeout)
    if not os.path.isdir(path):
        return None
    return read_meta(path)


def shown(path: str) -> str:
    """*path* as messages show it: a URL without user, password, query or fragment."""
    if not is_url(path):
        return path
    parts = urllib.parse.urlsplit(path)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def no_store(path: str) -> CommandError:
    if is_url(path):
        why = "the server holds no lockstore metadata there"
    elif not os.path.lexists(path):
        why = "no such file or directory"
    elif not os.path.isdir(path):
        why = "not a directory"
    else:
        why = "the directory holds no lockstore metadata"
    return CommandError(f"no store at {shown(path)}: {why}", status=1)


def open_store(
    path: str,
    *,
    where: dict[str, Any],
    secret: str | None,
    timeout: float,
    create: dict[str, Any] | None = None,
    rules: dict[str, Any] | None = None,
    secret_hint: str = "--secret-file",
) -> Any:
    """Open the store at *path* (*where*: its prefix or table). Without *create*, it must exist: a missing
    one is a :class:`CommandError` (exit 1) and nothing is created; with *create* (open() options), a
    missing one is created with them. *rules* (``max_age``) are recorded by a new store and checked against
    an existing one's (:class:`StoreMismatch` if they differ). *secret* is used if the store is signed (a
    new one: if given)."""
    options: dict[str, Any] = {"timeout": timeout, **where, **(rules or {})}
    meta = recorded(path, where, timeout)
    if meta is None:
        if create is None:
            raise no_store(path)
        options.update(create)
    elif meta is not _UNKNOWN and not meta.get("signed"):
        secret = None  # an ambient $LOCKSTORE_SECRET does not apply to an unsigned store
    elif secret is None and meta is not _UNKNOWN:
        raise CommandError(
            f"the store at {shown(path)} is signed: give its secret in ${SECRET_ENV} or with {secret_hint}"
        )
    return lockstore.open(path, secret=secret, **options)


def open_existing(path: str, args: argparse.Namespace) -> Any:
    """Open the store a command names (``PATH``, ``--prefix``, ``--table``, its secret); never created."""
    return open_store(path, where=location(path, args.prefix, args.table), secret=secret_of(args), timeout=args.timeout)
