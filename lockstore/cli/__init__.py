"""The ``lockstore`` command line: inspect, clean, verify, copy, export and import stores; run the stress
harness and benchmarks.

A store is a directory or a ``redis://``, ``rediss://``, ``postgresql://`` or ``postgres://`` URL; any
other ``scheme://`` is an error, never a directory named after it. Every command but ``copy`` (its
destination) and ``import`` opens an existing store and never creates one: on a path with no store it
prints one line and exits 1, leaving the path as it was.

Everything read from a store (ids, values, error texts) is printed with its control characters (C0, C1,
DEL), bidirectional overrides and isolates and other invisible characters escaped, as ``repr()`` escapes
them (``\\x1b``, ``\\u202e``); JSON output escapes them as ``\\uXXXX``. So a planted id cannot drive the
terminal, and JSON output decodes to the same strings.

Exit status: 0 ok; 1 the command ran and found a problem (a bad record, no such session, no store at the
path, a bad import line); 2 usage errors and stores that cannot be opened; 130 interrupted; 141 standard
output closed early (``lockstore ls STORE | head``), quietly, as a process killed by SIGPIPE. Progress
(``clean``, ``copy``, ``export``, ``import``, ``verify``) is drawn on standard error only when it is a
terminal.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import heapq
import json
import math
import os
import pprint
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

PROG = "lockstore"
SECRET_ENV = "LOCKSTORE_SECRET"
FUTURE_SLACK = 86400.0
"""How far in the future an imported time may be (clock skew between machines), in seconds: a time
further ahead would keep a session alive for ever."""
EXPORT_FIELDS = ("id", "created", "last_access", "value")


class CommandError(Exception):
    """An error reported as one line, with an exit status."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


# -- safe text --------------------------------------------------------------------------------


def _escape(char: str) -> str:
    n = ord(char)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def _json_escape(char: str) -> str:
    n = ord(char)
    if n < 0x10000:
        return f"\\u{n:04x}"
    n -= 0x10000
    return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"


def safe(text: str, escape: Callable[[str], str] = _escape) -> str:
    """*text* with every character ``repr()`` would escape (C0 and C1 controls, DEL, bidi overrides and
    isolates, other invisible format characters, separators, lone surrogates) escaped; newlines kept."""
    if text.isprintable():
        return text
    return "\n".join(
        line if line.isprintable() else "".join(c if c.isprintable() else escape(c) for c in line)
        for line in text.split("\n")
    )


def dumps(doc: Any, *, indent: int | None = None) -> str:
    """JSON text of *doc* that shows the same on a terminal as it decodes: every character :func:`safe`
    escapes is written as a ``\\uXXXX`` escape (they can only occur inside strings, where that is valid)."""
    separators = None if indent else (",", ":")
    text = json.dumps(doc, indent=indent, default=repr, ensure_ascii=False, separators=separators)
    return safe(text, _json_escape)


def out(text: str = "") -> None:
    print(safe(text))


def err(text: str) -> None:
    print(safe(text), file=sys.stderr)


def _print_json(doc: Any) -> None:
    print(dumps(doc, indent=2))


# -- naming and opening stores --------------------------------------------------------------------


def _is_url(path: str) -> bool:
    return "://" in path


def _scheme(path: str) -> str:
    """The scheme of a URL store; :class:`CommandError` for one lockstore does not know (``x://y`` would
    otherwise be a directory ``x:/y``)."""
    from lockstore.opener import REMOTE_SCHEMES

    scheme = path.partition("://")[0]
    if scheme not in REMOTE_SCHEMES:
        raise CommandError(
            f"unknown scheme {scheme!r}: a store is a directory or a "
            + ", ".join(f"{s}://" for s in REMOTE_SCHEMES)
            + " URL"
        )
    return scheme


def _where(
    path: str, prefix: str | None, table: str | None, names: tuple[str, str] = ("--prefix", "--table")
) -> dict[str, Any]:
    """The open() options that name a store on a server (checked against *path*'s kind)."""
    options: dict[str, Any] = {}
    scheme = _scheme(path) if _is_url(path) else None
    for option, value, schemes, key in (
        (names[0], prefix, ("redis", "rediss"), "prefix"),
        (names[1], table, ("postgresql", "postgres"), "table"),
    ):
        if value is None:
            continue
        if scheme not in schemes:
            raise CommandError(f"{option} names a store on a {schemes[0]}:// server; {path} is not one")
        options[key] = value
    return options


def _read_secret(file: str | None) -> str | None:
    if file is None:
        return None
    try:
        with open(file, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        raise CommandError(f"cannot read the secret file {file}: {exc.strerror}") from None


def _secret(args: argparse.Namespace) -> str | None:
    """The secret of the store a command names (``--secret-file``, else ``$LOCKSTORE_SECRET``)."""
    return _read_secret(getattr(args, "secret_file", None)) or os.environ.get(SECRET_ENV) or None


_UNKNOWN = object()


def _probe_remote(path: str, where: dict[str, Any], timeout: float) -> Any:
    """The recorded settings of the store at a server URL, as far as the command line needs them
    (``{"signed": bool}``); None if the server holds no such store; :data:`_UNKNOWN` if it cannot tell
    (the server is down, a client is missing...): then open() says what is wrong, with credentials
    scrubbed, which this probe never prints."""
    try:
        if _scheme(path) in ("redis", "rediss"):
            import redis

            client = redis.Redis.from_url(path, socket_connect_timeout=timeout, socket_timeout=timeout)
            try:
                meta = client.hgetall(f"{where.get('prefix', 'lockstore')}:meta")
            finally:
                client.close()
            return {"signed": meta.get(b"signed") == b"1"} if meta else None
        import psycopg

        with psycopg.connect(path, connect_timeout=max(1, int(timeout)), autocommit=True) as conn:
            if conn.execute("SELECT to_regclass('lockstore_meta')").fetchone() == (None,):
                return None
            rows = conn.execute(
                "SELECT value FROM lockstore_meta WHERE store = %s AND name = 'signed'",
                (where.get("table", "lockstore_sessions"),),
            ).fetchall()
            return {"signed": rows[0][0] == "1"} if rows else None
    except Exception:
        return _UNKNOWN


def recorded(path: str, where: dict[str, Any], timeout: float) -> Any:
    """The recorded settings of the store at *path*; None if there is none; :data:`_UNKNOWN`."""
    from lockstore.opener import read_meta

    if _is_url(path):
        return _probe_remote(path, where, timeout)
    if not os.path.isdir(path):
        return None
    return read_meta(path)


def _no_store(path: str) -> CommandError:
    if _is_url(path):
        return CommandError(f"no store at {_redact(path)}: the server holds no lockstore metadata there", status=1)
    if not os.path.lexists(path):
        return CommandError(f"no store at {path}: no such file or directory", status=1)
    if not os.path.isdir(path):
        return CommandError(f"no store at {path}: not a directory", status=1)
    return CommandError(f"no store at {path}: the directory holds no lockstore metadata", status=1)


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def open_store(
    path: str,
    *,
    where: dict[str, Any],
    secret: str | None,
    timeout: float,
    create: dict[str, Any] | None = None,
    rules: dict[str, Any] | None = None,
    secret_hint: str = "--secret-file",
) -> Any:
    """Open the store at *path* (*where*: its prefix or table). Without *create*, it must exist: a missing
    one is a :class:`CommandError` (exit 1) and nothing is created; with *create* (open() options), a
    missing one is created with them. *rules* (``max_age``) are recorded by a new store and checked against
    an existing one's (:class:`StoreMismatch` if they differ). *secret* is used if the store is signed (a
    new one: if given)."""
    import lockstore

    options: dict[str, Any] = {"timeout": timeout, **where, **(rules or {})}
    meta = recorded(path, where, timeout)
    if meta is None:
        if create is None:
            raise _no_store(path)
        options.update(create)
        if secret is not None:
            options["secret"] = secret
    elif meta is not _UNKNOWN and not meta.get("signed"):
        pass  # an ambient $LOCKSTORE_SECRET does not apply to an unsigned store
    elif secret is None and meta is not _UNKNOWN:
        raise CommandError(
            f"the store at {_redact(path) if _is_url(path) else path} is signed: give its secret in "
            f"${SECRET_ENV} or with {secret_hint}"
        )
    else:
        options["secret"] = secret
    return lockstore.open(path, **options)


def open_existing(path: str, args: argparse.Namespace) -> Any:
    """Open the store a command names (``PATH``, ``--prefix``, ``--table``, its secret); never created."""
    return open_store(path, where=_where(path, args.prefix, args.table), secret=_secret(args), timeout=args.timeout)


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


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} bytes"  # pragma: no cover - the loop always returns


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _table(headers: Sequence[str], rows: list[Sequence[object]]) -> None:
    cells = [[safe(str(h)) for h in headers]] + [[safe(str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        first = row[0].ljust(widths[0])
        print("  ".join([first] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]).rstrip())


class _Progress:
    """A progress line on standard error, drawn only when it is a terminal, at most ten times a second.

    Call it with counts (``progress(done)`` or ``progress(done, total)``); as a context manager it also
    redraws the elapsed time every half second, for work that reports no counts (``verify``), and erases
    the line at the end.
    """

    def __init__(self, label: str, *, enabled: bool | None = None) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.counts: tuple[int, ...] = ()
        self.start = time.monotonic()
        self.last = -1.0
        self.width = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, *counts: int) -> None:
        if not self.enabled:
            return
        self.counts = counts
        now = time.monotonic()
        if now - self.last >= 0.1 or (len(counts) == 2 and counts[0] == counts[1]):
            self._draw(now)

    def _draw(self, now: float) -> None:
        with self._lock:
            self.last = now
            text = " of ".join(f"{c:,}" for c in self.counts)
            line = safe(f"{self.label} {text} ({now - self.start:.0f} s)".replace("  ", " "))
            sys.stderr.write("\r" + line.ljust(self.width))
            sys.stderr.flush()
            self.width = len(line)

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self._draw(time.monotonic())

    def __enter__(self) -> _Progress:
        if self.enabled:
            self._draw(time.monotonic())
            self._thread = threading.Thread(target=self._tick, name="lockstore-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()


def _record_size(store: Any) -> Callable[[Any], int | None]:
    """Bytes of the record that holds a value: header, signature and the value as the codec encodes it."""
    from lockstore.codec import codec_functions
    from lockstore.record import HEADER_SIZE, MAC_SIZE

    codec = store._codec
    encode = codec_functions(codec.name)[0]
    overhead = HEADER_SIZE + (MAC_SIZE if codec.signed else 0)

    def size(value: Any) -> int | None:
        try:
            return overhead + len(encode(value))
        except Exception:  # decoded, so it encodes; a value whose class changed meanwhile may not
            return None

    return size


def _report_bad(bad: list[tuple[str, str]], path: str) -> int:
    """List records that could not be read on standard error; the exit status: 1 if there were any."""
    for sid, why in bad:
        err(f"{sid}: {why}")
    if bad:
        err(f"{_plural(len(bad), 'bad record')} (lockstore rm {path} ID removes one)")
    return 1 if bad else 0


# -- commands -----------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    with open_existing(args.path, args) as store:
        stats = store.stats()
    if args.json:
        _print_json(stats)
        return 0
    out(f"store      {stats.get('path', args.path)}")
    for key in ("backend", "dbm", "shards", "codec", "signed", "durability"):
        if key in stats:
            out(f"{key:<10} {stats[key]}")
    if "max_age" in stats:
        out(f"max_age    {stats['max_age']:g} s (as opened)")
    out(f"sessions   {stats.get('live', 0):,} live, {stats.get('expired', 0):,} expired")
    if "bytes" in stats:
        out(f"size       {_size(stats['bytes'])}")
    per_shard = stats.get("per_shard") or []
    if per_shard:
        out()
        _table(
            ["shard", "live", "expired", "last clean"],
            [[s["shard"], f"{s['live']:,}", f"{s['expired']:,}", _when(s.get("last_clean"))] for s in per_shard],
        )
    return 0


_SORT_KEYS: dict[str, Callable[[tuple[str, float, float, int | None]], Any]] = {
    "id": lambda row: row[0],
    "size": lambda row: (-(row[3] or 0), row[0]),  # the biggest first
    "idle": lambda row: (row[2], row[0]),  # the longest idle (the oldest last access) first
    "created": lambda row: (row[1], row[0]),  # the oldest first
}


def cmd_ls(args: argparse.Namespace) -> int:
    bad: list[tuple[str, str]] = []
    with open_existing(args.path, args) as store:
        now = time.time()
        size = _record_size(store)
        records = store.records(expired=args.expired, on_error=lambda sid, exc: bad.append((sid, str(exc))))
        # (id, created, last access, size): the values are dropped at once, so that a large store fits
        rows_in = ((sid, rec.created, rec.last_access, size(rec.value)) for sid, rec in records)
        key = _SORT_KEYS[args.sort]
        rows = heapq.nsmallest(args.limit, rows_in, key=key) if args.limit else sorted(rows_in, key=key)
    if args.json:
        _print_json(
            [
                {"id": sid, "created": created, "last_access": atime, "idle": now - atime, "size": nbytes}
                for sid, created, atime, nbytes in rows
            ]
        )
    elif not rows:
        err("no expired sessions" if args.expired else "no live sessions")
    else:
        _table(
            ["id", "created", "last access", "idle", "size"],
            [[sid, _when(c), _when(a), _idle(now - a), _size(n)] for sid, c, a, n in rows],
        )
    return _report_bad(bad, args.path)


def _check_id(args: argparse.Namespace) -> None:
    import lockstore

    if not lockstore.is_valid_id(args.sid):
        raise CommandError(f"{args.sid[:60]!r} is not a valid session id")


def cmd_show(args: argparse.Namespace) -> int:
    _check_id(args)
    with open_existing(args.path, args) as store:
        rec = store.record(args.sid)
    if rec is None:
        raise CommandError(f"no live session {args.sid} in {args.path}", status=1)
    if args.json:
        _print_json({"id": args.sid, "created": rec.created, "last_access": rec.last_access, "value": rec.value})
        return 0
    out(f"id           {args.sid}")
    out(f"created      {_when(rec.created)}")
    out(f"last access  {_when(rec.last_access)} ({_idle(time.time() - rec.last_access)} ago)")
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
    with open_existing(args.path, args) as store, _Progress("cleaning shards") as progress:
        removed = store.clean(progress=progress, max_idle=args.max_idle)
    seconds = time.monotonic() - t0
    if args.json:
        _print_json({"removed": removed, "seconds": seconds})
    else:
        noun = "session" if removed == 1 else "sessions"
        what = f"expired {noun}" if args.max_idle is None else f"{noun} idle over {args.max_idle:g} s"
        out(f"removed {removed:,} {what} in {seconds:.2f} s")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Show the recorded sweep rules, or change them (the only way to: no open() may sweep by others)."""
    from lockstore.opener import read_meta, set_rules

    if _is_url(args.path):
        raise CommandError("config changes the rules of a directory store; a server store keeps its own")
    rules = {"max_age": args.max_age, "clean_interval": args.clean_interval, "clean_limit": args.clean_limit}
    meta: dict[str, Any] | None
    if not os.path.isdir(args.path) or read_meta(args.path) is None:
        raise _no_store(args.path)
    meta = set_rules(args.path, **rules) if any(v is not None for v in rules.values()) else read_meta(args.path)
    if meta is None:  # pragma: no cover - a store's metadata is never removed
        raise _no_store(args.path)
    shown = {name: meta.get(name) for name in rules}
    if args.json:
        _print_json(shown)
    else:
        for name, value in shown.items():
            out(f"{name:<15} {'not recorded' if value is None else format(value, 'g')}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with open_existing(args.path, args) as store:
        signed = bool(store._codec.signed)  # what was checked: the store's setting, not the environment
        with _Progress(f"verifying {args.path}"):
            bad = store.verify()
    if args.json:
        _print_json({"ok": not bad, "signed": signed, "bad": [{"id": sid, "problem": why} for sid, why in bad]})
    elif bad:
        for sid, why in bad:
            out(f"{sid}: {why}")
        err(_plural(len(bad), "bad record"))
    elif signed:
        out("ok: every record decodes and its signature holds")
    else:
        out("ok: every record decodes (the store is not signed: there is no signature to check)")
    return 1 if bad else 0


# -- copy ---------------------------------------------------------------------------------------


_CREDENTIAL_PARAMS = frozenset({"password", "passwd", "pass", "user", "username", "sslpassword"})


def _identity(path: str, where: dict[str, Any] | None = None) -> str:
    """What names a store in a journal's file name: a directory's real path, or a URL without credentials
    (with the prefix or table, when one other than the default is named)."""
    if not _is_url(path):
        return os.path.realpath(path)
    parts = urllib.parse.urlsplit(path)
    query = [
        (k, v)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if k.lower() not in _CREDENTIAL_PARAMS
    ]
    netloc = parts.netloc.rpartition("@")[2]
    url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, urllib.parse.urlencode(sorted(query)), ""))
    return url + "".join(f"#{k}={v}" for k, v in sorted((where or {}).items()))


def _journal_path(args: argparse.Namespace) -> str:
    """``--journal``, else a file in the directory store of the pair named after the other store: the
    journal belongs to one (source, destination) pair."""
    if args.journal:
        return str(args.journal)
    src_where = _where(args.src, args.src_prefix, args.src_table, ("--src-prefix", "--src-table"))
    dst_where = _where(args.dst, args.prefix, args.table)
    for home, other, where in ((args.dst, args.src, src_where), (args.src, args.dst, dst_where)):
        if not _is_url(home):
            digest = hashlib.sha256(_identity(other, where).encode()).hexdigest()[:16]
            return os.path.join(home, f"copy-journal-{digest}.jsonl")
    raise CommandError("copying between two servers needs --journal FILE: where to remember what was copied")


def _new_store_options(args: argparse.Namespace, path: str) -> dict[str, Any]:
    """The options of a new destination at *path* (``--backend``, ``--shards``, ``--codec``)."""
    if args.backend == "memory":
        raise CommandError(
            f"--backend memory keeps a store in this process only: what {args.command} wrote would be lost when "
            "it exits; use lmdb or shelve"
        )
    options = {name: getattr(args, name) for name in ("backend", "shards", "codec") if getattr(args, name) is not None}
    embedded = sorted(f"--{name}" for name in options if name != "codec")
    if embedded and _is_url(path):
        raise CommandError(f"{' and '.join(embedded)} apply to a store directory, not to a server")
    return options


def cmd_copy(args: argparse.Namespace) -> int:
    from lockstore.copy import copy_store

    for name in ("src", "dst"):
        if _is_url(getattr(args, name)):
            _scheme(getattr(args, name))
    create = _new_store_options(args, args.dst)
    journal = _journal_path(args)  # before opening anything: a usage error touches nothing
    src_secret = _secret(args)
    dst_secret = _read_secret(args.dst_secret_file) if args.dst_secret_file else src_secret
    src_where = _where(args.src, args.src_prefix, args.src_table, ("--src-prefix", "--src-table"))
    dst_where = _where(args.dst, args.prefix, args.table)
    with open_store(args.src, where=src_where, secret=src_secret, timeout=args.timeout) as src:
        if recorded(args.dst, dst_where, args.timeout) is None:
            # a new destination sweeps by the source's rule, not the default one: a two-week store
            # copied into a store that expires sessions after 30 minutes would lose them
            for name in ("max_age", "clean_interval", "clean_limit"):
                if getattr(src, name, None) is not None:
                    create[name] = getattr(src, name)
        with (
            open_store(
                args.dst,
                where=dst_where,
                secret=dst_secret,
                timeout=args.timeout,
                create=create,
                secret_hint="--dst-secret-file",
            ) as dst,
            _Progress("copying") as progress,
        ):
            result = copy_store(src, dst, journal=journal, progress=progress if progress.enabled else None)
    if args.json:
        _print_json(result.as_dict())
    else:
        out(f"copied {_plural(result.written, 'session')} from {args.src} to {args.dst}")
        out(
            f"not copied: {result.skipped_present:,} present in the destination, "
            f"{result.skipped_deleted:,} deleted there, {result.skipped_newer:,} changed there, "
            f"{result.unchanged:,} unchanged since the last copy"
        )
        out(f"journal: {result.journal}")
    return _report_bad(result.bad, args.src)


# -- export and import ----------------------------------------------------------------------------


class _Unencodable(Exception):
    """A value that JSON cannot carry exactly."""


def export_line(sid: str, created: float, last_access: float, value: Any) -> str:
    """One line of ``lockstore export``: a JSON object with the session's id, times and value.

    Raises :class:`_Unencodable` for a value JSON would not read back equal (bytes, sets, tuples, keys that
    are not strings, NaN...)."""
    doc = {"id": sid, "created": created, "last_access": last_access, "value": value}
    try:
        text = json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise _Unencodable(str(exc)) from None
    if json.loads(text)["value"] != value:
        raise _Unencodable("JSON would not read it back the same (a tuple, or a key that is not a string)")
    return safe(text, _json_escape)


class _Output:
    """Standard output, or ``--output FILE``: a temporary file (mode 0600, sessions are secrets) in the same
    directory, renamed over FILE only when the export is complete, so a failed export leaves FILE as it was."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.tmp: str | None = None
        self.file: IO[str] = sys.stdout
        if path is not None:
            fd, self.tmp = tempfile.mkstemp(prefix=".lockstore-export-", dir=os.path.dirname(os.path.abspath(path)))
            self.file = os.fdopen(fd, "w", encoding="utf-8")

    def commit(self) -> None:
        if self.tmp is not None and self.path is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
            self.tmp = None

    def discard(self) -> None:
        if self.tmp is not None:
            self.file.close()
            os.unlink(self.tmp)
            self.tmp = None


def cmd_export(args: argparse.Namespace) -> int:
    bad: list[tuple[str, str]] = []
    left_out: list[tuple[str, str]] = []
    n = 0
    with open_existing(args.path, args) as store:
        output = _Output(args.output)
        try:
            with _Progress("exported") as progress:
                for sid, rec in store.records(on_error=lambda sid, exc: bad.append((sid, str(exc)))):
                    try:
                        line = export_line(sid, rec.created, rec.last_access, rec.value)
                    except _Unencodable as exc:
                        if not args.skip_unencodable:
                            raise CommandError(
                                f"session {sid} holds a {type(rec.value).__name__} that JSON cannot carry ({exc}); "
                                "--skip-unencodable leaves such sessions out",
                                status=1,
                            ) from None
                        left_out.append((sid, str(exc)))
                        continue
                    output.file.write(line + "\n")
                    n += 1
                    progress(n)
            output.commit()
        finally:
            output.discard()
    for sid, why in left_out:
        err(f"{sid}: not exported: {why}")
    if left_out:
        err(f"{_plural(len(left_out), 'session')} left out (--skip-unencodable)")
    if args.output:
        out(f"exported {_plural(n, 'session')} to {args.output}")
    return _report_bad(bad, args.path)


class _BadLine(CommandError):
    def __init__(self, lineno: int, message: str) -> None:
        super().__init__(f"line {lineno}: {message}", status=1)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_line(raw: bytes, lineno: int, now: float) -> tuple[str, float, float, Any] | None:
    """(id, created, last access, value) of one line of an export, checked like untrusted input; None for
    a blank line; :class:`CommandError` naming the line and what is wrong with it."""
    import lockstore

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadLine(lineno, f"not UTF-8 (byte {exc.start + 1})") from None
    if not text.strip():
        return None
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise _BadLine(lineno, f"not JSON: {exc.msg} (column {exc.colno})") from None
    except ValueError as exc:  # an int too long, NaN, Infinity
        raise _BadLine(lineno, f"not JSON: {exc}") from None
    except RecursionError:
        raise _BadLine(lineno, "not JSON: nested too deeply") from None
    if type(doc) is not dict:
        raise _BadLine(lineno, f"a JSON {type(doc).__name__}, not an object with {', '.join(EXPORT_FIELDS)}")
    for name in EXPORT_FIELDS:
        if name not in doc:
            raise _BadLine(lineno, f"no {name!r}")
    for name in doc:
        if name not in EXPORT_FIELDS:
            raise _BadLine(lineno, f"unknown field {name[:40]!r} (expected {', '.join(EXPORT_FIELDS)})")
    sid = doc["id"]
    if not lockstore.is_valid_id(sid):
        shown = repr(sid[:40]) if isinstance(sid, str) else f"a JSON {type(sid).__name__}"
        raise _BadLine(lineno, f"'id' is not a valid session id: {shown}")
    times = []
    for name in ("created", "last_access"):
        value = doc[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _BadLine(lineno, f"{name!r} is not a number of seconds: {type(value).__name__}")
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if not math.isfinite(seconds) or seconds < 0:
            raise _BadLine(lineno, f"{name!r} is not a finite number of seconds >= 0: {str(value)[:40]}")
        if seconds > now + FUTURE_SLACK:
            raise _BadLine(lineno, f"{name!r} is more than a day in the future: {str(value)[:40]}")
        times.append(seconds)
    return sid, times[0], times[1], doc["value"]


def _lines(f: IO[bytes], limit: int) -> Iterator[tuple[int, bytes]]:
    """The numbered lines of *f*, each at most *limit* bytes (a longer one is a :class:`CommandError`)."""
    lineno = 0
    while True:
        raw = f.readline(limit + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > limit:
            raise _BadLine(lineno, f"longer than {_size(limit)}")
        yield lineno, raw


def cmd_import(args: argparse.Namespace) -> int:
    import lockstore
    from lockstore.codec import Codec
    from lockstore.options import DEFAULTS
    from lockstore.remote.base import DEFAULT_CODEC as REMOTE_DEFAULT_CODEC

    create = _new_store_options(args, args.path)
    rules = {} if args.max_age is None else {"max_age": args.max_age}
    where = _where(args.path, args.prefix, args.table)
    max_value_size = 1 << 20  # open()'s default, which the stores below are opened with
    limit = 8 * max_value_size + 65536  # a value's JSON text, escapes included
    now = time.time()
    with tempfile.TemporaryFile() as spool, _Progress("checked lines") as progress:
        # 1. check every line, and keep a private copy (standard input can be read once; a file may change)
        meta = recorded(args.path, where, args.timeout)
        if meta is None:
            default = REMOTE_DEFAULT_CODEC if _is_url(args.path) else str(DEFAULTS["codec"])
            codec = Codec(args.codec or default, None, max_value_size)
        else:
            store = open_store(args.path, where=where, secret=_secret(args), timeout=args.timeout)
            codec = store._codec
            store.close()
        seen: dict[str, int] = {}
        src = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115 - closed below
        try:
            for lineno, raw in _lines(src, limit):
                parsed = parse_line(raw, lineno, now)
                if parsed is None:
                    continue
                sid, _, _, value = parsed
                if sid in seen:
                    raise _BadLine(lineno, f"session {sid} is also on line {seen[sid]}")
                seen[sid] = lineno
                try:
                    codec.encode(value)
                except lockstore.LockstoreError as exc:
                    raise _BadLine(lineno, f"session {sid} cannot be stored: {exc}") from None
                spool.write(raw if raw.endswith(b"\n") else raw + b"\n")
                progress(lineno)
        finally:
            if src is not sys.stdin.buffer:
                src.close()
        total = len(seen)
        # 2. every line is good: write
        spool.seek(0)
        written = present = expired = 0
        bad: list[tuple[str, str]] = []
        progress.label = "imported"
        with open_store(
            args.path, where=where, secret=_secret(args), timeout=args.timeout, create=create, rules=rules
        ) as store:
            for lineno, raw in _lines(spool, limit):
                parsed = parse_line(raw, lineno, now)
                if parsed is None:  # pragma: no cover - blank lines were not spooled
                    continue
                sid, created, atime, value = parsed
                if store.clock() - atime > store.max_age:
                    expired += 1
                elif args.overwrite:
                    store.put_record(sid, value, created=created, last_access=atime)
                    written += 1
                else:
                    try:
                        wrote = store.put_record_if(sid, value, created=created, last_access=atime, expect=None)
                    except lockstore.CorruptRecord as exc:
                        bad.append((sid, f"the stored record cannot be read, left as it is: {exc}"))
                        continue
                    written += wrote
                    present += not wrote
                progress(lineno, total)
    if args.json:
        _print_json({"imported": written, "present": present, "expired": expired, "bad": [list(b) for b in bad]})
    else:
        out(f"imported {_plural(written, 'session')} into {args.path}")
        out(
            f"not imported: {present:,} live in the store (--overwrite replaces them), "
            f"{expired:,} already expired by its max_age"
        )
    return _report_bad(bad, args.path)


# -- the parser ---------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or not math.isfinite(value):
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
    import lockstore

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and maintain lockstore session stores; run the stress harness and benchmarks.",
        epilog=f"A signed store's secret is read from ${SECRET_ENV} or --secret-file. Exit status: 0 ok, "
        "1 a problem found (bad records, no such session or store, a bad import line, a stress violation), "
        "2 an error, 141 output closed early.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {lockstore.__version__}")
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
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--prefix", help="the store's key prefix on a redis:// server (default: lockstore)")
    remote.add_argument("--table", help="the store's table on a postgresql:// server (default: lockstore_sessions)")
    jsonopt = argparse.ArgumentParser(add_help=False)
    jsonopt.add_argument("--json", action="store_true", help="print JSON")
    new_store = argparse.ArgumentParser(add_help=False)
    new_store.add_argument("--backend", choices=("lmdb", "shelve", "memory"), help="backend of a new store")
    new_store.add_argument("--shards", type=_positive_int, help="shards of a new store")
    new_store.add_argument("--codec", choices=("pickle", "json", "msgpack"), help="codec of a new store")
    store_path = "store directory, or redis:// / postgresql:// URL"

    def add(
        name: str,
        fn: Callable[[argparse.Namespace], int],
        help_: str,
        parents: list[argparse.ArgumentParser],
        aliases: Sequence[str] = (),
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, parents=parents, aliases=list(aliases))
        p.set_defaults(func=fn)
        return p

    p = add(
        "info",
        cmd_info,
        "show a store's settings, session counts, size and last clean per shard",
        [common, remote, jsonopt],
        aliases=["stats"],
    )
    p.add_argument("path", help=store_path)
    p = add("ls", cmd_ls, "list the live sessions (or the expired ones not yet swept)", [common, remote, jsonopt])
    p.add_argument("path", help=store_path)
    p.add_argument("--expired", action="store_true", help="list expired sessions not yet removed instead")
    p.add_argument(
        "--sort",
        choices=tuple(_SORT_KEYS),
        default="id",
        help="order: id (default), size (biggest first), idle (longest idle first), created (oldest first)",
    )
    p.add_argument("--limit", type=_positive_int, metavar="N", help="list the first N only")
    p = add("show", cmd_show, "print one session, decoded", [common, remote, jsonopt])
    p.add_argument("path", help=store_path)
    p.add_argument("sid", metavar="SID", help="session id")
    p = add("rm", cmd_rm, "delete one session", [common, remote])
    p.add_argument("path", help=store_path)
    p.add_argument("sid", metavar="SID", help="session id")
    p = add("clean", cmd_clean, "remove every expired session now (by the store's max_age)", [common, remote, jsonopt])
    p.add_argument("path", help=store_path)
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
        "check that every record decodes and, in a signed store, that its signature holds (exit 1 and list "
        "the bad ids otherwise)",
        [common, remote, jsonopt],
    )
    p.add_argument("path", help=store_path)
    p = add(
        "export",
        cmd_export,
        'write every live session as a JSON line {"id", "created", "last_access", "value"} (times in seconds '
        "since the epoch); each line starts with its id, so sort(1) orders an export by id, to diff two",
        [common, remote],
    )
    p.add_argument("path", help=store_path)
    p.add_argument("-o", "--output", metavar="FILE", help="write FILE (mode 0600, whole or not at all), not stdout")
    p.add_argument(
        "--skip-unencodable",
        action="store_true",
        help="leave out (and list) sessions whose value JSON cannot carry exactly, instead of failing",
    )
    p = add(
        "import",
        cmd_import,
        "read sessions written by export into a store (created if needed): every line is checked before "
        "anything is written, and a live session is never replaced unless --overwrite",
        [common, remote, jsonopt, new_store],
    )
    p.add_argument("path", help=store_path)
    p.add_argument("file", metavar="FILE", help="JSON lines to read ('-': standard input)")
    p.add_argument("--overwrite", action="store_true", help="replace live sessions that have the same id")
    p.add_argument(
        "--max-age",
        type=_positive_float,
        metavar="SECONDS",
        help="max_age of a new store (an existing one keeps its own: a different value is an error)",
    )
    p = add(
        "copy",
        cmd_copy,
        "copy every live session, with its times, from one store into another (created if needed)",
        [common, jsonopt, new_store],
    )
    p.add_argument("src", metavar="SRC", help="the existing store to copy from")
    p.add_argument("dst", metavar="DST", help="the store to copy into (created with the options below if absent)")
    p.add_argument("--prefix", help="DST's key prefix, when DST is a redis:// URL (default: lockstore)")
    p.add_argument("--table", help="DST's table, when DST is a postgresql:// URL (default: lockstore_sessions)")
    p.add_argument("--src-prefix", help="SRC's key prefix, when SRC is a redis:// URL")
    p.add_argument("--src-table", help="SRC's table, when SRC is a postgresql:// URL")
    p.add_argument(
        "--dst-secret-file",
        metavar="FILE",
        help="file holding DST's secret (default: SRC's, from --secret-file or $LOCKSTORE_SECRET)",
    )
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
        try:
            status = _dispatch(args_list)
            sys.stdout.flush()  # here, where a closed pipe can still be told apart from an error
        except SystemExit as exc:  # argparse: --help, --version (0) and usage errors (2), already printed
            sys.stdout.flush()
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        return status
    except BrokenPipeError:
        # the reader went away (``lockstore ls STORE | head``): stop quietly, with the status of a process
        # SIGPIPE ended, and let nothing else be written to the closed pipe on the way out
        _silence_stdout()
        return 141
    except CommandError as exc:
        err(f"{PROG}: error: {exc}")
        return exc.status
    except KeyboardInterrupt:
        err(f"{PROG}: interrupted")
        return 130
    except Exception as exc:
        return _report(exc)


def _dispatch(args_list: list[str]) -> int:
    if args_list and args_list[0] in ("stress", "bench"):
        return _run_tool(args_list[0], args_list[1:])
    args = build_parser().parse_args(args_list)
    if getattr(args, "path", None) and _is_url(args.path):
        _scheme(args.path)  # before anything else: an unknown scheme is never a directory
    return int(args.func(args))


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (tests capture it): nothing buffered there
        pass


def _report(exc: Exception) -> int:
    """One line for any error that reaches the top, a lockstore error or not; never a traceback."""
    from lockstore.errors import LockstoreError, LockTimeout

    if isinstance(exc, LockTimeout):
        err(f"{PROG}: error: locked too long: {exc}")
        return 2
    if isinstance(exc, LockstoreError):
        err(f"{PROG}: error: {exc}")
        return 2
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        err(f"{PROG}: error:{where} {exc.strerror or exc}")
        return 2
    err(f"{PROG}: error: {type(exc).__name__}: {exc}")
    return 2


def _run_tool(name: str, argv: list[str]) -> int:
    """``lockstore stress`` and ``lockstore bench`` run the harness and benchmarks in ``stress/``.

    ``stress/`` belongs to the source tree and is not installed (PyPI has another project named
    ``stress``): these commands work in a checkout (``pip install -e .``, ``python -m lockstore``), where
    it stands beside the ``lockstore`` package, and say so elsewhere.
    """
    import importlib

    import lockstore

    checkout = os.path.dirname(os.path.dirname(os.path.abspath(lockstore.__file__)))
    if os.path.isfile(os.path.join(checkout, "stress", "run.py")) and checkout not in sys.path:
        sys.path.insert(0, checkout)
    try:
        module = importlib.import_module("stress.run" if name == "stress" else "stress.bench")
    except ImportError as exc:
        raise CommandError(
            f"{name} runs from a lockstore source checkout (stress/ is not installed with the package): {exc}"
        ) from None
    return int(module.main(argv, prog=f"{PROG} {name}"))


__all__ = ["main"]
