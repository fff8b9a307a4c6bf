"""The stress scenarios. Each module has ``run(ctx) -> Result`` and checks its own invariant.

Every scenario gets its own store (a subdirectory of the run's directory), so scenarios that need
other settings (``expiry`` uses a short ``max_age``) never disturb one another.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import lockstore

from .._common import Merged, WorkerPool, merge_recorders, worker_seed

NAMES = ("counter", "mixed", "kill", "expiry", "fork", "threads")


@dataclass
class Context:
    """What a scenario needs: options, its store settings, its time budget, progress counters."""

    name: str
    backend: str
    path: str  # the store of this scenario (a directory, or a URL)
    processes: int
    threads: int
    seconds: float  # how long the load phase runs
    sessions: int
    shards: int | None
    value_size: int
    seed: int
    counters: Any = None  # shared array of per-worker operation counts, for the progress display
    tick: Callable[[], None] | None = None
    _slots: int = 0

    @property
    def rng(self) -> random.Random:
        return random.Random(worker_seed(self.seed, self.name, "parent"))

    @property
    def in_process(self) -> bool:
        """True for the memory backend: its data lives in one process, so workers are threads."""
        return self.backend == "memory"

    def store_options(self, **extra: Any) -> dict[str, Any]:
        opts: dict[str, Any] = {"path": self.path}
        if "://" not in self.path:
            opts["backend"] = self.backend
            if self.shards is not None:
                opts["shards"] = self.shards
        opts.update(extra)
        return opts

    def slot(self) -> int:
        """A fresh index into :attr:`counters` for one more worker."""
        n = self._slots
        self._slots += 1
        return n % len(self.counters) if self.counters is not None else 0

    def pool(self) -> Any:
        return ThreadPool() if self.in_process else WorkerPool()

    def pad(self) -> str:
        return "x" * self.value_size


@dataclass
class Result:
    """What a scenario reports: per-operation statistics, violations found, notes."""

    name: str
    elapsed: float = 0.0
    load: float = 0.0  # seconds of load, the divisor of ops/s
    durations: dict[str, float] = field(default_factory=dict)  # per-kind load seconds, where they differ
    kinds: dict[str, Merged] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None

    def add_workers(self, recorder_dicts: list[dict[str, Any]]) -> None:
        merged = merge_recorders(recorder_dicts)
        for kind, m in merged.items():
            if kind in self.kinds:
                mine = self.kinds[kind]
                mine.count += m.count
                mine.total += m.total
                mine.max = max(mine.max, m.max)
                mine.wait += m.wait
                mine.waited += m.waited
                mine.samples.extend(m.samples)
            else:
                self.kinds[kind] = m


def open_store(opts: dict[str, Any]) -> lockstore.BaseStore:
    opts = dict(opts)
    return lockstore.open(opts.pop("path"), **opts)


@contextlib.contextmanager
def opened(opts: dict[str, Any]) -> Iterator[lockstore.BaseStore]:
    store = open_store(opts)
    try:
        yield store
    finally:
        store.close()


class Progress:
    """Counts a worker's operations into its slot of the shared array, every 64 operations."""

    __slots__ = ("counters", "n", "slot")

    def __init__(self, counters: Any, slot: int) -> None:
        self.counters = counters
        self.slot = slot
        self.n = 0

    def step(self) -> None:
        self.n += 1
        if not self.n & 63 and self.counters is not None:
            self.counters[self.slot] = self.n

    def flush(self) -> None:
        if self.counters is not None:
            self.counters[self.slot] = self.n


class _ThreadWorker:
    def __init__(self, name: str) -> None:
        self.name = name
        self.result: Any = None
        self.error: str | None = None
        self.done = False
        self.thread: threading.Thread | None = None


class ThreadPool:
    """The :class:`WorkerPool` interface with threads, for the memory backend."""

    def __init__(self) -> None:
        self.workers: list[_ThreadWorker] = []

    def start(self, name: str, fn: Callable[..., Any], *args: Any) -> _ThreadWorker:
        w = _ThreadWorker(name)

        def body() -> None:
            try:
                w.result = fn(*args)
            except Exception as exc:
                w.error = f"{type(exc).__name__}: {exc}"
            w.done = True

        w.thread = threading.Thread(target=body, name=name, daemon=True)
        w.thread.start()
        self.workers.append(w)
        return w

    def wait(self, deadline: float, tick: Callable[[], None] | None = None) -> list[str]:
        problems = []
        for w in self.workers:
            assert w.thread is not None
            while w.thread.is_alive() and time.monotonic() < deadline:
                w.thread.join(0.2)
                if tick is not None:
                    tick()
            if w.thread.is_alive():
                problems.append(f"{w.name} did not finish in time (hung?)")
            elif w.error:
                problems.append(f"{w.name} failed: {w.error}")
        return problems

    def kill_all(self) -> None:
        """Threads cannot be killed; they stop at their own deadline."""


def pid_tag() -> str:
    return str(os.getpid())


__all__ = ["NAMES", "Context", "Progress", "Result", "ThreadPool", "open_store", "opened"]
