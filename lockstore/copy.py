"""Copy every live session, with its times, from one store to another (``lockstore copy SRC DST``).

The stores can be of any backends: an LMDB directory to Redis or PostgreSQL when an application moves
off one machine, and back. Values travel decoded, so the two stores may use different codecs and
secrets.

What a copy, and a re-run, does (issue 9, item 10)
--------------------------------------------------

A copy keeps a *journal*, a file with one JSON line per session it wrote into the destination:
``{"id": SID, "last_access": T}``, T being the last access of the record it wrote. The file is only
appended to, one line after each write; a later line for an id overrides an earlier one. For every live
session of the source, with last access S:

- **not in the journal**: written only if the destination has no live session with that id (absent or
  expired), so a copy never overwrites what the application put there (``skipped_present``);
- **in the journal, with time J**, and S > J (it changed in the source since it was copied): written only
  if the destination still holds exactly the copy, a live record whose last access is J. If the
  destination has no live record, the application deleted it (a logout) or it expired there: it is never
  recreated (``skipped_deleted``). If its last access is not J, the application read or wrote it since:
  it is never overwritten (``skipped_newer``);
- **in the journal** and S <= J: nothing to do (``unchanged``).

Each check and its write are one atomic compare-and-put under the destination's lock
(:meth:`~lockstore.BaseStore.put_record_if`), so an application writing to the destination during the
copy is never overwritten by it. A session the source cannot decode is reported (``bad``) and the copy
goes on; so is a destination record whose header cannot be read (it is left as it is).

Limits, stated plainly: the journal is the copy's memory. A run with another journal (or after the
journal was deleted) treats every id as new: it still never overwrites a live session of the
destination, but it copies again a session the destination deleted. A crash between a write and its
journal line loses the line: that session then counts as present in the destination and later changes
to it in the source are not copied (never the other way round). Sessions are written with their
source times and expire in the destination by the destination's ``max_age``.

The journal is untrusted input: it is opened without following a symbolic link, refused
(:class:`~lockstore.errors.UnsafeStore`) if another user owns it or it is writable by group or others,
created ``0600`` and exclusively, locked against a second copy using it at the same time, and a line
that does not parse stops the copy before it writes anything (:class:`JournalError`, naming the file and
the line).
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._files import check_owned
from .base import BaseStore
from .errors import CorruptRecord, LockstoreError, UnsafeStore
from .ids import is_valid_id
from .locks import try_flock

MAX_LINE = 1024
"""No journal line is longer: a valid id is at most 256 characters and a time a float."""


class JournalError(LockstoreError):
    """The copy journal cannot be used: a line that does not parse, or a file that cannot be opened."""


@dataclass
class CopyResult:
    """What :func:`copy_store` did, in counts (see the module notes for what each means)."""

    written: int = 0
    skipped_present: int = 0
    skipped_deleted: int = 0
    skipped_newer: int = 0
    unchanged: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    """(id, problem) of each source record that does not decode, and of each destination record that
    could not be compared; the copy went on past them."""
    journal: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "skipped_present": self.skipped_present,
            "skipped_deleted": self.skipped_deleted,
            "skipped_newer": self.skipped_newer,
            "unchanged": self.unchanged,
            "bad": [{"id": sid, "problem": why} for sid, why in self.bad],
            "journal": self.journal,
        }


class Journal:
    """The copy journal: opened safely, read whole, locked, appended to one line per write.

    Notes
    -----
    One copy at a time per journal: a second one gets :class:`JournalError` rather than wait. Not thread
    safe; not to be used across ``fork``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd = self._open()
        try:
            if not try_flock(self._fd):
                raise JournalError(f"copy journal {self.path} is in use by another lockstore copy")
            self.entries = self._read()
        except BaseException:
            os.close(self._fd)
            raise

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        for _ in range(2):
            try:
                fd = os.open(self.path, flags)
            except FileNotFoundError:
                try:
                    fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    continue  # created by another process in between: open that one, with its checks
                except OSError as exc:
                    raise JournalError(f"cannot create copy journal {self.path}: {exc.strerror}") from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
                    raise UnsafeStore(f"copy journal {self.path} is a symbolic link: refusing it") from None
                raise JournalError(f"cannot open copy journal {self.path}: {exc.strerror}") from None
            try:
                self._check(os.fstat(fd))
            except BaseException:
                os.close(fd)
                raise
            return fd
        raise JournalError(f"cannot open copy journal {self.path}: it keeps appearing and vanishing")

    def _check(self, st: os.stat_result) -> None:
        """The ownership rule of the store's own files (OpenSSH's StrictModes), on the open file."""
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeStore(f"copy journal {self.path} is not a regular file: refusing it")
        check_owned(str(self.path), st, "copy journal")

    def _read(self) -> dict[str, float]:
        chunks = []
        while chunk := os.read(self._fd, 1 << 20):
            chunks.append(chunk)
        data = b"".join(chunks)
        lines = data.split(b"\n")
        if lines[-1]:
            raise JournalError(f"{self.path}, line {len(lines)}: the last line is incomplete (no newline)")
        entries: dict[str, float] = {}
        for number, line in enumerate(lines[:-1], 1):
            sid, atime = self._parse(line, number)
            entries[sid] = atime
        return entries

    def _parse(self, line: bytes, number: int) -> tuple[str, float]:
        where = f"{self.path}, line {number}"
        if len(line) > MAX_LINE:
            raise JournalError(f"{where}: {len(line)} bytes long, at most {MAX_LINE}")
        try:
            doc = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise JournalError(f"{where}: not JSON ({exc})") from None
        if not isinstance(doc, dict) or set(doc) != {"id", "last_access"}:
            raise JournalError(f'{where}: not an object with exactly "id" and "last_access"')
        sid, atime = doc["id"], doc["last_access"]
        if not is_valid_id(sid):
            raise JournalError(f"{where}: not a valid session id: {str(sid)[:40]!r}")
        if isinstance(atime, bool) or not isinstance(atime, int | float):
            raise JournalError(f"{where}: last_access is not a number")
        try:
            atime = float(atime)
        except OverflowError:
            atime = math.inf
        if not math.isfinite(atime):
            raise JournalError(f"{where}: last_access is not a finite number")
        return sid, atime

    def add(self, sid: str, last_access: float) -> None:
        """Append one line, written whole to the file before the next session is copied."""
        line = json.dumps({"id": sid, "last_access": float(last_access)}).encode() + b"\n"
        n = os.write(self._fd, line)
        if n != len(line):  # pragma: no cover - a full disk part-way through a short write
            raise JournalError(f"copy journal {self.path}: short write ({n} of {len(line)} bytes)")
        self.entries[sid] = float(last_access)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.fsync(fd)
            finally:
                os.close(fd)  # releases the flock

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def copy_store(
    src: BaseStore,
    dst: BaseStore,
    *,
    journal: str | os.PathLike[str],
    progress: Callable[[int, int], None] | None = None,
) -> CopyResult:
    """Copy every live session of *src* into *dst* with its creation and last-access times.

    Safe to re-run with the same *journal*, and to run while the application writes to *dst*: it never
    overwrites a session the application wrote in *dst*, nor recreates one it deleted there (the rules are
    in the module notes).

    Parameters
    ----------
    src, dst
        Open stores. Sessions expired in *src* are not copied; a copied session keeps its last access,
        so it expires in *dst* when it would have in *src* (by *dst*'s ``max_age``).
    journal
        The copy journal of this pair of stores; created if absent.
    progress
        Called as ``progress(done, total)`` after each session; *total* is the number of live sessions
        in *src* when the copy started (sessions created meanwhile can make *done* pass it).

    Returns
    -------
    CopyResult
        The counts, and the sessions that could not be read.

    Raises
    ------
    UnsafeStore
        The journal is a symbolic link, another user's, or writable by group or others.
    JournalError
        A line of the journal does not parse, or another copy is using it; nothing was written.
    """
    result = CopyResult(journal=os.fspath(journal))
    with Journal(journal) as log:
        total = len(src) if progress is not None else 0

        def bad(sid: str, exc: CorruptRecord) -> None:
            result.bad.append((sid, str(exc)))

        for done, (sid, rec) in enumerate(src.records(on_error=bad), 1):
            try:
                _copy_one(sid, rec.value, rec.created, rec.last_access, dst, log, result)
            except CorruptRecord as exc:  # the destination's record: left alone, reported
                result.bad.append((sid, f"in the destination: {exc}"))
            if progress is not None:
                progress(done, max(total, done))
    return result


def _copy_one(
    sid: str, value: Any, created: float, atime: float, dst: BaseStore, log: Journal, result: CopyResult
) -> None:
    copied = log.entries.get(sid)
    if copied is not None and atime <= copied:
        result.unchanged += 1
        return
    if dst.put_record_if(sid, value, created=created, last_access=atime, expect=copied):
        log.add(sid, atime)
        result.written += 1
    elif copied is None:
        result.skipped_present += 1
    elif dst.record(sid) is None:  # why it was not written, for the counts only: the write was atomic
        result.skipped_deleted += 1
    else:
        result.skipped_newer += 1


__all__ = ["CopyResult", "Journal", "JournalError", "copy_store"]
