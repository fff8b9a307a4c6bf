"""Read and write latency of the memory tier against the plain store, per backend.

Timings only, never asserted. For each backend it fills a store with ``--sessions`` sessions of
about ``--value-bytes`` bytes, then times ``--ops`` random reads (``store[sid]``) and writes
(``store[sid] = value``) on the plain store and on ``lockstore.tiered(store)`` with every session
already in memory (the tier's best case). One process, so the tier runs in its declared
single-process mode.

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


def _times(op: Callable[[str], object], sids: list[str]) -> dict[str, float]:
    """Per-operation latency in microseconds: p50, p99, mean."""
    samples = []
    clock = time.perf_counter_ns
    for sid in sids:
        start = clock()
        op(sid)
        samples.append((clock() - start) / 1000)
    samples.sort()
    return {
        "p50_us": round(samples[len(samples) // 2], 2),
        "p99_us": round(samples[int(len(samples) * 0.99)], 2),
        "mean_us": round(statistics.fmean(samples), 2),
    }


def bench_backend(backend: str, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    value = {"user": 42, "name": "x" * args.value_bytes, "cart": [1, 2, 3]}
    with tempfile.TemporaryDirectory(prefix="tier-bench-") as tmp:
        store = lockstore.open(tmp, backend=backend, max_age=3600, clean_interval=3600, durability=args.durability)
        sids = [lockstore.new_id() for _ in range(args.sessions)]
        for sid in sids:
            store[sid] = value
        picks = [rng.choice(sids) for _ in range(args.ops)]

        def write(target: Any) -> Callable[[str], object]:
            return lambda sid: target.__setitem__(sid, value)

        plain_read = _times(store.__getitem__, picks)
        plain_write = _times(write(store), picks)
        # TieredStore directly: tiered() refuses backends the tier does not pay off on, and
        # this script is what measures that.
        tier = TieredStore(
            store,
            max_memory_sessions=args.sessions + 1,
            memory_timeout=900,
            sweep_interval=60,
            write_through=False,
            codec=Codec("pickle", None, 1 << 20),
        )
        try:
            for sid in sids:  # warm: every session in memory
                tier[sid]
            tier_read = _times(tier.__getitem__, picks)
            tier_write = _times(write(tier), picks)
            start = time.perf_counter()
            tier.store_all()
            flush_s = time.perf_counter() - start
        finally:
            tier.close()
    return {
        "backend": backend,
        "read": {"plain": plain_read, "tiered": tier_read},
        "write": {"plain": plain_write, "tiered": tier_write},
        "read_speedup_p50": round(plain_read["p50_us"] / tier_read["p50_us"], 2),
        "flush_all_s": round(flush_s, 3),
    }


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
    print(f"{'backend':8} {'op':6} {'plain p50':>10} {'p99':>8} {'tiered p50':>11} {'p99':>8}")
    for r in results:
        for op in ("read", "write"):
            p, t = r[op]["plain"], r[op]["tiered"]
            print(
                f"{r['backend']:8} {op:6} {p['p50_us']:10.1f} {p['p99_us']:8.1f} {t['p50_us']:11.1f} {t['p99_us']:8.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
