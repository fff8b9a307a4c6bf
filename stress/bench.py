"""Benchmarks: ``python -m stress.bench`` and ``lockstore bench``.

Measures, in one run on one machine, the same workloads on lockstore's backends, the raw-LMDB
reference, two naive designs and the peers users would pick instead (see ``stress/_targets.py``),
prints tables with every figure as a ratio to raw LMDB, checks lockstore's performance targets, and
with ``--json`` prints everything as JSON. Timings only: nothing here is asserted by the test suite
except that it runs. Every measurement runs in a fresh child process on a fresh directory.

    python -m stress.bench                        # the full run, about 4 minutes on 2 cores
    python -m stress.bench --quick                # small sizes, a few seconds
    python -m stress.bench --growth-max 100000    # stop the growth measure at 100,000 sessions
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from . import _workloads as wl
from ._common import WorkerPool, mp_context
from ._report import print_report, targets_check
from ._targets import TARGETS, available, target_named

CHILD_TIMEOUT = 600.0


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Benchmark lockstore against raw LMDB, naive designs and peers (diskcache, sqlitedict, "
        "cachelib). Every figure is also shown as a ratio to the raw-LMDB reference.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes and short runs: a few seconds in all")
    p.add_argument(
        "--targets",
        action="append",
        metavar="NAMES",
        help="comma-separated subset of: "
        + ", ".join(t.replace(" ", "-") for t in TARGETS)
        + " (repeatable; 'lockstore lmdb', quoted, is accepted too)",
    )
    p.add_argument("--seconds", type=float, help="length of each read-modify-write run (default 2; quick 0.25)")
    p.add_argument("--processes", help="process counts for read-modify-write (default 1,2,4,8; quick 1,2)")
    p.add_argument("--sessions", type=int, help="sessions for get/set latency (default 10,000; quick 1,000)")
    p.add_argument("--clean-sessions", type=int, help="sessions for the clean measures (default 100,000)")
    p.add_argument(
        "--growth-max", type=int, help="largest store for get latency growth (default 1,000,000, about 30 s)"
    )
    p.add_argument(
        "--durability",
        choices=("process", "system"),
        default="process",
        help="lockstore durability, and the matching raw-LMDB flags (default: process)",
    )
    p.add_argument("--dir", help="make the stores under this directory (default: a temporary one)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--save", metavar="FILE", help="also write the results as JSON to FILE")
    return p


class Plan:
    def __init__(self, args: argparse.Namespace) -> None:
        quick = args.quick
        self.seconds = args.seconds or (0.25 if quick else 2.0)
        procs = args.processes or ("1,2" if quick else "1,2,4,8")
        self.processes = [int(x) for x in procs.split(",")]
        self.sessions = args.sessions or (1000 if quick else 10_000)
        self.ops = 2_000 if quick else 20_000
        self.op_seconds = 0.3 if quick else 3.0
        self.clean_sessions = args.clean_sessions or (2_000 if quick else 100_000)
        self.low_keys = 100 if quick else 1000
        self.high_keys = 8
        top = args.growth_max or (2_000 if quick else 1_000_000)
        self.growth_sizes = [s for s in (100, 1_000, 10_000, 100_000, 1_000_000) if s <= top and (s >= 1000 or quick)]
        if top not in self.growth_sizes:
            self.growth_sizes.append(top)
        self.durability = args.durability
        self.seed = args.seed
        if quick:  # one low- and one high-contention run keep --quick short
            self.rmw_configs = [(self.processes[0], "low"), (self.processes[-1], "high")]
        else:
            self.rmw_configs = [(n, c) for c in ("low", "high") for n in self.processes]


def _child(fn: Callable[..., Any], *args: Any, timeout: float = CHILD_TIMEOUT) -> Any:
    """Run *fn* in a fresh child process; its result, or an error string."""
    pool = WorkerPool(mp_context())
    w = pool.start(getattr(fn, "__name__", "bench"), fn, *args)
    problems = pool.wait(time.monotonic() + timeout)
    if problems:
        return {"error": problems[0]}
    return w.result


class Bench:
    def __init__(self, args: argparse.Namespace, base: str, targets: list[str], say: Callable[[str], None]) -> None:
        self.args = args
        self.plan = Plan(args)
        self.base = base
        self.targets = targets
        self.say = say
        self.n = 0

    def _dir(self) -> str:
        self.n += 1
        d = os.path.join(self.base, f"t{self.n:03d}")
        os.makedirs(d, mode=0o700)
        return d

    def _run(self, label: str, fn: Callable[..., Any], *args: Any) -> Any:
        self.say(label)
        d = self._dir()
        try:
            return _child(fn, args[0], d, *args[1:])
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def latency(self) -> dict[str, Any]:
        p = self.plan
        return {
            t: self._run(f"get/set latency: {t}", wl.latency, t, p.durability, p.sessions, p.ops, p.op_seconds, p.seed)
            for t in self.targets
        }

    def rmw(self) -> dict[str, Any]:
        p = self.plan
        out: dict[str, Any] = {}
        for nproc, contention in p.rmw_configs:
            n_keys = p.low_keys if contention == "low" else p.high_keys
            keys = [wl.key(i) for i in range(n_keys)]
            label = f"{nproc}p-{contention}"
            for t in self.targets:
                if nproc > 1 and t == "lockstore memory":
                    continue
                self.say(f"read-modify-write {label}: {t}")
                out.setdefault(label, {})[t] = self._rmw_one(t, keys, nproc)
        return out

    def _rmw_one(self, target: str, keys: list[str], nproc: int) -> dict[str, Any]:
        p = self.plan
        d = self._dir()
        try:
            prep = _child(wl.prepare, target, d, p.durability, keys)
            if isinstance(prep, dict):
                return prep
            ctx = mp_context()
            barrier = ctx.Barrier(nproc)
            pool = WorkerPool(ctx)
            for i in range(nproc):
                pool.start(
                    f"{target} worker {i}",
                    wl.rmw_worker,
                    target,
                    d,
                    p.durability,
                    keys,
                    barrier,
                    p.seconds,
                    p.seed * 1000 + i,
                )
            problems = pool.wait(time.monotonic() + p.seconds + 120)
            results = [w.result for w in pool.workers if w.result is not None]
            if problems or len(results) != nproc:
                return {"error": (problems or ["a worker returned nothing"])[0]}
            if results[0]["stored"] is not None:
                stored = results[0]["stored"]
            else:
                stored = _child(wl.stored_total, target, d, p.durability, keys)
            acked = sum(r["ops"] for r in results)
            elapsed = max(r["elapsed"] for r in results)
            return {
                "ops_per_second": acked / elapsed if elapsed else 0.0,
                "acknowledged": acked,
                "lost": acked - stored if isinstance(stored, int) else None,
                "errors": sum(r["errors"] for r in results),
                "first_error": next((r["first_error"] for r in results if r["first_error"]), None),
                "max_latency": max(r["max"] for r in results),
                "p50": sorted(r["p50"] for r in results)[len(results) // 2],
                "p99": max(r["p99"] for r in results),
                "worker_ops": [r["ops"] for r in results],
            }
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def clean(self) -> dict[str, Any]:
        p = self.plan
        skip = {"sqlitedict", "naive-shelve", "lmdb+filelock"}  # no expiry; too slow; same as raw-lmdb
        return {
            t: self._run(f"full clean of {p.clean_sessions:,}: {t}", wl.clean_full, t, p.durability, p.clean_sessions)
            for t in self.targets
            if t not in skip
        }

    def clean_on_write(self) -> dict[str, Any]:
        p = self.plan
        out = {}
        for t in self.targets:
            if t in ("lockstore lmdb", "lockstore shelve"):
                backend = t.split()[1]
                out[t] = self._run(
                    f"clean on write among {p.clean_sessions:,} expired: {t}",
                    wl.clean_on_write,
                    backend,
                    p.durability,
                    p.clean_sessions,
                    2000,
                )
        return out

    def growth(self) -> dict[str, Any]:
        p = self.plan
        return {
            t: self._run(
                f"get latency up to {p.growth_sizes[-1]:,} sessions: {t}",
                wl.growth,
                t,
                p.durability,
                p.growth_sizes,
                min(p.ops, 5000),
                p.seed,
            )
            for t in self.targets
            if t in ("lockstore lmdb", "raw-lmdb")
        }


def main(argv: list[str] | None = None, prog: str = "python -m stress.bench") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        plan = Plan(args)
    except ValueError:
        print(f"{prog}: error: --processes takes numbers separated by commas", file=sys.stderr)
        return 2
    if min(plan.processes) < 1 or plan.seconds <= 0:
        print(f"{prog}: error: process counts and --seconds must be positive", file=sys.stderr)
        return 2
    given = [t for value in args.targets or [] for t in value.split(",") if t.strip()]
    unknown = [t for t in given if target_named(t) is None]
    if unknown:
        names = ", ".join(t.replace(" ", "-") for t in TARGETS)
        print(f"{prog}: error: unknown target(s) {', '.join(map(repr, unknown))}; choose from {names}", file=sys.stderr)
        return 2
    wanted = list(dict.fromkeys(str(target_named(t)) for t in given)) if given else list(TARGETS)
    targets, missing = [], {}
    for t in wanted:
        why = available(t)
        if why:
            missing[t] = why
        else:
            targets.append(t)
    base = tempfile.mkdtemp(prefix="lockstore-bench-", dir=args.dir)
    tty = sys.stderr.isatty() and not args.json

    def say(text: str) -> None:
        if tty:
            sys.stderr.write("\r\033[K  " + text[:100])
            sys.stderr.flush()

    started = time.time()
    t0 = time.monotonic()
    bench = Bench(args, base, targets, say)
    results: dict[str, Any] = {}
    try:
        results["latency"] = bench.latency()
        results["rmw"] = bench.rmw()
        results["clean"] = bench.clean()
        results["clean_on_write"] = bench.clean_on_write()
        results["growth"] = bench.growth()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        say("")
        if tty:
            sys.stderr.write("\r\033[K")
        shutil.rmtree(base, ignore_errors=True)
    doc = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "started": started,
        "seconds": time.monotonic() - t0,
        "command": " ".join([prog, *(argv if argv is not None else sys.argv[1:])]),
        "plan": {
            "quick": args.quick,
            "rmw_seconds": plan.seconds,
            "processes": plan.processes,
            "sessions": plan.sessions,
            "clean_sessions": plan.clean_sessions,
            "growth_sizes": plan.growth_sizes,
            "durability": plan.durability,
            "low_contention_sessions": plan.low_keys,
            "high_contention_sessions": plan.high_keys,
        },
        "skipped": missing,
        "results": results,
    }
    doc["targets"] = targets_check(doc)
    if args.save:
        with open(args.save, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_report(doc)
    return 0


if __name__ == "__main__":
    random.seed()
    sys.exit(main())
