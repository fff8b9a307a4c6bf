"""The site a web integration serves: its store, the request-long locks and their gates, opened once.

Also the rules every integration follows when it opens a store from a framework's settings: the codec a
framework's serializer asks for (an existing store keeps its own), and running a store operation from async
code (inline on an embedded store, in a thread on a remote one).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, ParamSpec, TypeVar

from ..base import BaseStore
from ..opener import open as open_store
from ..opener import read_meta
from ..store import Store
from .requestlock import Gates
from .stripes import DEFAULT_STRIPES, StripeLocks

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")


class Site(NamedTuple):
    """A store and its request-long locks (``None`` with the request lock off), with their gates."""

    store: BaseStore
    locks: StripeLocks | None
    gates: Gates


def request_locks_for(
    store: BaseStore,
    *,
    request_lock: bool = True,
    lock_dir: str | Path | None = None,
    stripes: int = DEFAULT_STRIPES,
    timeout: float | None = None,
) -> StripeLocks | None:
    """The request-long locks to use with *store* (``None`` with *request_lock* off): the one place that chooses.

    Lock stripes under ``<store path>/stripes/`` unless *lock_dir* says otherwise; in-process ones for a
    ``memory`` store (one process).  A remote store has no local directory, so *lock_dir* is required (the
    stripes then serialise the requests of one machine); a lock kept on the server plugs in here, and the
    return type widens to :class:`~lockstore.web.requestlock.RequestLocks`.  *timeout* defaults to the store's.

    Raises
    ------
    ValueError
        A remote store and no *lock_dir*.
    """
    if not request_lock:
        return None
    wait = store.timeout if timeout is None else timeout
    if lock_dir is None and isinstance(store, Store):
        lock_dir = None if store.backend == "memory" else Path(store.path) / "stripes"
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
    """Open the store at *path* with *options* (:func:`lockstore.open`'s) and its request-long locks.

    Raises
    ------
    ValueError
        A remote store and no *lock_dir* with *request_lock* on (the store is closed again).
    """
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

    An existing store keeps the codec it records (a different *wanted* is logged, as a warning when the
    application set the serializer, named by *asked_by*, itself: *insist*; *option* names the setting that
    silences it); a new one gets *wanted*.
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
    lock held for microseconds by others), in a thread on a remote one (network round trips)."""
    if isinstance(store, Store):
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


__all__ = ["Site", "call", "choose_codec", "open_site", "request_locks_for"]
