"""Shared pieces of the stress harness: latency recording, worker processes, tables.

Workers run in real processes. On Linux they are forked from a parent that holds no
open store (the ``fork`` scenario is the one exception, on purpose); elsewhere they
are spawned. Each worker sends one result dictionary back over its own pipe.
"""

from __future__ import annotations

import array
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import random
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_SAMPLES = 50_000  # latency samples kept per operation kind and worker (reservoir)


def mp_context() -> Any:
    """The multiprocessing context for workers: fork where it is safe and cheap, else spawn."""
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def worker_seed(seed: int, *parts: object) -> int:
    """A seed for one worker, stable for a given run seed."""
    return zlib.crc32(repr((seed, *parts)).encode()) ^ seed


class KindStats:
    """Count, sum, max and a reservoir of latencies for one kind of operation."""

    __slots__ = ("count", "max", "rng", "samples", "total", "wait", "waited")

    def __init__(self, rng: random.Random) -> None:
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.wait = 0.0  # seconds spent before the critical section was entered
        self.waited = 0  # operations for which ``wait`` was measured
        self.samples = array.array("d")
        self.rng = rng

    def add(self, seconds: float, wait: float | None = None) -> None:
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds
        if wait is not None:
            self.wait += wait
            self.waited += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(seconds)
        else:
            j = self.rng.randrange(self.count)
            if j < MAX_SAMPLES:
                self.samples[j] = seconds


class Recorder:
    """Per-worker latency recorder, sent to the parent with :meth:`to_dict`."""

    def __init__(self, seed: int = 0) -> None:
        self.kinds: dict[str, KindStats] = {}
        self._rng = random.Random(seed)

    def add(self, kind: str, seconds: float, wait: float | None = None) -> None:
        stats = self.kinds.get(kind)
        if stats is None:
            stats = self.kinds[kind] = KindStats(self._rng)
        stats.add(seconds, wait)

    def to_dict(self) -> dict[str, Any]:
        return {
            kind: {
                "count": s.count,
                "total": s.total,
                "max": s.max,
                "wait": s.wait,
                "waited": s.waited,
                "samples": s.samples.tobytes(),
            }
            for kind, s in self.kinds.items()
        }


@dataclass
class Merged:
    """Operation statistics of one kind, merged over workers."""

    count: int = 0
    total: float = 0.0
    max: float = 0.0
    wait: float = 0.0
    waited: int = 0
    samples: list[float] = field(default_factory=list)

    def add(self, d: dict[str, Any]) -> None:
        self.count += d["count"]
        self.total += d["total"]
        self.max = max(self.max, d["max"])
        self.wait += d["wait"]
        self.waited += d["waited"]
        a = array.array("d")
        a.frombytes(d["samples"])
        self.samples.extend(a)


def merge_recorders(dicts: Iterable[dict[str, Any]]) -> dict[str, Merged]:
    out: dict[str, Merged] = {}
    for d in dicts:
        for kind, stats in d.items():
            out.setdefault(kind, Merged()).add(stats)
    return out


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of already sorted values, nearest rank; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def fmt_seconds(s: float | None) -> str:
    """A duration in a unit that keeps three significant digits."""
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_int(n: float | None) -> str:
    return "-" if n is None else f"{round(n):,}"


def format_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], *, indent: str = "  ", align: str | None = None
) -> str:
    """A plain text table; *align* has one letter per column, l or r (default: the first left, the rest right)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def line(row: Sequence[str]) -> str:
        parts = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align, strict=True)]
        return indent + "  ".join(parts).rstrip()

    out = [line(cells[0]), indent + "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells[1:])
    return "\n".join(out)


# --- worker processes -------------------------------------------------------------------------


def _entry(fn: Callable[..., Any], conn: Any, args: tuple[Any, ...]) -> None:
    """Run ``fn(*args)`` in a worker and send ``("ok", result)`` or ``("error", text)``."""
    try:
        result = fn(*args)
    except BaseException as exc:  # report every failure to the parent, which decides
        msg = f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(Exception):
            conn.send(("error", msg, traceback.format_exc(limit=8)))
        os._exit(3)
    try:
        conn.send(("ok", result))
    finally:
        conn.close()


@dataclass
class Worker:
    name: str
    process: Any
    conn: Any
    result: Any = None
    error: str | None = None
    done: bool = False


class WorkerPool:
    """Start workers, collect their results, kill what overruns the deadline."""

    def __init__(self, ctx: Any = None) -> None:
        self.ctx = ctx or mp_context()
        self.workers: list[Worker] = []

    def start(self, name: str, fn: Callable[..., Any], *args: Any) -> Worker:
        parent, child = self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(target=_entry, args=(fn, child, args), name=name, daemon=True)
        p.start()
        child.close()
        w = Worker(name, p, parent)
        self.workers.append(w)
        return w

    def poll(self) -> None:
        """Collect results that are ready, without blocking."""
        for w in self.workers:
            if not w.done:
                self._try_collect(w, 0)

    def _try_collect(self, w: Worker, timeout: float) -> None:
        try:
            if w.conn.poll(timeout):
                msg = w.conn.recv()
                if msg[0] == "ok":
                    w.result = msg[1]
                else:
                    w.error = msg[1]
                w.done = True
        except (EOFError, OSError):
            w.done = True
            w.process.join(1.0)
            w.error = w.error or f"exited with status {w.process.exitcode} without a result"

    def wait(self, deadline: float, tick: Callable[[], None] | None = None) -> list[str]:
        """Wait for every worker until ``deadline`` (monotonic); return problems found."""
        problems: list[str] = []
        while True:
            pending = [w for w in self.workers if not w.done]
            if not pending:
                break
            if time.monotonic() > deadline:
                for w in pending:
                    problems.append(f"{w.name} did not finish in time (hung?); killed")
                    w.error = "killed after the deadline"
                    w.done = True
                    with contextlib.suppress(ProcessLookupError):
                        w.process.kill()
                break
            multiprocessing.connection.wait([w.conn for w in pending], timeout=0.2)
            for w in pending:
                self._try_collect(w, 0)
            if tick is not None:
                tick()
        for w in self.workers:
            w.process.join(5.0)
            if w.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    w.process.kill()
                w.process.join(1.0)
            w.conn.close()
            if w.error and not any(w.name in p for p in problems):
                problems.append(f"{w.name} failed: {w.error}")
        return problems

    def kill_all(self) -> None:
        for w in self.workers:
            if w.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    w.process.kill()
            w.process.join(1.0)


__all__ = [
    "KindStats",
    "Merged",
    "Recorder",
    "WorkerPool",
    "fmt_int",
    "fmt_seconds",
    "format_table",
    "merge_recorders",
    "mp_context",
    "percentile",
    "worker_seed",
]
