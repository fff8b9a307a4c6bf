"""``lockstore.open``: create or open a store, checking its recorded settings and its files' safety."""

from __future__ import annotations

import builtins
import contextlib
import json
import math
import os
import stat
from typing import Any

from .codec import Codec, codec_functions
from .errors import LockstoreError, StorageError, StoreMismatch, UnsafeStore
from .locks import ShardLocks
from .store import BaseStore, Clock, Store

FORMAT = 1
META = "lockstore.json"
DEFAULTS = {"backend": "lmdb", "shards": 16, "codec": "pickle"}
BACKENDS = ("lmdb", "shelve", "memory")
DURABILITY = ("process", "system")
SETTINGS_KEYS = {
    "BACKEND": "backend",
    "SHARDS": "shards",
    "CODEC": "codec",
    "MAX_AGE": "max_age",
    "CLEAN_INTERVAL": "clean_interval",
    "CLEAN_LIMIT": "clean_limit",
    "TOUCH_INTERVAL": "touch_interval",
    "TIMEOUT": "timeout",
    "MAX_VALUE_SIZE": "max_value_size",
    "SECRET": "secret",
    "DURABILITY": "durability",
    "DBM": "dbm",
    "MAP_SIZE": "map_size",
}
"""Framework settings (``LOCKSTORE_MAX_AGE`` in Flask, ``LOCKSTORE = {"MAX_AGE": ...}`` in Django) -> open()."""
REMOTE_SCHEMES = ("redis", "rediss", "postgresql", "postgres")
DIR_MODE = 0o700
FILE_MODE = 0o600


def open(
    path: str | os.PathLike[str],
    *,
    backend: str | None = None,
    shards: int | None = None,
    codec: str | None = None,
    max_age: float = 1800,
    clean_interval: float = 300,
    touch_interval: float = 60,
    timeout: float = 10.0,
    max_value_size: int = 1 << 20,
    secret: bytes | str | None = None,
    durability: str = "process",
    clean_limit: int = 1000,
    dbm: str | None = None,
    map_size: int | None = None,
    clock: Clock | None = None,
    **options: Any,
) -> BaseStore:
    """Open the store at *path*, creating it if needed. See the README for every option."""
    if isinstance(path, str) and path.partition("://")[0] in REMOTE_SCHEMES:
        embedded_only = {"backend": backend, "shards": shards, "dbm": dbm, "map_size": map_size}
        given = sorted(name for name, value in embedded_only.items() if value is not None)
        if durability != "process":
            given.append("durability")
        if given:
            raise TypeError(
                f"option(s) for embedded stores only, not for {path.partition('://')[0]}: {', '.join(given)}"
            )
        _check_numbers(max_age, clean_interval, touch_interval, timeout, max_value_size, clean_limit, None)
        return _open_remote(
            path,
            codec=codec,
            max_age=max_age,
            clean_interval=clean_interval,
            clean_limit=clean_limit,
            touch_interval=touch_interval,
            timeout=timeout,
            max_value_size=max_value_size,
            secret=secret,
            clock=clock,
            **options,
        )
    if options:
        raise TypeError(f"unknown option(s) for an embedded store: {', '.join(sorted(options))}")
    path = os.path.abspath(os.fspath(path))
    _check_numbers(max_age, clean_interval, touch_interval, timeout, max_value_size, clean_limit, shards)
    if backend is not None and backend not in BACKENDS:
        raise StoreMismatch(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if durability not in DURABILITY:
        raise ValueError(f"durability must be 'process' or 'system', not {durability!r}")
    if codec is not None:
        codec_functions(codec)  # unknown codec or missing package: a clear error before any file exists

    if backend == "memory":
        settings: dict[str, Any] = {
            "backend": "memory",
            "shards": shards or DEFAULTS["shards"],
            "codec": codec or DEFAULTS["codec"],
        }
    else:
        settings = _settings(path, backend, shards, codec, dbm, secret is not None)
    codec_obj = Codec(settings["codec"], secret, max_value_size)
    if settings["codec"] == "pickle" and settings["backend"] != "memory":
        check_ownership(path)
    n = int(settings["shards"])
    engine: Any
    if settings["backend"] == "memory":
        from .backends.memory import MemoryEngine

        engine = MemoryEngine(path, n)
        locks = engine.locks  # shared by every store on this path, like the data
    elif settings["backend"] == "lmdb":
        from .backends.lmdb import LmdbEngine

        directory = _subdir(path, "lmdb")
        engine, locks = LmdbEngine(directory, n, durability, map_size, FILE_MODE), ShardLocks(path, n, FILE_MODE)
    else:
        from .backends.shelve import ShelveEngine

        directory = _subdir(path, "shelve")
        engine = ShelveEngine(directory, n, settings["dbm"], durability, FILE_MODE)
        locks = ShardLocks(path, n, FILE_MODE)
    store = Store(
        path,
        engine,
        locks,
        codec_obj,
        shards=n,
        max_age=float(max_age),
        clean_interval=float(clean_interval),
        touch_interval=float(touch_interval),
        timeout=float(timeout),
        clean_limit=clean_limit,
        durability=durability,
        clock=clock,
        settings=settings,
    )
    # what a pickled store carries to reopen itself in another process (multiprocessing "spawn")
    store._reopen = {
        "max_age": max_age,
        "clean_interval": clean_interval,
        "touch_interval": touch_interval,
        "timeout": timeout,
        "max_value_size": max_value_size,
        "secret": secret,
        "durability": durability,
        "clean_limit": clean_limit,
        "map_size": map_size,
        "clock": clock,
    }
    return store


def reopen(path: str, options: dict[str, Any]) -> BaseStore:
    """Open a store unpickled in another process: the same path and options, its own handles."""
    return open(path, **options)


def _open_remote(url: str, **options: Any) -> BaseStore:
    scheme = url.partition("://")[0]
    if scheme in ("redis", "rediss"):
        from .backends.redis import open_redis

        return open_redis(url, **options)
    from .backends.postgres import open_postgres

    return open_postgres(url, **options)


def _check_numbers(
    max_age: float,
    clean_interval: float,
    touch_interval: float,
    timeout: float,
    max_value_size: int,
    clean_limit: int,
    shards: int | None,
) -> None:
    for name, value in (
        ("max_age", max_age),
        ("clean_interval", clean_interval),
        ("touch_interval", touch_interval),
        ("timeout", timeout),
    ):
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value < 0:
            raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
    if max_age <= 0:
        raise ValueError(f"max_age must be > 0, not {max_age!r}")
    if isinstance(max_value_size, bool) or not isinstance(max_value_size, int) or max_value_size < 1:
        raise ValueError(f"max_value_size must be a positive int, not {max_value_size!r}")
    if isinstance(clean_limit, bool) or not isinstance(clean_limit, int) or clean_limit < 1:
        raise ValueError(f"clean_limit must be a positive int, not {clean_limit!r}")
    if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= 4096):
        raise ValueError(f"shards must be an int from 1 to 4096, not {shards!r}")


def _mkdir(path: str) -> None:
    try:
        os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    except FileExistsError:
        raise LockstoreError(f"{path} exists and is not a directory") from None
    except OSError as exc:
        raise LockstoreError(f"cannot create store directory {path}: {exc.strerror}") from None
    if not os.path.isdir(path):
        raise LockstoreError(f"{path} exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise LockstoreError(f"store directory {path} is not writable by this user")


def _subdir(path: str, name: str) -> str:
    sub = os.path.join(path, name)
    _mkdir(sub)
    return sub


def read_meta(path: str) -> dict[str, Any] | None:
    """The recorded settings of the store at *path*, or None if there is no store there."""
    meta_path = os.path.join(path, META)
    try:
        with builtins.open(meta_path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LockstoreError(f"cannot read {meta_path}: {exc.strerror}") from None
    try:
        meta = json.loads(raw)
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise StoreMismatch(f"{meta_path} is not lockstore metadata: {exc}") from None
    if meta.get("format", 0) > FORMAT:
        raise StoreMismatch(
            f"store at {path} has format {meta.get('format')}, newer than this lockstore reads ({FORMAT}): upgrade"
        )
    return meta


def _settings(
    path: str, backend: str | None, shards: int | None, codec: str | None, dbm: str | None, signed: bool
) -> dict[str, Any]:
    _mkdir(path)
    meta = read_meta(path)
    if meta is None:
        meta = {
            "format": FORMAT,
            "backend": backend or DEFAULTS["backend"],
            "shards": shards or DEFAULTS["shards"],
            "codec": codec or DEFAULTS["codec"],
            "signed": signed,
        }
        if meta["backend"] == "shelve":
            from .backends.shelve import pick_dbm

            meta["dbm"] = pick_dbm(dbm)
        elif dbm is not None:
            raise StoreMismatch("dbm= applies to the shelve backend only")
        meta = _create_meta(path, meta)
    asked = {"backend": backend, "shards": shards, "codec": codec, "dbm": dbm}
    for name, value in asked.items():
        if value is not None and meta.get(name) != value:
            raise StoreMismatch(
                f"store at {path} was created with {name}={meta.get(name)!r}; opened with {name}={value!r}"
            )
    if bool(meta.get("signed")) != signed:
        raise StoreMismatch(
            f"store at {path} was created {'with' if meta.get('signed') else 'without'} a secret; "
            f"open it {'with its secret=' if meta.get('signed') else 'without secret='}"
        )
    return meta


def _create_meta(path: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Write the metadata atomically; if another process won the race, return its metadata."""
    final = os.path.join(path, META)
    tmp = os.path.join(path, f".{META}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            os.write(fd, json.dumps(meta, indent=1).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StorageError(f"cannot create store metadata in {path}: {exc.strerror or exc}") from None
    try:
        os.link(tmp, final)
    except FileExistsError:
        other = read_meta(path)
        assert other is not None
        return other
    finally:
        os.unlink(tmp)
    return meta


def check_ownership(path: str) -> None:
    """Refuse a pickle store another user owns or could write (OpenSSH's StrictModes rule)."""
    uid = os.geteuid()
    for root, dirs, files in os.walk(path):
        # lock files and the request-lock stripes are never read: only what is unpickled matters
        dirs[:] = [d for d in dirs if d != "stripes"]
        names = [os.path.join(root, n) for n in dirs + files if not (root == path and n.startswith("lock-"))]
        for name in [root, *names]:
            try:
                st = os.lstat(name)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeStore(f"{name} is a symbolic link: a pickle store holds no links")
            if st.st_uid != uid:
                raise UnsafeStore(
                    f"{name} is owned by uid {st.st_uid}, not {uid}: refusing to unpickle from it "
                    "(use codec='json', or fix the ownership)"
                )
            if st.st_mode & 0o022:
                raise UnsafeStore(
                    f"{name} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}): "
                    "refusing to unpickle from it (chmod go-w, or use codec='json')"
                )
