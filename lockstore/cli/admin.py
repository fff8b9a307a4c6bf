"""``lockstore info``, ``clean``, ``config`` and ``verify``: a store as a whole."""

from __future__ import annotations

import argparse
import time
from typing import Any

from lockstore._files import RULES
from lockstore.opener import set_rules

from .output import CommandError, Progress, err, out, plural, print_json, size, table, when
from .stores import is_url, no_store, open_existing, recorded


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
        for sid, why in bad:
            out(f"{sid}: {why}")
        err(plural(len(bad), "bad record"))
    elif signed:
        out("ok: every record decodes and its signature holds")
    else:
        out("ok: every record decodes (the store is not signed: there is no signature to check)")
    return 1 if bad else 0


__all__ = ["cmd_clean", "cmd_config", "cmd_info", "cmd_verify"]
