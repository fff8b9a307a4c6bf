"""The embedded store: a mapping of session ids to values, sharded, locked and expiring.

:class:`Store` implements :class:`~lockstore.base.BaseStore` for the embedded backends: ids hash to
shards, each shard is guarded by a :class:`~lockstore.locks.ShardLocks` lock, and an
:class:`~lockstore.base.Engine` (LMDB, shelve, memory) keeps the records of each shard.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar
from zlib import crc32 as _crc32

from . import record as fmt
from ._files import RULES
from .base import KEEP, BaseStore, Clock, Engine, Updater
from .codec import Codec, Record
from .errors import CorruptRecord, LockstoreError, StoreClosed, StoreMismatch
from .ids import _VALID as _valid
from .ids import describe_id, is_valid_id, shard_of, validate_id
from .locks import ShardLocks

if TYPE_CHECKING:
    from ._files import StoreDir
    from .options import Options

logger = logging.getLogger(__name__)
T = TypeVar("T")
_atime = fmt.TIME.unpack_from
_HEADER_SIZE = fmt.HEADER_SIZE


class _Edit:
    """The context manager returned by :meth:`Store.edit`."""

    __slots__ = ("_atime", "_create", "_created", "_key", "_old", "_shard", "_sid", "_store", "_value")

    def __init__(self, store: Store, sid: str, create: bool) -> None:
        self._shard, self._key = store._locate(sid)
        self._store = store
        self._sid = sid
        self._create = create

    def __enter__(self) -> dict[str, Any]:
        store = self._store
        if store._closed:
            raise StoreClosed(f"store at {store.path} is closed")
        shard, key = self._shard, self._key
        store._locks.acquire(shard, store.timeout)
        try:
            rec = store._engine.get(shard, key)
            now = store.clock()
            codec = store._codec
            self._atime = None  # last access of the stored record, live or not: its index entry
            if rec is not None:
                atime, created = fmt.times(rec)
                self._atime = atime
                if now - atime > store.max_age:
                    rec = None
            if rec is None:
                if not self._create:
                    raise KeyError(self._sid)
                value: dict[str, Any] = {}
                self._old = None
                self._created = now
            else:
                body = codec.body(key, rec)  # the header was checked above
                decoded = codec.loads(body, key)
                if not isinstance(decoded, dict):
                    raise TypeError(
                        f"edit() needs a dict session; {describe_id(self._sid)} holds a {type(decoded).__name__}"
                    )
                value = decoded
                self._old = body.tobytes()
                self._created = created
            self._value = value
            return value
        except BaseException:
            store._locks.release(shard)
            raise

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        store = self._store
        shard = self._shard
        try:
            if exc_type is not None:
                return
            codec = store._codec
            value = self._value
            if self._old is None and not value:
                return  # just in time: an absent session left empty is not created
            payload = codec.encode(value)
            now = store.clock()
            atime = self._atime
            if payload == self._old and atime is not None and now - atime < store.touch_interval:
                return
            rec = codec.record(self._key, payload, now, self._created)
            sweep = store._sweep_due(shard, now)
            store._engine.put(shard, self._key, rec, atime, sweep)
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
        if self._files is not None and self._rules_changed():
            return None
        return (now, now - self.max_age, self.clean_limit)

    def _rules_changed(self) -> str | None:
        """Before a sweep: what differs between this process's sweep rules and the recorded ones, if any.

        One ``stat`` of the metadata per sweep (at most one per shard per ``clean_interval``); the file is
        read again only when it was rewritten (``lockstore config``). A process whose rules are no longer
        the store's never sweeps again: it warns once, and the operator restarts it.
        """
        assert self._files is not None
        ident = self._files.meta_ident()
        if ident == self._meta_ident:
            return None
        try:
            meta = self._files.read_meta() or {}
        except LockstoreError as exc:
            differs = f"its metadata cannot be read ({exc})"
        else:
            changed = [f"{name}={meta.get(name)!r}" for name in RULES if meta.get(name) != getattr(self, name)]
            if not changed:
                self._meta_ident = ident
                return None
            differs = "the store now records " + ", ".join(changed)
        if not self._rules_warned:
            self._rules_warned = True
            logger.warning(
                "store at %s: %s; this process opened it with other sweep rules and no longer sweeps: restart it",
                self.path,
                differs,
            )
        return differs

    def _reading(self, shard: int, read: Callable[[], T], empty: T) -> T:
        """*read()* of *shard*: under its lock for engines whose reads need it (shelve), and not at all for a
        shard nothing was ever written to, so that reading a store creates no file (the command line)."""
        if not self._engine.holds(shard):
            return empty
        with self._locks.held(shard, self.timeout):
            return read()

    def _read(self, shard: int, key: bytes) -> bytes | None:
        if self._lock_reads:
            return self._reading(shard, lambda: self._engine.get(shard, key), None)
        return self._get(shard, key)

    def _live(self, rec: bytes | None, now: float) -> bool:
        return fmt.is_live(rec, now, self.max_age)

    def _touch_shard(self, shard: int, key: bytes, now: float) -> bool:
        """Rewrite only the last-access time of *key*, if it is live and older than touch_interval."""
        codec = self._codec
        max_age, touch_interval = self.max_age, self.touch_interval
        found = False

        def retime(old: bytes | None) -> Any:
            nonlocal found
            if old is None:
                return KEEP
            atime = fmt.last_access(old)
            if not now - atime <= max_age:
                return KEEP
            found = True
            if now - atime < touch_interval:
                return KEEP
            return codec.retime(key, old, now)

        with self._locks.held(shard, self.timeout):
            self._engine.update(shard, key, retime, self._sweep_due(shard, now))
        return found

    # -- the mapping -------------------------------------------------------------------------

    def __getitem__(self, sid: str) -> Any:
        # the hot path, kept flat: _locate inlined (a call costs ~0.15 us of a 3 us read), read, age, decode
        if type(sid) is not str or not _valid(sid) or sid == "." or sid == "..":
            validate_id(sid)
        if self._closed:
            raise StoreClosed(f"store at {self.path} is closed")
        key = sid.encode()
        shard = _crc32(key) % self.shards
        rec = self._read(shard, key)
        if rec is None or len(rec) < _HEADER_SIZE:
            if rec is None:
                raise KeyError(sid)
            fmt.times(rec)  # raises CorruptRecord
        now = self.clock()
        age = now - _atime(rec, 2)[0]
        if not age <= self.max_age:  # NaN (a forged time) counts as expired
            raise KeyError(sid)
        value = self._codec.decode(key, rec)
        if age >= self.touch_interval:
            self._touch_shard(shard, key, now)
        return value

    def __contains__(self, sid: object) -> bool:
        shard, key = self._locate(sid)  # type: ignore[arg-type]
        return self._live(self._read(shard, key), self.clock())

    def __setitem__(self, sid: str, value: Any) -> None:
        shard, key = self._locate(sid)
        codec = self._codec
        payload = codec.encode(value)  # before the lock: an unencodable value touches nothing
        max_age = self.max_age
        locks = self._locks
        locks.acquire(shard, self.timeout)
        try:
            now = self.clock()

            def put(old: bytes | None) -> bytes:
                created = now
                if old is not None and now - fmt.last_access(old) <= max_age:  # a damaged record is replaced
                    created = fmt.times(old)[1]
                return codec.record(key, payload, now, created)

            sweep = self._sweep_due(shard, now)
            self._engine.update(shard, key, put, sweep)
        finally:
            locks.release(shard)

    def _take(self, sid: str) -> tuple[bytes | None, float]:
        shard, key = self._locate(sid)
        taken: list[bytes] = []
        with self._locks.held(shard, self.timeout):
            now = self.clock()

            def take(old: bytes | None) -> Any:
                if old is None:
                    return KEEP
                taken.append(old)
                return None

            self._engine.update(shard, key, take, self._sweep_due(shard, now))
        return (taken[0] if taken else None), now

    def _live_keys(self, shard: int, now: float) -> list[bytes]:
        cutoff = now - self.max_age
        return [key for key, atime in self._scan_times(shard) if atime >= cutoff]

    def _scan_times(self, shard: int) -> list[tuple[bytes, float]]:
        if self._lock_reads:
            return self._reading(shard, lambda: self._engine.scan_times(shard), [])
        return self._engine.scan_times(shard)

    def _shard_times(self, shard: int) -> tuple[list[tuple[bytes, float]], float]:
        """(key, last access) of every record of *shard*, and its last clean."""
        engine = self._engine
        if not self._lock_reads:
            return engine.scan_times(shard), engine.last_clean(shard)
        nothing: tuple[list[tuple[bytes, float]], float] = ([], 0.0)
        return self._reading(shard, lambda: (engine.scan_times(shard), engine.last_clean(shard)), nothing)

    def _scan(self, shard: int) -> list[tuple[bytes, bytes]]:
        if self._lock_reads:
            return self._reading(shard, lambda: self._engine.scan(shard), [])
        return self._engine.scan(shard)

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
        rec = self._read(shard, key)
        if not self._live(rec, now):
            return False
        return self._touch_shard(shard, key, now)

    def clean(self, progress: Callable[[int, int], None] | None = None, *, max_idle: float | None = None) -> int:
        """Sweep every shard of its expired sessions; *progress(shards_done, shards)* after each.

        With *max_idle* (seconds), sessions idle longer than that go too, each checked and removed under
        its shard's lock (session2's ``delete_old_sessions``)."""
        self._check_open()
        differs = self._rules_changed() if self._files is not None else None
        if differs:
            raise StoreMismatch(f"store at {self.path}: {differs}; reopen it to clean by the recorded rules")
        idle = self._max_idle(max_idle)
        removed = 0
        for shard in range(self.shards):
            with self._locks.held(shard, self.timeout):
                now = self.clock()
                removed += self._engine.sweep(shard, now, now - idle, None)
                self._next_clean[shard] = now + self.clean_interval
            if progress is not None:
                progress(shard + 1, self.shards)
        return removed

    def record(self, sid: str) -> Record | None:
        shard, key = self._locate(sid)
        rec = self._read(shard, key)
        if rec is None:
            return None
        atime, created = fmt.times(rec)  # a damaged record is CorruptRecord, as for store[sid]
        if self.clock() - atime > self.max_age:
            return None
        return Record(self._codec.decode(key, rec), created, atime)

    def records(
        self, *, expired: bool = False, on_error: Callable[[str, CorruptRecord], None] | None = None
    ) -> Iterator[tuple[str, Record]]:
        self._check_open()
        for shard in range(self.shards):
            now = self.clock()
            batch = []
            for key, rec in self._scan(shard):
                sid = key.decode(errors="backslashreplace")
                batch.append((sid if sid.encode() == key and is_valid_id(sid) else None, sid, rec))
            yield from self._decode_batch(batch, now, expired, on_error)

    def put_record(self, sid: str, value: Any, *, created: float, last_access: float) -> None:
        shard, key = self._locate(sid)
        rec = self._codec.record(key, self._codec.encode(value), float(last_access), float(created))
        with self._locks.held(shard, self.timeout):
            self._engine.update(shard, key, lambda old: rec, None)

    def put_record_if(self, sid: str, value: Any, *, created: float, last_access: float, expect: float | None) -> bool:
        """Store *value* with the given times only if the live record's last access is *expect* (None: only
        if there is no live record); the check and the write are one engine update under the shard lock."""
        shard, key = self._locate(sid)
        if not all(math.isfinite(t) for t in (created, last_access, 0.0 if expect is None else expect)):
            raise ValueError(f"times must be finite: created={created!r} last_access={last_access!r} expect={expect!r}")
        codec = self._codec
        rec = codec.record(key, codec.encode(value), float(last_access), float(created))
        max_age = self.max_age
        wrote = False
        with self._locks.held(shard, self.timeout):
            now = self.clock()

            def put_if(old: bytes | None) -> Any:
                nonlocal wrote
                atime = None
                if old is not None:
                    atime = fmt.times(old)[0]  # CorruptRecord: what is there cannot be compared
                    if now - atime > max_age:
                        atime = None  # expired: as good as absent
                wrote = atime == expect
                return rec if wrote else KEEP

            self._engine.update(shard, key, put_if, None)
        return wrote

    def verify(self) -> list[tuple[str, str]]:
        self._check_open()
        bad: list[tuple[str, str]] = []
        for shard in range(self.shards):
            for key, rec in self._scan(shard):
                try:
                    sid = key.decode()
                except UnicodeDecodeError:
                    bad.append((repr(key), "key is not UTF-8"))
                    continue
                try:
                    validate_id(sid)
                    if shard_of(sid, self.shards) != shard:
                        raise CorruptRecord(f"stored in shard {shard}, belongs in {shard_of(sid, self.shards)}")
                    fmt.times(rec)
                    self._codec.decode(key, rec)
                except Exception as exc:
                    bad.append((sid, str(exc)))
        return bad

    def stats(self) -> dict[str, Any]:
        self._check_open()
        per_shard = []
        live_total = expired_total = 0
        for shard in range(self.shards):
            now = self.clock()
            times, last = self._shard_times(shard)
            live = sum(1 for _, atime in times if now - atime <= self.max_age)
            expired = len(times) - live
            live_total += live
            expired_total += expired
            per_shard.append(
                {"shard": shard, "live": live, "expired": expired, "last_clean": last if last > 0 else None}
            )
        return {
            "backend": self.backend,
            "path": self.path,
            "shards": self.shards,
            "codec": self._codec.name,
            "signed": self._codec.signed,
            "durability": self.durability,
            "max_age": self.max_age,
            "clean_interval": self.clean_interval,
            "live": live_total,
            "expired": expired_total,
            "bytes": self._engine.bytes_on_disk(),
            "per_shard": per_shard,
            **{k: v for k, v in self.settings.items() if k == "dbm"},
        }

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine.close()
            self._locks.close()
            if self._files is not None:
                self._files.close()


__all__ = ["KEEP", "BaseStore", "Clock", "Engine", "Store", "Updater"]
