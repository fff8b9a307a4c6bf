"""The embedded store: a mapping of session ids to values, sharded, locked and expiring.

:class:`Store` implements :class:`~lockstore.base.BaseStore` for the embedded backends: ids hash to
shards, each shard is guarded by a :class:`~lockstore.locks.ShardLocks` lock, and an
:class:`~lockstore.base.Engine` (LMDB, shelve, memory) keeps the records of each shard.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar
from zlib import crc32 as _crc32

from . import _admin
from . import record as fmt
from ._files import RULES
from .base import KEEP, BaseStore, Clock, Edit, Engine, Updater
from .codec import Codec, Record
from .errors import CorruptRecord, StoreClosed
from .ids import _VALID as _valid
from .ids import validate_id
from .locks import ShardLocks

if TYPE_CHECKING:
    from ._files import StoreDir
    from .options import Options

T = TypeVar("T")
_header = fmt.HEADER.unpack_from
_HEADER_SIZE = fmt.HEADER_SIZE
_VERSION = fmt.VERSION
_times = fmt.times
_last_access = fmt.last_access
_live_created = fmt.live_created


class _Edit(Edit):
    """:meth:`Store.edit`: the template of :class:`~lockstore.base.Edit` over the shard lock and the engine."""

    __slots__ = ("_shard",)
    _store: Store

    def __init__(self, store: Store, sid: str, create: bool) -> None:
        self._shard, self._key = store._locate(sid)  # the template's __init__, inlined: the hot path
        self._store = store
        self._sid = sid
        self._create = create

    def _begin(self) -> bytes | None:
        store = self._store
        if store._closed:
            raise StoreClosed(f"store at {store.path} is closed")
        shard = self._shard
        store._locks.acquire(shard, store.timeout)
        try:
            return store._engine.get(shard, self._key)
        except BaseException:
            store._locks.release(shard)
            raise

    def _end(self, rec: bytes | None, now: float) -> None:
        store = self._store
        shard = self._shard
        try:
            if rec is not None:
                sweep = None if now < store._next_clean[shard] else store._sweep_due(shard, now)
                store._engine.put(shard, self._key, rec, self._atime, sweep)
        finally:
            store._locks.release(shard)


class Store(BaseStore):
    """An embedded store: see :func:`lockstore.open`."""

    def __init__(
        self,
        path: str,
        engine: Engine,
        locks: ShardLocks,
        codec: Codec,
        options: Options,
        *,
        settings: dict[str, Any],
        files: StoreDir | None = None,
        reopen: Callable[[str, Options], BaseStore] | None = None,
    ) -> None:
        self.path = path
        self.backend = engine.name
        self.settings = settings
        self.shards = int(settings["shards"])
        self.max_age = float(settings["max_age"])  # the sweep rules as recorded (options may leave them out)
        self.clean_interval = float(settings["clean_interval"])
        self.clean_limit = int(settings["clean_limit"])
        self.touch_interval = float(options.touch_interval)
        self.timeout = float(options.timeout)
        self.max_value_size = codec.max_value_size
        self.durability = options.durability
        self.clock = options.clock or time.time
        self.options = options
        self._engine = engine
        self._get = engine.get
        self._lock_reads = engine.lock_reads
        self._locks = locks
        self._codec = codec
        self._next_clean = [-math.inf] * self.shards
        self._closed = False
        self._reopen = reopen
        self._files = files
        self._meta_ident = files.meta_ident() if files is not None else None
        self._rules_warned = False

    def __reduce__(self) -> tuple[Any, tuple[str, Options]]:
        """Pickling carries the path and the options, with the sweep rules this store runs by; the copy
        opens its own files, locks and LMDB handle (so a store can be passed to a ``multiprocessing`` worker
        under any start method) through *reopen*, which the opener gave."""
        if self._reopen is None:
            raise TypeError(f"a {self.backend} store lives in one process and cannot be pickled")
        rules = {name: getattr(self, name) for name in RULES}
        return self._reopen, (self.path, dataclasses.replace(self.options, **rules))

    # -- helpers ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"store at {self.path} is closed")

    def _locate(self, sid: str) -> tuple[int, bytes]:
        """(shard, key) of a valid id in an open store; the regular expression alone on the hot path."""
        if type(sid) is not str or not _valid(sid) or sid == "." or sid == "..":
            validate_id(sid)  # raises, saying what is wrong
        if self._closed:
            raise StoreClosed(f"store at {self.path} is closed")
        key = sid.encode()
        return _crc32(key) % self.shards, key

    def _sweep_due(self, shard: int, now: float) -> tuple[float, float, int] | None:
        """Called with the shard lock held: the sweep a write into *shard* must do first, if any."""
        if self.clean_interval <= 0 or now < self._next_clean[shard]:
            return None
        last = self._engine.last_clean(shard)
        if now - last < self.clean_interval:
            self._next_clean[shard] = last + self.clean_interval
            return None
        self._next_clean[shard] = now + self.clean_interval
        if self._files is not None and _admin.rules_changed(self):
            return None
        return (now, now - self.max_age, self.clean_limit)

    def _reading(self, shard: int, read: Callable[[int], T], empty: T) -> T:
        """*read(shard)*: under its lock for engines whose reads need it (shelve), and not at all for a
        shard nothing was ever written to, so that reading a store creates no file (the command line)."""
        if not self._lock_reads:
            return read(shard)
        if not self._engine.holds(shard):
            return empty
        with self._locks.held(shard, self.timeout):
            return read(shard)

    def _read(self, shard: int, key: bytes) -> bytes | None:
        if self._lock_reads:
            return self._reading(shard, lambda s: self._engine.get(s, key), None)
        return self._get(shard, key)

    def _update(self, shard: int, key: bytes, make: Callable[[float], Updater], *, sweep: bool = True) -> float:
        """``engine.update(shard, key, make(now))`` under the shard lock, *now* read once the lock is held, after
        the sweep due if *sweep*; returns *now*."""
        locks = self._locks
        locks.acquire(shard, self.timeout)
        try:
            now = self.clock()
            due = None if not sweep or now < self._next_clean[shard] else self._sweep_due(shard, now)
            self._engine.update(shard, key, make(now), due)
            return now
        finally:
            locks.release(shard)

    def _live(self, rec: bytes | None, now: float) -> bool:
        return fmt.is_live(rec, now, self.max_age)

    def _touch_shard(self, shard: int, key: bytes, now: float) -> bool:
        """Rewrite only the last access of *key* to *now*, if it is live and older than touch_interval; False if
        it is not live."""
        codec, max_age, touch_interval = self._codec, self.max_age, self.touch_interval
        found = False

        def retime(old: bytes | None) -> Any:
            nonlocal found
            if old is None or not now - _last_access(old) <= max_age:
                return KEEP
            found = True
            return KEEP if now - _last_access(old) < touch_interval else codec.retime(key, old, now)

        self._update(shard, key, lambda _: retime)
        return found

    def _live_keys(self, shard: int, now: float) -> list[bytes]:
        cutoff = now - self.max_age
        times: list[tuple[bytes, float]] = self._reading(shard, self._engine.scan_times, [])
        return [key for key, atime in times if atime >= cutoff]

    def _scan(self, shard: int) -> list[tuple[bytes, bytes]]:
        return self._reading(shard, self._engine.scan, [])

    # -- the mapping -------------------------------------------------------------------------

    def __getitem__(self, sid: str) -> Any:
        # the hot path, kept flat: _locate, _read and the unsigned case of codec.decode inlined (a call costs
        # ~0.15 us of a 3 us read); one unpack of the header
        if type(sid) is not str or not _valid(sid) or sid == "." or sid == "..":
            validate_id(sid)
        if self._closed:
            raise StoreClosed(f"store at {self.path} is closed")
        key = sid.encode()
        shard = _crc32(key) % self.shards
        rec = self._read(shard, key) if self._lock_reads else self._get(shard, key)
        if rec is None:
            raise KeyError(sid)
        try:
            version, flags, atime, _ = _header(rec)
        except struct.error:
            _times(rec)  # raises CorruptRecord
        now = self.clock()
        age = now - atime
        if not age <= self.max_age:  # NaN (a forged time) counts as expired
            raise KeyError(sid)
        codec = self._codec
        loads = codec.plain_loads
        try:
            if loads is None or version != _VERSION or flags:
                raise CorruptRecord  # not the common case: decode() checks and says what is wrong
            value = loads(rec[_HEADER_SIZE:])
        except Exception:
            value = codec.decode(key, rec)
        if age >= self.touch_interval:
            self._touch_shard(shard, key, now)
        return value

    def __contains__(self, sid: object) -> bool:
        shard, key = self._locate(sid)  # type: ignore[arg-type]
        return self._live(self._read(shard, key), self.clock())

    def __setitem__(self, sid: str, value: Any) -> None:
        shard, key = self._locate(sid)  # a hot path: _update inlined
        codec = self._codec
        payload = codec.encode(value)  # before the lock: an unencodable value touches nothing
        record, max_age = codec.record, self.max_age
        locks = self._locks
        locks.acquire(shard, self.timeout)
        try:
            now = self.clock()

            def put(old: bytes | None) -> bytes:
                created = None if old is None else _live_created(old, now, max_age)  # a damaged record is replaced
                return record(key, payload, now, now if created is None else created)

            sweep = None if now < self._next_clean[shard] else self._sweep_due(shard, now)
            self._engine.update(shard, key, put, sweep)
        finally:
            locks.release(shard)

    def _take(self, sid: str) -> tuple[bytes | None, float]:
        shard, key = self._locate(sid)
        taken: list[bytes] = []

        def take(old: bytes | None) -> Any:
            if old is None:
                return KEEP
            taken.append(old)
            return None

        now = self._update(shard, key, lambda now: take)
        return (taken[0] if taken else None), now

    def __iter__(self) -> Iterator[str]:
        self._check_open()
        for shard in range(self.shards):
            for key in self._live_keys(shard, self.clock()):
                yield key.decode()

    def __len__(self) -> int:
        self._check_open()
        now = self.clock()
        return sum(len(self._live_keys(shard, now)) for shard in range(self.shards))

    def clear(self) -> None:
        """Delete every session, live or expired."""
        self._check_open()
        for shard in range(self.shards):
            with self._locks.held(shard, self.timeout):
                self._engine.clear(shard)

    # -- beyond the mapping ----------------------------------------------------------------

    def edit(self, sid: str, *, create: bool = True) -> _Edit:
        """Atomic read-modify-write of one session::

            with store.edit(sid) as session:     # a dict; the shard is locked across processes
                session["n"] = session.get("n", 0) + 1

        Saved on a clean exit if changed, discarded on an exception. A new empty dict if the session is
        absent (or :class:`KeyError` with ``create=False``). The value must be a dict.
        """
        return _Edit(self, sid, create)

    def touch(self, sid: str) -> bool:
        shard, key = self._locate(sid)
        now = self.clock()
        return self._live(self._read(shard, key), now) and self._touch_shard(shard, key, now)

    def record(self, sid: str) -> Record | None:
        shard, key = self._locate(sid)
        rec = self._read(shard, key)
        if rec is None:
            return None
        atime, created = _times(rec)  # a damaged record is CorruptRecord, as for store[sid]
        if self.clock() - atime > self.max_age:
            return None
        return Record(self._codec.decode(key, rec), created, atime)

    # the administration, apart from the hot path (lockstore/_admin.py)
    clean = _admin.clean
    records = _admin.records
    put_record = _admin.put_record
    put_record_if = _admin.put_record_if
    verify = _admin.verify
    stats = _admin.stats

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine.close()
            self._locks.close()
            if self._files is not None:
                self._files.close()


__all__ = ["KEEP", "BaseStore", "Clock", "Engine", "Store", "Updater"]
