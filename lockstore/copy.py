"""Copy every live session, with its times, from one store to another (``lockstore copy SRC DST``).

The stores can be of any backends: an LMDB directory to Redis or PostgreSQL when an application moves
off one machine, and back. Values travel decoded, so the two stores may use different codecs and
secrets.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import BaseStore
from .errors import CorruptRecord


def copy_store(src: BaseStore, dst: BaseStore, progress: Callable[[int, int], None] | None = None) -> int:
    """Copy every live session of *src* into *dst* with its creation and last-access times.

    Safe to re-run, and to run while the application already writes to *dst*: a session that *dst*
    holds with the same or a later last access is left alone, so a re-run copies only what changed
    in *src* since and never overwrites a newer session in *dst*.

    Parameters
    ----------
    src, dst
        Open stores. Sessions expired in *src* are not copied; a copied session keeps its last access,
        so it expires in *dst* when it would have in *src* (by *dst*'s ``max_age``).
    progress
        Called as ``progress(done, total)`` after each session; *total* is the number of live sessions
        in *src* when the copy started (sessions created meanwhile can make *done* pass it).

    Returns
    -------
    int
        The number of sessions written into *dst*.

    Raises
    ------
    CorruptRecord
        A record of *src* does not decode (run ``verify`` on it first).
    """
    total = len(src) if progress is not None else 0
    written = 0
    for done, (sid, rec) in enumerate(src.records(), 1):
        try:
            have = dst.record(sid)
        except CorruptRecord:
            have = None  # a record dst cannot read is replaced by the good one
        if have is None or have.last_access < rec.last_access:
            dst.put_record(sid, rec.value, created=rec.created, last_access=rec.last_access)
            written += 1
        if progress is not None:
            progress(done, max(total, done))
    return written


__all__ = ["copy_store"]
