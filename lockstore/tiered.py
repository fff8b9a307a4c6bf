"""A memory tier in front of a persistent store, for one long-running process.

Webware's ``SessionDynamicStore`` kept hot sessions in memory and moved the idle ones to files;
:func:`tiered` does the same over a lockstore ``Store``:

- at most ``max_memory_sessions`` sessions are held in memory; past that, the least recently used
  ones are written to the persistent store and dropped from memory;
- a sweep every ``sweep_interval`` seconds (run by the next operation, or by :meth:`sweep`)
  moves sessions idle longer than ``memory_timeout`` to the persistent store;
- one-shot sessions (created and never read again, as crawlers make) are dropped by the sweep
  without being written, but :meth:`close` (and interpreter exit) writes every session;
- the full mapping API, ``edit``, ``touch``, ``clean``, ``record`` and ``records``.

Limits, stated plainly: the memory tier belongs to one process. Another process reading the
same persistent store does not see what this process holds only in memory, and two processes
each with a tier would overwrite each other's sessions. The public store API has no cheap
per-session version to validate against (reading the record *is* the read the tier avoids), so
rather than serve stale data the tier refuses to run unless the caller declares
``single_process=True``, and it refuses to be used in a forked child. Sessions held only in
memory are lost if the process is killed (SIGKILL, out-of-memory) before a sweep or
:meth:`close` writes them, unless ``write_through=True`` writes every change at once (the tier
then saves only reads).
"""

from __future__ import annotations

import atexit
import functools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from ._process import GENERATION
from .base import BaseStore, Edit
from .codec import Codec, Record
from .errors import CorruptRecord, LockstoreError, StoreClosed
from .ids import validate_id

TIERED_BACKENDS = ("shelve",)
"""The backends a memory tier is worth having over (figures: the README, from stress/tier_bench.py)."""


class _Entry:
    """A session held in memory: its encoded value and times."""

    __slots__ = ("created", "dirty", "last_access", "one_shot", "payload", "saved_access")

    def __init__(self, payload: bytes, created: float, last_access: float, *, saved: bool) -> None:
        self.payload = payload
        self.created = created
        self.last_access = last_access
        # the last access the persistent store has for it (None: it has no copy)
        self.saved_access: float | None = last_access if saved else None
        self.dirty = not saved
        self.one_shot = not saved  # created here and not read since


class _TierEdit(Edit):
    """:meth:`TieredStore.edit`: the template of :class:`~lockstore.base.Edit` over the tier's lock and memory."""

    __slots__ = ()
    _store: TieredStore

    def _begin(self) -> bytes | None:
        tier = self._store
        tier._lock.acquire()
        try:
            e = tier._read(self._sid, tier._enter())
            return None if e is None else tier._codec.record(self._key, e.payload, e.last_access, e.created)
        except BaseException:
            tier._lock.release()
            raise

    def _end(self, rec: bytes | None, now: float) -> None:
        tier = self._store
        try:
            if rec is not None:
                tier._write(self._sid, bytes(tier._codec.payload(self._key, rec)), now)
        finally:
            tier._lock.release()


class TieredStore(BaseStore):
    """A memory tier over a persistent store; see :func:`tiered`.

    Notes
    -----
    Thread safe: one reentrant lock serialises the tier, and :meth:`edit` holds it, so ``edit``
    is atomic among the threads of this process. Not multi-process safe and not usable across
    ``fork`` (a child gets :class:`~lockstore.LockstoreError`): open it in the one process that
    serves the sessions, after any fork.
    """

    def __init__(
        self,
        store: BaseStore,
        *,
        max_memory_sessions: int,
        memory_timeout: float,
        sweep_interval: float,
        write_through: bool,
        codec: Codec,
    ) -> None:
        self.persistent = store
        self.backend = store.backend
        self.path = store.path
        self.max_age = store.max_age
        self.timeout = store.timeout
        self.clock = store.clock
        self.max_memory_sessions = max_memory_sessions
        self.memory_timeout = memory_timeout
        self.sweep_interval = sweep_interval
        self.write_through = write_through
        self.touch_interval = float(getattr(store, "touch_interval", 60.0))
        self._codec = codec
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()
        self._gen = GENERATION[0]
        self._next_sweep = self.clock() + sweep_interval
        self._closed = False
        # Saves the memory tier at interpreter exit if close() was not called; a weak reference,
        # so the registration does not keep the tier alive.
        self._at_exit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._at_exit)

    # -- internals -------------------------------------------------------------------------

    def _enter(self, *, sweep: bool = True) -> float:
        """Checks every operation makes first (lock held), and the sweep if due; returns its time."""
        if self._closed:
            raise StoreClosed(f"tiered store over {self.path} is closed")
        if GENERATION[0] != self._gen:
            raise LockstoreError(
                "a tiered store cannot be used in a forked child: its memory tier belongs to the "
                "parent; open the tiered store after the fork, in the process that serves sessions"
            )
        now = self.clock()
        if sweep and now >= self._next_sweep:
            self._next_sweep = now + self.sweep_interval
            self._sweep(now)
        return now

    def _entry(self, sid: str, now: float) -> _Entry | None:
        """The live memory entry of *sid*, loading it from the persistent store if needed."""
        entry = self._entries.get(sid)
        if entry is not None:
            if now - entry.last_access > self.max_age:
                del self._entries[sid]  # expired in memory: the persistent copy is older still
                return None
            self._entries.move_to_end(sid)
            return entry
        record = self.persistent.record(sid)
        if record is None:
            return None
        entry = _Entry(self._codec.encode(record.value), record.created, record.last_access, saved=True)
        self._entries[sid] = entry
        self._evict_excess()
        return entry

    def _read(self, sid: str, now: float) -> _Entry | None:
        entry = self._entry(validate_id(sid), now)
        if entry is not None:
            entry.last_access, entry.one_shot = now, False
        return entry

    def _write(self, sid: str, payload: bytes, now: float) -> None:
        entry = self._entries.get(sid)
        if entry is None or now - entry.last_access > self.max_age:
            record = self.persistent.record(sid)
            entry = _Entry(payload, now, now, saved=False)
            if record is not None:  # replacing a stored session: never a one-shot to drop
                entry.created = record.created
                entry.saved_access = record.last_access
                entry.one_shot = False
            self._entries[sid] = entry
        entry.payload = payload
        entry.last_access = now
        entry.dirty = True
        self._entries.move_to_end(sid)
        if self.write_through:
            self._save(sid, entry)
        self._evict_excess()

    def _save(self, sid: str, entry: _Entry) -> None:
        """Write *entry* to the persistent store if it holds anything the store lacks."""
        if entry.dirty or entry.saved_access is None or (entry.last_access - entry.saved_access >= self.touch_interval):
            value = self._codec.loads(entry.payload, sid.encode())
            self.persistent.put_record(sid, value, created=entry.created, last_access=entry.last_access)
            entry.saved_access = entry.last_access
            entry.dirty = False

    def _evict_excess(self) -> None:
        while len(self._entries) > self.max_memory_sessions:
            sid, entry = next(iter(self._entries.items()))
            self._save(sid, entry)  # live sessions are never dropped for room, one-shot or not
            del self._entries[sid]

    def _sweep(self, now: float) -> tuple[int, int]:
        moved = dropped = 0
        for sid, entry in list(self._entries.items()):
            idle = now - entry.last_access
            if idle <= self.memory_timeout:
                break  # the rest were used more recently
            if idle <= self.max_age and not entry.one_shot:
                self._save(sid, entry)
                moved += 1
            else:
                dropped += 1
            del self._entries[sid]
        return moved, dropped

    # -- the mapping -------------------------------------------------------------------------

    def __getitem__(self, sid: str) -> Any:
        with self._lock:
            entry = self._read(sid, self._enter())
            if entry is None:
                raise KeyError(sid)
            return self._codec.loads(entry.payload, sid.encode())

    def __setitem__(self, sid: str, value: Any) -> None:
        validate_id(sid)
        payload = self._codec.encode(value)  # EncodeError / ValueTooLarge now, not at the sweep
        with self._lock:
            self._write(sid, payload, self._enter())

    def __delitem__(self, sid: str) -> None:
        validate_id(sid)
        with self._lock:
            now = self._enter()
            entry = self._entries.pop(sid, None)
            live = entry is not None and now - entry.last_access <= self.max_age
            try:
                del self.persistent[sid]
            except KeyError:
                if not live:
                    raise

    def __contains__(self, sid: object) -> bool:
        sid = validate_id(sid)  # a malformed id is an error, as in the store
        with self._lock:
            now = self._enter()
            entry = self._entries.get(sid)
            return sid in self.persistent if entry is None else now - entry.last_access <= self.max_age

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            now = self._enter()
            memory = [sid for sid, e in self._entries.items() if now - e.last_access <= self.max_age]
            seen = set(memory)
            return iter(memory + [sid for sid in self.persistent if sid not in seen])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def pop(self, sid: str, *default: Any) -> Any:
        """Remove *sid* and return its value (or *default* if given and there is none)."""
        with self._lock:
            try:
                value = self[sid]
            except KeyError:
                if default:
                    return default[0]
                raise
            del self[sid]
            return value

    def setdefault(self, sid: str, default: Any = None) -> Any:
        """Return the value of *sid*, storing *default* first if there is none."""
        with self._lock:
            try:
                return self[sid]
            except KeyError:
                self[sid] = default
                return default

    def clear(self) -> None:
        """Delete every session, in memory and in the persistent store."""
        with self._lock:
            self._enter()
            self._entries.clear()
            self.persistent.clear()

    # -- beyond the mapping ------------------------------------------------------------------

    def edit(self, sid: str, *, create: bool = True) -> _TierEdit:
        """Read-modify-write of one session, atomic among this process's threads (the tier's lock is held).

        Saved (to memory) on a clean exit if changed, discarded on an exception. A new empty dict if the
        session is absent (:class:`KeyError` with ``create=False``); an absent session left empty is not created.
        """
        return _TierEdit(self, validate_id(sid), sid.encode(), create)

    def touch(self, sid: str) -> bool:
        """Refresh the last access of a live session; ``False`` if there is none."""
        with self._lock:
            return self._read(sid, self._enter()) is not None

    def record(self, sid: str) -> Record | None:
        """The value and times of a live session, without refreshing its last access."""
        with self._lock:
            now = self._enter()
            entry = self._entries.get(validate_id(sid))
            if entry is None:
                return self.persistent.record(sid)
            if now - entry.last_access > self.max_age:
                return None
            return Record(self._codec.loads(entry.payload, sid.encode()), entry.created, entry.last_access)

    def records(
        self, *, expired: bool = False, on_error: Callable[[str, CorruptRecord], None] | None = None
    ) -> Iterator[tuple[str, Record]]:
        """Every live session (or, with *expired*, every expired one) with its times.

        Writes the memory tier to the store first (as :meth:`store_all`), then lists the store; a record
        that cannot be read goes to *on_error* if given (see :meth:`lockstore.BaseStore.records`).
        """
        with self._lock:
            self.store_all(expired=True)
            return iter(list(self.persistent.records(expired=expired, on_error=on_error)))

    def put_record(self, sid: str, value: Any, *, created: float, last_access: float) -> None:
        """Store *value* with the given times, straight into the persistent store."""
        with self._lock:
            self._enter()
            self._entries.pop(validate_id(sid), None)
            self.persistent.put_record(sid, value, created=created, last_access=last_access)

    def put_record_if(self, sid: str, value: Any, *, created: float, last_access: float, expect: float | None) -> bool:
        """Compare-and-put (:meth:`lockstore.BaseStore.put_record_if`) against the session as this tier
        serves it: the memory copy when there is one (it may be newer than the persistent store's),
        else the persistent store's, compared and written under that store's lock."""
        with self._lock:
            now = self._enter()
            entry = self._entries.get(validate_id(sid))
            if entry is not None and now - entry.last_access > self.max_age:
                del self._entries[sid]  # expired in memory: the persistent copy is no newer
                entry = None
            if entry is None:
                return self.persistent.put_record_if(
                    sid, value, created=created, last_access=last_access, expect=expect
                )
            if expect is None or entry.last_access != expect:
                return False
            # the memory copy is the one expected: the new record replaces it in both tiers (the tier lock
            # is held, and no other process writes the persistent store of a tier: single_process=True)
            self.persistent.put_record(sid, value, created=created, last_access=last_access)
            del self._entries[sid]
            return True

    def sweep(self) -> dict[str, int]:
        """Move sessions idle longer than ``memory_timeout`` out of memory now (Webware's
        ``intervalSweep``); one-shot sessions are dropped unwritten. Returns the counts."""
        with self._lock:
            now = self._enter(sweep=False)
            moved, dropped = self._sweep(now)
            self._next_sweep = now + self.sweep_interval
            return {"moved": moved, "dropped": dropped, "memory": len(self._entries)}

    def store_all(self, *, expired: bool = False) -> None:
        """Write every session held in memory to the persistent store, keeping it in memory (with *expired*,
        the expired ones too, else they are dropped)."""
        with self._lock:
            now = self._enter()
            for sid, entry in list(self._entries.items()):
                if not expired and now - entry.last_access > self.max_age:
                    del self._entries[sid]
                else:
                    self._save(sid, entry)

    def clean(self, progress: Callable[[int, int], None] | None = None, *, max_idle: float | None = None) -> int:
        """Drop expired (or idle over *max_idle*) sessions from memory and sweep the persistent store;
        returns how many."""
        idle = self._max_idle(max_idle)
        with self._lock:
            now = self._enter()
            doomed = [s for s, e in self._entries.items() if now - e.last_access > idle]
            for sid in doomed:
                del self._entries[sid]
            return len(doomed) + self.persistent.clean(progress, max_idle=max_idle)

    def stats(self) -> dict[str, Any]:
        """The persistent store's statistics, after writing the memory tier, plus the tier's."""
        with self._lock:
            self.store_all()
            stats = self.persistent.stats()
            stats["memory"] = {
                "sessions": len(self._entries),
                "max_memory_sessions": self.max_memory_sessions,
                "memory_timeout": self.memory_timeout,
                "write_through": self.write_through,
            }
            return stats

    def verify(self) -> list[tuple[str, str]]:
        """The persistent store's :meth:`~lockstore.BaseStore.verify`."""
        with self._lock:
            self._enter()
            return self.persistent.verify()

    def close(self) -> None:
        """Write every session held in memory, then close the persistent store (idempotent)."""
        with self._lock:
            if self._closed:
                return
            if GENERATION[0] == self._gen:
                self.store_all()
            self._entries.clear()
            self._closed = True
            atexit.unregister(self._at_exit)
            self.persistent.close()

    def __repr__(self) -> str:
        return f"<TieredStore {len(self._entries)} in memory over {self.persistent!r}>"


def _close_at_exit(ref: weakref.ref[TieredStore]) -> None:
    """Interpreter exit: save what is in memory, in the process that owns the tier only."""
    tier = ref()
    if tier is not None and not tier._closed and GENERATION[0] == tier._gen:
        tier.close()


def tiered(
    store: BaseStore,
    *,
    max_memory_sessions: int = 10_000,
    memory_timeout: float = 900,
    sweep_interval: float = 60,
    single_process: bool = False,
    write_through: bool = False,
    max_value_size: int | None = None,
) -> TieredStore:
    """Put a memory tier in front of *store*, for one long-running process.

    Parameters
    ----------
    store
        The persistent store (:func:`lockstore.open`). The tier owns it from now on: closing
        the tier closes it.
    max_memory_sessions
        At most this many sessions in memory (Webware's ``MaxDynamicMemorySessions``); past
        it, the least recently used are written out.
    memory_timeout
        Seconds of inactivity after which a sweep moves a session out of memory (Webware's
        ``DynamicSessionTimeout``, 15 minutes).
    sweep_interval
        Seconds between sweeps, run by the first operation after the interval.
    single_process
        Must be ``True``: the caller declares that no other process uses *store* while the tier
        is open (see the module notes for why).
    write_through
        Write every change to *store* at once; the tier then saves only reads, and a killed
        process loses nothing.
    max_value_size
        The largest encoded value, checked when a value enters memory; defaults to the
        store's ``max_value_size`` (1 MiB if the store does not say).

    Returns
    -------
    TieredStore

    Raises
    ------
    ValueError
        ``single_process`` is not ``True``; *store* is not a shelve store (over LMDB the tier
        saves about 1.5 microseconds a read: the README's memory tier section); a size or time is out of
        range.
    """
    if single_process is not True:
        raise ValueError(
            "a memory tier serves stale sessions when another process uses the same store: pass "
            "single_process=True to declare that only this process uses it (for several processes, use the store)"
        )
    if isinstance(max_memory_sessions, bool) or not isinstance(max_memory_sessions, int) or (max_memory_sessions < 1):
        raise ValueError(f"max_memory_sessions must be a positive int, not {max_memory_sessions!r}")
    for name, value in (("memory_timeout", memory_timeout), ("sweep_interval", sweep_interval)):
        if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
            raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
    if store.backend not in TIERED_BACKENDS:
        # Measured with stress/tier_bench.py (figures in the README): on LMDB a read from memory saves
        # about 1.5 microseconds of a 3-microsecond read; the tier's cost in safety is not worth it.
        raise ValueError(
            f"a memory tier buys nothing measurable over the {store.backend!r} backend: "
            f"use the store itself (the tier is for {', '.join(TIERED_BACKENDS)} stores)"
        )
    codec_name = getattr(store, "settings", {}).get("codec") or store.stats()["codec"]
    if max_value_size is None:
        max_value_size = int(getattr(store, "max_value_size", 1 << 20))
    codec = Codec(codec_name, None, max_value_size)
    return TieredStore(
        store,
        max_memory_sessions=max_memory_sessions,
        memory_timeout=float(memory_timeout),
        sweep_interval=float(sweep_interval),
        write_through=write_through,
        codec=codec,
    )


__all__ = ["TIERED_BACKENDS", "TieredStore", "tiered"]
