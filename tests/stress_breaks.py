"""TEST ONLY: run the stress harness against a store broken on purpose, to show that its checks fail.

    python tests/stress_breaks.py BREAKAGE [python -m stress options...]

patches lockstore in this process with one of :data:`BREAKAGES`, then runs ``stress.run.main`` with the
options that follow. The harness forks its workers (Linux), so every worker inherits the broken store;
nothing of this reaches the product or the harness, which have no such option. Used by
``tests/test_stress.py``; a run on a platform that would spawn its workers instead exits 2 rather than
test an unbroken store.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def no_op_lock() -> None:
    """Shard locks keep out the other threads of a process only: no file lock, so other processes walk in."""
    from lockstore.locks import ShardLocks

    real_init = ShardLocks.__init__

    def init(self: ShardLocks, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        self._files = False

    ShardLocks.__init__ = init  # type: ignore[method-assign]


def ack_before_write() -> None:
    """``store[sid] = value`` returns at once; the write is made by the store's next set, or on close."""
    from lockstore.store import Store

    real_set, real_close = Store.__setitem__, Store.close

    def set_later(self: Store, sid: str, value: Any) -> None:
        earlier = self.__dict__.pop("_unwritten", None)
        self.__dict__["_unwritten"] = (sid, value)  # acknowledged, not written
        if earlier is not None:
            real_set(self, *earlier)

    def close(self: Store) -> None:
        earlier = self.__dict__.pop("_unwritten", None)
        if earlier is not None and not self._closed:
            real_set(self, *earlier)
        real_close(self)

    Store.__setitem__ = set_later  # type: ignore[method-assign]
    Store.close = close  # type: ignore[method-assign]


def no_expiry_check() -> None:
    """Reads (``store[sid]``, ``get``, ``in``, ``record``) return a stored session however long it has been
    idle; everything else (touching live sessions, sweeps) is unchanged."""
    from lockstore import record as fmt
    from lockstore.codec import Record
    from lockstore.store import Store

    def getitem(self: Store, sid: str) -> Any:
        shard, key = self._locate(sid)
        rec = self._read(shard, key)
        if rec is None:
            raise KeyError(sid)
        value = self._codec.decode(key, rec)
        now = self.clock()
        if now - fmt.last_access(rec) >= self.touch_interval:
            self._touch_shard(shard, key, now)  # a live session's read still counts as an access
        return value

    def record(self: Store, sid: str) -> Record | None:
        shard, key = self._locate(sid)
        rec = self._read(shard, key)
        if rec is None:
            return None
        atime, created = fmt.times(rec)
        return Record(self._codec.decode(key, rec), created, atime)

    Store.__getitem__ = getitem  # type: ignore[method-assign]
    Store.record = record  # type: ignore[method-assign]
    Store._live = lambda self, rec, now: rec is not None  # type: ignore[method-assign]


def none() -> None:
    """No breakage: the control run, which must pass."""


BREAKAGES: dict[str, Callable[[], None]] = {
    "no-op-lock": no_op_lock,
    "ack-before-write": ack_before_write,
    "no-expiry-check": no_expiry_check,
    "none": none,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BREAKAGES:
        print(f"usage: stress_breaks.py {{{','.join(BREAKAGES)}}} [stress options]", file=sys.stderr)
        return 2
    sys.path.insert(0, ROOT)
    from stress._common import mp_context
    from stress.run import main as stress_main

    if mp_context().get_start_method() != "fork":
        print("the harness would spawn its workers, which would not inherit the breakage", file=sys.stderr)
        return 2
    BREAKAGES[argv[0]]()
    return stress_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
