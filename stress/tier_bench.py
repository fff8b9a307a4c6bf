"""Latency of the memory tier against the plain store, per backend.

Timings only, never asserted. For each backend it fills a store with ``--sessions`` sessions of
about ``--value-bytes`` bytes, then times ``--ops`` random operations on the plain store and on a
``TieredStore`` over it with every session already in memory (the tier's best case):

- ``read``: ``store[sid]`` of sessions used less than ``touch_interval`` (60 s) ago;
- ``read-idle``: the same, each read coming 61 s after the previous operation, so the plain
  store also rewrites the session's last-access time (a fake clock jumps between reads);
- ``write``: ``store[sid] = value`` (the tier only writes memory: its figure is durability
  deferred, not speed gained).

One process, so the tier runs in its declared single-process mode.

    python -m stress.tier_bench                      # lmdb and shelve, 2,000 sessions
    python -m stress.tier_bench --backends lmdb --ops 50000 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import lockstore
from lockstore.codec import Codec
from lockstore.tiered import TieredStore


class _Clock:
    """The stores' clock, moved by hand between operations (never while one is timed)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _times(op: Callable[[str], object], sids: list[str], clock: _Clock, step: float) -> dict[str, float]:
    """Per-operation latency in microseconds (p50, p99, mean); *clock* moves *step* s before each."""
    samples = []
    timer = time.perf_counter_ns
    for sid in sids:
        clock.now += step
        start = timer()
        op(sid)
        samples.append((timer() - start) / 1000)
    samples.sort()
    return {
        "p50_us": round(samples[len(samples) // 2], 2),
        "p99_us": round(samples[int(len(samples) * 0.99)], 2),
        "mean_us": round(statistics.fmean(samples), 2),
    }


def bench_backend(backend: str, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    value = {"user": 42, "name": "x" * args.value_bytes, "cart": [1, 2, 3]}
    clock = _Clock()
    with tempfile.TemporaryDirectory(prefix="tier-bench-") as tmp:
        # Nothing expires and nothing is swept during the run: the clock jumps in "read-idle".
        store = lockstore.open(
            tmp,
            backend=backend,
            max_age=1e9,
            clean_interval=0,
            durability=args.durability,
            clock=clock,
        )
        sids = [lockstore.new_id() for _ in range(args.sessions)]
        for sid in sids:
            store[sid] = value
        picks = [rng.choice(sids) for _ in range(args.ops)]

        def write(target: Any) -> Callable[[str], object]:
            return lambda sid: target.__setitem__(sid, value)

        def run(target: Any) -> dict[str, dict[str, float]]:
            return {
                # reads of sessions used less than touch_interval (60 s) ago: no write
                "read": _times(target.__getitem__, picks, clock, 0),
                # reads of sessions idle longer than touch_interval: the store rewrites the time
                "read-idle": _times(target.__getitem__, picks, clock, 61),
                "write": _times(write(target), picks, clock, 0),
            }

        plain = run(store)
        # TieredStore directly: tiered() refuses backends the tier does not pay off on, and
        # this script is what measures that.
        tier = TieredStore(
            store,
            max_memory_sessions=args.sessions + 1,
            memory_timeout=1e9,
            sweep_interval=1e9,
            write_through=False,
            codec=Codec("pickle", None, 1 << 20),
        )
        try:
            for sid in sids:  # warm: every session in memory
                tier[sid]
            tiered_ = run(tier)
            start = time.perf_counter()
            tier.store_all()
            flush_s = time.perf_counter() - start
        finally:
            tier.close()
    return {
        "backend": backend,
        **{op: {"plain": plain[op], "tiered": tiered_[op]} for op in OPS},
        "flush_all_s": round(flush_s, 3),
    }


OPS = ("read", "read-idle", "write")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backends", nargs="+", default=["lmdb", "shelve"])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--ops", type=int, default=20000)
    parser.add_argument("--value-bytes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--durability", choices=["process", "system"], default="process")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    results = []
    for backend in args.backends:
        try:
            results.append(bench_backend(backend, args, rng))
        except lockstore.LockstoreError as exc:
            print(f"{backend}: unavailable ({exc})", file=sys.stderr)
    header = {
        "command": "python -m stress.tier_bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.system()} {platform.release()}",
        "date": time.strftime("%Y-%m-%d"),
        "sessions": args.sessions,
        "ops": args.ops,
        "value_bytes": args.value_bytes,
        "durability": args.durability,
    }
    if args.json:
        print(json.dumps({**header, "results": results}, indent=1))
        return 0
    print(f"{header['command']}  ({header['date']}, Python {header['python']}, {header['machine']})")
    print(
        f"{args.sessions} sessions of ~{args.value_bytes} B, {args.ops} random ops, "
        f"durability={args.durability}; latency in us"
    )
    print(f"{'backend':8} {'op':9} {'plain p50':>10} {'p99':>8} {'tiered p50':>11} {'p99':>8}")
    for r in results:
        for op in OPS:
            p, t = r[op]["plain"], r[op]["tiered"]
            print(
                f"{r['backend']:8} {op:6} {p['p50_us']:10.1f} {p['p99_us']:8.1f} {t['p50_us']:11.1f} {t['p99_us']:8.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
