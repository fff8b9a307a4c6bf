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
- compaction (when more than half of ``.dat`` is dead) writes new files beside the old and swaps them
  under a marker file, so a compaction killed half-way is finished or undone by the next user.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import os
import re
from collections.abc import Iterator, MutableMapping
from typing import Any

from ..errors import CorruptRecord

_LINE = re.compile(rb"'([^'\\\n]*)', \((\d+), (\d+)\)\n")


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
        elif sd.st_size != self._dir_size:
            self._read_lines(self._dir_size)

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
        self._ident = (dir_ino, dat_ino)
        self._read_lines(0)

    def _read_lines(self, start: int) -> None:
        size = os.fstat(self._dir_fd).st_size
        data = os.pread(self._dir_fd, size - start, start)
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a line torn by a killed writer was never acknowledged: drop it
            os.ftruncate(self._dir_fd, start + end)
            data = data[:end]
        index = self._index
        for line in data.splitlines(keepends=True):
            m = _LINE.fullmatch(line)
            if m is not None:
                key, pos, size = m.group(1), int(m.group(2)), int(m.group(3))
            else:  # a line the standard dbm.dumb wrote (any key): its own format
                try:
                    skey, (pos, size) = ast.literal_eval(line.decode("latin-1"))
                except (ValueError, SyntaxError, TypeError):
                    raise CorruptRecord(f"{self._dir}: unreadable index line {line[:60]!r}") from None
                key = skey.encode("latin-1")
            old = index.get(key)
            if old is not None:
                self._live_bytes -= old[1]
            index[key] = (pos, size)
            self._live_bytes += size
        self._dir_size = start + end

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

    def __setitem__(self, key: bytes, value: bytes) -> None:
        if b"'" in key or b"\\" in key or b"\n" in key:
            raise KeyError(key)  # ids never contain these; the index format relies on it
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
        pos, size = self._index[key]
        data = os.pread(self._dat_fd, size, pos)
        if len(data) != size:
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

    def sync(self) -> None:
        pass

    def close(self) -> None:
        """Called by :class:`shelve.Shelf` when it is dropped: the shard stays open for the next one."""

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
