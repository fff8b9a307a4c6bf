"""The stress harness: ``python -m stress`` and ``lockstore stress``.

Runs the scenarios (all by default) against one backend, each on its own store, prints a table per
scenario and a verdict, and exits 1 if any invariant was violated. A scenario that cannot run on the
backend (``kill`` and ``fork`` on the memory backend) is reported as skipped, by name and reason; a run
where every scenario was skipped checked nothing: its verdict is SKIP and it exits 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from typing import Any

from ._common import fmt_int, fmt_seconds, format_table, mp_context, percentile
from .scenarios import NAMES, Context, Result, opened

BACKENDS = ("lmdb", "shelve", "memory")
SETUP_SECONDS = 0.4  # what a scenario spends starting workers and checking, roughly, on 2 cores


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def _seconds(text: str) -> float:
    try:
        s = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.5 <= s <= 86400:
        raise argparse.ArgumentTypeError(f"must be from 0.5 to 86400 seconds, not {text}")
    return s


def build_parser(prog: str = "python -m stress") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Multi-process stress and fault injection for lockstore. Each scenario checks its own "
        "invariant; the exit status is 1 if any was violated, 2 if every scenario was skipped (none can run "
        "on this backend), 0 otherwise.",
        epilog="scenarios: counter (no lost update), mixed (the final store and every read match the "
        "acknowledged operations), kill (SIGKILL loses no acknowledged write), expiry (no expired session "
        "returned, no live one swept), fork (a store used across fork), threads (threads and processes mixed).",
    )
    p.add_argument("--backend", choices=BACKENDS, default="lmdb", help="storage backend (default: lmdb)")
    p.add_argument(
        "--path",
        help="keep the stores in this directory (one subdirectory per scenario; "
        "default: a temporary directory, removed afterwards); a redis:// or postgresql:// URL "
        "runs against that server",
    )
    p.add_argument("--processes", type=_positive_int, default=4, help="worker processes (default: 4)")
    p.add_argument(
        "--threads", type=_positive_int, default=4, help="threads per process in the threads scenario (default: 4)"
    )
    p.add_argument(
        "--seconds", type=_seconds, default=30.0, help="total time of the run, shared by the scenarios (default: 30)"
    )
    p.add_argument(
        "--sessions",
        type=_positive_int,
        default=1000,
        help="sessions for the throughput phase of counter (default: 1000)",
    )
    p.add_argument("--shards", type=_positive_int, help="shards of a new store (default: the store's default)")
    p.add_argument(
        "--value-size", type=int, default=1024, metavar="BYTES", help="padding in each session value (default: 1024)"
    )
    p.add_argument(
        "--scenario",
        action="append",
        choices=NAMES,
        metavar="NAME",
        help=f"run only this scenario; repeatable ({', '.join(NAMES)})",
    )
    p.add_argument("--seed", type=int, help="random seed, to replay a run (default: random, printed)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    return p


class _Display:
    """A one-line progress display, only on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.label = ""
        self.start = 0.0
        self.total = 0.0
        self.counters: Any = None
        self.last = 0.0

    def begin(self, label: str, seconds: float, counters: Any) -> None:
        self.label, self.total, self.counters = label, seconds, counters
        self.start = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.1:
            return
        self.last = now
        ops = sum(self.counters) if self.counters is not None else 0
        elapsed = now - self.start
        sys.stdout.write(f"\r  {self.label:<8} {min(elapsed, self.total):5.1f}/{self.total:.1f} s  {ops:>12,} ops ")
        sys.stdout.flush()

    def end(self) -> None:
        if self.enabled:
            sys.stdout.write("\r" + " " * 60 + "\r")
            sys.stdout.flush()


def _rows(result: Result) -> list[list[str]]:
    rows = []
    for kind, m in result.kinds.items():
        samples = sorted(m.samples)
        seconds = result.durations.get(kind, result.load) or 1.0
        share = f"{100 * m.wait / m.total:.0f} %" if m.waited and m.total else "-"
        rows.append(
            [
                kind,
                fmt_int(m.count),
                fmt_int(m.count / seconds),
                fmt_seconds(percentile(samples, 0.5)),
                fmt_seconds(percentile(samples, 0.99)),
                fmt_seconds(m.max),
                share,
            ]
        )
    return rows


def _as_json(result: Result) -> dict[str, Any]:
    ops = {}
    for kind, m in result.kinds.items():
        samples = sorted(m.samples)
        seconds = result.durations.get(kind, result.load) or 1.0
        ops[kind] = {
            "operations": m.count,
            "ops_per_second": m.count / seconds,
            "p50": percentile(samples, 0.5),
            "p99": percentile(samples, 0.99),
            "max": m.max,
            "lock_wait_share": (m.wait / m.total) if m.waited and m.total else None,
        }
    return {
        "scenario": result.name,
        "skipped": result.skipped,
        "seconds": result.elapsed,
        "operations": ops,
        "violations": result.violations,
        "notes": result.notes,
    }


def print_result(result: Result) -> None:
    if result.skipped:
        print(f"{result.name}: skipped ({result.skipped})\n")
        return
    status = "ok" if not result.violations else f"{len(result.violations)} VIOLATION(S)"
    print(f"{result.name}: {status}  ({result.elapsed:.1f} s)")
    headers = ["operation", "ops", "ops/s", "p50", "p99", "max", "lock wait"]
    print(format_table(headers, _rows(result)))
    for note in result.notes:
        print(f"  {note}")
    for v in result.violations:
        print(f"  VIOLATION: {v}")
    print()


def run_scenarios(args: argparse.Namespace, base: str, display: _Display) -> list[Result]:
    import importlib

    names = list(dict.fromkeys(args.scenario or NAMES))
    per = args.seconds / len(names)
    load = max(0.3, per - SETUP_SECONDS)
    mp = mp_context()
    results = []
    for name in names:
        module = importlib.import_module(f"stress.scenarios.{name}")
        counters = mp.Array("q", 256, lock=False)
        path = base if "://" in base else os.path.join(base, name)
        ctx = Context(
            name=name,
            backend=args.backend,
            path=path,
            processes=args.processes,
            threads=args.threads,
            seconds=load,
            sessions=args.sessions,
            shards=args.shards,
            value_size=args.value_size,
            seed=args.seed,
            counters=counters,
            tick=display.tick,
        )
        if "://" in base:
            with opened(ctx.store_options()) as store:
                store.clear()
        display.begin(name, load, counters)
        try:
            # the memory backend keeps a path's data while a store is open on it: hold one for the checks
            with contextlib.ExitStack() as stack:
                if ctx.in_process:
                    stack.enter_context(opened(ctx.store_options()))
                result = module.run(ctx)
        except Exception as exc:  # a scenario that cannot even run is a failed run, with the reason
            result = Result(name, violations=[f"the scenario failed: {type(exc).__name__}: {exc}"])
        display.end()
        results.append(result)
        if not args.json:
            print_result(result)
    return results


def main(argv: list[str] | None = None, prog: str = "python -m stress") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.value_size < 0:
        print(f"{prog}: error: --value-size must be >= 0", file=sys.stderr)
        return 2
    if args.seed is None:
        args.seed = random.randrange(1 << 31)
    keep = args.path is not None
    if keep and "://" not in args.path:
        try:
            os.makedirs(args.path, mode=0o700, exist_ok=True)
        except OSError as exc:
            print(f"{prog}: error: cannot create {args.path}: {exc.strerror}", file=sys.stderr)
            return 2
    base = args.path if keep else tempfile.mkdtemp(prefix="lockstore-stress-")
    display = _Display(sys.stdout.isatty() and not args.json)
    if not args.json:
        print(
            f"lockstore stress: backend {args.backend}, store {base}{'' if keep else ' (temporary)'},"
            f" {args.processes} processes, {args.threads} threads, {args.seconds:g} s, seed {args.seed}\n"
        )
    t0 = time.monotonic()
    try:
        results = run_scenarios(args, base, display)
    except KeyboardInterrupt:
        display.end()
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    violations = sum(len(r.violations) for r in results)
    skipped = {r.name: r.skipped for r in results if r.skipped}
    # a run that checked nothing is no pass: every scenario asked for was skipped (the memory backend
    # cannot be killed or forked): verdict SKIP, exit status 2, as for a run that cannot be done
    verdict = "FAIL" if violations else "SKIP" if len(skipped) == len(results) else "PASS"
    if args.json:
        doc = {
            "verdict": verdict.lower(),
            "violations": violations,
            "seconds": time.monotonic() - t0,
            "options": {k: v for k, v in vars(args).items() if k != "json"},
            "scenarios": [_as_json(r) for r in results],
            "skipped": skipped,
        }
        print(json.dumps(doc, indent=2))
    else:
        ran = [r.name for r in results if not r.skipped]
        print(
            f"verdict: {verdict}: {len(ran)} scenario(s) in {time.monotonic() - t0:.1f} s, "
            f"{violations} violation(s)"
            + (f", skipped: {', '.join(skipped)}" if skipped else "")
            + f" (seed {args.seed})"
        )
    return 1 if violations else 2 if verdict == "SKIP" else 0


__all__ = ["build_parser", "main"]
