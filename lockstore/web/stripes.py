"""Request-long session locks (:mod:`lockstore.web.requestlock`'s seam) on a bounded set of local lock stripes.

One lock file per session would leave a file behind for every session ever seen (Beaker issue #124, CherryPy issue
#1855) and deleting lock files races (filelock issue #574), so ids hash onto a fixed number of *stripes*: lock files
``<directory>/0000.lock`` ... created on first use and never deleted.  Sessions sharing a stripe wait for each other
(rare with 1,024), and a stripe is never the shard lock that guards the data.

Each process keeps a bounded number of lock files open and locks them with :func:`filelock.lock_descriptor` (``flock``
on POSIX), as :mod:`lockstore.locks` opens and locks shard lock files.  A ``flock`` belongs to the open file
description, which all threads of a process share, so threads are kept apart by one :class:`threading.Lock` per stripe
in front of it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from .._files import make_dirs
from .._process import at_fork
from ..locks import close_inherited, open_lock_file, try_flock, unflock, wait_flock
from .requestlock import lock_timeout

if TYPE_CHECKING:
    from typing import Self

logger = logging.getLogger(__name__)

DEFAULT_STRIPES = 1024
_PERSON = b"lockstore-strip"  # blake2b personalisation: keeps stripes apart from shard hashing


def stripe_index(sid: str, stripes: int) -> int:
    """Return the stripe of *sid*: the same in every process and every run.

    ``hash()`` is randomised per process, so a blake2b digest is used.
    """
    digest = hashlib.blake2b(sid.encode("utf-8"), digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "big") % stripes


class _Stripe:
    """In-process state of one stripe: a thread lock and the holder's reentrancy count."""

    __slots__ = ("count", "mutex", "owner")

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.owner: int | None = None
        self.count = 0


class StripeHold:
    """One acquisition of a stripe; :meth:`release` is idempotent.

    Holds are handed out by :meth:`StripeLocks.acquire`.  A hold may be released from another thread than the one that
    took it (some servers close the response iterable elsewhere).  In a forked child a hold inherited from the parent is
    inert: releasing it would free the parent's ``flock``.
    """

    __slots__ = ("_locks", "_stripe", "index", "released")

    def __init__(self, locks: StripeLocks, index: int, stripe: _Stripe) -> None:
        self._locks = locks
        self._stripe = stripe  # a forked child has new ones: an inherited hold finds no longer its own
        self.index = index
        self.released = False

    def release(self) -> None:
        """Release the stripe (once); a no-op when already released or inherited across fork."""
        if not self.released:
            self.released = True
            self._locks._release(self.index, self._stripe)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class StripeLocks:
    """A bounded set of cross-process lock stripes keyed by session id.

    Parameters
    ----------
    directory
        Where the lock files live, created private (0700) if missing.  Use a local file system: ``flock`` is not
        reliable over NFS.  ``None`` keeps the locks inside this process only, which is right for a ``memory`` store and
        nothing else.
    stripes
        Number of stripes (lock files).  Fixed for a directory: every process using it must agree.
    timeout
        Default seconds to wait in :meth:`acquire`.
    max_open
        Lock files kept open per process; the least recently used idle one is closed beyond that (a held one never is),
        so a process never needs more than ``max_open`` descriptors however many stripes it touches.

    Notes
    -----
    Thread-safe: one instance is meant to be shared by all threads of a process. A thread that already holds a stripe
    may acquire it again (it is counted). Process-safe through ``flock`` on a descriptor opened by this process.
    Fork-safe: a forked child drops the inherited descriptors and thread locks at once (``_process.at_fork``), without
    unlocking (the parent keeps its locks), and opens its own descriptors on demand.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None,
        *,
        stripes: int = DEFAULT_STRIPES,
        timeout: float = 10.0,
        max_open: int = 64,
    ) -> None:
        if stripes < 1:
            msg = f"stripes must be at least 1, got {stripes}"
            raise ValueError(msg)
        if max_open < 1:
            msg = f"max_open must be at least 1, got {max_open}"
            raise ValueError(msg)
        self.directory = None if directory is None else Path(directory)
        self.stripes = stripes
        self.timeout = timeout
        self.max_open = max_open
        self._reset()
        at_fork(self)
        if self.directory is not None:
            make_dirs(os.path.realpath(self.directory))  # missing parents too are 0700, whatever the umask

    def _reset(self) -> None:
        self._guard = threading.Lock()  # in a child: thread locks may have been copied while held
        self._state: dict[int, _Stripe] = {}
        self._fds: OrderedDict[int, int] = OrderedDict()  # stripe -> open descriptor, LRU order

    def _after_fork(self) -> None:
        close_inherited(self._fds.values())
        self._reset()

    def index(self, sid: str) -> int:
        """Return the stripe used for *sid*."""
        return stripe_index(sid, self.stripes)

    def path(self, index: int) -> Path | None:
        """Return the lock file of stripe *index* (``None`` for in-process locks)."""
        if self.directory is None:
            return None
        return self.directory / f"{index:04d}.lock"

    def acquire(self, sid: str, *, timeout: float | None = None, blocking: bool = True) -> StripeHold | None:
        """Lock the stripe of *sid* and return the hold.

        Parameters
        ----------
        sid
            A valid session id.
        timeout
            Seconds to wait; ``None`` uses the instance default.
        blocking
            ``False`` tries once and returns ``None`` when the stripe is busy.

        Raises
        ------
        LockTimeout
            The stripe was not obtained within *timeout* seconds.
        """
        index = self.index(sid)
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        with self._guard:
            stripe = self._state.setdefault(index, _Stripe())
            me = threading.get_ident()
            if stripe.owner == me:
                stripe.count += 1
                return StripeHold(self, index, stripe)
        got = (
            stripe.mutex.acquire(timeout=max(0.0, deadline - time.monotonic()))
            if blocking
            else stripe.mutex.acquire(blocking=False)
        )
        locked = False
        if got:
            try:
                locked = self._flock(index, deadline, blocking=blocking)
            finally:
                if not locked:  # busy, timed out or failed: the thread lock goes back too
                    stripe.mutex.release()
        if not locked:
            if not blocking:
                return None
            raise lock_timeout(self.where(index), wait)
        with self._guard:
            stripe.owner = me
            stripe.count = 1
        logger.debug("stripe %d acquired", index)
        return StripeHold(self, index, stripe)

    def where(self, index: int) -> str:
        """Return where stripe *index* is kept: its lock file, or ``in-process stripe N``."""
        return str(self.path(index) or f"in-process stripe {index}")

    def _open(self, index: int) -> int:
        """Return the kept-open descriptor of stripe *index* (caller holds its thread lock)."""
        with self._guard:
            fd = self._fds.get(index)
            if fd is not None:
                self._fds.move_to_end(index)
                return fd
            fd = self._fds[index] = open_lock_file(str(self.path(index)), 0o600)  # not in-process: _flock checks
            # Close idle descriptors beyond max_open; a stripe whose thread lock is
            # taken may be flocked right now and is skipped.
            for other in list(self._fds):
                if len(self._fds) <= self.max_open:
                    break
                state = self._state.get(other)
                if other == index or (state is not None and state.mutex.locked()):
                    continue
                os.close(self._fds.pop(other))
            return fd

    def _flock(self, index: int, deadline: float, *, blocking: bool) -> bool:
        if self.directory is None:
            return True
        fd = self._open(index)
        if try_flock(fd):
            return True
        # request-long locks are held for milliseconds: longer, jittered sleeps than the shard locks'
        return blocking and wait_flock(fd, deadline, first=0.0002, cap=0.005, jitter=True)

    def _release(self, index: int, stripe: _Stripe) -> None:
        with self._guard:
            if self._state.get(index) is not stripe or stripe.count == 0:
                return
            stripe.count -= 1
            if stripe.count:
                return
            stripe.owner = None
            fd = self._fds.get(index)
        if fd is not None:
            unflock(fd)
        stripe.mutex.release()
        logger.debug("stripe %d released", index)

    def close(self) -> None:
        """Close idle lock files; held stripes stay locked until released."""
        with self._guard:
            for index in list(self._fds):
                state = self._state.get(index)
                if state is None or not state.mutex.locked():
                    os.close(self._fds.pop(index))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StripeLocks({str(self.directory)!r}, stripes={self.stripes})"


__all__ = [
    "DEFAULT_STRIPES",
    "StripeHold",
    "StripeLocks",
    "stripe_index",
]
