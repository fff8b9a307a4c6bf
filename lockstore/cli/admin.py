"""The commands on one store: ``info``, ``ls``, ``show``, ``rm``, ``clean``, ``config`` and ``verify``."""

from __future__ import annotations

import argparse
import datetime
import heapq
import pprint
import time
from collections.abc import Callable, Sequence
from typing import Any

import lockstore
from lockstore._files import RULES
from lockstore.codec import codec_functions
from lockstore.opener import set_rules
from lockstore.record import HEADER_SIZE, MAC_SIZE

from .output import CommandError, Progress, err, out, print_json, report, report_bad, safe, size
from .stores import is_url, no_store, open_existing, recorded


def when(t: float | None) -> str:
    if t is None:
        return "never"
    return datetime.datetime.fromtimestamp(t).isoformat(sep=" ", timespec="seconds")


def idle(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def table(headers: Sequence[str], rows: list[Sequence[object]]) -> None:
    cells = [[safe(str(h)) for h in headers]] + [[safe(str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        first = row[0].ljust(widths[0])
        print("  ".join([first] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]).rstrip())


SORT_KEYS: dict[str, Callable[[tuple[str, float, float, int | None]], Any]] = {
    "id": lambda row: row[0],
    "size": lambda row: (-(row[3] or 0), row[0]),  # the biggest first
    "idle": lambda row: (row[2], row[0]),  # the longest idle (the oldest last access) first
    "created": lambda row: (row[1], row[0]),  # the oldest first
}


def cmd_info(args: argparse.Namespace) -> int:
    with open_existing(args.path, args) as store:
        stats = store.stats()
    if args.json:
        print_json(stats)
        return 0
    out(f"store      {stats.get('path', args.path)}")
    for key in ("backend", "dbm", "shards", "codec", "signed", "durability"):
        if key in stats:
            out(f"{key:<10} {stats[key]}")
    if "max_age" in stats:
        out(f"max_age    {stats['max_age']:g} s (as opened)")
    out(f"sessions   {stats.get('live', 0):,} live, {stats.get('expired', 0):,} expired")
    if "bytes" in stats:
        out(f"size       {size(stats['bytes'])}")
    per_shard = stats.get("per_shard") or []
    if per_shard:
        out()
        table(
            ["shard", "live", "expired", "last clean"],
            [[s["shard"], f"{s['live']:,}", f"{s['expired']:,}", when(s.get("last_clean"))] for s in per_shard],
        )
    return 0


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


def cmd_clean(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    with open_existing(args.path, args) as store, Progress("cleaning shards") as progress:
        removed = store.clean(progress=progress, max_idle=args.max_idle)
    seconds = time.monotonic() - t0
    if args.json:
        print_json({"removed": removed, "seconds": seconds})
    else:
        noun = "session" if removed == 1 else "sessions"
        what = f"expired {noun}" if args.max_idle is None else f"{noun} idle over {args.max_idle:g} s"
        out(f"removed {removed:,} {what} in {seconds:.2f} s")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Show the recorded sweep rules, or change them (the only way to: no open() may sweep by others)."""
    if is_url(args.path):
        raise CommandError("config changes the rules of a directory store; a server store keeps its own")
    meta: dict[str, Any] | None = recorded(args.path, {}, 0)
    if meta is None:
        raise no_store(args.path)
    rules = {name: getattr(args, name) for name in RULES}
    if any(value is not None for value in rules.values()):
        meta = set_rules(args.path, **rules)
    shown = {name: meta.get(name) for name in RULES}
    if args.json:
        print_json(shown)
    else:
        for name, value in shown.items():
            out(f"{name:<15} {'not recorded' if value is None else format(value, 'g')}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with open_existing(args.path, args) as store:
        signed = bool(store._codec.signed)  # what was checked: the store's setting, not the environment
        with Progress(f"verifying {args.path}"):
            bad = store.verify()
    if args.json:
        print_json({"ok": not bad, "signed": signed, "bad": [{"id": sid, "problem": why} for sid, why in bad]})
    elif bad:
        return report(bad, "bad record", line=out)
    elif signed:
        out("ok: every record decodes and its signature holds")
    else:
        out("ok: every record decodes (the store is not signed: there is no signature to check)")
    return 1 if bad else 0
