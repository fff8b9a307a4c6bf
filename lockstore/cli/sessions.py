"""``lockstore ls``, ``show`` and ``rm``: the sessions of a store, one by one."""

from __future__ import annotations

import argparse
import heapq
import pprint
import time
from collections.abc import Callable
from typing import Any

import lockstore
from lockstore.codec import codec_functions
from lockstore.record import HEADER_SIZE, MAC_SIZE

from .output import CommandError, err, idle, out, print_json, report_bad, size, table, when
from .stores import open_existing

SORT_KEYS: dict[str, Callable[[tuple[str, float, float, int | None]], Any]] = {
    "id": lambda row: row[0],
    "size": lambda row: (-(row[3] or 0), row[0]),  # the biggest first
    "idle": lambda row: (row[2], row[0]),  # the longest idle (the oldest last access) first
    "created": lambda row: (row[1], row[0]),  # the oldest first
}


def _record_size(store: Any) -> Callable[[Any], int | None]:
    """Bytes of the record that holds a value: header, signature and the value as the codec encodes it."""
    codec = store._codec
    encode = codec_functions(codec.name)[0]
    overhead = HEADER_SIZE + (MAC_SIZE if codec.signed else 0)

    def record_size(value: Any) -> int | None:
        try:
            return overhead + len(encode(value))
        except Exception:  # decoded, so it encodes; a value whose class changed meanwhile may not
            return None

    return record_size


def cmd_ls(args: argparse.Namespace) -> int:
    bad: list[tuple[str, str]] = []
    with open_existing(args.path, args) as store:
        now = time.time()
        record_size = _record_size(store)
        records = store.records(expired=args.expired, on_error=lambda sid, exc: bad.append((sid, str(exc))))
        # (id, created, last access, size): the values are dropped at once, so that a large store fits
        rows_in = ((sid, rec.created, rec.last_access, record_size(rec.value)) for sid, rec in records)
        key = SORT_KEYS[args.sort]
        rows = heapq.nsmallest(args.limit, rows_in, key=key) if args.limit else sorted(rows_in, key=key)
    if args.json:
        print_json(
            [
                {"id": sid, "created": created, "last_access": atime, "idle": now - atime, "size": nbytes}
                for sid, created, atime, nbytes in rows
            ]
        )
    elif not rows:
        err("no expired sessions" if args.expired else "no live sessions")
    else:
        table(
            ["id", "created", "last access", "idle", "size"],
            [[sid, when(c), when(a), idle(now - a), size(n)] for sid, c, a, n in rows],
        )
    return report_bad(bad, args.path)


def _check_id(args: argparse.Namespace) -> None:
    if not lockstore.is_valid_id(args.sid):
        raise CommandError(f"{args.sid[:60]!r} is not a valid session id")


def cmd_show(args: argparse.Namespace) -> int:
    _check_id(args)
    with open_existing(args.path, args) as store:
        rec = store.record(args.sid)
    if rec is None:
        raise CommandError(f"no live session {args.sid} in {args.path}", status=1)
    if args.json:
        print_json({"id": args.sid, "created": rec.created, "last_access": rec.last_access, "value": rec.value})
        return 0
    out(f"id           {args.sid}")
    out(f"created      {when(rec.created)}")
    out(f"last access  {when(rec.last_access)} ({idle(time.time() - rec.last_access)} ago)")
    out(pprint.pformat(rec.value, width=100, sort_dicts=True))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    _check_id(args)
    with open_existing(args.path, args) as store:
        try:
            del store[args.sid]
        except KeyError:
            raise CommandError(f"no live session {args.sid} in {args.path}", status=1) from None
    out(f"removed {args.sid}")
    return 0


__all__ = ["SORT_KEYS", "cmd_ls", "cmd_rm", "cmd_show"]
