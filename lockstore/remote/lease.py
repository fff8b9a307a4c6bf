"""Leases on a server's locks, renewed while their holder lives: one daemon thread per process renews them all.

A lock kept on a server (a Redis key with a random token and a ``PX`` expiry, a PostgreSQL connection whose
server ends it when it idles too long) must outlive a slow but live holder and must not outlive a dead one.
So the lock is taken with a short lease, and :data:`RENEWER` renews it every third of the lease for as long as
the holder has not let go:

- a holder killed (SIGKILL, a lost host) stops renewing, and its lock clears within one lease;
- a holder paused past its lease (SIGSTOP, a long GC pause, a network partition) finds its lease
  :attr:`~Lease.lost` when it resumes; the server refuses its write (the token no longer holds), so a lapsed
  holder never overwrites the next one's work: :class:`~lockstore.LockLost`.

A renewal that fails with an error (the server briefly unreachable) is retried until the lease would have run
out; then the lease is lost. A forked child renews nothing it inherited: those locks are the parent's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .._process import at_fork

logger = logging.getLogger("lockstore")


class Lease:
    """One held lease: renewed by :data:`RENEWER` until :meth:`end`; :attr:`lost` once it has lapsed."""

    __slots__ = ("due", "every", "expires", "lost", "renew", "seconds")

    def __init__(self, renew: Callable[[], bool], seconds: float) -> None:
        self.renew = renew
        self.seconds = seconds
        self.every = seconds / 3
        now = time.monotonic()
        self.due = now + self.every
        self.expires = now + seconds
        self.lost = False

    def end(self) -> None:
        """Stop renewing (the holder let go, or is about to)."""
        RENEWER.drop(self)


class Renewer:
    """The process's renewal thread (started on first use, a daemon: it never keeps a process alive)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._leases: set[Lease] = set()
        self._thread: threading.Thread | None = None
        at_fork(self)

    def _after_fork(self) -> None:
        self._cond = threading.Condition()
        self._leases = set()
        self._thread = None

    def hold(self, renew: Callable[[], bool], seconds: float) -> Lease:
        """Renew a lock just taken with a lease of *seconds*: ``renew()`` extends it on the server and returns
        False when the lock is no longer this holder's (then the lease is lost and renewing stops)."""
        lease = Lease(renew, seconds)
        with self._cond:
            self._leases.add(lease)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lockstore-lease", daemon=True)
                self._thread.start()
            self._cond.notify()
        return lease

    def drop(self, lease: Lease) -> None:
        with self._cond:
            self._leases.discard(lease)

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                if cond is not self._cond:  # pragma: no cover - a forked child's copy of a dead thread
                    return
                now = time.monotonic()
                due = [lease for lease in self._leases if lease.due <= now]
                if not due:
                    wait = min((lease.due for lease in self._leases), default=now + 60.0) - now
                    cond.wait(max(wait, 0.001))
                    continue
            for lease in due:
                self._renew(lease)

    def _renew(self, lease: Lease) -> None:
        started = time.monotonic()
        try:
            held = lease.renew()
        except Exception:  # the server unreachable for a moment: retry until the lease would have run out
            logger.debug("lease renewal failed; retrying", exc_info=True)
            held = started < lease.expires
            lease.due = started + min(lease.every, 0.1)
        else:
            if held:
                lease.expires = started + lease.seconds
                lease.due = started + lease.every
        if not held:
            lease.lost = True
            self.drop(lease)
            logger.warning("a lock's lease lapsed before its holder let go; its write will be refused")


RENEWER = Renewer()
"""The renewal thread of this process."""

__all__ = ["RENEWER", "Lease", "Renewer"]
