"""The benchmark workloads. Each function runs in a child process of its own and returns plain data."""

from __future__ import annotations

import os
import random
import time
from typing import Any

from ._common import percentile
from ._targets import MAX_AGE, open_target


def session_value(i: int) -> dict[str, Any]:
    """About 1 KB pickled: what a web session with a little state looks like."""
    return {
        "n": 0,
        "user": i,
        "name": f"user-{i}",
        "roles": ["member"],
        "cart": list(range(8)),
        "csrf": f"{i:032x}",
        "pad": "x" * 860,
    }


def key(i: int) -> str:
    return f"s{i:08d}"


def _timed(fn: Any, keys: list[str], max_seconds: float) -> list[float]:
    clock = time.perf_counter
    stop = clock() + max_seconds
    out = []
    for k in keys:
        t0 = clock()
        fn(k)
        t1 = clock()
        out.append(t1 - t0)
        if t1 > stop:
            break
    out.sort()
    return out


def latency(
    name: str, directory: str, durability: str, sessions: int, ops: int, max_seconds: float, seed: int
) -> dict[str, Any]:
    """get and set latency on *sessions* sessions; bytes on disk per session."""
    rng = random.Random(seed)
    target = open_target(name, directory, durability)
    try:
        now = time.time()
        target.load((key(i), session_value(i), now) for i in range(sessions))
        keys = [key(rng.randrange(sessions)) for _ in range(ops)]
        _timed(target.get, keys[: min(ops, 1000)], max_seconds / 4)  # warm caches and first-use paths
        gets = _timed(target.get, keys, max_seconds)
        value = session_value(7)
        sets = _timed(lambda k: target.set(k, value), keys, max_seconds)
        size = target.bytes_on_disk()
        return {
            "get_p50": percentile(gets, 0.5),
            "get_p99": percentile(gets, 0.99),
            "gets": len(gets),
            "set_p50": percentile(sets, 0.5),
            "set_p99": percentile(sets, 0.99),
            "sets": len(sets),
            "bytes_per_session": size / sessions if size else None,
        }
    finally:
        target.close()


def prepare(name: str, directory: str, durability: str, keys: list[str]) -> int:
    target = open_target(name, directory, durability)
    try:
        now = time.time()
        target.load((k, session_value(i), now) for i, k in enumerate(keys))
        return len(keys)
    finally:
        target.close()


def rmw_worker(
    name: str, directory: str, durability: str, keys: list[str], barrier: Any, seconds: float, seed: int
) -> dict[str, Any]:
    """Read-modify-writes for *seconds* after every worker is ready; counts what was acknowledged."""
    rng = random.Random(seed)
    target = open_target(name, directory, durability)
    try:
        counts = dict.fromkeys(keys, 0)
        lat: list[float] = []
        errors = 0
        first_error = None
        clock = time.perf_counter
        barrier.wait(60)
        start = clock()
        stop = start + seconds
        while True:
            k = keys[rng.randrange(len(keys))]
            t0 = clock()
            try:
                target.rmw(k)
            except Exception as exc:  # a peer that fails under contention: counted, not fatal
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                if errors > 1000:
                    break
                continue
            t1 = clock()
            counts[k] += 1
            lat.append(t1 - t0)
            if t1 >= stop:
                break
        elapsed = clock() - start
        lat.sort()
        # a one-process target (the memory backend) can only be read back here
        stored = None if target.multiprocess else sum((target.get(k) or {}).get("n", 0) for k in keys)
        return {
            "ops": sum(counts.values()),
            "stored": stored,
            "counts": counts,
            "elapsed": elapsed,
            "max": lat[-1] if lat else 0.0,
            "p50": percentile(lat, 0.5),
            "p99": percentile(lat, 0.99),
            "errors": errors,
            "first_error": first_error,
        }
    finally:
        target.close()


def stored_total(name: str, directory: str, durability: str, keys: list[str]) -> int:
    target = open_target(name, directory, durability)
    try:
        return sum((target.get(k) or {}).get("n", 0) for k in keys)
    finally:
        target.close()


def clean_full(name: str, directory: str, durability: str, sessions: int) -> dict[str, Any]:
    """Time a full clean of *sessions* sessions, every other one expired."""
    target = open_target(name, directory, durability)
    try:
        now = time.time()
        old = now - MAX_AGE - 60
        target.load((key(i), session_value(i), old if i % 2 else now) for i in range(sessions))
        if name == "cachelib-fs":
            time.sleep(1.1)  # its expired entries were written with a one-second lifetime
        t0 = time.perf_counter()
        removed = target.clean()
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "removed": removed, "sessions": sessions}
    finally:
        target.close()


def clean_on_write(backend: str, directory: str, durability: str, sessions: int, writes: int) -> dict[str, Any]:
    """Write into a store holding *sessions* expired sessions: the writes that sweep, and the others."""
    import lockstore
    from lockstore.ids import shard_of

    base: dict[str, Any] = {"backend": backend, "durability": durability, "max_age": MAX_AGE}
    old = time.time() - MAX_AGE - 60
    baseline = _writes_into(lockstore.open(os.path.join(directory, "clean"), clean_interval=3600, **base), writes)
    directory = os.path.join(directory, "expired")
    with lockstore.open(directory, clean_interval=3600, **base) as store:
        for i in range(sessions):
            store.put_record(key(i), session_value(i), created=old, last_access=old)
        shards = store.stats()["shards"]
    with lockstore.open(directory, clean_interval=3600, **base) as store:
        seen: set[int] = set()
        sweeping: list[float] = []
        others: list[float] = []
        value = session_value(0)
        clock = time.perf_counter
        for i in range(writes):
            sid = f"new{i:08d}"
            shard = shard_of(sid, shards)
            t0 = clock()
            store[sid] = value
            dt = clock() - t0
            (others if shard in seen else sweeping).append(dt)
            seen.add(shard)
        left = store.stats()["expired"]
    sweeping.sort()
    others.sort()
    return {
        "sweeping_max": sweeping[-1] if sweeping else None,
        "sweeping_p50": percentile(sweeping, 0.5),
        "sweeping_writes": len(sweeping),
        "other_p50": percentile(others, 0.5),
        "other_p99": percentile(others, 0.99),
        "other_max": others[-1] if others else None,
        "other_writes": len(others),
        "expired_before": sessions,
        "expired_after": left,
        "baseline_p50": percentile(baseline, 0.5),
        "baseline_p99": percentile(baseline, 0.99),
    }


def _writes_into(store: Any, writes: int) -> list[float]:
    """Latencies of *writes* new sessions into *store* (closed afterwards), sorted."""
    value = session_value(0)
    clock = time.perf_counter
    out = []
    with store:
        for i in range(writes):
            t0 = clock()
            store[f"new{i:08d}"] = value
            out.append(clock() - t0)
    out.sort()
    return out


def growth(name: str, directory: str, durability: str, sizes: list[int], ops: int, seed: int) -> list[dict[str, Any]]:
    """get latency as the store grows through *sizes*."""
    rng = random.Random(seed)
    target = open_target(name, directory, durability)
    out = []
    try:
        have = 0
        now = time.time()
        for size in sizes:
            t0 = time.perf_counter()
            target.load((key(i), session_value(i), now) for i in range(have, size))
            fill = time.perf_counter() - t0
            have = size
            keys = [key(rng.randrange(size)) for _ in range(ops)]
            _timed(target.get, keys[:1000], 1.0)
            gets = _timed(target.get, keys, 5.0)
            out.append(
                {
                    "sessions": size,
                    "get_p50": percentile(gets, 0.5),
                    "get_p99": percentile(gets, 0.99),
                    "fill_seconds": fill,
                }
            )
        return out
    finally:
        target.close()


__all__ = [
    "clean_full",
    "clean_on_write",
    "growth",
    "key",
    "latency",
    "prepare",
    "rmw_worker",
    "session_value",
    "stored_total",
]
