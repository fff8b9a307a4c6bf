"""The site an integration serves: its store, the request-long locks (:func:`request_locks_for`, the one place that
chooses them) and their gates; reading a session (:func:`read`) and running a store operation for async code
(:func:`call`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, ParamSpec, TypeVar, cast

from ..base import BaseStore
from ..errors import CorruptRecord
from ..opener import open as open_store
from ..opener import read_meta
from ..store import Store
from .requestlock import Gates, RequestLocks
from .stripes import DEFAULT_STRIPES, StripeLocks

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")


class Site(NamedTuple):
    """A store and its request-long locks (``None`` with the request lock off), with their gates."""

    store: BaseStore
    locks: RequestLocks | None
    gates: Gates


def request_locks_for(
    store: BaseStore,
    *,
    request_lock: bool = True,
    lock_dir: str | Path | None = None,
    stripes: int = DEFAULT_STRIPES,
    timeout: float | None = None,
) -> RequestLocks | None:
    """The request-long locks to use with *store* (``None`` with *request_lock* off): the one place that chooses.

    Stripes under ``<store path>/stripes/`` or *lock_dir*; in-process ones for a ``memory`` store.  A store on a
    server, with no *lock_dir*, gives the locks it keeps on that server: its ``request_locks(stripes=, timeout=)``
    returns a :class:`~lockstore.web.requestlock.RequestLocks` that serialises one session's requests across every
    host.  With *lock_dir*, stripes there serialise one machine's requests only.  *timeout* defaults to the store's.

    Raises
    ------
    ValueError
        A store on a server that keeps no request locks there, and no *lock_dir*.
    """
    if not request_lock:
        return None
    wait = store.timeout if timeout is None else timeout
    if lock_dir is None and isinstance(store, Store):
        lock_dir = None if store.backend == "memory" else Path(store.path) / "stripes"
    elif lock_dir is None and callable(server_locks := getattr(store, "request_locks", None)):
        return cast("RequestLocks", server_locks(stripes=stripes, timeout=wait))
    elif lock_dir is None:
        msg = (
            f"a {store.backend} store has no local directory for the request-long session locks: "
            "pass lock_dir= (a local directory), or request_lock=False"
        )
        raise ValueError(msg)
    return StripeLocks(lock_dir, stripes=stripes, timeout=wait)


def open_site(
    path: str | os.PathLike[str],
    options: dict[str, Any],
    *,
    request_lock: bool = True,
    lock_dir: str | Path | None = None,
    stripes: int = DEFAULT_STRIPES,
    lock_timeout: float | None = None,
) -> Site:
    """Open the store at *path* with *options* and its request-long locks (``ValueError``: see above; store closed)."""
    store = open_store(path, **options)
    try:
        locks = request_locks_for(
            store, request_lock=request_lock, lock_dir=lock_dir, stripes=stripes, timeout=lock_timeout
        )
    except BaseException:
        store.close()  # no connection pool left behind
        raise
    return Site(store, locks, Gates())


def choose_codec(
    path: str | os.PathLike[str], options: dict[str, Any], wanted: str, *, asked_by: str, option: str, insist: bool
) -> None:
    """Put in *options* (given no ``codec``) the one to open *path* with for a serializer that asks *wanted*.

    An existing store keeps its recorded codec (a different *wanted* is logged: a warning if the application set the
    serializer, *asked_by*, itself: *insist*; *option* silences it); a new one gets *wanted*.
    """
    if isinstance(path, str) and "://" in path:
        # A Redis or PostgreSQL store: without codec= a new one is json and an existing one keeps its
        # codec; unsigned pickle opens only when the application asks for it, which a pickle serializer does.
        if wanted == "pickle":
            options["codec"] = "pickle"
        return
    meta = None if options.get("backend") == "memory" else read_meta(os.fspath(path))
    if meta is None:
        options["codec"] = wanted
    elif meta["codec"] != wanted:
        (logger.warning if insist else logger.info)(
            "session store %s keeps its recorded codec %r although %s asks for %r "
            "(set %s to silence this, or move the sessions with 'lockstore copy')",
            path,
            meta["codec"],
            asked_by,
            wanted,
            option,
        )


async def call(store: BaseStore, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run a store operation for async code: inline on an embedded store (microseconds, and a shard
    lock held for microseconds by others), in a thread on a remote one (network round trips).

    A task cancelled meanwhile waits for the thread before it sees the cancellation: a write is then done (whole)
    before the caller gives its session lock back, never landing after another request has read the session.
    """
    if isinstance(store, Store):
        return fn(*args, **kwargs)
    job = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        while not job.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait((job,))
        raise


def read(store: BaseStore, sid: str) -> Any:
    """The value stored under *sid*, or ``None``: absent, expired, or a record that does not decode."""
    try:
        return store.get(sid)
    except CorruptRecord:
        logger.warning("session %.8s... does not decode; starting a fresh one", sid)
        return None


__all__ = ["Site", "call", "choose_codec", "open_site", "read", "request_locks_for"]
