"""``lockstore.open``: create or open a store, checking its recorded settings and its files' safety."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from typing import Any, Unpack, overload

from ._files import FILE_MODE, FORMAT, RULES, StoreDir, check_tree
from .codec import Codec
from .errors import LockstoreError, LockTimeout, StoreMismatch
from .locks import ShardLocks, try_flock, unflock, wait_flock
from .options import DEFAULTS, EMBEDDED, EmbeddedOptions, OpenOptions, Options
from .store import BaseStore, Store

logger = logging.getLogger(__name__)
REMOTE_SCHEMES = {
    "redis": (".remote.redis", "RedisStore"),
    "rediss": (".remote.redis", "RedisStore"),
    "redis+cluster": (".remote.redis_cluster", "RedisClusterStore"),
    "postgresql": (".remote.postgres", "PostgresStore"),
    "postgres": (".remote.postgres", "PostgresStore"),
}
"""URL scheme -> (module, class) of the remote store; imported only when used (optional extras)."""


@overload
def open(path: os.PathLike[str], *, create: bool = True, **options: Unpack[EmbeddedOptions]) -> Store: ...


@overload
def open(path: str, *, create: bool = True, **options: Unpack[OpenOptions]) -> BaseStore: ...


def open(path: str | os.PathLike[str], *, create: bool = True, **options: Any) -> BaseStore:
    """Open the session store at *path*, creating it if needed.

    Parameters
    ----------
    path
        A directory (created 0700 with its missing parents; see "Raises" for what is refused), or a
        ``redis://``, ``rediss://``, ``postgresql://`` or ``postgres://`` URL. A path gives a
        :class:`~lockstore.Store`; a URL a Redis or PostgreSQL store with the same interface.
    create : bool, default True
        False: the store must exist already (:class:`~lockstore.StoreMismatch` if it does not), and opening
        it writes nothing: no directory, metadata, table or key is created.
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
        ``"process"`` survives any process being killed; ``"system"`` also a machine crash: every commit
        synced (directory stores), ``synchronous_commit=on`` (PostgreSQL; ``"process"`` sets it off), or on a
        replica before it returns (Redis: ``WAIT 1``).
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
        Redis and PostgreSQL: the lease of a session's lock, renewed while its holder lives, so a dead holder
        blocks the session at most this long and one paused past it gets :class:`~lockstore.LockLost`
        (default 5 on Redis, 30 on PostgreSQL).
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
        An option is out of range or of the wrong type (:class:`~lockstore.options.Options` checks them
        all before anything is created), or does not apply to this kind of store.
    BackendUnavailable
        A server cannot be reached.
    """
    return open_with(path, Options(**options), create=create)


open.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter("path", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("create", inspect.Parameter.KEYWORD_ONLY, default=True),
        *(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default) for f in fields(Options)),
    ],
    return_annotation="BaseStore",
)


def open_with(path: str | os.PathLike[str], options: Options, *, create: bool = True) -> BaseStore:
    """:func:`open` with its options already built (and so checked): a pickled store reopens through it."""
    if isinstance(path, str) and "://" in path:
        scheme = path.partition("://")[0]
        if scheme not in REMOTE_SCHEMES:
            raise ValueError(f"unknown store URL scheme {scheme!r}: use {', '.join(REMOTE_SCHEMES)}")
        module, name = REMOTE_SCHEMES[scheme]
        store_class: Callable[..., BaseStore] = getattr(importlib.import_module(module, __package__), name)
        return store_class(path, options, create=create)
    options.only("a directory", EMBEDDED)
    path = os.path.abspath(os.fspath(path))
    dbm = None
    if options.dbm is not None:
        from .backends.shelve import pick_dbm

        dbm = pick_dbm(options.dbm)  # "dumb" is "dbm.dumb", as recorded; unknown: refused before any file exists
    files: StoreDir | None = None
    engine: Any
    if options.backend == "memory":
        from .backends.memory import MemoryEngine

        settings: dict[str, Any] = {
            "backend": "memory",
            "shards": options.shards or DEFAULTS["shards"],
            "codec": options.codec or DEFAULTS["codec"],
            **options.rules_to_record({}),
        }
        engine = MemoryEngine(path, settings["shards"])
        locks = engine.locks  # shared by every store on this path, like the data
        codec = Codec(settings["codec"], options.secret, options.max_value_size)
        return Store(path, engine, locks, codec, options, settings=settings)
    try:
        files = StoreDir(path, create=create)
    except LockstoreError:
        if create or os.path.lexists(path):
            raise
        raise StoreMismatch(f"no store at {path}: no such directory (opened with create=False)") from None
    engine, locks, codec, settings = _open_files(files, options, dbm, create)
    return Store(path, engine, locks, codec, options, settings=settings, files=files, reopen=open_with)


def _open_files(
    files: StoreDir, options: Options, dbm: str | None, create: bool
) -> tuple[Any, ShardLocks, Codec, dict[str, Any]]:
    """Engine, locks, codec and settings of the store in the checked, pinned directory *files*."""
    path = files.path
    try:
        check_tree(path, files.pinned)  # before anything is written or read in it
        settings = _settings(files, options, dbm, create)
        codec = Codec(
            settings["codec"], options.secret, options.max_value_size, scope=settings.get("store_id", "").encode()
        )
        n = int(settings["shards"])
        engine = ENGINES[settings["backend"]](files, n, settings, options)
        locks = ShardLocks(files.pinned, n, FILE_MODE, label=path)
        if settings["backend"] == "shelve" and settings["format"] == 1:
            settings = _upgrade_shelve(files, engine, locks, n, float(options.timeout))
    except BaseException:
        files.close()
        raise
    return engine, locks, codec, settings


def _lmdb(files: StoreDir, shards: int, settings: dict[str, Any], options: Options) -> Any:
    from .backends.lmdb import LmdbEngine

    return LmdbEngine(files.subdir("lmdb"), shards, options.durability, options.map_size, FILE_MODE, label=files.path)


def _shelve(files: StoreDir, shards: int, settings: dict[str, Any], options: Options) -> Any:
    from .backends.shelve import ShelveEngine

    legacy = settings["format"] == 1
    dbm = settings["dbm"]
    return ShelveEngine(
        files.subdir("shelve"), shards, dbm, options.durability, FILE_MODE, legacy=legacy, label=files.path
    )


ENGINES: dict[str, Callable[[StoreDir, int, dict[str, Any], Options], Any]] = {"lmdb": _lmdb, "shelve": _shelve}
"""Recorded backend name -> the engine of a directory store (imported only when used)."""


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


def _settings(files: StoreDir, options: Options, dbm: str | None, create: bool) -> dict[str, Any]:
    meta = files.read_meta()
    where = f"store at {files.path}"
    if meta is None:
        if not create:
            raise StoreMismatch(f"no {where}: the directory holds no lockstore metadata (opened with create=False)")
        meta = {
            "format": FORMAT,
            "backend": options.backend or DEFAULTS["backend"],
            "shards": options.shards or DEFAULTS["shards"],
            "codec": options.codec or DEFAULTS["codec"],
            "signed": options.secret is not None,
            "store_id": secrets.token_hex(16),
            **options.rules_to_record({}),
        }
        if meta["backend"] == "shelve":
            from .backends.shelve import pick_dbm

            meta["dbm"] = pick_dbm(dbm)
        meta = files.write_meta(meta, replace=False)
    asked = {"backend": options.backend, "shards": options.shards, "codec": options.codec, "dbm": dbm}
    for name, value in asked.items():
        if value is not None and meta.get(name) != value:
            raise StoreMismatch(f"{where} was created with {name}={meta.get(name)!r}; opened with {name}={value!r}")
    if meta["signed"] != (options.secret is not None):
        raise StoreMismatch(
            f"{where} was created {'with' if meta['signed'] else 'without'} a secret; "
            f"open it {'with its secret=' if meta['signed'] else 'without secret='}"
        )
    if not all(rule in meta for rule in RULES):
        # created by a lockstore that did not record its sweep rules: the application says them once
        if options.max_age is None:
            raise StoreMismatch(
                f"{where} was created by an older lockstore and records no max_age: open it once with the "
                "application's max_age= (and clean_interval=, clean_limit=) to record them, or run "
                "'lockstore config PATH --max-age SECONDS'"
            )
        with _meta_lock(files):
            meta = files.read_meta() or meta
            if not all(rule in meta for rule in RULES):
                meta = files.write_meta({**meta, **options.rules_to_record(meta)}, replace=True)
    for rule, given in options.rules().items():
        if given is not None and given != meta[rule]:
            raise StoreMismatch(
                f"{where} records {rule}={meta[rule]!r}, opened with {rule}={given!r}: every process must sweep by "
                f"the same rule (open without {rule}= to use the recorded one, or change it with "
                f"'lockstore config PATH --{rule.replace('_', '-')} VALUE')"
            )
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
    given = Options(max_age=max_age, clean_interval=clean_interval, clean_limit=clean_limit)  # checks them
    files = StoreDir(os.path.abspath(os.fspath(path)), create=False)
    try:
        with _meta_lock(files):
            meta = files.read_meta()
            if meta is None:
                raise LockstoreError(f"no store at {path}: the directory holds no lockstore metadata")
            return files.write_meta({**meta, **given.rules_to_record(meta)}, replace=True)
    finally:
        files.close()


__all__ = ["ENGINES", "REMOTE_SCHEMES", "open", "open_with", "read_meta", "set_rules"]
