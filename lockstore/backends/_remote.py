"""What the Redis and PostgreSQL stores share: reads built on fetching one whole record by id."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from ..base import BaseStore
from ..codec import Codec, Record


class RemoteStore(BaseStore):
    """A :class:`BaseStore` whose subclass fetches a record (:meth:`_get`) and rewrites only its last-access
    time (:meth:`_touch_record`); reading, touching and expiry are the same for every server."""

    _codec: Codec

    @abstractmethod
    def _get(self, sid: str) -> bytes | None:
        """The stored record of *sid* (validated here), live or not, or None."""

    @abstractmethod
    def _touch_record(self, sid: str, rec: bytes, now: float) -> None:
        """Set the last access of *sid* to *now*, if its record is still *rec*."""

    def _live(self, rec: bytes | None, now: float) -> bool:
        return rec is not None and now - Codec.times(rec)[2] <= self.max_age

    def __getitem__(self, sid: str) -> Any:
        rec = self._get(sid)
        now = self.clock()
        if rec is None or not self._live(rec, now):
            raise KeyError(sid)
        value = self._codec.decode(sid.encode(), rec)
        if now - Codec.times(rec)[2] >= self.touch_interval:
            self._touch_record(sid, rec, now)
        return value

    def touch(self, sid: str) -> bool:
        rec = self._get(sid)
        now = self.clock()
        if rec is None or not self._live(rec, now):
            return False
        if now - Codec.times(rec)[2] >= self.touch_interval:
            self._touch_record(sid, rec, now)
        return True

    def record(self, sid: str) -> Record | None:
        rec = self._get(sid)
        if rec is None or not self._live(rec, self.clock()):
            return None
        _, _, atime, created = Codec.times(rec)
        return Record(self._codec.decode(sid.encode(), rec), created, atime)


__all__ = ["RemoteStore"]
