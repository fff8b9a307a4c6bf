"""A memory tier in front of a persistent store, for one long-running process (Webware's ``SessionDynamicStore``).

:func:`tiered` holds at most ``max_memory_sessions`` sessions in memory, moves idle ones to the persistent store by a
sweep every ``sweep_interval`` seconds, drops one-shot sessions (crawlers') unwritten, and writes every session on
:meth:`~TieredStore.close` and at interpreter exit. Its limits, stated plainly in the README's "The memory tier"
section: one process only (so it runs only with ``single_process=True``, and never in a forked child), sessions held
only in memory are lost if the process is killed (unless ``write_through=True``), shelve stores only.
"""

from __future__ import annotations

import atexit
import functools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from . import _tier
from ._process import GENERATION
from ._tier import Entry, TierEdit
from .base import BaseStore
from .codec import Codec, Record
from .errors import CorruptRecord, LockstoreError, StoreClosed
from .ids import validate_id

TIERED_BACKENDS = ("shelve",)
"""The backends a memory tier is worth having over (figures: the README, from stress/tier_bench.py)."""


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
        self._entries: OrderedDict[str, Entry] = OrderedDict()  # least recently used first
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

    # the memory entries and their moves to and from the persistent store (lockstore/_tier.py)
    _read = _tier.read
    _write = _tier.write
    _save = _tier.save
    _sweep = _tier.sweep

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

    def edit(self, sid: str, *, create: bool = True) -> TierEdit:
        """Read-modify-write of one session, atomic among this process's threads (the tier's lock is held).

        Saved (to memory) on a clean exit if changed, discarded on an exception. A new empty dict if the
        session is absent (:class:`KeyError` with ``create=False``); an absent session left empty is not created.
        """
        return TierEdit(self, validate_id(sid), sid.encode(), create)

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
        raise ValueError(
            f"a memory tier buys nothing measurable over the {store.backend!r} backend: "
            f"use the store itself (the tier is for {', '.join(TIERED_BACKENDS)} stores)"
        )
    if max_value_size is None:
        max_value_size = int(getattr(store, "max_value_size", 1 << 20))
    codec = Codec(store._codec.name, None, max_value_size)
    return TieredStore(
        store,
        max_memory_sessions=max_memory_sessions,
        memory_timeout=float(memory_timeout),
        sweep_interval=float(sweep_interval),
        write_through=write_through,
        codec=codec,
    )


__all__ = ["TIERED_BACKENDS", "TieredStore", "tiered"]
