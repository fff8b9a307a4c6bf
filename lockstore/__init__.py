"""lockstore: an embedded, multi-process safe server-side session store on LMDB or shelve.

    import lockstore
    store = lockstore.open("/var/lib/myapp/sessions")
    sid = lockstore.new_id()
    store[sid] = {"user": 42}
    with store.edit(sid) as session:          # atomic across threads and processes
        session["visits"] = session.get("visits", 0) + 1
"""

from .codec import Record
from .errors import (
    BackendUnavailable,
    CorruptRecord,
    EncodeError,
    InvalidSessionId,
    LockLost,
    LockstoreError,
    LockTimeout,
    StorageError,
    StoreClosed,
    StoreMismatch,
    UnsafeStore,
    ValueTooLarge,
)
from .ids import is_valid_id, new_id, validate_id
from .opener import open
from .options import Options
from .store import BaseStore, Store
from .tiered import TieredStore, tiered

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "BaseStore",
    "CorruptRecord",
    "EncodeError",
    "InvalidSessionId",
    "LockLost",
    "LockTimeout",
    "LockstoreError",
    "Options",
    "Record",
    "StorageError",
    "Store",
    "StoreClosed",
    "StoreMismatch",
    "TieredStore",
    "UnsafeStore",
    "ValueTooLarge",
    "is_valid_id",
    "new_id",
    "open",
    "tiered",
    "validate_id",
]
