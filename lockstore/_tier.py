"""The memory entries of :class:`~lockstore.tiered.TieredStore`, apart from its store surface: how a session in memory
is loaded, written, saved, evicted and swept (methods of ``TieredStore``, called with its lock held), and its edit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Edit
from .ids import validate_id

if TYPE_CHECKING:
    from .tiered import TieredStore


class Entry:
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


class TierEdit(Edit):
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


def entry(tier: TieredStore, sid: str, now: float) -> Entry | None:
    """The live memory entry of *sid*, loading it from the persistent store if needed."""
    found = tier._entries.get(sid)
    if found is not None:
        if now - found.last_access > tier.max_age:
            del tier._entries[sid]  # expired in memory: the persistent copy is older still
            return None
        tier._entries.move_to_end(sid)
        return found
    record = tier.persistent.record(sid)
    if record is None:
        return None
    found = Entry(tier._codec.encode(record.value), record.created, record.last_access, saved=True)
    tier._entries[sid] = found
    evict_excess(tier)
    return found


def read(tier: TieredStore, sid: str, now: float) -> Entry | None:
    """:func:`entry`, as a read: its last access becomes *now*, and it is no longer a one-shot session."""
    found = entry(tier, validate_id(sid), now)
    if found is not None:
        found.last_access, found.one_shot = now, False
    return found


def write(tier: TieredStore, sid: str, payload: bytes, now: float) -> None:
    """Hold *payload* as the session *sid*, accessed *now* (and save it at once with ``write_through``)."""
    found = tier._entries.get(sid)
    if found is None or now - found.last_access > tier.max_age:
        record = tier.persistent.record(sid)
        found = Entry(payload, now, now, saved=False)
        if record is not None:  # replacing a stored session: never a one-shot to drop
            found.created = record.created
            found.saved_access = record.last_access
            found.one_shot = False
        tier._entries[sid] = found
    found.payload = payload
    found.last_access = now
    found.dirty = True
    tier._entries.move_to_end(sid)
    if tier.write_through:
        save(tier, sid, found)
    evict_excess(tier)


def save(tier: TieredStore, sid: str, held: Entry) -> None:
    """Write *held* to the persistent store if it holds anything the store lacks."""
    if held.dirty or held.saved_access is None or (held.last_access - held.saved_access >= tier.touch_interval):
        value = tier._codec.loads(held.payload, sid.encode())
        tier.persistent.put_record(sid, value, created=held.created, last_access=held.last_access)
        held.saved_access = held.last_access
        held.dirty = False


def evict_excess(tier: TieredStore) -> None:
    """Past ``max_memory_sessions``, write the least recently used sessions out and drop them from memory."""
    while len(tier._entries) > tier.max_memory_sessions:
        sid, held = next(iter(tier._entries.items()))
        save(tier, sid, held)  # live sessions are never dropped for room, one-shot or not
        del tier._entries[sid]


def sweep(tier: TieredStore, now: float) -> tuple[int, int]:
    """Move sessions idle past ``memory_timeout`` to the persistent store, dropping one-shot and expired ones
    unwritten; (moved, dropped)."""
    moved = dropped = 0
    for sid, held in list(tier._entries.items()):
        idle = now - held.last_access
        if idle <= tier.memory_timeout:
            break  # the rest were used more recently
        if idle <= tier.max_age and not held.one_shot:
            save(tier, sid, held)
            moved += 1
        else:
            dropped += 1
        del tier._entries[sid]
    return moved, dropped


__all__ = ["Entry", "TierEdit", "entry", "evict_excess", "read", "save", "sweep", "write"]
