"""A crash-safe use of the ``dbm.dumb`` file format, for the shelve engine.

``dbm.dumb``, the only dbm some Pythons have, is not safe as the standard library ships it: it overwrites
values in place, keeps index changes in memory until ``sync``, and rewrites its index by renaming it to
``.bak`` and writing a new one, so a killed process can lose acknowledged writes or leave a shard empty.
Here a shard on ``dumb`` is a :class:`DumbShard`: the same two files (``.dat`` values, ``.dir`` index of
``'key', (pos, size)`` lines, which the standard ``dbm.dumb`` still reads), used crash-safely:

- a value is always appended to ``.dat``, never written over an older one; its index line is then
  appended to ``.dir`` in one ``write``; a later line for a key overrides an earlier one. A write is
  acknowledged only after both, so a kill at any moment leaves the old or the new value, never a torn one;
- a deletion rewrites ``.dir`` whole into a temporary file and renames it over the old one (atomic);
- other processes notice changes by the files' inode and size and read only the appended lines;
- the index is parsed strictly (ids or ``#clean`` as keys, numbers of at most 19 digits, every value within
  ``.dat``). Readers never change a file: a torn final line (a proper prefix of a valid line: a writer was
  killed while appending it, so it was never acknowledged) is skipped, and cut by the next writer, under the
  lock, before it appends; anything else that does not parse is :class:`CorruptRecord` naming the file,
  which is left as it is, so no read can turn a damaged index into an empty shard;
- compaction (when more than half of ``.dat`` is dead) writes new files beside the old and swaps them
  under a marker file, so a compaction killed half-way is finished or undone by the next user.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator, MutableMapping
from typing import Any, NoReturn

from ..errors import CorruptRecord

_KEY = rb"[A-Za-z0-9_.~-]{1,256}|#clean"  # session ids (lockstore.ids) and the shelve engine's last-clean key
_NUM = rb"[0-9]{1,19}"  # int() of at most 19 digits cannot fail, and positions are checked against .dat
# one index line, as DumbShard and the standard dbm.dumb ("%r, %r\n" % (key, (pos, size))) write it for these keys
_LINE = re.compile(rb"'(%s)', \((%s), (%s)\)\n" % (_KEY, _NUM, _NUM))
_VALID_KEY = re.compile(_KEY).fullmatch
_MAX_LINE = 1 + 256 + 4 + 19 + 2 + 19 + 2


def _literal_prefix(text: bytes) -> bytes:
    """A pattern matching every proper prefix of *text* (the empty one included)."""
    pattern = b""
    for char in reversed(text[:-1]):
        pattern = b"(?:%s%s)?" % (re.escape(bytes([char])), pattern)
    return pattern


def _prefix_pattern(tokens: list[tuple[bytes, bytes]]) -> bytes:
    """A pattern matching every prefix of the concatenation of *tokens*, each (pattern, proper-prefix pattern)."""
    full, partial = tokens[0]
    rest = _prefix_pattern(tokens[1:]) if len(tokens) > 1 else b""
    return b"(?:(?:%s)%s|%s)" % (full, rest, partial)


# a torn line: the start of a valid line, up to its closing parenthesis, without the newline
_TORN = re.compile(
    _prefix_pattern(
        [
            (b"'", b""),
            (_KEY, rb"[A-Za-z0-9_.~-]{0,256}|" + b"#" + _literal_prefix(b"clean") + b"|"),
            (re.escape(b"', ("), _literal_prefix(b"', (")),
            (_NUM, rb"[0-9]{0,19}"),
            (re.escape(b", "), _literal_prefix(b", ")),
            (_NUM, rb"[0-9]{0,19}"),
            (re.escape(b")"), b""),
        ]
    )
)


def _write_all(fd: int, data: bytes, pos: int | None = None) -> None:
    """Write all of *data* (at *pos*, or at the descriptor's position), or raise ``OSError``: a full disk
    shows as a short write first, and a short value must never be indexed."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if pos is None else os.pwrite(fd, view, pos)
        if n <= 0:  # pragma: no cover - the kernel raises ENOSPC rather than return 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]
        if pos is not None:
            pos += n


class DumbShard(MutableMapping[bytes, bytes]):
    """A crash-safe ``dbm.dumb``-format database (see the module's docstring). Not thread safe: the shard
    lock serialises every use."""

    def __init__(self, base: str, durable: bool, file_mode: int) -> None:
        self._dat = base + ".dat"
        self._dir = base + ".dir"
        self._marker = base + ".compacting"
        self._durable = durable
        self._mode = file_mode
        self._index: dict[bytes, tuple[int, int]] = {}
        self._ident: tuple[int, int] = (-1, -1)
        self._dir_size = 0
        self._torn = False  # .dir ends in a torn line after _dir_size
        self._dat_fd = -1
        self._dir_fd = -1
        self._live_bytes = 0

    # -- keeping up with other processes --------------------------------------------------

    def refresh(self) -> None:
        """Bring the in-memory index up to date with the files (called with the shard lock held)."""
        try:
            sd, st = os.stat(self._dir), os.stat(self._dat)
        except FileNotFoundError:
            self._recover()
            self._create()
            sd, st = os.stat(self._dir), os.stat(self._dat)
        if (sd.st_ino, st.st_ino) != self._ident:
            if os.path.exists(self._marker):
                self._recover()
                sd, st = os.stat(self._dir), os.stat(self._dat)
            self._load(st.st_ino, sd.st_ino)
        elif sd.st_size > self._dir_size:
            self._read_lines(self._dir_size)
        elif sd.st_size < self._dir_size:  # shrunk in place, which lockstore never does: read it all again
            self._load(st.st_ino, sd.st_ino)

    def _create(self) -> None:
        for name in (self._dat, self._dir):
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, self._mode)
            os.close(fd)

    def _load(self, dat_ino: int, dir_ino: int) -> None:
        # Both files stay open: an inode cannot be reused while a descriptor holds it, so "same inode
        # number as ours" really means "the same file" (a replaced index's number is otherwise free to
        # come back for its successor, and a process would read on from a stale offset).
        self._close_fds()
        self._dat_fd = os.open(self._dat, os.O_RDWR | os.O_CLOEXEC)
        self._dir_fd = os.open(self._dir, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        if (os.fstat(self._dir_fd).st_ino, os.fstat(self._dat_fd).st_ino) != (dir_ino, dat_ino):
            self._ident = (-1, -1)  # replaced between stat and open: start again
            return self.refresh()
        self._index = {}
        self._live_bytes = 0
        self._dir_size = 0
        self._torn = False
        self._ident = (-1, -1)  # until the whole index has been read: a failed read is retried from scratch
        self._read_lines(0)
        self._ident = (dir_ino, dat_ino)

    def _read_lines(self, start: int) -> None:
        """Index the lines of ``.dir`` from byte *start* (just after a newline) on, changing no file.

        All of them parse and point inside ``.dat``, or none is indexed and :class:`CorruptRecord` says
        where. A torn final line is left out (and left in the file: :meth:`_cut_torn` is for writers)."""
        data = os.pread(self._dir_fd, os.fstat(self._dir_fd).st_size - start, start)
        end = data.rfind(b"\n") + 1
        tail = data[end:]
        if tail and (len(tail) >= _MAX_LINE or _TORN.fullmatch(tail) is None):
            self._corrupt(start + end, tail, "is not an index line")
        dat_size = os.fstat(self._dat_fd).st_size
        entries = []
        match = _LINE.match
        pos = 0
        while pos < end:
            m = match(data, pos)
            if m is None:
                self._corrupt(start + pos, data[pos : data.index(b"\n", pos)], "is not an index line")
            at, size = int(m[2]), int(m[3])
            if at + size > dat_size:
                self._corrupt(start + pos, m[0][:-1], f"points past the end of {self._dat} ({dat_size} bytes)")
            entries.append((m[1], at, size))
            pos = m.end()
        index = self._index
        for key, at, size in entries:
            old = index.get(key)
            if old is not None:
                self._live_bytes -= old[1]
            index[key] = (at, size)
            self._live_bytes += size
        self._dir_size = start + end
        self._torn = bool(tail)

    def _corrupt(self, offset: int, line: bytes, problem: str) -> NoReturn:
        line = line if len(line) <= 60 else line[:57] + b"..."
        raise CorruptRecord(f"{self._dir}: the line at byte {offset} ({line!r}) {problem}; the file is left as it is")

    def _cut_torn(self) -> None:
        """Cut a torn final line off ``.dir`` so that the next line starts clean (writers, under the lock)."""
        self._read_lines(self._dir_size)  # what follows our last line is still just the torn one
        if self._torn:
            os.ftruncate(self._dir_fd, self._dir_size)
            self._torn = False

    # -- writing ----------------------------------------------------------------------------

    def _append_line(self, key: bytes, pos: int, size: int) -> None:
        line = b"'%s', (%d, %d)\n" % (key, pos, size)
        _write_all(self._dir_fd, line)  # O_APPEND: one write at the end
        if self._durable:
            os.fsync(self._dir_fd)
        self._dir_size += len(line)

    def _write_index(self, path: str, index: dict[bytes, tuple[int, int]]) -> None:
        data = b"".join(b"'%s', (%d, %d)\n" % (k, p, s) for k, (p, s) in index.items())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, self._mode)
        try:
            _write_all(fd, data)
            if self._durable:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _rewrite_index(self) -> None:
        tmp = self._dir + ".tmp"
        self._write_index(tmp, self._index)
        fd = os.open(tmp, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        os.replace(tmp, self._dir)
        os.close(self._dir_fd)
        self._dir_fd = fd
        st = os.fstat(fd)
        self._ident = (st.st_ino, self._ident[1])
        self._dir_size = st.st_size
        self._torn = False

    def __setitem__(self, key: bytes, value: bytes) -> None:
        if _VALID_KEY(key) is None:
            raise KeyError(key)  # the index would not read back: only ids and #clean are keys
        if self._torn:
            self._cut_torn()
        pos = os.fstat(self._dat_fd).st_size
        _write_all(self._dat_fd, value, pos)
        if self._durable:
            os.fsync(self._dat_fd)
        self._append_line(key, pos, len(value))
        old = self._index.get(key)
        if old is not None:
            self._live_bytes -= old[1]
        self._index[key] = (pos, len(value))
        self._live_bytes += len(value)

    def __delitem__(self, key: bytes) -> None:
        self.delete_many([key])

    def delete_many(self, keys: list[bytes]) -> None:
        gone = [k for k in keys if k in self._index]
        if not gone:
            return
        for k in gone:
            self._live_bytes -= self._index.pop(k)[1]
        self._rewrite_index()

    def dead_share(self, max_size: int | None = None) -> float:
        """The share of ``.dat`` no index entry points at (0 when under 1 MiB, or over *max_size*)."""
        size = os.fstat(self._dat_fd).st_size
        if size < (1 << 20) or (max_size is not None and size > max_size):
            return 0.0
        return 1 - self._live_bytes / size

    def compact(self) -> None:
        """Rewrite ``.dat`` without dead values; crash-safe through a marker and two renames."""
        new_dat, new_dir = self._dat + ".new", self._dir + ".new"
        index: dict[bytes, tuple[int, int]] = {}
        fd = os.open(new_dat, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, self._mode)
        try:
            pos = 0
            for key, (p, s) in self._index.items():
                _write_all(fd, os.pread(self._dat_fd, s, p))
                index[key] = (pos, s)
                pos += s
            if self._durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        self._write_index(new_dir, index)
        os.close(os.open(self._marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, self._mode))
        os.replace(new_dat, self._dat)
        os.replace(new_dir, self._dir)
        os.unlink(self._marker)
        self._ident = (-1, -1)
        self.refresh()

    def _recover(self) -> None:
        """Finish or undo a compaction that a killed process left half done."""
        if not os.path.exists(self._marker):
            return
        new_dat, new_dir = self._dat + ".new", self._dir + ".new"
        if os.path.exists(new_dat):  # .dat not swapped yet: the old pair is intact
            for name in (new_dat, new_dir):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
        elif os.path.exists(new_dir):  # .dat swapped, .dir not: finish
            os.replace(new_dir, self._dir)
        os.unlink(self._marker)

    # -- reading -----------------------------------------------------------------------------

    def __getitem__(self, key: bytes) -> bytes:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: bytes, default: None = None) -> bytes | None:  # type: ignore[override]
        entry = self._index.get(key)
        if entry is None:
            return None
        pos, size = entry
        data = os.pread(self._dat_fd, size, pos)
        if len(data) != size:  # .dat shrank since the index was read
            raise CorruptRecord(f"{self._dat}: value of {key[:24]!r} is cut short")
        return data

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._index))

    def __len__(self) -> int:
        return len(self._index)

    def keys(self) -> Any:
        return list(self._index)

    def _close_fds(self) -> None:
        for fd in (self._dat_fd, self._dir_fd):
            if fd >= 0:
                os.close(fd)
        self._dat_fd = self._dir_fd = -1

    def release(self) -> None:
        self._close_fds()
        self._ident = (-1, -1)

    def bytes_on_disk(self) -> int:
        total = 0
        for name in (self._dat, self._dir):
            with contextlib.suppress(OSError):
                total += os.stat(name).st_blocks * 512
        return total


__all__ = ["DumbShard"]
