"""The embedded store's administration, off its hot path: the full sweep and the sweep rules, the listing, copying and
checking of records, the statistics: methods of :class:`~lockstore.store.Store`, documented by ``BaseStore``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import record as fmt
from ._files import RULES
from .base import KEEP, Updater
from .codec import Record
from .errors import CorruptRecord, LockstoreError, StoreMismatch
from .ids import is_valid_id, shard_of, validate_id

if TYPE_CHECKING:
    from .store import Store

logger = logging.getLogger("lockstore.store")  # the store's logger: these are its messages


def rules_changed(store: Store) -> str | None:
    """Before a sweep: what differs between this process's sweep rules and the recorded ones, if any.

    One ``stat`` of the metadata per sweep (at most one per shard per ``clean_interval``); the file is
    read again only when it was rewritten (``lockstore config``). A process whose rules are no longer
    the store's never sweeps again: it warns once, and the operator restarts it.
    """
    assert store._files is not None
    ident = store._files.meta_ident()
    if ident == store._meta_ident:
        return None
    try:
        meta = store._files.read_meta() or {}
    except LockstoreError as exc:
        differs = f"its metadata cannot be read ({exc})"
    else:
        changed = [f"{name}={meta.get(name)!r}" for name in RULES if meta.get(name) != getattr(store, name)]
        if not changed:
            store._meta_ident = ident
            return None
        differs = "the store now records " + ", ".join(changed)
    if not store._rules_warned:
        store._rules_warned = True
        logger.warning(
            "store at %s: %s; this process opened it with other sweep rules and no longer sweeps: restart it",
            store.path,
            differs,
        )
    return differs


def clean(store: Store, progress: Callable[[int, int], None] | None = None, *, max_idle: float | None = None) -> int:
    """Sweep every shard of its expired sessions; *progress(shards_done, shards)* after each.

    With *max_idle* (seconds), sessions idle longer than that go too, each checked and removed under
    its shard's lock (session2's ``delete_old_sessions``)."""
    store._check_open()
    differs = rules_changed(store) if store._files is not None else None
    if differs:
        raise StoreMismatch(f"store at {store.path}: {differs}; reopen it to clean by the recorded rules")
    idle = store._max_idle(max_idle)
    removed = 0
    for shard in range(store.shards):
        with store._locks.held(shard, store.timeout):
            now = store.clock()
            removed += store._engine.sweep(shard, now, now - idle, None)
            store._next_clean[shard] = now + store.clean_interval
        if progress is not None:
            progress(shard + 1, store.shards)
    return removed


def records(
    store: Store, *, expired: bool = False, on_error: Callable[[str, CorruptRecord], None] | None = None
) -> Iterator[tuple[str, Record]]:
    store._check_open()
    for shard in range(store.shards):
        now = store.clock()
        batch = []
        for key, rec in store._scan(shard):
            sid = key.decode(errors="backslashreplace")
            batch.append((sid if sid.encode() == key and is_valid_id(sid) else None, sid, rec))
        yield from store._decode_batch(batch, now, expired, on_error)


def put_record(store: Store, sid: str, value: Any, *, created: float, last_access: float) -> None:
    shard, key = store._locate(sid)
    rec = store._codec.record(key, store._codec.encode(value), float(last_access), float(created))
    store._update(shard, key, lambda now: lambda old: rec, sweep=False)


def put_record_if(
    store: Store, sid: str, value: Any, *, created: float, last_access: float, expect: float | None
) -> bool:
    """Store *value* with the given times only if the live record's last access is *expect* (None: only
    if there is no live record); the check and the write are one engine update under the shard lock."""
    shard, key = store._locate(sid)
    if not all(math.isfinite(t) for t in (created, last_access, 0.0 if expect is None else expect)):
        raise ValueError(f"times must be finite: created={created!r} last_access={last_access!r} expect={expect!r}")
    rec = store._codec.record(key, store._codec.encode(value), float(last_access), float(created))
    max_age = store.max_age
    wrote = False

    def put_if(now: float) -> Updater:
        def put(old: bytes | None) -> Any:
            nonlocal wrote
            atime = None if old is None else fmt.times(old)[0]  # CorruptRecord: what is there cannot be compared
            wrote = (None if atime is None or now - atime > max_age else atime) == expect  # expired: absent
            return rec if wrote else KEEP

        return put

    store._update(shard, key, put_if, sweep=False)
    return wrote


def verify(store: Store) -> list[tuple[str, str]]:
    store._check_open()
    bad: list[tuple[str, str]] = []
    for shard in range(store.shards):
        for key, rec in store._scan(shard):
            try:
                sid = key.decode()
            except UnicodeDecodeError:
                bad.append((repr(key), "key is not UTF-8"))
                continue
            try:
                validate_id(sid)
                if shard_of(sid, store.shards) != shard:
                    raise CorruptRecord(f"stored in shard {shard}, belongs in {shard_of(sid, store.shards)}")
                fmt.times(rec)
                store._codec.decode(key, rec)
            except Exception as exc:
                bad.append((sid, str(exc)))
    return bad


def stats(store: Store) -> dict[str, Any]:
    store._check_open()
    engine = store._engine
    per_shard = []
    for shard in range(store.shards):
        now = store.clock()
        nothing: tuple[list[tuple[bytes, float]], float] = ([], 0.0)
        times, last = store._reading(shard, lambda s: (engine.scan_times(s), engine.last_clean(s)), nothing)
        live = sum(1 for _, atime in times if now - atime <= store.max_age)
        per_shard.append(
            {"shard": shard, "live": live, "expired": len(times) - live, "last_clean": last if last > 0 else None}
        )
    return {
        "backend": store.backend,
        "path": store.path,
        "shards": store.shards,
        "codec": store._codec.name,
        "signed": store._codec.signed,
        "durability": store.durability,
        "max_age": store.max_age,
        "clean_interval": store.clean_interval,
        "live": sum(s["live"] for s in per_shard),
        "expired": sum(s["expired"] for s in per_shard),
        "bytes": engine.bytes_on_disk(),
        "per_shard": per_shard,
        **{k: v for k, v in store.settings.items() if k == "dbm"},
    }


__all__ = ["clean", "put_record", "put_record_if", "records", "rules_changed", "stats", "verify"]
