"""The LMDB engine: one environment per store, the main database and two named ones.

- the main database holds the records: key ``shard (2 bytes, big-endian) + id`` -> record (header,
  optional MAC, payload). Keeping them out of a named database saves a page per commit (measured: a
  one-record write transaction 2.9 us against 4.3 us). The named databases' own entries in it (``atime``,
  ``meta``) can never meet a record key, whose first byte is below 0x10 (at most 4,096 shards);
- ``atime``: key ``shard + last access in 32-second buckets (4 bytes, big-endian) + id`` -> empty, the
  index that lets a sweep find a shard's expired sessions without reading the others. Buckets, not exact
  times, so that the many writes a session gets within half a minute leave the index alone;
- ``meta``: ``clean + shard`` -> the time of the shard's last sweep.

The environment is opened lazily in each process and never used across ``fork``: after a fork the child
closes the inherited handle (no transaction is open or cached in it) and opens its own. One environment per path per
process, shared by every store object on that path. Transactions of one process are serialised by a
thread lock, which is what makes growing the map safe: the map is reserved large up front, and when it
fills, the writer grows it under an exclusive file lock, commits to persist the new size, and retries;
other processes adopt the new size when LMDB tells them (``MapResizedError``).
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import lmdb

from .. import record as fmt
from .._process import GENERATION
from ..base import KEEP, Updater
from ..errors import LockstoreError, StorageError, StoreMismatch
from ..locks import try_flock, unflock, wait_flock

T = TypeVar("T")
_BUCKET = struct.Struct(">I")
_SHARD = struct.Struct(">H")
_BUCKET_SECONDS = fmt.BUCKET_SECONDS
_time_at = fmt.TIME.unpack_from
_isfinite = math.isfinite


def _bucket_of(rec: bytes) -> int:
    """The index bucket of a stored record (``record.bucket`` of its last access), -1 for a damaged one (it
    has no index entry); in one call, as it runs twice in every write."""
    if len(rec) < fmt.HEADER_SIZE:
        return -1
    atime: float = _time_at(rec, 2)[0]
    return max(0, int(atime // _BUCKET_SECONDS)) if _isfinite(atime) else -1


DEFAULT_MAP_SIZE = 64 << 30  # reserved address space, not disk: the file grows as it fills


class _Env:
    """One process's handle on one environment."""

    def __init__(self, directory: str, durability: str, map_size: int, file_mode: int) -> None:
        system = durability == "system"
        self.durability = durability
        self.env = lmdb.open(
            directory,
            map_size=map_size,
            max_dbs=4,
            max_readers=1024,
            max_spare_txns=0,
            sync=system,
            metasync=system,
            lock=True,
            readahead=False,
            mode=file_mode,
        )
        self.env.reader_check()  # free the slots of readers that died
        self.records = self.env.open_db(None)
        self.atime = self.env.open_db(b"atime")
        self.meta = self.env.open_db(b"meta")
        self.mutex = threading.Lock()
        self.users = 0


_envs: dict[tuple[int, int], tuple[int, _Env]] = {}
"""Open environments by (device, inode) of their directory: one per directory per process, however it is
reached (stores reach theirs through their own pinned descriptor)."""
_envs_lock = threading.Lock()


class LmdbEngine:
    name = "lmdb"
    lock_reads = False

    def __init__(
        self,
        directory: str,
        shards: int,
        durability: str,
        map_size: int | None,
        file_mode: int,
        *,
        label: str | None = None,
    ) -> None:
        self.directory = directory
        self.label = os.path.join(label, "lmdb") if label else directory
        st = os.stat(directory)
        self._ident = (st.st_dev, st.st_ino)
        self.shards = shards
        self._durability = durability
        self._map_size = map_size or DEFAULT_MAP_SIZE
        self._file_mode = file_mode
        self._gen = -1
        self._handle: _Env | None = None
        self._prefix = [_SHARD.pack(i) for i in range(shards)]
        self._grow_path = os.path.join(directory, "grow.lock")
        self._open()

    # -- environment ---------------------------------------------------------------------

    def _open(self) -> _Env:
        gen = GENERATION[0]
        with _envs_lock:
            entry = _envs.get(self._ident)
            if entry is None or entry[0] != gen:
                if entry is not None:
                    # inherited across fork: no transaction of ours is open and none is cached
                    # (max_spare_txns=0), so closing it here touches nothing the parent uses
                    # (LMDB's locks belong to the parent process, its reader slots carry the
                    # parent's pid); the environment must be closed before it can be opened again
                    entry[1].env.close()
                try:
                    env = _Env(self.directory, self._durability, self._map_size, self._file_mode)
                except lmdb.Error as exc:
                    raise StorageError(f"cannot open LMDB store at {self.label}: {exc}") from exc
                entry = (gen, env)
                _envs[self._ident] = entry
            handle = entry[1]
            if handle.durability != self._durability:
                raise StoreMismatch(
                    f"LMDB store at {self.label} is already open in this process with "
                    f"durability={handle.durability!r}; one process uses one durability per store"
                )
            handle.users += 1
        self._gen = gen
        self._handle = handle
        return handle

    def _env(self) -> _Env:
        handle = self._handle
        if self._gen != GENERATION[0] or handle is None:
            handle = self._open()
        return handle

    def _run(self, write: bool, body: Callable[[Any, _Env], T]) -> T:
        """Run *body(txn, handle)* in a transaction, adopting or growing the map size as needed."""
        handle = self._env()
        for _ in range(64):
            with handle.mutex:
                try:
                    with handle.env.begin(write=write) as txn:
                        return body(txn, handle)
                except lmdb.MapResizedError:
                    handle.env.set_mapsize(0)  # another process grew the map: adopt its size
                except lmdb.MapFullError:
                    self._grow(handle)
                except lmdb.ReadersFullError:
                    handle.env.reader_check()
                except lmdb.Error as exc:  # a full disk, an I/O error: the transaction was aborted
                    raise StorageError(f"LMDB store at {self.label}: {exc}") from exc
        raise LockstoreError(f"LMDB store at {self.label} could not complete a transaction")

    def _grow(self, handle: _Env) -> None:
        """Double the map, holding the process's transaction lock and an exclusive file lock."""
        fd = os.open(self._grow_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self._file_mode)
        try:
            if not try_flock(fd):  # resizes are rare and short: wait for the other process's, however long
                wait_flock(fd, math.inf, first=0.001, cap=0.001)
            try:
                before = handle.env.info()["map_size"]
                handle.env.set_mapsize(0)  # adopt a size another process may have set meanwhile
                if handle.env.info()["map_size"] == before:
                    handle.env.set_mapsize(before * 2)
                    with handle.env.begin(write=True) as txn:  # commit to make the new size known
                        txn.put(b"grown", struct.pack("<Q", before * 2), db=handle.meta)
            finally:
                unflock(fd)
        finally:
            os.close(fd)

    # -- the engine interface -----------------------------------------------------------------

    def get(self, shard: int, key: bytes) -> bytes | None:
        handle = self._handle
        if handle is None or self._gen != GENERATION[0]:
            handle = self._env()
        k = self._prefix[shard] + key
        with handle.mutex:
            try:
                txn = handle.env.begin()
                try:
                    return txn.get(k)
                finally:
                    txn.abort()
            except (lmdb.MapResizedError, lmdb.ReadersFullError):
                pass
            except lmdb.Error as exc:
                raise StorageError(f"LMDB store at {self.label}: {exc}") from exc
        found: bytes | None = self._run(False, lambda txn, h: txn.get(k))
        return found

    def update(self, shard: int, key: bytes, fn: Updater, sweep: tuple[float, float, int] | None) -> int:
        handle = self._handle
        if handle is not None and self._gen == GENERATION[0]:
            with handle.mutex:  # the common case, without the retry loop of _run
                try:
                    with handle.env.begin(write=True) as txn:
                        return self._apply(txn, handle, shard, key, fn, sweep)
                except (lmdb.MapResizedError, lmdb.MapFullError, lmdb.ReadersFullError):
                    pass  # _run below deals with these
                except lmdb.Error as exc:
                    raise StorageError(f"LMDB store at {self.label}: {exc}") from exc
        return self._run(True, lambda txn, h: self._apply(txn, h, shard, key, fn, sweep))

    def _apply(
        self, txn: Any, h: _Env, shard: int, key: bytes, fn: Updater, sweep: tuple[float, float, int] | None
    ) -> int:
        prefix = self._prefix[shard]
        k = prefix + key
        swept = self._sweep_txn(txn, h, shard, sweep[0], sweep[1], sweep[2]) if sweep else 0
        old = txn.get(k)
        new = fn(old)
        if new is KEEP:
            return swept
        if new is None:
            if old is not None:
                txn.delete(k)
                old_bucket = _bucket_of(old)
                if old_bucket >= 0:  # a damaged record has no index entry
                    txn.delete(prefix + _BUCKET.pack(old_bucket) + key, db=h.atime)
            return swept
        txn.put(k, new)
        self._index(txn, h, prefix, key, -1 if old is None else _bucket_of(old), _bucket_of(new))
        return swept

    @staticmethod
    def _index(txn: Any, h: _Env, prefix: bytes, key: bytes, old_bucket: int, new_bucket: int) -> None:
        """Move the index entry of a record rewritten from *old_bucket* to *new_bucket* (-1: none)."""
        if new_bucket != old_bucket:
            if old_bucket >= 0:
                txn.delete(prefix + _BUCKET.pack(old_bucket) + key, db=h.atime)
            if new_bucket >= 0:
                txn.put(prefix + _BUCKET.pack(new_bucket) + key, b"", db=h.atime)

    def put(
        self, shard: int, key: bytes, rec: bytes, old_atime: float | None, sweep: tuple[float, float, int] | None
    ) -> int:
        """Store *rec*, replacing a record the caller read under the same lock (last access *old_atime*)."""
        handle = self._handle
        if sweep is None and handle is not None and self._gen == GENERATION[0]:
            # the hot path of edit(): the record is not read again; rec is a record just made, its time valid
            prefix = self._prefix[shard]
            old_bucket = -1 if old_atime is None else max(0, int(old_atime // _BUCKET_SECONDS))
            with handle.mutex:
                try:
                    with handle.env.begin(write=True) as txn:
                        txn.put(prefix + key, rec)
                        self._index(txn, handle, prefix, key, old_bucket, _bucket_of(rec))
                        return 0
                except (lmdb.MapResizedError, lmdb.MapFullError, lmdb.ReadersFullError):
                    pass  # the general path below deals with these
                except lmdb.Error as exc:
                    raise StorageError(f"LMDB store at {self.label}: {exc}") from exc
        return self.update(shard, key, lambda old: rec, sweep)

    def _sweep_txn(self, txn: Any, h: _Env, shard: int, now: float, cutoff: float, limit: int | None) -> int:
        # every entry in a bucket before the cutoff's is expired; in the cutoff's own bucket, some are
        prefix = self._prefix[shard]
        start = len(prefix) + _BUCKET.size
        end = prefix + _BUCKET.pack(fmt.bucket(cutoff) + 1)
        doomed = []
        stale = []
        with txn.cursor(db=h.atime) as cur:
            if cur.set_range(prefix):
                for ikey in cur.iternext(values=False):
                    if ikey >= end or not ikey.startswith(prefix):
                        break
                    k = prefix + ikey[start:]
                    rec = txn.get(k)
                    if rec is None:
                        stale.append(ikey)
                        continue
                    atime = fmt.last_access(rec)
                    if atime == -math.inf:
                        stale.append(ikey)  # a damaged record: left for verify() and the operator
                    elif atime < cutoff:
                        doomed.append((ikey, k))
                        if limit is not None and len(doomed) >= limit:
                            break
                    elif _BUCKET.pack(fmt.bucket(atime)) != ikey[len(prefix) : start]:
                        stale.append(ikey)  # left behind by a record rewritten since: not the record's
        for ikey in stale:
            txn.delete(ikey, db=h.atime)
        for ikey, k in doomed:
            txn.delete(ikey, db=h.atime)
            txn.delete(k)
        removed = len(doomed)
        txn.put(b"clean" + prefix, fmt.TIME.pack(now), db=h.meta)
        return removed

    def sweep(self, shard: int, now: float, cutoff: float, limit: int | None) -> int:
        return self._run(True, lambda txn, h: self._sweep_txn(txn, h, shard, now, cutoff, limit))

    def holds(self, shard: int) -> bool:
        return True  # one environment for every shard: reads take no lock and create nothing

    def last_clean(self, shard: int) -> float:
        raw = self._run(False, lambda txn, h: txn.get(b"clean" + self._prefix[shard], db=h.meta))
        return fmt.read_time(raw)

    def _range(self, shard: int, times_only: bool) -> list[tuple[bytes, Any]]:
        prefix = self._prefix[shard]
        n = len(prefix)

        def body(txn: Any, h: _Env) -> list[tuple[bytes, Any]]:
            out: list[tuple[bytes, Any]] = []
            with txn.cursor(db=h.records) as cur:
                if not cur.set_range(prefix):
                    return out
                for k, v in cur.iternext():
                    if not k.startswith(prefix):
                        break
                    out.append((k[n:], fmt.last_access(v) if times_only else v))
            return out

        return self._run(False, body)

    def scan(self, shard: int) -> list[tuple[bytes, bytes]]:
        return self._range(shard, False)

    def scan_times(self, shard: int) -> list[tuple[bytes, float]]:
        return self._range(shard, True)

    def clear(self, shard: int) -> int:
        prefix = self._prefix[shard]

        def body(txn: Any, h: _Env) -> int:
            removed = 0
            for db in (h.records, h.atime):
                keys = []
                with txn.cursor(db=db) as cur:
                    if cur.set_range(prefix):
                        for k in cur.iternext(values=False):
                            if not k.startswith(prefix):
                                break
                            keys.append(k)
                for k in keys:
                    txn.delete(k, db=db)
                if db is h.records:
                    removed = len(keys)
            return removed

        return self._run(True, body)

    def bytes_on_disk(self) -> int:
        total = 0
        for name in ("data.mdb", "lock.mdb"):
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(self.directory, name)).st_blocks * 512
        return total

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is None or self._gen != GENERATION[0]:
            return
        with _envs_lock:
            handle.users -= 1
            if handle.users == 0 and _envs.get(self._ident, (None, None))[1] is handle:
                del _envs[self._ident]
                handle.env.close()
