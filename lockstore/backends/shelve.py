"""The shelve engine: one dbm database per shard, on a dbm module pinned when the store is created.

The dbm values are lockstore records, as bytes: nothing here unpickles, so the codec, after the MAC check,
is the only decoder of what the files hold. Stores written before this went through :class:`shelve.Shelf`,
whose values are pickles of the record bytes; a ``legacy`` engine reads those with :func:`unwrap_legacy`, a
strict parser of the few byte forms :func:`pickle.dumps` gives a ``bytes`` object, which runs no pickle code,
and :meth:`ShelveEngine.upgrade` rewrites them raw. A value that is neither is :class:`CorruptRecord`.

Every operation runs under the shard's lock (reads too: a dumb shard's index lives in memory).

``dbm.dumb`` shards are :class:`~lockstore.backends.dumb.DumbShard`: the same files, used crash-safely.

With ``durability="system"`` every write is followed by ``fsync`` of the files it touched.

Other dbm modules (``dbm.gnu``, ``dbm.ndbm``, ``dbm.sqlite3``) are opened and closed around each operation
under the shard lock; their crash behaviour is their own.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import math
import os
from collections.abc import Iterator
from typing import Any

from .. import record as fmt
from .._process import GENERATION
from ..base import KEEP, Updater
from ..errors import CorruptRecord, StorageError, StoreMismatch
from .dumb import DumbShard

_CLEAN = b"#clean"  # '#' is not in the id alphabet: no session can have this key
_RAW = bytes([fmt.VERSION])  # the first byte of every record
_PICKLE = b"\x80"  # pickle's PROTO opcode, the first byte of every value a legacy store wrote
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


# The byte forms of pickle.dumps(b"...", protocol=p) (the C pickler, which shelve uses), opcode by opcode:
#   p 4, 5: PROTO p, [FRAME <8-byte length of the rest>], SHORT_BINBYTES <1>|BINBYTES <4>|BINBYTES8 <8>,
#           the bytes, MEMOIZE, STOP (a value of 64 KiB or more is written outside any frame)
#   p 3:    PROTO 3, SHORT_BINBYTES|BINBYTES, the bytes, BINPUT 0, STOP
#   p 2:    a call of _codecs.encode(<the bytes as latin-1 text>, "latin1"), or of bytes() when empty
_FRAME, _SHORT_BINBYTES, _BINBYTES, _BINBYTES8, _STOP = 0x95, 0x43, 0x42, 0x8E, b"."
_ENDS = {3: (b"q\x00.", _STOP), 4: (b"\x94.", _STOP), 5: (b"\x94.", _STOP)}  # [memo], STOP
_P2_EMPTY = b"\x80\x02c__builtin__\nbytes\nq\x00)Rq\x01."
_P2_HEAD = b"\x80\x02c_codecs\nencode\nq\x00X"
_P2_TAIL = b"q\x01X\x06\x00\x00\x00latin1q\x02\x86q\x03Rq\x04."


def unwrap_legacy(value: bytes) -> bytes:
    """The ``bytes`` object that *value*, a pickle of one ``bytes`` object (protocol 2 to 5), holds.

    A strict parser of the forms :func:`pickle.dumps` writes for a single ``bytes`` object, lengths checked
    exactly; it calls nothing in :mod:`pickle`. Anything else is :class:`CorruptRecord`.
    """
    n = len(value)
    if n < 4 or value[0] != 0x80:
        raise CorruptRecord("not a pickle")
    proto = value[1]
    if proto == 2:
        return _unwrap_protocol_2(value)
    ends = _ENDS.get(proto)
    if ends is None:
        raise CorruptRecord(f"a pickle of protocol {proto}, not one of a bytes object")
    pos = 2
    if proto >= 4 and value[pos] == _FRAME:
        if int.from_bytes(value[pos + 1 : pos + 9], "little") != n - pos - 9:
            raise CorruptRecord("a pickle whose frame length does not match")
        pos += 9
    op = value[pos] if pos < n else -1
    if op == _SHORT_BINBYTES:
        width = 1
    elif op == _BINBYTES:
        width = 4
    elif op == _BINBYTES8 and proto >= 4:
        width = 8
    else:
        raise CorruptRecord("a pickle of something else than a bytes object")
    start = pos + 1 + width
    end = start + int.from_bytes(value[pos + 1 : start], "little")
    if start > n or end > n or value[end:] not in ends:
        raise CorruptRecord("a pickle whose length does not match, or which holds more than a bytes object")
    return value[start:end]


def _unwrap_protocol_2(value: bytes) -> bytes:
    if value == _P2_EMPTY:
        return b""
    head = len(_P2_HEAD)
    size = int.from_bytes(value[head : head + 4], "little")
    end = head + 4 + size
    if not value.startswith(_P2_HEAD) or size == 0 or value[end:] != _P2_TAIL:
        raise CorruptRecord("a protocol 2 pickle of something else than a bytes object")
    try:  # the bytes, as latin-1 text, in UTF-8 (Python's strict decoder accepts one encoding per text)
        return value[head + 4 : end].decode("utf-8").encode("latin-1")
    except UnicodeError:
        raise CorruptRecord("a protocol 2 pickle of text that is not bytes") from None


def _delete(db: Any, keys: list[bytes]) -> None:
    """Delete *keys* from *db*; a dumb shard rewrites its index once for all of them."""
    if isinstance(db, DumbShard):
        db.delete_many(keys)
    else:
        for key in keys:
            del db[key]


class ShelveEngine:
    """The shelve engine over the shards in *directory*.

    Parameters
    ----------
    legacy
        The store was written by a lockstore whose values were pickles of the record bytes (it went
        through :class:`shelve.Shelf`): read those too, by :func:`unwrap_legacy`, which runs no pickle
        code. Writes are raw either way, so a store is a mix until :meth:`upgrade` has run on every shard.
    """

    name = "shelve"
    lock_reads = True

    def __init__(
        self,
        directory: str,
        shards: int,
        dbm_name: str,
        durability: str,
        file_mode: int,
        *,
        legacy: bool = False,
        label: str | None = None,
    ) -> None:
        self.directory = directory
        self.label = os.path.join(label, "shelve") if label else directory  # names the store in messages
        self.dbm = dbm_name
        self.legacy = legacy
        self._durable = durability == "system"
        self._mode = file_mode
        self._bases = [os.path.join(directory, f"shard-{i:03d}") for i in range(shards)]
        try:
            self._module = importlib.import_module(dbm_name)
        except ImportError:
            raise StoreMismatch(f"this store was created with {dbm_name}, which this Python lacks") from None
        self._dumb = dbm_name == "dbm.dumb"
        self._gen = GENERATION[0]
        self._held = [False] * shards
        self._shards: list[DumbShard | None] = [None] * shards

    @contextlib.contextmanager
    def _db(self, shard: int) -> Iterator[Any]:
        """The shard's dbm (bytes keys, bytes values), current, for the length of one operation."""
        try:
            with self._open_db(shard) as db:
                yield db
        except OSError as exc:  # a full disk, an I/O error: nothing acknowledged was changed
            raise StorageError(f"shelve store at {self.label}, shard {shard}: {exc.strerror or exc}") from exc

    @contextlib.contextmanager
    def _open_db(self, shard: int) -> Iterator[Any]:
        if self._dumb:
            if self._gen != GENERATION[0]:  # after fork: new descriptors of our own
                self._gen = GENERATION[0]
                for inherited in self._shards:
                    if inherited is not None:
                        inherited.release()  # closing our copies leaves the parent's open
                self._shards = [None] * len(self._shards)
            db = self._shards[shard]
            if db is None:
                db = self._shards[shard] = DumbShard(self._bases[shard], self._durable, self._mode)
            db.refresh()
            yield db
            return
        raw = self._module.open(self._bases[shard], "c", self._mode)
        try:
            yield raw
            if self._durable and hasattr(raw, "sync"):
                raw.sync()
        finally:
            raw.close()

    # -- stored values to records -------------------------------------------------------

    def _record(self, value: bytes, shard: int, key: bytes) -> bytes:
        """The record a stored value holds (the value itself, in the common case), or :class:`CorruptRecord`."""
        if value[:1] == _RAW:
            return value
        where = f"shelve store at {self.label}, shard {shard}, key {key[:40]!r}"
        if value[:1] != _PICKLE:
            raise CorruptRecord(f"{where}: not a lockstore record")
        if not self.legacy:
            raise CorruptRecord(f"{where}: holds a pickle, which this store never writes: refusing to read it")
        try:
            rec = unwrap_legacy(value)
        except CorruptRecord as exc:
            raise CorruptRecord(f"{where}: {exc}") from None
        if rec[:1] != _RAW:
            raise CorruptRecord(f"{where}: not a lockstore record")
        return rec

    def _stored(self, value: bytes | None, shard: int, key: bytes) -> bytes | None:
        """What a write's updater gets: the record, or the stored bytes if they hold none (the codec refuses
        them, their first byte not being the record version: a write replaces them, a delete removes them)."""
        if value is None or value[:1] == _RAW:
            return value
        try:
            return self._record(value, shard, key)
        except CorruptRecord:
            return value

    def _clean_time(self, value: bytes | None) -> float:
        """The time a shard's ``#clean`` value holds; 0.0 (clean now) for anything else."""
        if value is not None and len(value) != fmt.TIME.size and self.legacy:
            with contextlib.suppress(CorruptRecord):
                value = unwrap_legacy(value)
        return fmt.read_time(value if type(value) is bytes else None)

    def _keys(self, db: Any, shard: int) -> list[bytes]:
        keys = db.keys()
        if not self._dumb and any(type(k) is not bytes for k in keys):
            raise CorruptRecord(f"shelve store at {self.label}, shard {shard}: a key that is not bytes")
        return [k for k in keys if k != _CLEAN]

    # -- the engine ---------------------------------------------------------------------

    def get(self, shard: int, key: bytes) -> bytes | None:
        with self._db(shard) as db:
            value: bytes | None = db.get(key)
        if value is None or value[:1] == _RAW:
            return value
        return self._record(value, shard, key)

    def update(self, shard: int, key: bytes, fn: Updater, sweep: tuple[float, float, int] | None) -> int:
        with self._db(shard) as db:
            swept = self._sweep(db, shard, *sweep) if sweep else 0
            old = db.get(key)
            new = fn(self._stored(old, shard, key))
            if new is None:
                if old is not None:
                    _delete(db, [key])
            elif new is not KEEP:
                db[key] = new
            return swept

    def _sweep(self, db: Any, shard: int, now: float, cutoff: float, limit: int | None) -> int:
        expired = []
        for key in self._keys(db, shard):
            try:
                rec = self._record(db[key], shard, key)
            except CorruptRecord:
                continue  # not ours to judge or delete: verify() reports it
            atime = fmt.last_access(rec)
            if -math.inf < atime < cutoff:  # a damaged record is left for verify() and the operator
                expired.append((atime, key))
        expired.sort()
        doomed = [key for _, key in expired[:limit]]
        _delete(db, doomed)
        db[_CLEAN] = fmt.TIME.pack(now)
        # a sweep inside a write compacts only small shards, so the write's pause stays short;
        # a full clean() (cron, the CLI) compacts whatever needs it
        if isinstance(db, DumbShard) and db.dead_share(None if limit is None else COMPACT_ON_WRITE_MAX) > 0.5:
            db.compact()
        return len(doomed)

    def put(
        self, shard: int, key: bytes, rec: bytes, old_atime: float | None, sweep: tuple[float, float, int] | None
    ) -> int:
        with self._db(shard) as db:
            swept = self._sweep(db, shard, *sweep) if sweep else 0
            db[key] = rec
            return swept

    def sweep(self, shard: int, now: float, cutoff: float, limit: int | None) -> int:
        with self._db(shard) as db:
            return self._sweep(db, shard, now, cutoff, limit)

    def holds(self, shard: int) -> bool:
        """False while no file of *shard* exists (nothing was ever written to it); a shard's files are never
        removed, so a True is remembered."""
        if self._held[shard]:
            return True
        base = self._bases[shard]
        found = os.path.exists(base + ".dir") if self._dumb else bool(glob.glob(glob.escape(base) + "*"))
        self._held[shard] = found
        return found

    def last_clean(self, shard: int) -> float:
        with self._db(shard) as db:
            return self._clean_time(db.get(_CLEAN))

    def scan(self, shard: int) -> list[tuple[bytes, bytes]]:
        """Every record of *shard*; a value that holds none is passed on as stored, for the codec to refuse
        (so verify(), records() and the command line go on past it and report it)."""
        with self._db(shard) as db:
            return [(key, self._stored(db[key], shard, key) or b"") for key in self._keys(db, shard)]

    def scan_times(self, shard: int) -> list[tuple[bytes, float]]:
        """(key, last access) of every record; ``-inf`` for a value that holds no record (never live)."""
        out = []
        with self._db(shard) as db:
            for key in self._keys(db, shard):
                try:
                    out.append((key, fmt.last_access(self._record(db[key], shard, key))))
                except CorruptRecord:
                    out.append((key, -math.inf))
        return out

    def clear(self, shard: int) -> int:
        with self._db(shard) as db:
            keys = self._keys(db, shard)
            _delete(db, keys)
            return len(keys)

    def upgrade(self, shard: int) -> int:
        """Rewrite every legacy (pickled) value of *shard* as the raw bytes it holds; returns how many.

        Called with the shard lock held. Each value is rewritten by one atomic put, so a store killed half
        way holds raw and legacy values, which a ``legacy=True`` engine reads alike. A value that does not
        unwrap is left as it is: it stays a :class:`CorruptRecord` in either format, for verify() to report.
        """
        done = 0
        with self._db(shard) as db:
            for key in [*self._keys(db, shard), _CLEAN]:
                value = db.get(key)
                if value is None or value[:1] != _PICKLE or (key == _CLEAN and len(value) == fmt.TIME.size):
                    continue  # raw already (a raw #clean is 8 bytes, whatever its first byte)
                try:
                    raw = unwrap_legacy(value)
                except CorruptRecord:
                    continue
                db[key] = raw
                done += 1
            if isinstance(db, DumbShard) and done and db.dead_share() > 0.5:
                db.compact()
        return done

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


__all__ = ["ShelveEngine", "pick_dbm", "unwrap_legacy"]
