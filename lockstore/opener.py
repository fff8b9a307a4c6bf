"""``lockstore.open``: create or open a store, checking its recorded settings and its files' safety."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any, overload

from ._files import FILE_MODE, FORMAT, RULES, StoreDir, check_tree
from .codec import Codec, check_secret, codec_functions
from .errors import LockstoreError, LockTimeout, StoreMismatch
from .locks import ShardLocks, try_flock, unflock, wait_flock
from .options import BACKENDS, DEFAULTS, DURABILITY, RULE_DEFAULTS, check_numbers
from .store import BaseStore, Clock, Store

logger = logging.getLogger(__name__)
REMOTE_SCHEMES = {
    "redis": (".remote.redis", "open_redis"),
    "rediss": (".remote.redis", "open_redis"),
    "postgresql": (".remote.postgres", "open_postgres"),
    "postgres": (".remote.postgres", "open_postgres"),
}
"""URL scheme -> (module, function) of the remote store; imported only when used (optional extras)."""


@overload
def open(
    path: os.PathLike[str],
    *,
    backend: str | None = None,
    shards: int | None = None,
    codec: str | None = None,
    max_age: float | None = None,
    clean_interval: float | None = None,
    touch_interval: float = 60,
    timeout: float = 10.0,
    max_value_size: int = 1 << 20,
    secret: bytes | str | None = None,
    durability: str = "process",
    clean_limit: int | None = None,
    dbm: str | None = None,
    map_size: int | None = None,
    clock: Clock | None = None,
) -> Store: ...


@overload
def open(
    path: str,
    *,
    backend: str | None = None,
    shards: int | None = None,
    codec: str | None = None,
    max_age: float | None = None,
    clean_interval: float | None = None,
    touch_interval: float = 60,
    timeout: float = 10.0,
    max_value_size: int = 1 << 20,
    secret: bytes | str | None = None,
    durability: str = "process",
    clean_limit: int | None = None,
    dbm: str | None = None,
    map_size: int | None = None,
    clock: Clock | None = None,
    prefix: str | None = None,
    table: str | None = None,
    lock_ttl: float | None = None,
    connect_timeout: float | None = None,
    pool_size: int | None = None,
) -> BaseStore: ...


def open(
    path: str | os.PathLike[str],
    *,
    backend: str | None = None,
    shards: int | None = None,
    codec: str | None = None,
    max_age: float | None = None,
    clean_interval: float | None = None,
    touch_interval: float = 60,
    timeout: float = 10.0,
    max_value_size: int = 1 << 20,
    secret: bytes | str | None = None,
    durability: str = "process",
    clean_limit: int | None = None,
    dbm: str | None = None,
    map_size: int | None = None,
    clock: Clock | None = None,
    prefix: str | None = None,
    table: str | None = None,
    lock_ttl: float | None = None,
    connect_timeout: float | None = None,
    pool_size: int | None = None,
) -> BaseStore:
    """Open the session store at *path*, creating it if needed.

    Parameters
    ----------
    path
        A directory (created 0700 with its missing parents; see "Raises" for what is refused), or a
        ``redis://``, ``rediss://``, ``postgresql://`` or ``postgres://`` URL. A path gives a
        :class:`~lockstore.Store`; a URL a Redis or PostgreSQL store with the same interface.
    backend : {"lmdb", "shelve", "memory"}, optional
        Recorded when the store is created; default ``"lmdb"``. ``"memory"`` lives in one process (tests).
    shards : int, optional
        Number of shards, 1 to 4096, one lock file each. Recorded; default 16.
    codec : {"pickle", "json", "msgpack"}, optional
        Recorded; default ``"pickle"`` for a directory (whose files are checked like OpenSSH's), ``"json"``
        for a server (unsigned pickle on a server must be asked for here, never taken from the server).
    max_age : float, optional
        Seconds a session may stay idle; older ones are absent everywhere and swept. Recorded; default 1800.
    clean_interval : float, optional
        A write into a shard not swept for this long sweeps it first; 0 turns it off. Recorded; default 300.
    clean_limit : int, optional
        At most this many expired sessions removed by one write. Recorded; default 1000.
    touch_interval : float, default 60
        A read rewrites a session's last-access time only if it is older than this.
    timeout : float, default 10.0
        Seconds to wait for a lock before :class:`~lockstore.LockTimeout` (nothing is written then).
    max_value_size : int, default 1 MiB
        An encoded value over this raises :class:`~lockstore.ValueTooLarge`.
    secret : bytes or str, optional
        At least 16 bytes: every record is signed with HMAC-SHA256 (binding the store, the id, the times
        and the value); a record whose MAC fails is never decoded. Whether a store is signed is recorded.
    durability : {"process", "system"}, default "process"
        ``"process"`` survives any process being killed; ``"system"`` also a machine crash (every commit
        synced). Directory stores only.
    dbm : str, optional
        shelve only: ``"dbm.gnu"``, ``"dbm.ndbm"``, ``"dbm.sqlite3"`` or ``"dbm.dumb"``; default the best
        available. Recorded.
    map_size : int, optional
        LMDB only: bytes of address space reserved up front (default 64 GiB, not disk; grown if full).
    clock : callable, optional
        Returns the time in seconds (default :func:`time.time`); for tests.
    prefix : str, optional
        Redis only: every key of the store starts with ``PREFIX:`` (default ``"lockstore"``).
    table : str, optional
        PostgreSQL only: the table holding the sessions (default ``"lockstore_sessions"``).
    lock_ttl : float, optional
        Redis and PostgreSQL: seconds an ``edit()`` may hold a session's lock (default 30).
    connect_timeout : float, optional
        Redis and PostgreSQL: seconds to wait for the server before :class:`~lockstore.BackendUnavailable`
        (default 5).
    pool_size : int, optional
        Redis and PostgreSQL: connections kept at most (default 50 for Redis, 20 for PostgreSQL).

    Returns
    -------
    BaseStore
        A :class:`~lockstore.Store` for a directory. Use it as a dict (``store[sid]``,
        ``del store[sid]``), and ``with store.edit(sid) as session:`` for an atomic read-modify-write.

    Raises
    ------
    StoreMismatch
        An explicit setting differs from the recorded one (recorded settings: backend, shards, codec,
        signed or not, dbm, ``max_age``, ``clean_interval``, ``clean_limit``; left out, they are taken
        from the record), or the metadata is not valid. Change the sweep rules with
        :func:`set_rules` (``lockstore config``).
    UnsafeStore
        The store, a directory above it, ``lockstore.json`` or a file in it is another user's, writable
        by group or others (ancestors: unless sticky), or a symbolic link.
    ValueError, TypeError
        An option is out of range or of the wrong type. Every option is checked before anything is
        created.
    BackendUnavailable
        A server cannot be reached.
    """
    remote = {"prefix": prefix, "table": table, "lock_ttl": lock_ttl}
    remote.update(connect_timeout=connect_timeout, pool_size=pool_size)
    options = {name: value for name, value in remote.items() if value is not None}
    if isinstance(path, str) and path.partition("://")[0] in REMOTE_SCHEMES:
        embedded_only = {"backend": backend, "shards": shards, "dbm": dbm, "map_size": map_size}
        given = sorted(name for name, value in embedded_only.items() if value is not None)
        if durability != "process":
            given.append("durability")
        if given:
            raise TypeError(
                f"option(s) for embedded stores only, not for {path.partition('://')[0]}: {', '.join(given)}"
            )
        check_numbers(max_age, clean_interval, touch_interval, timeout, max_value_size, clean_limit, None)
        remote_rules = {"max_age": max_age, "clean_interval": clean_interval, "clean_limit": clean_limit}
        return _open_remote(
            path,
            codec=codec,
            touch_interval=touch_interval,
            timeout=timeout,
            max_value_size=max_value_size,
            secret=secret,
            clock=clock,
            **{name: value for name, value in remote_rules.items() if value is not None},
            **options,
        )
    if isinstance(path, str) and "://" in path:
        raise ValueError(f"unknown store URL scheme {path.partition('://')[0]!r}: use {', '.join(REMOTE_SCHEMES)}")
    if options:
        raise TypeError(f"option(s) for Redis or PostgreSQL only, not for a directory: {', '.join(sorted(options))}")
    path = os.path.abspath(os.fspath(path))
    # every option is checked before anything is created (a rejected option must leave no store behind)
    check_numbers(max_age, clean_interval, touch_interval, timeout, max_value_size, clean_limit, shards)
    if backend is not None and backend not in BACKENDS:
        raise StoreMismatch(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if durability not in DURABILITY:
        raise ValueError(f"durability must be 'process' or 'system', not {durability!r}")
    if codec is not None:
        codec_functions(codec)  # unknown codec or missing package: a clear error before any file exists
    check_secret(secret)
    if map_size is not None and (isinstance(map_size, bool) or not isinstance(map_size, int) or map_size < 1 << 20):
        raise ValueError(f"map_size must be an int of at least 1 MiB, not {map_size!r}")
    if dbm is not None:
        if backend not in (None, "shelve"):
            raise StoreMismatch("dbm= applies to the shelve backend only")
        from .backends.shelve import pick_dbm

        dbm = pick_dbm(dbm)  # "dumb" is "dbm.dumb", as recorded
    rules: dict[str, Any] = {"max_age": max_age, "clean_interval": clean_interval, "clean_limit": clean_limit}
    files: StoreDir | None = None
    engine: Any
    if backend == "memory":
        from .backends.memory import MemoryEngine

        settings: dict[str, Any] = {
            "backend": "memory",
            "shards": shards or DEFAULTS["shards"],
            "codec": codec or DEFAULTS["codec"],
            **_rules(rules, {}),
        }
        n = settings["shards"]
        engine = MemoryEngine(path, n)
        locks = engine.locks  # shared by every store on this path, like the data
        codec_obj = Codec(settings["codec"], secret, max_value_size)
    else:
        files = StoreDir(path, create=True)
        engine, locks, codec_obj, settings = _open_files(
            files, backend, shards, codec, dbm, secret, max_value_size, durability, map_size, float(timeout), rules
        )
        n = settings["shards"]
    store = Store(
        path,
        engine,
        locks,
        codec_obj,
        shards=n,
        max_age=float(settings["max_age"]),
        clean_interval=float(settings["clean_interval"]),
        touch_interval=float(touch_interval),
        timeout=float(timeout),
        clean_limit=int(settings["clean_limit"]),
        durability=durability,
        clock=clock,
        settings=settings,
        files=files,
    )
    # what a pickled store carries to reopen itself in another process (multiprocessing "spawn")
    store._reopen = {
        "max_age": store.max_age,
        "clean_interval": store.clean_interval,
        "touch_interval": touch_interval,
        "timeout": timeout,
        "max_value_size": max_value_size,
        "secret": secret,
        "durability": durability,
        "clean_limit": store.clean_limit,
        "map_size": map_size,
        "clock": clock,
    }
    return store


def _open_files(
    files: StoreDir,
    backend: str | None,
    shards: int | None,
    codec: str | None,
    dbm: str | None,
    secret: bytes | str | None,
    max_value_size: int,
    durability: str,
    map_size: int | None,
    timeout: float,
    rules: dict[str, Any],
) -> tuple[Any, ShardLocks, Codec, dict[str, Any]]:
    """Engine, locks, codec and settings of the store in the checked, pinned directory *files*."""
    path = files.path
    try:
        check_tree(path, files.pinned)  # before anything is written or read in it
        settings = _settings(files, backend, shards, codec, dbm, secret is not None, rules)
        codec_obj = Codec(settings["codec"], secret, max_value_size, scope=settings.get("store_id", "").encode())
        n = int(settings["shards"])
        engine: Any
        if settings["backend"] == "lmdb":
            from .backends.lmdb import LmdbEngine

            engine = LmdbEngine(files.subdir("lmdb"), n, durability, map_size, FILE_MODE, label=path)
        else:
            from .backends.shelve import ShelveEngine

            legacy = settings["format"] == 1
            engine = ShelveEngine(
                files.subdir("shelve"), n, settings["dbm"], durability, FILE_MODE, legacy=legacy, label=path
            )
        locks = ShardLocks(files.pinned, n, FILE_MODE, label=path)
        if settings["backend"] == "shelve" and settings["format"] == 1:
            settings = _upgrade_shelve(files, engine, locks, n, timeout)
    except BaseException:
        files.close()
        raise
    return engine, locks, codec_obj, settings


def read_meta(path: str) -> dict[str, Any] | None:
    """The recorded, validated settings of the store at *path*, or None if there is no store there."""
    try:
        files = StoreDir(os.path.abspath(path), create=False)
    except LockstoreError:
        if not os.path.lexists(path):
            return None
        raise
    try:
        return files.read_meta()
    finally:
        files.close()


@contextlib.contextmanager
def _meta_lock(files: StoreDir) -> Iterator[None]:
    """Serialise the processes that rewrite the metadata of one store (``lock-meta``, never deleted)."""
    fd = os.open("lock-meta", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE, dir_fd=files.fd)
    try:
        if not try_flock(fd) and not wait_flock(fd, time.monotonic() + 30, first=0.001, cap=0.05):
            raise LockTimeout(f"the metadata of {files.path} stayed locked for 30 s")
        try:
            yield
        finally:
            unflock(fd)
    finally:
        os.close(fd)


def _settings(
    files: StoreDir,
    backend: str | None,
    shards: int | None,
    codec: str | None,
    dbm: str | None,
    signed: bool,
    given: dict[str, Any],
) -> dict[str, Any]:
    meta = files.read_meta()
    if meta is None:
        meta = {
            "format": FORMAT,
            "backend": backend or DEFAULTS["backend"],
            "shards": shards or DEFAULTS["shards"],
            "codec": codec or DEFAULTS["codec"],
            "signed": signed,
            "store_id": secrets.token_hex(16),
            **_rules(given, {}),
        }
        if meta["backend"] == "shelve":
            from .backends.shelve import pick_dbm

            meta["dbm"] = pick_dbm(dbm)
        meta = files.write_meta(meta, replace=False)
    where = f"store at {files.path}"
    asked = {"backend": backend, "shards": shards, "codec": codec, "dbm": dbm}
    for name, value in asked.items():
        if value is not None and meta.get(name) != value:
            raise StoreMismatch(f"{where} was created with {name}={meta.get(name)!r}; opened with {name}={value!r}")
    if meta["signed"] != signed:
        raise StoreMismatch(
            f"{where} was created {'with' if meta['signed'] else 'without'} a secret; "
            f"open it {'with its secret=' if meta['signed'] else 'without secret='}"
        )
    if not all(rule in meta for rule in RULES):
        # created by a lockstore that did not record its sweep rules: the application says them once
        if given["max_age"] is None:
            raise StoreMismatch(
                f"{where} was created by an older lockstore and records no max_age: open it once with the "
                "application's max_age= (and clean_interval=, clean_limit=) to record them, or run "
                "'lockstore config PATH --max-age SECONDS'"
            )
        with _meta_lock(files):
            meta = files.read_meta() or meta
            if not all(rule in meta for rule in RULES):
                meta = files.write_meta({**meta, **_rules(given, meta)}, replace=True)
    _check_rules(where, meta, given)
    return meta


def _upgrade_shelve(files: StoreDir, engine: Any, locks: ShardLocks, shards: int, timeout: float) -> dict[str, Any]:
    """Rewrite a format-1 shelve store's values (pickled by :class:`shelve.Shelf`) as raw records, then
    record format 2; returns the new metadata.

    Under every shard lock (ascending) and the metadata lock, so no process writes meanwhile; each value is
    rewritten by an atomic put, so a conversion killed half-way leaves a mix that the next open, still
    seeing format 1, reads and finishes. The legacy values are unwrapped by a strict parser, never pickle.
    """
    with contextlib.ExitStack() as stack:
        for shard in range(shards):
            stack.enter_context(locks.held(shard, timeout))
        stack.enter_context(_meta_lock(files))
        meta = files.read_meta()
        if meta is None:  # pragma: no cover - it was read a moment ago, and is never removed
            raise StoreMismatch(f"the metadata of {files.path} vanished")
        if meta["format"] != 1:
            return meta  # another process converted it meanwhile
        converted = sum(engine.upgrade(shard) for shard in range(shards))
        logger.info("store at %s: %d shelve values converted to format 2", files.path, converted)
        meta = files.write_meta({**meta, "format": FORMAT}, replace=True)
        engine.legacy = False  # from now on a pickle in a shard is an attacker's: refused
        return meta


def _rules(given: dict[str, Any], recorded: dict[str, Any]) -> dict[str, Any]:
    """The sweep rules to record: what was given, else what is recorded, else the defaults."""
    out: dict[str, Any] = {}
    for name in RULES:
        value = given.get(name)
        if value is None:
            value = recorded.get(name, RULE_DEFAULTS[name])
        out[name] = int(value) if name == "clean_limit" else float(value)
    return out


def _check_rules(where: str, meta: dict[str, Any], given: dict[str, Any]) -> None:
    for name in RULES:
        value = given.get(name)
        if value is not None and value != meta[name]:
            raise StoreMismatch(
                f"{where} records {name}={meta[name]!r}, opened with {name}={value!r}: every process must sweep by "
                f"the same rule (open without {name}= to use the recorded one, or change it with "
                f"'lockstore config PATH --{name.replace('_', '-')} VALUE')"
            )


def set_rules(
    path: str | os.PathLike[str],
    *,
    max_age: float | None = None,
    clean_interval: float | None = None,
    clean_limit: int | None = None,
) -> dict[str, Any]:
    """Change the recorded sweep rules of the embedded store at *path*; returns the new metadata.

    Processes that have the store open keep their rules in memory; each notices the change before its
    next sweep and skips sweeping (logging a warning) until it is restarted, so no process ever sweeps by
    a rule other than the store's.
    """
    check_numbers(max_age, clean_interval, 0, 0, 1, clean_limit, None)
    files = StoreDir(os.path.abspath(os.fspath(path)), create=False)
    try:
        with _meta_lock(files):
            meta = files.read_meta()
            if meta is None:
                raise LockstoreError(f"no store at {path}: the directory holds no lockstore metadata")
            given = {"max_age": max_age, "clean_interval": clean_interval, "clean_limit": clean_limit}
            return files.write_meta({**meta, **_rules(given, meta)}, replace=True)
    finally:
        files.close()


def reopen(path: str, options: dict[str, Any]) -> BaseStore:
    """Open a store unpickled in another process: the same path and options, its own handles."""
    return open(path, **options)


def _open_remote(url: str, **options: Any) -> BaseStore:
    module, function = REMOTE_SCHEMES[url.partition("://")[0]]
    opener: Callable[..., BaseStore] = getattr(importlib.import_module(module, __package__), function)
    return opener(url, **options)
