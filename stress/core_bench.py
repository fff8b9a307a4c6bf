"""Core figures for each embedded backend beside raw LMDB, measured in one run.

    python -m stress.core_bench [--sessions 10000] [--ops 20000] [--seconds 3]

Single-process get and set latency (median, p99) over sessions of about 1 KB, and ``edit()`` throughput
with 4 processes over 1,000 sessions, beside raw LMDB doing the same read-modify-write in one write
transaction (same durability: no sync), no file lock.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pickle
import random
import statistics
import tempfile
import time
from typing import Any

import lmdb

import lockstore

VALUE = {"user": 12345, "name": "x" * 900, "cart": list(range(20))}


def _percentiles(samples: list[float]) -> tuple[float, float]:
    samples.sort()
    return statistics.median(samples) * 1e6, samples[int(len(samples) * 0.99)] * 1e6


class Raw:
    """Raw LMDB: the physical reference."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.env: Any = None

    def open(self) -> None:
        if self.env is not None:
            self.env.close()  # inherited across fork: LMDB wants a handle of the child's own
        self.env = lmdb.open(self.path, map_size=8 << 30, sync=False, metasync=False, max_spare_txns=0)

    def set(self, sid: str, value: Any) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(sid.encode(), pickle.dumps(value, pickle.HIGHEST_PROTOCOL))

    def get(self, sid: str) -> Any:
        with self.env.begin() as txn:
            return pickle.loads(txn.get(sid.encode()))

    def edit(self, sid: str) -> None:
        with self.env.begin(write=True) as txn:
            k = sid.encode()
            raw = txn.get(k)
            value = pickle.loads(raw) if raw else {}
            value["n"] = value.get("n", 0) + 1
            txn.put(k, pickle.dumps(value, pickle.HIGHEST_PROTOCOL))

    def count(self, sids: list[str]) -> int:
        return sum(self.get(s).get("n", 0) for s in sids)


class Lock:
    def __init__(self, path: str, backend: str) -> None:
        self.path, self.backend, self.store = path, backend, None

    def open(self) -> None:
        self.store = lockstore.open(self.path, backend=self.backend)

    def set(self, sid: str, value: Any) -> None:
        self.store[sid] = value  # type: ignore[index]

    def get(self, sid: str) -> Any:
        return self.store[sid]  # type: ignore[index]

    def edit(self, sid: str) -> None:
        with self.store.edit(sid) as session:  # type: ignore[union-attr]
            session["n"] = session.get("n", 0) + 1

    def count(self, sids: list[str]) -> int:
        return sum(self.get(s).get("n", 0) for s in sids)


def _worker(target: Any, sids: list[str], seconds: float, start: Any, out: Any) -> None:
    target.open()
    rng = random.Random(os.getpid())
    start.wait()
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(50):
            target.edit(rng.choice(sids))
        n += 50
    out.put(n)


def measure(target: Any, sessions: int, ops: int, seconds: float) -> dict[str, float]:
    target.open()
    sids = [f"s{i:06d}" for i in range(sessions)]
    for sid in sids:
        target.set(sid, VALUE)
    rng = random.Random(1)
    gets, sets = [], []
    for _ in range(ops):
        sid = rng.choice(sids)
        t = time.perf_counter()
        target.get(sid)
        gets.append(time.perf_counter() - t)
        t = time.perf_counter()
        target.set(sid, VALUE)
        sets.append(time.perf_counter() - t)
    hot = sids[:1000]
    for sid in hot:
        target.set(sid, {"n": 0, **VALUE})
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(target, hot, seconds, start, out)) for _ in range(4)]
    for p in procs:
        p.start()
    time.sleep(0.3)
    start.set()
    done = sum(out.get(timeout=seconds + 60) for _ in procs)
    for p in procs:
        p.join()
    lost = done - target.count(hot)
    g50, g99 = _percentiles(gets)
    s50, s99 = _percentiles(sets)
    return {"get_p50": g50, "get_p99": g99, "set_p50": s50, "set_p99": s99, "edit4_ops": done / seconds, "lost": lost}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--ops", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = {
            "raw lmdb": measure(Raw(os.path.join(tmp, "raw")), args.sessions, args.ops, args.seconds),
        }
        for backend in ("lmdb", "shelve", "memory"):
            if backend == "memory":
                continue  # one process only: no 4-process figure
            rows[backend] = measure(Lock(os.path.join(tmp, backend), backend), args.sessions, args.ops, args.seconds)
    ref = rows["raw lmdb"]
    print(f"{args.sessions} sessions of ~1 KB; edit() with 4 processes over 1,000 sessions, {args.seconds} s")
    print(f"{'':10} {'get p50':>9} {'get p99':>9} {'set p50':>9} {'set p99':>9} {'edit x4/s':>10} {'lost':>5}")
    for name, r in rows.items():
        print(
            f"{name:10} {r['get_p50']:7.1f}us {r['get_p99']:7.1f}us {r['set_p50']:7.1f}us {r['set_p99']:7.1f}us "
            f"{r['edit4_ops']:10.0f} {r['lost']:5.0f}"
        )
    for name, r in rows.items():
        if name != "raw lmdb":
            print(
                f"{name} / raw: get {r['get_p50'] / ref['get_p50']:.2f}x, set {r['set_p50'] / ref['set_p50']:.2f}x, "
                f"edit throughput {r['edit4_ops'] / ref['edit4_ops']:.0%}"
            )


if __name__ == "__main__":
    main()
