"""The ``lockstore`` command line: inspect, clean, verify and copy stores; run the stress harness and benchmarks.

Every command that reads a store opens an existing one and never creates a store where there is
none. Errors are one line on standard error and a non-zero exit status: 1 when the command ran and
found a problem (a bad record, no such session), 2 for usage errors and stores that cannot be
opened, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import pprint
import sys
import time
import urllib.parse
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

    # no max_age: the store's own rule applies, never one of the command line's (issue 9, item 8)
    options: dict[str, Any] = {"timeout": args.timeout}
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


def _report_bad(bad: list[tuple[str, str]], path: str) -> int:
    """List records that could not be read on standard error; the exit status: 1 if there were any."""
    for sid, why in bad:
        print(f"{sid}: {why}", file=sys.stderr)
    if bad:
        print(
            f"{len(bad):,} bad record{'s' if len(bad) != 1 else ''} (lockstore rm {path} ID removes one)",
            file=sys.stderr,
        )
    return 1 if bad else 0


def cmd_ls(args: argparse.Namespace) -> int:
    bad: list[tuple[str, str]] = []
    with open_existing(args.path, args) as store:
        now = time.time()
        records = store.records(expired=args.expired, on_error=lambda sid, exc: bad.append((sid, str(exc))))
        rows = sorted(records, key=lambda item: item[0])
    if args.json:
        _print_json(
            [
                {"id": sid, "created": rec.created, "last_access": rec.last_access, "idle": now - rec.last_access}
                for sid, rec in rows
            ]
        )
    elif not rows:
        print("no expired sessions" if args.expired else "no live sessions", file=sys.stderr)
    else:
        _table(
            ["id", "created", "last access", "idle"],
            [[sid, _when(rec.created), _when(rec.last_access), _idle(now - rec.last_access)] for sid, rec in rows],
        )
    return _report_bad(bad, args.path)


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
            removed = store.clean(progress=progress, max_idle=args.max_idle)
        finally:
            progress.done()
    seconds = time.monotonic() - t0
    if args.json:
        _print_json({"removed": removed, "seconds": seconds})
    else:
        noun = f"session{'s' if removed != 1 else ''}"
        what = f"expired {noun}" if args.max_idle is None else f"{noun} idle over {args.max_idle:g} s"
        print(f"removed {removed:,} {what} in {seconds:.2f} s")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Show the recorded sweep rules, or change them (the only way to: no open() may sweep by others)."""
    from lockstore.opener import read_meta, set_rules

    if _is_url(args.path):
        raise CommandError("config changes the rules of a directory store; a server store keeps its own")
    rules = {"max_age": args.max_age, "clean_interval": args.clean_interval, "clean_limit": args.clean_limit}
    meta: dict[str, Any] | None
    if any(value is not None for value in rules.values()):
        meta = set_rules(args.path, **rules)
    else:
        meta = read_meta(args.path)
        if meta is None:
            raise CommandError(f"no store at {args.path}: the directory holds no lockstore metadata", status=1)
    shown = {name: meta.get(name) for name in rules}
    if args.json:
        _print_json(shown)
    else:
        for name, value in shown.items():
            print(f"{name:<15} {'not recorded' if value is None else format(value, 'g')}")
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


_CREDENTIAL_PARAMS = frozenset({"password", "passwd", "pass", "user", "username", "sslpassword"})


def _identity(path: str) -> str:
    """What names a store in a journal's file name: a directory's real path, or a URL without credentials."""
    if not _is_url(path):
        return os.path.realpath(path)
    parts = urllib.parse.urlsplit(path)
    query = [
        (k, v)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if k.lower() not in _CREDENTIAL_PARAMS
    ]
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, urllib.parse.urlencode(sorted(query)), ""))


def _journal_path(args: argparse.Namespace) -> str:
    """``--journal``, else a file in the directory store of the pair named after the other store: the
    journal belongs to one (source, destination) pair."""
    if args.journal:
        return str(args.journal)
    for home, other in ((args.dst, args.src), (args.src, args.dst)):
        if not _is_url(home):
            digest = hashlib.sha256(_identity(other).encode()).hexdigest()[:16]
            return os.path.join(home, f"copy-journal-{digest}.jsonl")
    raise CommandError("copying between two servers needs --journal FILE: where to remember what was copied")


def cmd_copy(args: argparse.Namespace) -> int:
    import lockstore
    from lockstore.copy import copy_store
    from lockstore.opener import read_meta

    journal = _journal_path(args)  # before opening anything: a usage error touches nothing
    options: dict[str, Any] = {"timeout": args.timeout}
    for name in ("backend", "shards", "codec"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    secret = _secret(args)
    if secret is not None:
        options["secret"] = secret
    with open_existing(args.src, args) as src:
        if not _is_url(args.dst) and read_meta(args.dst) is None:
            # a new destination sweeps by the source's rule, not the default one: a two-week store
            # copied into a store that expires sessions after 30 minutes would lose them
            for name in ("max_age", "clean_interval", "clean_limit"):
                if getattr(src, name, None) is not None:
                    options[name] = getattr(src, name)
        progress = _Progress("copying")
        try:
            with lockstore.open(args.dst, **options) as dst:
                result = copy_store(src, dst, journal=journal, progress=progress if progress.enabled else None)
        finally:
            progress.done()
    if args.json:
        _print_json(result.as_dict())
    else:
        n = result.written
        print(f"copied {n:,} session{'s' if n != 1 else ''} from {args.src} to {args.dst}")
        print(
            f"not copied: {result.skipped_present:,} present in the destination, "
            f"{result.skipped_deleted:,} deleted there, {result.skipped_newer:,} changed there, "
            f"{result.unchanged:,} unchanged since the last copy"
        )
        print(f"journal: {result.journal}")
    return _report_bad(result.bad, args.src)


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

    # no --max-age: every command applies the store's own expiry rule (issue 9, item 8)
    common = argparse.ArgumentParser(add_help=False)
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
    p = add("clean", cmd_clean, "remove every expired session now (by the store's max_age)", [common, jsonopt])
    p.add_argument("path", help="store directory")
    p.add_argument(
        "--max-idle",
        type=_positive_float,
        metavar="SECONDS",
        help="also remove every session idle longer than this: logs those users out",
    )
    p = add(
        "config",
        cmd_config,
        "show the store's recorded sweep rules, or change them (processes that have the store open stop "
        "sweeping until restarted)",
        [jsonopt],
    )
    p.add_argument("path", help="store directory")
    p.add_argument("--max-age", type=_positive_float, metavar="SECONDS", help="idle time after which a session expires")
    p.add_argument("--clean-interval", type=float, metavar="SECONDS", help="how often a write sweeps its shard")
    p.add_argument("--clean-limit", type=_positive_int, metavar="N", help="at most this many removed by one write")
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
    p.add_argument(
        "--journal",
        metavar="FILE",
        help="what was copied, so that a re-run never recreates a session DST deleted nor overwrites one it "
        "changed (default: a copy-journal-*.jsonl file in DST, else in SRC; required between two servers)",
    )
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
