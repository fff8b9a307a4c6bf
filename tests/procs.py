"""Running worker processes in tests: start them all, wait, never leave one behind, and see them overlap."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any


def run_all(procs: list[Any], timeout: float = 120) -> list[int | None]:
    """Start *procs*, wait up to *timeout* seconds for each, return their exit codes (None: still running,
    then killed)."""
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout)
        return [p.exitcode for p in procs]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()


def reap(pids: list[int]) -> None:
    """Kill and collect the ``os.fork`` children in *pids* that are still running (for a ``finally``)."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG) == (0, 0):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


class Occupancy:
    """How many workers are inside a critical section right now (per slot: a shard, a session), and the
    most ever seen at once, in memory shared by processes (forked, or spawned with this as an argument).

    The instant proof of mutual exclusion that T5 asks for: a lost update needs two racing writers to
    interleave in just the wrong way, but two workers inside one section at once is seen every time it
    happens. Mark the body of ``store.edit()``; with the shard lock working, :attr:`most` stays 1.
    """

    def __init__(self, ctx: Any, slots: int = 1) -> None:
        self._inside = ctx.Array("i", slots)  # with its own lock, shared by every process
        self._most = ctx.Value("i", 0, lock=False)  # written under the array's lock
        self._entries = ctx.Value("q", 0, lock=False)

    @contextlib.contextmanager
    def inside(self, slot: int = 0) -> Iterator[None]:
        with self._inside.get_lock():
            self._inside[slot] += 1
            self._entries.value += 1
            self._most.value = max(self._most.value, self._inside[slot])
        try:
            yield
        finally:
            with self._inside.get_lock():
                self._inside[slot] -= 1

    @property
    def most(self) -> int:
        """The most workers ever inside one slot at once."""
        return int(self._most.value)

    @property
    def entries(self) -> int:
        """How many times the section was entered, all slots and processes together."""
        return int(self._entries.value)
