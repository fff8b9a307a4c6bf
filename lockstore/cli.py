"""The ``lockstore`` command line: inspect, clean, verify and copy stores; run the stress harness and benchmarks.

Every command that reads a store opens an existing one and never creates a store where there is
none. Errors are one line on standard error and a non-zero exit status: 1 when the command ran and
found a problem (a bad record, no such session), 2 for usage errors and stores that cannot be
opened, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pprint
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

PROG = "lockstore"
SECRET_ENV = "LOCKSTORE_SECRET"


class CommandError(Exception):
    """An error reported as one line, with an exit status."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


# -- opening stores ---------------------------------------------------------------------------


def _is_url(path: str) -> bool:
    return "://" in path


def _secret(args: argparse.Namespace) -> str | None:
    if getattr(args, "secret_file", None):
        try:
            with open(args.secret_file, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as exc:
            raise CommandError(f"cannot read the secret file {args.secret_file}: {exc.strerror}") from None
    return os.environ.get(SECRET_ENV) or None


def open_existing(path: str, args: argparse.Namespace) -> Any:
    """Open the store at *path*, which must exist: a missing store is an error, never created."""
    import lockstore
    from lockstore.opener import read_meta

    options: dict[str, Any] = {"timeout": args.timeout}
    if args.max_age is not None:
        options["max_age"] = args.max_age
    secret = _secret(args)
    if _is_url(path):
        return lockstore.open(path, secret=secret, **options)
    if not os.path.exists(path):
        raise CommandError(f"no store at {path}: no such file or directory")
    if not os.path.isdir(path):
        raise CommandError(f"no store at {path}: not a directory")
    meta = read_meta(path)
    if meta is None:
        raise CommandError(f"no store at {path}: the directory holds no lockstore metadata")
    if meta.get("signed") and secret is None:
        raise CommandError(f"the store at {path} is signed: give its secret in ${SECRET_ENV} or with --secret-file")
    return lockstore.open(path, secret=secret if meta.get("signed") else None, **options)


# -- output helpers -----------------------------------------------------------------------------


def _when(t: float | None) -> str:
    if t is None:
        return "never"
    return datetime.datetime.fromtimestamp(t).isoformat(sep=" ", timespec="seconds")


def _idle(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} bytes"  # pragma: no cover - the loop always returns


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=repr, ensure_ascii=False))


def _table(headers: Sequence[str], rows: list[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        first = row[0].ljust(widths[0])
        print("  ".join([first] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]).rstrip())


class _Progress:
    """A progress line on standard error, shown only on a terminal, redrawn at most ten times a second."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty()
        self.shown = False
        self.last = 0.0

    def __call__(self, *counts: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.1 and not (len(counts) == 2 and counts[0] == counts[1]):
            return
        self.last = now
        text = " of ".join(f"{c:,}" for c in counts)
        sys.stderr.write(f"\r{self.label} {text} ")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\r" + " " * 60 + "\r")
            sys.stderr.flush()


# -- commands -----------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    with open_existing(args.path, args) as store:
        stats = store.stats()
    if args.json:
        _print_json(stats)
        return 0
    print(f"store      {stats.get('path', args.path)}")
    for key in ("backend", "dbm", "shards", "codec", "signed", "durability"):
        if key in stats:
            print(f"{key:<10} {stats[key]}")
    if "max_age" in stats:
        print(f"max_age    {stats['max_age']:g} s (as opened)")
    print(f"sessions   {stats.get('live', 0):,} live, {stats.get('expired', 0):,} expired")
    if "bytes" in stats:
        print(f"size       {_size(stats['bytes'])}")
    per_shard = stats.get("per_shard") or []
    if per_shard:
        print()
        _table(
            ["shard", "live", "expired", "last clean"],
            [[s["shard"], f"{s['live']:,}", f"{s['expired']:,}", _when(s.get("last_clean"))] for s in per_shard],
        )
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with open_existing(args.path, args) as store:
        now = time.time()
        rows = sorted(store.records(expired=args.expired), key=lambda item: item[0])
    if args.json:
        _print_json(
            [
                {"id": sid, "created": rec.created, "last_access": rec.last_access, "idle": now - rec.last_access}
                for sid, rec in rows
            ]
        )
        return 0
    if not rows:
        print("no expired sessions" if args.expired else "no live sessions", file=sys.stderr)
        return 0
    _table(
        ["id", "created", "last access", "idle"],
        [[sid, _when(rec.created), _when(rec.last_access), _idle(now - rec.last_access)] for sid, rec in rows],
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    import lockstore

    if not _is_url(args.path) and not lockstore.is_valid_id(args.sid):
        raise CommandError(f"{args.sid!r} is not a valid session id")
    with open_existing(args.path, args) as store:
        rec = store.record(args.sid)
    if rec is None:
        raise CommandError(f"no live session {args.sid} in {args.path}", status=1)
    if args.json:
        _print_json({"id": args.sid, "created": rec.created, "last_access": rec.last_access, "value": rec.value})
        return 0
    print(f"id           {args.sid}")
    print(f"created      {_when(rec.created)}")
    print(f"last access  {_when(rec.last_access)} ({_idle(time.time() - rec.last_access)} ago)")
    print(pprint.pformat(rec.value, width=100, sort_dicts=True))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    import lockstore

    if not _is_url(args.path) and not lockstore.is_valid_id(args.sid):
        raise CommandError(f"{args.sid!r} is not a valid session id")
    with open_existing(args.path, args) as store:
        try:
            del store[args.sid]
        except KeyError:
            raise CommandError(f"no live session {args.sid} in {args.path}", status=1) from None
    print(f"removed {args.sid}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    progress = _Progress("cleaning shards")
    t0 = time.monotonic()
    with open_existing(args.path, args) as store:
        try:
            removed = store.clean(progress=progress)
        except TypeError:  # a store whose clean() takes no progress callback
            removed = store.clean()
        finally:
            progress.done()
    seconds = time.monotonic() - t0
    if args.json:
        _print_json({"removed": removed, "seconds": seconds})
    else:
        print(f"removed {removed:,} expired session{'s' if removed != 1 else ''} in {seconds:.2f} s")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with open_existing(args.path, args) as store:
        bad = store.verify()
    if args.json:
        _print_json({"ok": not bad, "bad": [{"id": sid, "problem": why} for sid, why in bad]})
    elif bad:
        for sid, why in bad:
            print(f"{sid}: {why}")
        print(f"{len(bad):,} bad record{'s' if len(bad) != 1 else ''}", file=sys.stderr)
    else:
        print("ok: every record decodes" + (" and its signature holds" if _secret(args) else ""))
    return 1 if bad else 0


def cmd_copy(args: argparse.Namespace) -> int:
    import lockstore

    try:
        from lockstore.copy import copy_store
    except ImportError:
        raise CommandError("copy is not available: this lockstore has no lockstore.copy module") from None
    options: dict[str, Any] = {"timeout": args.timeout}
    for name in ("backend", "shards", "codec"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    secret = _secret(args)
    if secret is not None:
        options["secret"] = secret
    with open_existing(args.src, args) as src:
        progress = _Progress("copying")
        try:
            with lockstore.open(args.dst, **options) as dst:
                n = copy_store(src, dst, progress=progress)
        finally:
            progress.done()
    if args.json:
        _print_json({"copied": n})
    else:
        print(f"copied {n:,} session{'s' if n != 1 else ''} from {args.src} to {args.dst}")
    return 0


# -- the parser ---------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and maintain lockstore session stores; run the stress harness and benchmarks.",
        epilog=f"A signed store's secret is read from ${SECRET_ENV} or --secret-file. Exit status: 0 ok, "
        "1 a problem found (bad records, no such session, a stress violation), 2 an error.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--max-age",
        type=_positive_float,
        metavar="SECONDS",
        help="idle time after which a session counts as expired (default: 1800)",
    )
    common.add_argument(
        "--timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for a shard lock (default: 10)",
    )
    common.add_argument("--secret-file", metavar="FILE", help=f"file holding the store's secret (else ${SECRET_ENV})")
    jsonopt = argparse.ArgumentParser(add_help=False)
    jsonopt.add_argument("--json", action="store_true", help="print JSON")

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help_: str, parents: list[argparse.ArgumentParser]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, parents=parents)
        p.set_defaults(func=fn)
        return p

    p = add(
        "info", cmd_info, "show a store's settings, session counts, size and last clean per shard", [common, jsonopt]
    )
    p.add_argument("path", help="store directory (or redis:// / postgresql:// URL)")
    p = add("ls", cmd_ls, "list the live sessions (or the expired ones not yet swept)", [common, jsonopt])
    p.add_argument("path", help="store directory")
    p.add_argument("--expired", action="store_true", help="list expired sessions not yet removed instead")
    p = add("show", cmd_show, "print one session, decoded", [common, jsonopt])
    p.add_argument("path", help="store directory")
    p.add_argument("sid", metavar="SID", help="session id")
    p = add("rm", cmd_rm, "delete one session", [common])
    p.add_argument("path", help="store directory")
    p.add_argument("sid", metavar="SID", help="session id")
    p = add("clean", cmd_clean, "remove every expired session now", [common, jsonopt])
    p.add_argument("path", help="store directory")
    p = add(
        "verify",
        cmd_verify,
        "check that every record decodes and its signature holds (exit 1 and list the bad ids otherwise)",
        [common, jsonopt],
    )
    p.add_argument("path", help="store directory")
    p = add(
        "copy",
        cmd_copy,
        "copy every live session, with its times, from one store into another (created if needed)",
        [common, jsonopt],
    )
    p.add_argument("src", metavar="SRC", help="the existing store to copy from")
    p.add_argument("dst", metavar="DST", help="the store to copy into (created with the options below if absent)")
    p.add_argument("--backend", choices=("lmdb", "shelve", "memory"), help="backend of a new DST")
    p.add_argument("--shards", type=_positive_int, help="shards of a new DST")
    p.add_argument("--codec", choices=("pickle", "json", "msgpack"), help="codec of a new DST")
    sub.add_parser("stress", help="run the multi-process stress harness (lockstore stress --help)", add_help=False)
    sub.add_parser(
        "bench", help="run the benchmarks against raw LMDB and the peers (lockstore bench --help)", add_help=False
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``lockstore`` command line; returns the exit status."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    try:
        if args_list and args_list[0] in ("stress", "bench"):
            return _run_tool(args_list[0], args_list[1:])
        args = build_parser().parse_args(args_list)
        return int(args.func(args))
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2), already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except CommandError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        return _report(exc)


def _report(exc: Exception) -> int:
    """One line for any error that reaches the top, a lockstore error or not; never a traceback."""
    from lockstore.errors import LockstoreError, LockTimeout

    if isinstance(exc, LockTimeout):
        print(f"{PROG}: error: locked too long: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, LockstoreError):
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        print(f"{PROG}: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"{PROG}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 2


def _run_tool(name: str, argv: list[str]) -> int:
    """``lockstore stress`` and ``lockstore bench`` run the harness and benchmarks in ``stress/``."""
    import importlib

    try:
        module = importlib.import_module("stress.run" if name == "stress" else "stress.bench")
    except ImportError as exc:
        raise CommandError(f"{name} needs the stress package of the lockstore source tree ({exc})") from None
    return int(module.main(argv, prog=f"{PROG} {name}"))


__all__ = ["main"]
