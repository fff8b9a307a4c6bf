"""The only process-wide state: which fork of the process this is, and what a forked child must reset.

Everything that holds a descriptor, a lock or a connection remembers the generation it opened it in, and
compares it with ``GENERATION[0]`` before use: a forked child has a new generation, so it opens its own and
never uses, nor releases, what it inherited (a ``flock`` belongs to the open file description the child
shares with its parent; an inherited LMDB environment "must be discarded and re-opened"). Objects that must act
at the fork itself register with :func:`at_fork`; their ``_after_fork()`` runs in the child, first thing.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

GENERATION = [0]
"""``GENERATION[0]`` changes in every forked child (a list: read on hot paths without a call)."""


class _ForkAware(Protocol):
    def _after_fork(self) -> None: ...


_hooks: weakref.WeakSet[_ForkAware] = weakref.WeakSet()


def generation() -> int:
    """The fork generation of this process."""
    return GENERATION[0]


def at_fork(obj: _ForkAware) -> None:
    """Call ``obj._after_fork()`` in every forked child (held weakly: a closed, dropped object is forgotten)."""
    _hooks.add(obj)


def _in_child() -> None:
    GENERATION[0] += 1
    for obj in list(_hooks):
        obj._after_fork()


os.register_at_fork(after_in_child=_in_child)

__all__ = ["GENERATION", "at_fork", "generation"]
