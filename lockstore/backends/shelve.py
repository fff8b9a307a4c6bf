"""The shelve engine: one :class:`shelve.Shelf` per shard, on a dbm module pinned when the store is created.

Every operation runs under the shard's lock (reads too: a shelf's index lives in memory).

``dbm.dumb`` shards are :class:`~lockstore.backends.dumb.DumbShard`: the same files, used crash-safely.

With ``durability="system"`` every write is followed by ``fsync`` of the files it touched.

Other dbm modules (``dbm.gnu``, ``dbm.ndbm``, ``dbm.sqlite3``) are opened and closed around each operation
under the shard lock; their crash behaviour is their own.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shelve
from collections.abc import Iterator
from typing import Any

from ..base import KEEP, Updater
from ..codec import ATIME, HEADER
from ..errors import StorageError, StoreMismatch
from .dumb import DumbShard

_header = HEADER.unpack_from
_CLEAN = "#clean"  # '#' is not in the id alphabet: no session can have this key
PREFERENCE = ("dbm.gnu", "dbm.sqlite3", "dbm.dumb")
COMPACT_ON_WRITE_MAX = 8 << 20  # bytes of .dat a write may compact (a few ms); larger: clean()
KNOWN = ("dbm.gnu", "dbm.ndbm", "dbm.sqlite3", "dbm.dumb")


def pick_dbm(requested: str | None) -> str:
    """The dbm module a new shelve store pins: *requested* if given and importable, else the best there is."""
    if requested is not None:
        name = requested if requested.startswith("dbm.") else f"dbm.{requested}"
        if name not in KNOWN:
            raise StoreMismatch(f"unknown dbm {requested!r}: use one of {', '.join(KNOWN)}")
        try:
            importlib.import_module(name)
        except ImportError:
            raise StoreMismatch(f"{name} is not available in this Python") from None
        return name
    for name in PREFERENCE:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        return name
    raise StoreMismatch("no dbm module is available")  # pragma: no cover - dbm.dumb is always there


def _delete(shelf: shelve.Shelf[Any], sids: list[str]) -> Any:
    """Delete *sids* from *shelf*; a dumb shard rewrites its index once for all of them. Returns the dbm."""
    db = shelf.dict  # type: ignore[attr-defined]
    if isinstance(db, DumbShard):
        db.delete_many([sid.encode() for sid in sids])
    else:
        for sid in sids:
            del shelf[sid]
    return db


class ShelveEngine:
    name = "shelve"
    lock_reads = True

    def __init__(self, directory: str, shards: int, dbm_name: str, durability: str, file_mode: int) -> None:
        self.directory = directory
        self.dbm = dbm_name
        self._durable = durability == "system"
        self._mode = file_mode
        self._bases = [os.path.join(directory, f"shard-{i:03d}") for i in range(shards)]
        try:
            self._module = importlib.import_module(dbm_name)
        except ImportError:
            raise StoreMismatch(f"this store was created with {dbm_name}, which this Python lacks") from None
        self._dumb = dbm_name == "dbm.dumb"
        self._pid = os.getpid()
        self._shards: list[DumbShard | None] = [None] * shards

    @contextlib.contextmanager
    def _shelf(self, shard: int) -> Iterator[shelve.Shelf[Any]]:
        try:
            with self._open_shelf(shard) as shelf:
                yield shelf
        except OSError as exc:  # a full disk, an I/O error: nothing acknowledged was changed
            raise StorageError(f"shelve store at {self.directory}, shard {shard}: {exc.strerror or exc}") from exc

    @contextlib.contextmanager
    def _open_shelf(self, shard: int) -> Iterator[shelve.Shelf[Any]]:
        if self._dumb:
            if self._pid != os.getpid():  # after fork: new descriptors of our own
                self._pid = os.getpid()
                for inherited in self._shards:
                    if inherited is not None:
                        inherited.release()  # closing our copies leaves the parent's open
                self._shards = [None] * len(self._shards)
            db = self._shards[shard]
            if db is None:
                db = self._shards[shard] = DumbShard(self._bases[shard], self._durable, self._mode)
            db.refresh()
            yield shelve.Shelf(db, protocol=5)
            return
        raw = self._module.open(self._bases[shard], "c", self._mode)
        try:
            yield shelve.Shelf(raw, protocol=5)
            if self._durable and hasattr(raw, "sync"):
                raw.sync()
        finally:
            raw.close()

    def get(self, shard: int, key: bytes) -> bytes | None:
        with self._shelf(shard) as shelf:
            return shelf.get(key.decode())

    def update(self, shard: int, key: bytes, fn: Updater, sweep: tuple[float, float, int] | None) -> int:
        with self._shelf(shard) as shelf:
            swept = self._sweep(shelf, shard, *sweep) if sweep else 0
            sid = key.decode()
            new = fn(shelf.get(sid))
            if new is None:
                if sid in shelf:
                    del shelf[sid]
            elif new is not KEEP:
                shelf[sid] = new
            return swept

    def _sweep(self, shelf: shelve.Shelf[Any], shard: int, now: float, cutoff: float, limit: int | None) -> int:
        expired = []
        for sid in list(shelf.keys()):
            if sid == _CLEAN:
                continue
            atime = _header(shelf[sid])[2]
            if atime < cutoff:
                expired.append((atime, sid))
        expired.sort()
        doomed = [sid for _, sid in expired[:limit]]
        db = _delete(shelf, doomed)
        shelf[_CLEAN] = ATIME.pack(now)
        # a sweep inside a write compacts only small shards, so the write's pause stays short;
        # a full clean() (cron, the CLI) compacts whatever needs it
        if isinstance(db, DumbShard) and db.dead_share(None if limit is None else COMPACT_ON_WRITE_MAX) > 0.5:
            db.compact()
        return len(doomed)

    def put(
        self, shard: int, key: bytes, rec: bytes, old_atime: float | None, sweep: tuple[float, float, int] | None
    ) -> int:
        return self.update(shard, key, lambda old: rec, sweep)

    def sweep(self, shard: int, now: float, cutoff: float, limit: int | None) -> int:
        with self._shelf(shard) as shelf:
            return self._sweep(shelf, shard, now, cutoff, limit)

    def last_clean(self, shard: int) -> float:
        with self._shelf(shard) as shelf:
            raw = shelf.get(_CLEAN)
        return ATIME.unpack(raw)[0] if raw else 0.0

    def scan(self, shard: int) -> list[tuple[bytes, bytes]]:
        with self._shelf(shard) as shelf:
            return [(sid.encode(), shelf[sid]) for sid in list(shelf.keys()) if sid != _CLEAN]

    def scan_times(self, shard: int) -> list[tuple[bytes, float]]:
        return [(key, _header(rec)[2]) for key, rec in self.scan(shard)]

    def clear(self, shard: int) -> int:
        with self._shelf(shard) as shelf:
            sids = [sid for sid in list(shelf.keys()) if sid != _CLEAN]
            _delete(shelf, sids)
            return len(sids)

    def bytes_on_disk(self) -> int:
        total = 0
        for name in os.listdir(self.directory):
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(self.directory, name)).st_blocks * 512
        return total

    def close(self) -> None:
        for db in self._shards:
            if db is not None:
                db.release()
        self._shards = [None] * len(self._shards)
