"""The record format, and the only place a record's bytes are parsed.

A record is ``header [mac] payload``. The header is 18 bytes, ``<BBdd``: format version, flags,
last-access time, creation time (seconds since the epoch), so times are read without decoding the payload.
With ``FLAG_SIGNED`` a 32-byte MAC follows the header (see :class:`lockstore.codec.Codec`). Every store,
embedded or remote, keeps records in this format; engines and servers see only bytes.

What is read back is untrusted: :func:`times` checks a header (length, version, finite times) and raises
:class:`CorruptRecord`; :func:`last_access` never raises and gives ``-inf`` for a damaged record, which is
then never live and never swept (``verify()`` reports it, an operator removes it).
"""

from __future__ import annotations

import math
import struct

from .errors import CorruptRecord

HEADER = struct.Struct("<BBdd")
HEADER_SIZE = HEADER.size
MAC_SIZE = 32
VERSION = 1
FLAG_SIGNED = 1
TIME = struct.Struct("<d")
"""A time alone (a shard's last clean)."""
BUCKET_SECONDS = 32
"""Width of the last-access index buckets (LMDB): many writes within half a minute leave the index alone."""

pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from
_unpack_time = TIME.unpack_from


def times(rec: bytes | memoryview) -> tuple[float, float]:
    """(last_access, created) of a record; :class:`CorruptRecord` for a header too short, of another version,
    or with a time that is not a finite number (which would break the expiry arithmetic and the index)."""
    try:
        version, _, atime, created = _unpack_header(rec)
    except struct.error:
        raise CorruptRecord(f"record of {len(rec)} bytes is shorter than its header") from None
    if version != VERSION:
        raise CorruptRecord(f"record format version {version}, expected {VERSION}")
    if not (math.isfinite(atime) and math.isfinite(created)):
        raise CorruptRecord(f"record times are not finite numbers (last access {atime}, created {created})")
    return atime, created


def last_access(rec: bytes | memoryview) -> float:
    """The last access of a stored record; ``-inf`` for one too short to have a header or whose time is not
    finite (damaged or forged: never live, never swept, reported by verify())."""
    if len(rec) < HEADER_SIZE:
        return -math.inf
    atime: float = _unpack_time(rec, 2)[0]
    return atime if math.isfinite(atime) else -math.inf


def is_live(rec: bytes | memoryview | None, now: float, max_age: float) -> bool:
    """True if *rec* exists, is not damaged, and was accessed within *max_age* seconds of *now*."""
    return rec is not None and now - last_access(rec) <= max_age


def live_created(rec: bytes | memoryview, now: float, max_age: float) -> float | None:
    """The creation time of a live record, None for one expired or damaged (``is_live`` false); a live record
    whose header is otherwise bad raises :class:`CorruptRecord`, as :func:`times` does. One unpack: a write
    that replaces a session keeps its creation time."""
    try:
        version, _, atime, created = _unpack_header(rec)
    except struct.error:
        return None
    if not math.isfinite(atime) or not now - atime <= max_age:  # a damaged time is never live
        return None
    if version != VERSION or not math.isfinite(created):
        times(rec)  # raises, saying what is wrong
    when: float = created
    return when


def bucket(t: float) -> int:
    """The index bucket of a last-access time."""
    return max(0, int(t // BUCKET_SECONDS))


def read_time(raw: bytes | None) -> float:
    """A time stored alone (:data:`TIME`), or 0.0 for none or for bytes that do not hold a finite one."""
    if raw is None or len(raw) != TIME.size:
        return 0.0
    when: float = _unpack_time(raw)[0]
    return when if math.isfinite(when) else 0.0


__all__ = [
    "BUCKET_SECONDS",
    "FLAG_SIGNED",
    "HEADER",
    "HEADER_SIZE",
    "MAC_SIZE",
    "TIME",
    "VERSION",
    "bucket",
    "is_live",
    "last_access",
    "live_created",
    "pack_header",
    "read_time",
    "times",
]
