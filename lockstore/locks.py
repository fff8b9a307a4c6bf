"""Shard locks: one lock file per shard, locked with filelock on a descriptor kept open per process.

A shard lock excludes the threads of one process (a reentrant thread lock) and other processes (an
``flock`` on the shard's lock file, taken through :func:`filelock.lock_descriptor`). The descriptor stays
open, so a hand-off costs two system calls rather than an open and a close; the kernel drops the lock
the moment a holder dies, SIGKILL included. Lock files are never deleted. After ``fork`` the child closes
the inherited descriptors (which share the parent's lock) and opens its own on first use.

A contended waiter first yields its core to the holder up to 20 times, then polls with a short exponential
back-off (20 microseconds doubling to 1 ms), so a
hand-off neither sleeps for tens of milliseconds nor spins on a core.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from filelock import lock_descriptor, unlock_descriptor

from ._process import at_fork
from .errors import LockTimeout, StoreClosed

_FIRST_DELAY = 0.00002
_MAX_DELAY = 0.001
_YIELDS = 20


class ShardLocks:
    """The locks of one store's shards (``lock-NNN`` files in *directory*)."""

    def __init__(self, directory: str | None, shards: int, file_mode: int = 0o600, *, label: str | None = None) -> None:
        """*directory* None: threads only (the memory backend); *label* names the store in messages."""
        self.directory = directory
        self.label = label or directory
        self.shards = shards
        self._file_mode = file_mode
        self._files = directory is not None
        self._paths = [os.path.join(directory, f"lock-{i:03d}") for i in range(shards)] if directory else []
        self._closed = False
        self._reset()
        at_fork(self)

    def _reset(self) -> None:
        self._guard = threading.Lock()
        self._threads = [threading.RLock() for _ in range(self.shards)]
        self._depth = [0] * self.shards
        self._fds: list[int | None] = [None] * self.shards

    def _after_fork(self) -> None:
        close_inherited(self._fds)
        self._reset()

    def _fd(self, shard: int) -> int:
        fd = self._fds[shard]
        if fd is None:
            with self._guard:
                fd = self._fds[shard]
                if fd is None:
                    if self._closed:
                        raise StoreClosed(f"store at {self.label} is closed")
                    fd = self._fds[shard] = open_lock_file(self._paths[shard], self._file_mode)
        return fd

    def acquire(self, shard: int, timeout: float) -> None:
        """Take *shard* for this thread, or raise :class:`LockTimeout` after *timeout* seconds."""
        tlock = self._threads[shard]
        if not tlock.acquire(False):  # another thread of this process has it: wait, within the timeout
            started = time.monotonic()
            if not tlock.acquire(True, timeout):
                raise LockTimeout(f"shard {shard} of {self.label} is held by another thread past {timeout} s")
            timeout = max(0.0, timeout - (time.monotonic() - started))
        if self._depth[shard] or not self._files:
            self._depth[shard] += 1
            return
        try:
            fd = self._fds[shard]
            if fd is None:
                fd = self._fd(shard)
            if not lock_descriptor(fd, blocking=False):
                self._wait(shard, fd, timeout)
        except BaseException:
            tlock.release()
            raise
        self._depth[shard] = 1

    def _wait(self, shard: int, fd: int, timeout: float) -> None:
        """Wait for a lock another process holds, backing off from 20 us to 1 ms."""
        if not wait_flock(fd, time.monotonic() + timeout, first=_FIRST_DELAY, cap=_MAX_DELAY, yields=_YIELDS):
            raise LockTimeout(f"shard {shard} of {self.label} is held by another process past {timeout} s")

    def release(self, shard: int) -> None:
        """Give *shard* back; the file lock goes when the outermost holder releases."""
        self._depth[shard] -= 1
        if not self._depth[shard]:
            fd = self._fds[shard] if self._files else None
            if fd is not None:
                unlock_descriptor(fd)
        self._threads[shard].release()

    @contextmanager
    def held(self, shard: int, timeout: float) -> Iterator[None]:
        self.acquire(shard, timeout)
        try:
            yield
        finally:
            self.release(shard)

    def close(self) -> None:
        if not self._files:
            return  # thread locks only, shared by the memory stores of one path: nothing to release
        with self._guard:
            self._closed = True
            fds, self._fds = self._fds, [None] * self.shards
        for fd in fds:
            if fd is not None:
                os.close(fd)


def open_lock_file(path: str, mode: int) -> int:
    """A descriptor of the lock file *path* (created with *mode* if missing) to ``flock``: never through a symbolic
    link, and not inherited by a program this process executes."""
    return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0), mode)


def close_inherited(fds: Iterable[int | None]) -> None:
    """In a forked child: close the inherited lock descriptors *fds* (None skipped) without unlocking them; they
    share the parent's open file descriptions, so the parent keeps its locks."""
    for fd in fds:
        if fd is not None:
            with contextlib.suppress(OSError):  # already closed by the child
                os.close(fd)


def try_flock(fd: int) -> bool:
    """Take the ``flock`` of *fd* if it is free, without waiting (:func:`filelock.lock_descriptor`)."""
    return lock_descriptor(fd, blocking=False)


def unflock(fd: int) -> None:
    """Release the ``flock`` of *fd* (:func:`filelock.unlock_descriptor`)."""
    unlock_descriptor(fd)


def wait_flock(fd: int, deadline: float, *, first: float, cap: float, yields: int = 0, jitter: bool = False) -> bool:
    """Take the ``flock`` of *fd* (held by another process) before the monotonic *deadline*, or return False.

    ``flock`` has no timed wait, so this polls: it first yields its core to the holder *yields* times, then
    sleeps *first* seconds doubling up to *cap* (with *jitter*, each sleep is scaled by 0.5 to 1.5 so that
    waiters do not wake in step).
    """
    for _ in range(yields):  # a holder usually lets go within microseconds: give it the core first
        os.sched_yield()
        if lock_descriptor(fd, blocking=False):
            return True
    delay = first
    while True:
        now = time.monotonic()
        if now >= deadline:
            return False
        time.sleep(min(delay * (0.5 + random.random()) if jitter else delay, deadline - now))
        if lock_descriptor(fd, blocking=False):
            return True
        delay = min(delay * 2, cap)


async def await_lock(attempt: Callable[[], bool], deadline: float, *, first: float, cap: float) -> bool:
    """The async twin of :func:`wait_flock` for any non-blocking *attempt*: call it now, then after
    ``asyncio.sleep`` back-off (*first* seconds doubling up to *cap*, jittered) until it succeeds, or return
    False at the monotonic *deadline*. The event loop never blocks while it waits."""
    delay = first
    while not attempt():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(left, delay * (0.5 + random.random())))
        delay = min(delay * 2, cap)
    return True


__all__ = ["ShardLocks", "await_lock", "close_inherited", "open_lock_file", "try_flock", "unflock", "wait_flock"]
