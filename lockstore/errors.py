"""The errors lockstore raises: every one is a :class:`LockstoreError`."""

from __future__ import annotations


class LockstoreError(Exception):
    """Base class of every error lockstore raises on purpose."""


class LockTimeout(LockstoreError, TimeoutError):
    """A shard or session lock was not obtained within the store's timeout; nothing was written."""


class LockLost(LockTimeout):
    """A lock held on a server lapsed before its holder was done (its lease ran out: the holder was paused,
    or cut off from the server, longer than the lease); the holder's write was refused and nothing was written.

    A :class:`LockTimeout`, so code that handles a busy session handles this one too.
    """


class InvalidSessionId(LockstoreError, ValueError):
    """A session id is not a str of 1 to 256 characters from ``[A-Za-z0-9_.~-]``."""


class StoreMismatch(LockstoreError):
    """The store on disk was created with other settings (backend, shards, codec, dbm, format)."""


class StoreClosed(LockstoreError):
    """The store was closed."""


class CorruptRecord(LockstoreError):
    """A record cannot be decoded, or its signature does not hold."""


class ValueTooLarge(LockstoreError):
    """An encoded value is larger than the store's ``max_value_size``; nothing was written."""


class EncodeError(LockstoreError, TypeError):
    """The codec cannot encode a value; nothing was written."""


class StorageError(LockstoreError, OSError):
    """The files under the store failed: a full disk, an I/O error. The operation wrote nothing."""


class UnsafeStore(LockstoreError):
    """A pickle store whose files another user could write or owns: refusing to unpickle from it."""


class BackendUnavailable(LockstoreError):
    """A remote backend (Redis, PostgreSQL) cannot be reached or did not answer in time."""
