"""The store directory and its metadata: who may have written them, and opening them safely.

A store's directory decides what the application reads back, so it is treated as an attacker's input
until checked:

- every ancestor of the store (the real path, symbolic links resolved) must be owned by root or by this
  user and not writable by group or others unless sticky (OpenSSH's StrictModes rule, ``auth_secure_path``);
  missing ones are created 0700, whatever the umask allows;
- the store directory and ``lockstore.json`` must be owned by this user and writable by nobody else,
  whatever the codec (the metadata picks the backend and codec);
- the directory is then pinned: opened once as a descriptor, and everything inside is reached through
  ``/proc/self/fd/N/...``, so a directory swapped after the check is never read (Linux; where ``/proc`` is
  missing, the device and inode are compared instead, on every :meth:`StoreDir.check`);
- the metadata is read with ``O_NOFOLLOW``, bounded in size and validated field by field
  (:func:`validate_meta`); it is written to a random name with ``O_EXCL | O_NOFOLLOW`` and linked into
  place, so a planted link is never followed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
import stat
from typing import Any

from .errors import LockstoreError, StorageError, StoreMismatch, UnsafeStore

DIR_MODE = 0o700
FILE_MODE = 0o600
META = "lockstore.json"
FORMAT = 2
"""Format 2: ``store_id`` scopes the MAC, shelve shards hold raw records. Format 1 stores still open."""
META_MAX_BYTES = 64 << 10
BACKENDS = ("lmdb", "shelve")
CODECS = ("pickle", "json", "msgpack")
DBMS = ("dbm.gnu", "dbm.ndbm", "dbm.sqlite3", "dbm.dumb")
MAX_SHARDS = 4096
MAX_SECONDS = 100 * 365 * 86400.0
MAX_CLEAN_LIMIT = 10**9
RULES = ("max_age", "clean_interval", "clean_limit")
"""The settings every process must share: they decide which sessions a sweep deletes, and when."""
_STORE_ID = re.compile(r"[0-9a-f]{32}").fullmatch
_PROC_FD = "/proc/self/fd"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):o}"


def check_ancestors(real: str) -> None:
    """Refuse *real* (a resolved path) if an ancestor is owned by another user or writable by others.

    Raises
    ------
    UnsafeStore
        An ancestor is owned by a user other than root and this one, or writable by group or others
        without the sticky bit: its owner or those others could swap the store for their own.
    """
    uid = os.geteuid()
    parent = os.path.dirname(real)
    while True:
        try:
            st = os.stat(parent)
        except FileNotFoundError:
            st = None  # created 0700 by make_dirs, and checked again once the store is pinned
        except OSError as exc:
            raise LockstoreError(f"cannot check {parent}: {exc.strerror}") from None
        if st is None:
            pass
        elif st.st_uid not in (0, uid):
            raise UnsafeStore(
                f"{parent}, above the store at {real}, is owned by uid {st.st_uid}: that user could swap the "
                "store (keep stores under directories owned by root or by this user)"
            )
        elif st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise UnsafeStore(
                f"{parent}, above the store at {real}, is writable by group or others (mode {_mode(st)}) and not "
                "sticky: they could swap the store (chmod go-w)"
            )
        up = os.path.dirname(parent)
        if up == parent:
            return
        parent = up


def make_dirs(real: str) -> None:
    """Create *real* and its missing parents, each 0700 (never the umask's wider default)."""
    missing = []
    path = real
    while not os.path.lexists(path):
        missing.append(path)
        up = os.path.dirname(path)
        if up == path:
            break
        path = up
    for path in reversed(missing):
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            pass  # another process made it meanwhile: checked like any other
        except OSError as exc:
            raise LockstoreError(f"cannot create store directory {path}: {exc.strerror}") from None


def check_owned(name: str, st: os.stat_result, what: str) -> None:
    """Refuse a file or directory of the store that another user owns or could write."""
    uid = os.geteuid()
    if st.st_uid != uid:
        raise UnsafeStore(f"{what} {name} is owned by uid {st.st_uid}, not {uid}: refusing to trust it (chown it)")
    if st.st_mode & 0o022:
        raise UnsafeStore(
            f"{what} {name} is writable by group or others (mode {_mode(st)}): refusing to trust it (chmod go-w)"
        )


class StoreDir:
    """A store directory, checked and pinned by a descriptor for as long as the store is open.

    Parameters
    ----------
    path
        The store's directory; created (with its missing parents, 0700) when *create* is true.

    Notes
    -----
    :attr:`pinned` is the path to open files under: ``/proc/self/fd/N`` on Linux, which resolves through
    the descriptor and so always reaches the directory that was checked. The descriptor survives
    ``fork`` (a child reaches the same directory) and is closed on ``exec``. Not thread safe to close
    while in use; the store closes it last.
    """

    def __init__(self, path: str, *, create: bool) -> None:
        self.path = path
        real = os.path.realpath(path)
        self.real = real
        check_ancestors(real)
        if create:
            make_dirs(real)
        try:
            fd = os.open(real, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LockstoreError(f"no store directory at {path}") from None
        except NotADirectoryError:
            raise LockstoreError(f"{path} exists and is not a directory") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # swapped for a link after realpath
                raise UnsafeStore(f"{path} became a symbolic link while being opened") from None
            raise LockstoreError(f"cannot open store directory {path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISDIR(st.st_mode):  # pragma: no cover - O_DIRECTORY refuses it first
                raise LockstoreError(f"{path} exists and is not a directory")
            check_owned(path, st, "store directory")
            check_ancestors(real)  # again, now that the directory is pinned: nothing above it moved meanwhile
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.ident = (st.st_dev, st.st_ino)
        self.pinned = f"{_PROC_FD}/{fd}" if os.path.isdir(_PROC_FD) else real

    def join(self, *names: str) -> str:
        """A path inside the pinned directory."""
        return os.path.join(self.pinned, *names)

    def check(self) -> None:
        """Raise :class:`UnsafeStore` if the path no longer names the directory that was pinned."""
        try:
            st = os.stat(self.real)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self.ident:
            raise UnsafeStore(f"the store directory {self.path} was replaced while in use")

    def subdir(self, name: str) -> str:
        """Create (0700) or check the directory *name* inside the store; its pinned path."""
        sub = self.join(name)
        try:
            os.mkdir(name, DIR_MODE, dir_fd=self.fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise LockstoreError(f"cannot create {os.path.join(self.path, name)}: {exc.strerror}") from None
        st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeStore(f"{os.path.join(self.path, name)} is not a directory (a link, or a file)")
        check_owned(os.path.join(self.path, name), st, "store directory")
        return sub

    def meta_ident(self) -> tuple[int, int, int] | None:
        """(inode, size, mtime in ns) of the metadata file, or None: tells a process it was rewritten."""
        try:
            st = os.stat(META, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def read_meta(self) -> dict[str, Any] | None:
        """The validated metadata, or None if there is none (see :func:`validate_meta`)."""
        name = os.path.join(self.path, META)
        try:
            fd = os.open(META, os.O_RDONLY | _NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeStore(f"{name} is a symbolic link: refusing to follow it") from None
            raise LockstoreError(f"cannot read {name}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnsafeStore(f"{name} is not a regular file")
            check_owned(name, st, "metadata file")
            if st.st_size > META_MAX_BYTES:
                raise StoreMismatch(f"{name} is {st.st_size} bytes: not lockstore metadata (at most {META_MAX_BYTES})")
            raw = os.read(fd, META_MAX_BYTES + 1)
        finally:
            os.close(fd)
        return validate_meta(raw, name)

    def write_meta(self, meta: dict[str, Any], *, replace: bool) -> dict[str, Any]:
        """Write *meta* under a random name (``O_EXCL | O_NOFOLLOW``) and put it in place atomically.

        Without *replace*, a metadata file that appeared meanwhile wins (another process created the store
        first) and its validated content is returned; with it, the file is replaced (call it under the
        metadata lock).
        """
        validate_meta(json.dumps(meta).encode(), META)  # never write what could not be read back
        tmp = f".{META}.{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=self.fd
            )
            try:
                data = json.dumps(meta, indent=1).encode() + b"\n"
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            raise StorageError(f"cannot write store metadata in {self.path}: {exc.strerror or exc}") from None
        try:
            if replace:
                os.replace(tmp, META, src_dir_fd=self.fd, dst_dir_fd=self.fd)
                tmp = ""
                return meta
            try:
                os.link(tmp, META, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)
            except FileExistsError:
                other = self.read_meta()
                if other is None:  # pragma: no cover - removed between the two calls
                    raise StoreMismatch(f"the metadata of {self.path} vanished while being created") from None
                return other
            return meta
        finally:
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=self.fd)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def _field(meta: dict[str, Any], name: str, where: str, ok: bool, expected: str) -> None:
    if not ok:
        value = repr(meta[name])
        value = value if len(value) <= 40 else value[:37] + "..."
        raise StoreMismatch(f"{where}: field {name!r} is {value}, expected {expected}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value: object, *, positive: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    number = float(value)
    return math.isfinite(number) and (number > 0 if positive else number >= 0) and number <= MAX_SECONDS


def validate_meta(raw: bytes, name: str) -> dict[str, Any]:
    """Parse and check metadata field by field; a bad one is :class:`StoreMismatch` naming it.

    Every field has a fixed type and range, names come from fixed lists (a ``dbm`` is never imported by a
    name the file chose), and unknown fields are refused.
    """
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting an attacker chose
        raise StoreMismatch(f"{name} is not lockstore metadata: {str(exc)[:80]}") from None
    if not isinstance(meta, dict):
        raise StoreMismatch(f"{name} is not lockstore metadata: not a JSON object")
    known = {"format", "backend", "shards", "codec", "signed", "dbm", "store_id", *RULES}
    unknown = sorted(str(k)[:40] for k in meta if k not in known)
    if unknown:
        raise StoreMismatch(f"{name}: unknown field(s) {', '.join(map(repr, unknown))}")
    for required in ("format", "backend", "shards", "codec", "signed"):
        if required not in meta:
            raise StoreMismatch(f"{name}: field {required!r} is missing")
    fmt = meta["format"]
    _field(meta, "format", name, _is_int(fmt), f"a whole number from 1 to {FORMAT}")
    if fmt > FORMAT:
        raise StoreMismatch(f"{name} has format {fmt}, newer than this lockstore reads ({FORMAT}): upgrade")
    _field(meta, "format", name, fmt >= 1, f"a whole number from 1 to {FORMAT}")
    _field(meta, "backend", name, meta["backend"] in BACKENDS, " or ".join(map(repr, BACKENDS)))
    shards = meta["shards"]
    _field(meta, "shards", name, _is_int(shards) and 1 <= shards <= MAX_SHARDS, f"a whole number 1-{MAX_SHARDS}")
    _field(meta, "codec", name, meta["codec"] in CODECS, " or ".join(map(repr, CODECS)))
    _field(meta, "signed", name, isinstance(meta["signed"], bool), "true or false")
    if meta["backend"] == "shelve":
        _field(meta, "dbm", name, meta.get("dbm") in DBMS, " or ".join(map(repr, DBMS)))
    elif "dbm" in meta:
        raise StoreMismatch(f"{name}: field 'dbm' belongs to shelve stores only")
    if "store_id" in meta:
        store_id = meta["store_id"]
        _field(meta, "store_id", name, isinstance(store_id, str) and bool(_STORE_ID(store_id)), "32 hex digits")
    for rule in ("max_age", "clean_interval"):
        if rule in meta:
            _field(meta, rule, name, _is_seconds(meta[rule], positive=rule == "max_age"), "a number of seconds")
    if "clean_limit" in meta:
        limit = meta["clean_limit"]
        _field(meta, "clean_limit", name, _is_int(limit) and 1 <= limit <= MAX_CLEAN_LIMIT, "a positive whole number")
    return meta


def check_tree(path: str, pinned: str) -> None:
    """Refuse a store any file or directory of which another user owns, could write, or is a link.

    Walks what lies under *pinned* (the store's pinned path); lock files are skipped: they are never read.
    """
    for root, dirs, files in os.walk(pinned):
        dirs[:] = [d for d in dirs if d != "stripes"]  # request-lock stripes are never read either
        names = [os.path.join(root, n) for n in dirs + files if not (root == pinned and n.startswith("lock-"))]
        for name in names:
            try:
                st = os.lstat(name)
            except FileNotFoundError:
                continue
            shown = path + name[len(pinned) :]
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeStore(f"{shown} is a symbolic link: a store holds no links")
            check_owned(shown, st, "store file")


__all__ = [
    "BACKENDS",
    "CODECS",
    "DBMS",
    "DIR_MODE",
    "FILE_MODE",
    "FORMAT",
    "META",
    "RULES",
    "StoreDir",
    "check_ancestors",
    "check_owned",
    "check_tree",
    "make_dirs",
    "validate_meta",
]
