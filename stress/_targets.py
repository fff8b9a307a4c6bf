"""What the benchmarks measure: lockstore's backends, the raw-LMDB reference, naive designs, peers.

Every target is opened inside the process that uses it (never across ``fork``) and offers the same
operations on sessions that are dicts of about 1 KB: ``get``, ``set``, ``rmw`` (add 1 to ``n``,
atomically where the target can), ``load`` (fill quickly, with given last-access times), ``clean``
(remove the expired ones; None where the target has no expiry) and ``bytes_on_disk``.

- ``raw-lmdb``: the physical reference. One LMDB environment, the same flags lockstore uses for the
  chosen durability, each record an 8-byte last-access time plus the pickled value; a get decodes,
  a read-modify-write is one write transaction (LMDB's own writer lock, no file lock).
- ``lmdb+filelock``: raw LMDB with a ``filelock.FileLock`` per shard taken around each operation
  (filelock's defaults: a contended waiter sleeps 50 ms between attempts).
- ``naive-shelve``: every operation takes the shard's ``FileLock``, opens the shard's ``dbm.dumb``
  shelf, works, closes it: the design lockstore's shelve backend replaces.
- peers: ``diskcache`` (``Cache``; ``transact()`` makes the read-modify-write atomic),
  ``sqlitedict`` (autocommit) and cachelib's ``FileSystemCache`` (Flask-Session's filesystem
  backend; ``threshold=0`` so it never evicts live sessions). The last two have no atomic update:
  their lost updates are counted.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import time
import zlib
from collections.abc import Iterable
from typing import Any

SHARDS = 16
MAX_AGE = 1800.0
_T = struct.Struct("<d")


def du(path: str) -> int:
    """Bytes allocated on disk under *path* (like ``du``), sparse files counted as allocated."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


class Target:
    name = "?"
    atomic = True  # rmw cannot lose an update
    multiprocess = True
    has_expiry = True

    def __init__(self, directory: str, durability: str) -> None:
        self.directory = directory
        self.durability = durability

    def get(self, key: str) -> Any:
        raise NotImplementedError

    def set(self, key: str, value: dict[str, Any]) -> None:
        raise NotImplementedError

    def rmw(self, key: str) -> None:
        raise NotImplementedError

    def load(self, items: Iterable[tuple[str, dict[str, Any], float]]) -> None:
        """Store (key, value, last access) triples, as fast as the target allows."""
        for key, value, _atime in items:
            self.set(key, value)

    def clean(self) -> int | None:
        return None

    def bytes_on_disk(self) -> int:
        return du(self.directory)

    def close(self) -> None:
        pass


class LockstoreTarget(Target):
    def __init__(self, directory: str, durability: str, backend: str, **options: Any) -> None:
        import lockstore

        super().__init__(directory, durability)
        self.name = f"lockstore {backend}"
        self.multiprocess = backend != "memory"
        self.store = lockstore.open(directory, backend=backend, durability=durability, max_age=MAX_AGE, **options)

    def get(self, key: str) -> Any:
        return self.store.get(key)

    def set(self, key: str, value: dict[str, Any]) -> None:
        self.store[key] = value

    def rmw(self, key: str) -> None:
        with self.store.edit(key) as s:
            s["n"] = s.get("n", 0) + 1

    def load(self, items: Iterable[tuple[str, dict[str, Any], float]]) -> None:
        put = self.store.put_record
        for key, value, atime in items:
            put(key, value, created=atime, last_access=atime)

    def clean(self) -> int:
        return int(self.store.clean())

    def bytes_on_disk(self) -> int:
        return int(self.store.stats()["bytes"]) if self.store.backend != "memory" else 0

    def close(self) -> None:
        self.store.close()


class RawLmdb(Target):
    name = "raw-lmdb"

    def __init__(self, directory: str, durability: str) -> None:
        import lmdb

        super().__init__(directory, durability)
        system = durability == "system"
        # the flags lockstore's LMDB engine uses, so the comparison is of the same physical work
        self.env = lmdb.open(
            directory,
            map_size=64 << 30,
            max_readers=1024,
            sync=system,
            metasync=system,
            lock=True,
            readahead=False,
            mode=0o600,
        )

    def get(self, key: str) -> Any:
        with self.env.begin() as txn:
            raw = txn.get(key.encode())
        return None if raw is None else pickle.loads(memoryview(raw)[8:])

    def set(self, key: str, value: dict[str, Any]) -> None:
        data = _T.pack(time.time()) + pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        with self.env.begin(write=True) as txn:
            txn.put(key.encode(), data)

    def rmw(self, key: str) -> None:
        k = key.encode()
        with self.env.begin(write=True) as txn:
            raw = txn.get(k)
            value = {} if raw is None else pickle.loads(memoryview(raw)[8:])
            value["n"] = value.get("n", 0) + 1
            txn.put(k, _T.pack(time.time()) + pickle.dumps(value, pickle.HIGHEST_PROTOCOL))

    def load(self, items: Iterable[tuple[str, dict[str, Any], float]]) -> None:
        batch: list[tuple[bytes, bytes]] = []
        for key, value, atime in items:
            batch.append((key.encode(), _T.pack(atime) + pickle.dumps(value, pickle.HIGHEST_PROTOCOL)))
            if len(batch) >= 10_000:
                self._put_many(batch)
                batch = []
        self._put_many(batch)

    def _put_many(self, batch: list[tuple[bytes, bytes]]) -> None:
        with self.env.begin(write=True) as txn:
            for k, v in batch:
                txn.put(k, v)

    def clean(self) -> int:
        """One write transaction scanning every record's time: the least work a full sweep can do."""
        cutoff = time.time() - MAX_AGE
        removed = 0
        with self.env.begin(write=True) as txn:
            with txn.cursor() as cur:
                doomed = [k for k, v in cur.iternext() if _T.unpack_from(v)[0] < cutoff]
            for k in doomed:
                txn.delete(k)
                removed += 1
        return removed

    def close(self) -> None:
        self.env.close()


class LmdbFileLock(RawLmdb):
    name = "lmdb+filelock"

    def __init__(self, directory: str, durability: str) -> None:
        from filelock import FileLock

        super().__init__(directory, durability)
        self.locks = [FileLock(os.path.join(directory, f"lock-{i:02d}")) for i in range(SHARDS)]

    def _lock(self, key: str) -> Any:
        return self.locks[zlib.crc32(key.encode()) % SHARDS]

    def get(self, key: str) -> Any:
        with self._lock(key):
            return super().get(key)

    def set(self, key: str, value: dict[str, Any]) -> None:
        with self._lock(key):
            super().set(key, value)

    def rmw(self, key: str) -> None:
        with self._lock(key):
            super().rmw(key)


class NaiveShelve(Target):
    """Every operation: shard lock, open the shelf, work, close (the classic shelve session store)."""

    name = "naive-shelve"

    def __init__(self, directory: str, durability: str) -> None:
        from filelock import FileLock

        super().__init__(directory, durability)
        self.locks = [FileLock(os.path.join(directory, f"lock-{i:02d}")) for i in range(SHARDS)]

    def _shard(self, key: str) -> int:
        return zlib.crc32(key.encode()) % SHARDS

    @contextlib.contextmanager
    def _shelf(self, shard: int) -> Any:
        import dbm.dumb
        import shelve

        with self.locks[shard]:
            db: Any = dbm.dumb.open(os.path.join(self.directory, f"shard-{shard:02d}"), "c")  # noqa: SIM115
            shelf: shelve.Shelf[Any] = shelve.Shelf(db, protocol=pickle.HIGHEST_PROTOCOL)
            with shelf:  # closes the dbm too
                yield shelf

    def get(self, key: str) -> Any:
        with self._shelf(self._shard(key)) as shelf:
            rec = shelf.get(key)
            return None if rec is None or time.time() - rec["_lastaccess"] > MAX_AGE else rec["data"]

    def set(self, key: str, value: dict[str, Any]) -> None:
        with self._shelf(self._shard(key)) as shelf:
            shelf[key] = {"_lastaccess": time.time(), "data": value}

    def rmw(self, key: str) -> None:
        with self._shelf(self._shard(key)) as shelf:
            rec = shelf.get(key) or {"data": {}}
            rec["data"]["n"] = rec["data"].get("n", 0) + 1
            rec["_lastaccess"] = time.time()
            shelf[key] = rec

    def load(self, items: Iterable[tuple[str, dict[str, Any], float]]) -> None:
        by_shard: dict[int, list[tuple[str, dict[str, Any], float]]] = {}
        for item in items:
            by_shard.setdefault(self._shard(item[0]), []).append(item)
        for shard, lst in by_shard.items():
            with self._shelf(shard) as shelf:
                for key, value, atime in lst:
                    shelf[key] = {"_lastaccess": atime, "data": value}


class DiskcacheTarget(Target):
    name = "diskcache"

    def __init__(self, directory: str, durability: str) -> None:
        import diskcache

        super().__init__(directory, durability)
        self.cache = diskcache.Cache(directory)

    def get(self, key: str) -> Any:
        return self.cache.get(key)

    def set(self, key: str, value: dict[str, Any]) -> None:
        self.cache.set(key, value, expire=MAX_AGE)

    def rmw(self, key: str) -> None:
        cache = self.cache
        with cache.transact():
            value = cache.get(key) or {}
            value["n"] = value.get("n", 0) + 1
            cache.set(key, value, expire=MAX_AGE)

    def load(self, items: Iterable[tuple[str, dict[str, Any], float]]) -> None:
        now = time.time()
        self.cache.reset("cull_limit", 0)  # or each set() would already remove 10 expired entries
        with self.cache.transact():
            for key, value, atime in items:
                # an expired entry gets a tiny positive lifetime: diskcache has no way to set a past time
                self.cache.set(key, value, expire=max(1e-6, atime + MAX_AGE - now))
        self.cache.reset("cull_limit", 10)

    def clean(self) -> int:
        return int(self.cache.expire())

    def close(self) -> None:
        self.cache.close()


class SqlitedictTarget(Target):
    name = "sqlitedict"
    atomic = False
    has_expiry = False

    def __init__(self, directory: str, durability: str) -> None:
        from sqlitedict import SqliteDict

        super().__init__(directory, durability)
        self.db = SqliteDict(os.path.join(directory, "sessions.sqlite"), autocommit=True, timeout=30)

    def get(self, key: str) -> Any:
        return self.db.get(key)

    def set(self, key: str, value: dict[str, Any]) -> None:
        self.db[key] = value

    def rmw(self, key: str) -> None:
        value = self.db.get(key) or {}
        value["n"] = value.get("n", 0) + 1
        self.db[key] = value

    def load(self, items: Iterable[tuple[str, dict[str, Any], float]]) -> None:
        from sqlitedict import SqliteDict

        self.db.close()
        with SqliteDict(os.path.join(self.directory, "sessions.sqlite"), autocommit=False) as db:
            for key, value, _atime in items:
                db[key] = value
            db.commit()
        self.db = SqliteDict(os.path.join(self.directory, "sessions.sqlite"), autocommit=True, timeout=30)

    def close(self) -> None:
        self.db.close()


class CachelibTarget(Target):
    name = "cachelib-fs"
    atomic = False

    def __init__(self, directory: str, durability: str) -> None:
        from cachelib import FileSystemCache

        super().__init__(directory, durability)
        self.cache = FileSystemCache(directory, threshold=0, default_timeout=int(MAX_AGE))

    def get(self, key: str) -> Any:
        return self.cache.get(key)

    def set(self, key: str, value: dict[str, Any]) -> None:
        self.cache.set(key, value)

    def rmw(self, key: str) -> None:
        value = self.cache.get(key) or {}
        value["n"] = value.get("n", 0) + 1
        self.cache.set(key, value)

    def load(self, items: Iterable[tuple[str, dict[str, Any], float]]) -> None:
        now = time.time()
        for key, value, atime in items:
            expired = atime + MAX_AGE < now
            self.cache.set(key, value, timeout=1 if expired else int(MAX_AGE))
        # entries "expired" above live one more second: the caller waits it out before cleaning

    def clean(self) -> int:
        before = len(os.listdir(self.directory))
        self.cache._remove_expired(time.time())  # what its pruning runs; cachelib has no public sweep
        return before - len(os.listdir(self.directory))


TARGETS = (
    "lockstore lmdb",
    "lockstore shelve",
    "lockstore memory",
    "raw-lmdb",
    "lmdb+filelock",
    "naive-shelve",
    "diskcache",
    "sqlitedict",
    "cachelib-fs",
)


def target_named(text: str) -> str | None:
    """The target *text* names on a command line: its name, or its name with ``-`` for the space
    (``lockstore-lmdb``), which a shell passes as one word without quotes; None if it names none."""
    text = text.strip()
    for name in TARGETS:
        if text in (name, name.replace(" ", "-")):
            return name
    return None


def open_target(name: str, directory: str, durability: str, **options: Any) -> Target:
    if name.startswith("lockstore "):
        return LockstoreTarget(directory, durability, name.split()[1], **options)
    cls = {
        "raw-lmdb": RawLmdb,
        "lmdb+filelock": LmdbFileLock,
        "naive-shelve": NaiveShelve,
        "diskcache": DiskcacheTarget,
        "sqlitedict": SqlitedictTarget,
        "cachelib-fs": CachelibTarget,
    }[name]
    return cls(directory, durability)


def available(name: str) -> str | None:
    """None if the target can run here, else why not (a peer's package is missing)."""
    module = {"diskcache": "diskcache", "sqlitedict": "sqlitedict", "cachelib-fs": "cachelib"}.get(name)
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError:
        return f"{module} is not installed (pip install 'lockstore[bench]')"
    return None


__all__ = ["MAX_AGE", "TARGETS", "Target", "available", "du", "open_target", "target_named"]
