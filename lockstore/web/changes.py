"""Which keys of a session a request changed, and how they are merged onto the record as stored now.

A request sees the session as it was when loaded; others may write it meanwhile (another tab, with the
request-long lock turned off). At the end only the keys this request changed are written, onto the stored
record, so concurrent requests changing different keys keep both. Changes inside values
(``session["cart"].append(x)``) are found by comparing each value's pickle with the one taken at load: no
flag to set. A value that cannot be pickled counts as changed (the store reports it when it is saved).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, MutableMapping
from typing import Any

Snapshot = dict[str, bytes | None]


def _dump(value: object) -> bytes | None:
    try:
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except Exception:  # any unpicklable value counts as changed
        return None


def snapshot(data: Mapping[str, Any]) -> Snapshot:
    """What *data* holds now, to compare with at the end of the request."""
    return {key: _dump(value) for key, value in data.items()}


def changes(before: Snapshot, data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the keys *data* set or changed since *before*, with their values; the keys it removed)."""
    changed = {}
    for key, value in data.items():
        old = before.get(key)
        if key not in before or old is None or _dump(value) != old:
            changed[key] = value
    return changed, [key for key in before if key not in data]


def merge(stored: MutableMapping[str, Any], changed: Mapping[str, Any], removed: list[str]) -> None:
    """Apply a request's changes onto the record *stored* as it is now."""
    for key in removed:
        stored.pop(key, None)
    stored.update(changed)


__all__ = ["Snapshot", "changes", "merge", "snapshot"]
