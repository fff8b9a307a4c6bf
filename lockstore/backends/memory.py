"""The memory engine: one process, thread safe, the same semantics as the files. For tests and development.

Records are kept encoded, exactly as on disk, so a value that cannot be encoded fails here as it would
there, and reads return fresh copies. Stores opened on the same path in one process share their data
and their shard locks; the data is dropped when the last of them is closed.
"""

from __future__ import annotations

import math
import threading

from .. import record as fmt
from ..base import KEEP, Updater
from ..locks import ShardLocks

_shared: dict[str, tuple[list[dict[bytes, bytes]], list[float], list[int], ShardLocks]] = {}
_shared_lock = threading.Lock()


class MemoryEngine:
    name = "memory"
    lock_reads = False

    def __init__(self, path: str, shards: int) -> None:
        with _shared_lock:
            data = _shared.get(path)
            if data is None or len(data[0]) != shards:
                data = ([{} for _ in range(shards)], [0.0] * shards, [0], ShardLocks(None, shards))
                _shared[path] = data
            data[2][0] += 1  # open stores on this path; the data goes with the last one closed
        self._path = path
        self._data, self._cleaned, self._users, self.locks = data
        self._open = True

    def get(self, shard: int, key: bytes) -> bytes | None:
        return self._data[shard].get(key)

    def update(self, shard: int, key: bytes, fn: Updater, sweep: tuple[float, float, int] | None) -> int:
        swept = self.sweep(shard, *sweep) if sweep else 0
        data = self._data[shard]
        new = fn(data.get(key))
        if new is None:
            data.pop(key, None)
        elif new is not KEEP:
            data[key] = new
        return swept

    def put(
        self, shard: int, key: bytes, rec: bytes, old_atime: float | None, sweep: tuple[float, float, int] | None
    ) -> int:
        return self.update(shard, key, lambda old: rec, sweep)

    def sweep(self, shard: int, now: float, cutoff: float, limit: int | None) -> int:
        data = self._data[shard]
        doomed = [key for key, rec in data.items() if -math.inf < fmt.last_access(rec) < cutoff]
        doomed.sort(key=lambda k: fmt.last_access(data[k]))
        for key in doomed[:limit]:
            del data[key]
        self._cleaned[shard] = now
        return len(doomed[:limit])

    def holds(self, shard: int) -> bool:
        return True  # no files

    def last_clean(self, shard: int) -> float:
        return self._cleaned[shard]

    def scan(self, shard: int) -> list[tuple[bytes, bytes]]:
        return list(self._data[shard].items())

    def scan_times(self, shard: int) -> list[tuple[bytes, float]]:
        return [(key, fmt.last_access(rec)) for key, rec in list(self._data[shard].items())]

    def clear(self, shard: int) -> int:
        n = len(self._data[shard])
        self._data[shard].clear()
        return n

    def bytes_on_disk(self) -> int:
        return 0

    def close(self) -> None:
        with _shared_lock:
            if not self._open:
                return
            self._open = False
            self._users[0] -= 1
            if self._users[0] == 0 and _shared.get(self._path, (None,))[0] is self._data:
                del _shared[self._path]

    def __repr__(self) -> str:
        return f"<MemoryEngine {sum(len(d) for d in self._data)} records>"


