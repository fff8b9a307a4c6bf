"""The interfaces: :class:`BaseStore`, what every store offers (embedded or remote), and :class:`Engine`,
what an embedded backend does for :class:`~lockstore.store.Store`, per shard, with bytes in and out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from . import record as fmt
from .aio import AsyncStoreMixin
from .codec import Codec, Record
from .errors import CorruptRecord, LockTimeout
from .ids import describe_id

KEEP = object()
"""Returned by an update function: leave the record as it is."""

Clock = Callable[[], float]
Updater = Callable[[bytes | None], Any]


class Engine(Protocol):
    """What a backend does for :class:`Store`, per shard. Writes are called with the shard lock held."""

    name: str
    lock_reads: bool  # True when reads must hold the shard lock too

    def get(self, shard: int, key: bytes) -> bytes | None: ...

    def update(self, shard: int, key: bytes, fn: Updater, sweep: tuple[float, float, int] | None) -> int:
        """In one atomic write: first, if *sweep* = (now, cutoff, limit), remove up to *limit* records
        of *shard* last accessed before *cutoff* and record *now* as the shard's last clean; then call
        ``fn(old_record)`` and store what it returns (bytes), delete (None) or leave it (:data:`KEEP`).
        Returns the number of records swept."""
        ...

    def put(
        self, shard: int, key: bytes, rec: bytes, old_atime: float | None, sweep: tuple[float, float, int] | None
    ) -> int:
        """Like :meth:`update` storing *rec*, where the caller read the current record under the same lock
        (*old_atime* its last access, None if there was none): engines may skip reading it again."""
        ...

    def sweep(self, shard: int, now: float, cutoff: float, limit: int | None) -> int: ...

    def last_clean(self, shard: int) -> float: ...

    def holds(self, shard: int) -> bool:
        """False if nothing was ever written to *shard*, so that a read need not lock it nor create its files
        (asked only of engines whose reads hold the lock)."""
        ...

    def scan(self, shard: int) -> list[tuple[bytes, bytes]]: ...

    def scan_times(self, shard: int) -> list[tuple[bytes, float]]: ...

    def clear(self, shard: int) -> int: ...

    def bytes_on_disk(self) -> int: ...

    def close(self) -> None: ...


class Edit:
    """``edit()`` written once: the session is read under its lock (one parse of the header, one decode) and
    yielded as a dict; on a clean exit it is written if it changed or its touch is due, else the lock is only
    given back. A store gives two primitives: :meth:`_begin` (take the lock, return the stored record, live or
    not, or None) and :meth:`_end` (write *rec* and let go; with None only let go). A damaged record raises
    :class:`CorruptRecord` and is left as it is."""

    __slots__ = ("_atime", "_create", "_created", "_key", "_old", "_sid", "_store", "_value")

    def __init__(self, store: BaseStore, sid: str, key: bytes, create: bool) -> None:
        self._store = store
        self._sid = sid
        self._key = key
        self._create = create

    def _begin(self) -> bytes | None:
        raise NotImplementedError

    def _end(self, rec: bytes | None, now: float) -> None:
        raise NotImplementedError

    def __enter__(self) -> dict[str, Any]:
        rec = self._begin()
        try:
            store = self._store
            now = store.clock()
            self._atime = None  # last access of the stored record, live or not (LMDB: its index entry)
            if rec is not None:
                self._atime, self._created = fmt.times(rec)
                if now - self._atime > store.max_age:
                    rec = None
            if rec is None:
                if not self._create:
                    raise KeyError(self._sid)
                self._old = None
                self._created = now
                value: dict[str, Any] = {}
                self._value = value
                return value
            self._old, value = store._codec.open(self._key, rec)
            if type(value) is not dict and not isinstance(value, dict):
                raise TypeError(f"edit() needs a dict session; {describe_id(self._sid)} holds a {type(value).__name__}")
            self._value = value
            return value
        except BaseException:
            self._end(None, 0.0)
            raise

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        rec = None
        now = 0.0
        if exc_type is None and (self._old is not None or self._value):  # an absent session left empty: not created
            try:
                store = self._store
                payload = store._codec.encode(self._value)
                now = store.clock()
                atime = self._atime
                if payload != self._old or atime is None or now - atime >= store.touch_interval:
                    rec = store._codec.record(self._key, payload, now, self._created)
            except BaseException:
                self._end(None, 0.0)
                raise
        self._end(rec, now)


class BaseStore(AsyncStoreMixin, MutableMapping[str, Any], ABC):
    """The interface of every lockstore store: a mutable mapping of session ids to values.

    Reads return fresh copies; sessions idle longer than ``max_age`` seconds are absent everywhere.
    """

    backend: str
    path: str
    max_age: float
    touch_interval: float
    timeout: float
    clock: Clock
    _codec: Codec

    @abstractmethod
    def edit(self, sid: str, *, create: bool = True) -> AbstractContextManager[dict[str, Any]]:
        """A context manager yielding the session as a dict, locked; saved on clean exit if changed."""

    @abstractmethod
    def touch(self, sid: str) -> bool:
        """Refresh the last access of a live session; False if there is none."""

    @abstractmethod
    def clean(self, progress: Callable[[int, int], None] | None = None, *, max_idle: float | None = None) -> int:
        """Remove every expired session (or, with *max_idle*, every session idle longer than that many
        seconds, atomically per session); returns how many."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counts, sizes and last clean per shard."""

    @abstractmethod
    def verify(self) -> list[tuple[str, str]]:
        """(id, problem) for every record that does not decode or whose signature fails."""

    @abstractmethod
    def record(self, sid: str) -> Record | None:
        """The value and times of a live session, without refreshing its last access."""

    @abstractmethod
    def records(
        self, *, expired: bool = False, on_error: Callable[[str, CorruptRecord], None] | None = None
    ) -> Iterator[tuple[str, Record]]:
        """Every live session (or, with *expired*, every expired one not yet swept) and its times.

        A record that cannot be read (a header too short, a signature that fails, a payload that does not
        decode) raises :class:`~lockstore.errors.CorruptRecord`; with *on_error*, it is passed to
        ``on_error(sid, error)`` instead and the iteration goes on, so that ``ls``, ``copy`` and the like
        can report it and carry on past it (issue 9, item 6).
        """

    @abstractmethod
    def put_record(self, sid: str, value: Any, *, created: float, last_access: float) -> None:
        """Store *value* under *sid* with the given times (copying stores, fixing clocks)."""

    @abstractmethod
    def put_record_if(self, sid: str, value: Any, *, created: float, last_access: float, expect: float | None) -> bool:
        """Compare-and-put: store *value* under *sid* with the given times only if the store still holds
        what the caller expects, checked and written atomically under the session's lock.

        Parameters
        ----------
        sid, value, created, last_access
            As for :meth:`put_record`.
        expect
            The last access of the live record the caller expects to replace, compared exactly; or None:
            write only if there is no live record (absent or expired).

        Returns
        -------
        bool
            True if the record was written; False if the store held something else (nothing written).

        Raises
        ------
        CorruptRecord
            The stored record's header cannot be read, so what it holds cannot be compared; it is left
            as it is (``del store[sid]`` removes it).

        Notes
        -----
        ``lockstore copy`` uses it so that a re-run never overwrites a session the application wrote
        into the destination, nor recreates one it deleted, even while the application runs (issue 9,
        item 10).
        """

    @abstractmethod
    def close(self) -> None:
        """Release files and connections; the store cannot be used afterwards."""

    def _decode_batch(
        self,
        batch: Sequence[tuple[str | None, str, bytes | None]],
        now: float,
        expired: bool,
        on_error: Callable[[str, CorruptRecord], None] | None,
    ) -> Iterator[tuple[str, Record]]:
        """:meth:`records` of one batch of (valid id or None, id as stored, record or None): live (or
        expired) sessions decoded; a foreign id or a damaged record raises, or goes to *on_error*."""
        for sid, shown, rec in batch:
            if rec is None:
                continue
            try:
                if sid is None:
                    raise CorruptRecord(f"the stored id {shown[:60]!r} is not a valid session id (not lockstore's)")
                atime, created = fmt.times(rec)
                if (now - atime > self.max_age) != expired:
                    continue
                value = self._codec.decode(sid.encode(), rec)
            except CorruptRecord as exc:
                if on_error is None:
                    raise CorruptRecord(f"session {describe_id(shown)}: {exc}") from None
                on_error(shown, exc)
                continue
            yield sid, Record(value, created, atime)

    def _max_idle(self, max_idle: float | None) -> float:
        """The idle time ``clean(max_idle=...)`` removes sessions after: at most ``max_age``."""
        if max_idle is None:
            return self.max_age
        if isinstance(max_idle, bool) or not isinstance(max_idle, int | float) or not max_idle >= 0:
            raise ValueError(f"max_idle must be a number of seconds >= 0, not {max_idle!r}")
        return min(float(max_idle), self.max_age)

    def _take(self, sid: str) -> tuple[bytes | None, float]:
        """Remove the record of *sid* in one atomic step, under the session's lock; (the record it held,
        live or not, or None; the time of removal). :meth:`pop` and ``del`` are built on it."""
        raise NotImplementedError(f"{type(self).__name__} defines pop and del itself")

    def __delitem__(self, sid: str) -> None:
        rec, now = self._take(sid)
        if rec is None:
            raise KeyError(sid)
        try:
            live = now - fmt.times(rec)[0] <= self.max_age
        except CorruptRecord:
            live = True  # an unreadable record counts as present, so an operator can remove it (issue 9, item 6)
        if not live:
            raise KeyError(sid)

    def pop(self, sid: str, *default: Any) -> Any:
        """Remove *sid* and return its value, or *default* (if given) when it has no live session.

        Atomic across processes: the record is read and removed in one step under the session's lock, so
        two processes popping one session never both get it. (A damaged record is removed and raises
        :class:`CorruptRecord`.)
        """
        if len(default) > 1:
            raise TypeError(f"pop expected at most 2 arguments, got {1 + len(default)}")
        rec, now = self._take(sid)
        if rec is not None and now - fmt.times(rec)[0] <= self.max_age:
            return self._codec.decode(sid.encode(), rec)
        if default:
            return default[0]
        raise KeyError(sid)

    def setdefault(self, sid: str, default: Any = None) -> Any:
        """The value of *sid*; if it has no live session, store *default* first and return it.

        Atomic across processes: *default* is written only by a compare-and-put that finds no live
        session (:meth:`put_record_if`), so it never replaces one another process stored meanwhile.
        """
        for _ in range(100):
            now = self.clock()
            if self.put_record_if(sid, default, created=now, last_access=now, expect=None):
                return default
            try:
                return self[sid]
            except KeyError:
                continue  # removed between the two steps: try again
        raise LockTimeout(f"session {describe_id(sid)} kept appearing and disappearing; try again")

    def __bool__(self) -> bool:
        """True if any session is live; stops at the first one found (``len()`` would count them all)."""
        for _ in self:
            return True
        return False

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Set several sessions, as ``dict.update``. Each one is written atomically, on its own: another
        process may see some of them written and not yet the others."""
        MutableMapping.update(self, *args, **kwargs)

    def __enter__(self) -> BaseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.backend} {self.path!r}>"


__all__ = ["KEEP", "BaseStore", "Clock", "Edit", "Engine", "Updater"]
