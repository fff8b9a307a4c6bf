"""``lockstore copy``, ``export`` and ``import``: sessions from one store into another, or through JSON lines.

An export has one session per line, ``{"id", "created", "last_access", "value"}``, times in seconds since the
epoch. A line read back is untrusted input: it is checked field by field, and a bad one is a
:class:`CommandError` (exit 1) naming its line number and what is wrong with it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from typing import IO, Any

import lockstore
from lockstore._files import RULES
from lockstore.codec import Codec
from lockstore.copy import copy_store
from lockstore.ids import is_valid_id
from lockstore.options import DEFAULTS

from .output import CommandError, Progress, dumps, out, plural, print_json, report, report_bad, size
from .stores import is_url, location, open_existing, open_store, read_secret, recorded, secret_of, shown


def new_store_options(args: argparse.Namespace, path: str) -> dict[str, Any]:
    """The options of a new store at *path* (``--backend``, ``--shards``, ``--codec``)."""
    if args.backend == "memory":
        raise CommandError(
            f"--backend memory keeps a store in this process only: what {args.command} wrote would be lost when "
            "it exits; use lmdb or shelve"
        )
    options = {name: getattr(args, name) for name in ("backend", "shards", "codec") if getattr(args, name) is not None}
    embedded = sorted(f"--{name}" for name in options if name != "codec")
    if embedded and is_url(path):
        raise CommandError(f"{' and '.join(embedded)} apply to a store directory, not to a server")
    return options


# -- copy ---------------------------------------------------------------------------------------

_CREDENTIAL_PARAMS = frozenset({"password", "passwd", "pass", "user", "username", "sslpassword"})


def _identity(path: str, where: dict[str, Any] | None = None) -> str:
    """What names a store in a journal's file name: a directory's real path, or a URL without credentials
    (with the prefix or table, when one other than the default is named)."""
    if not is_url(path):
        return os.path.realpath(path)
    query = [
        (k, v)
        for k, v in urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query, keep_blank_values=True)
        if k.lower() not in _CREDENTIAL_PARAMS
    ]
    url = shown(path) + (f"?{urllib.parse.urlencode(sorted(query))}" if query else "")
    return url + "".join(f"#{k}={v}" for k, v in sorted((where or {}).items()))


def _locations(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The prefix or table of SRC and of DST."""
    src = location(args.src, args.src_prefix, args.src_table, ("--src-prefix", "--src-table"))
    return src, location(args.dst, args.prefix, args.table)


def _journal_path(args: argparse.Namespace) -> str:
    """``--journal``, else a file in the directory store of the pair named after the other store: the
    journal belongs to one (source, destination) pair."""
    if args.journal:
        return str(args.journal)
    src_where, dst_where = _locations(args)
    for home, other, where in ((args.dst, args.src, src_where), (args.src, args.dst, dst_where)):
        if not is_url(home):
            digest = hashlib.sha256(_identity(other, where).encode()).hexdigest()[:16]
            return os.path.join(home, f"copy-journal-{digest}.jsonl")
    raise CommandError("copying between two servers needs --journal FILE: where to remember what was copied")


def cmd_copy(args: argparse.Namespace) -> int:
    create = new_store_options(args, args.dst)
    journal = _journal_path(args)  # before opening anything: a usage error touches nothing
    src_secret = secret_of(args)
    dst_secret = read_secret(args.dst_secret_file) if args.dst_secret_file else src_secret
    src_where, dst_where = _locations(args)
    with open_store(args.src, where=src_where, secret=src_secret, timeout=args.timeout) as src:
        if recorded(args.dst, dst_where, args.timeout) is None:
            # a new destination sweeps by the source's rule, not the default one: a two-week store
            # copied into a store that expires sessions after 30 minutes would lose them
            for name in RULES:
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
            Progress("copying") as progress,
        ):
            result = copy_store(src, dst, journal=journal, progress=progress if progress.enabled else None)
    if args.json:
        print_json(result.as_dict())
    else:
        out(f"copied {plural(result.written, 'session')} from {args.src} to {args.dst}")
        out(
            f"not copied: {result.skipped_present:,} present in the destination, "
            f"{result.skipped_deleted:,} deleted there, {result.skipped_newer:,} changed there, "
            f"{result.unchanged:,} unchanged since the last copy"
        )
        out(f"journal: {result.journal}")
    return report_bad(result.bad, args.src)


# -- the lines of export and import --------------------------------------------------------------
FIELDS = ("id", "created", "last_access", "value")
FUTURE_SLACK = 86400.0
"""How far in the future an imported time may be (clock skew between machines), in seconds: a time
further ahead would keep a session alive for ever."""


class BadLine(CommandError):
    """A line of an export that cannot be imported."""

    def __init__(self, lineno: int, message: str) -> None:
        super().__init__(f"line {lineno}: {message}", status=1)


def export_line(sid: str, created: float, last_access: float, value: Any) -> str:
    """One line of ``lockstore export``: a JSON object with the session's id, times and value.

    Raises :class:`ValueError` for a value JSON would not read back equal (bytes, sets, tuples, keys that
    are not strings, NaN...)."""
    doc = {"id": sid, "created": created, "last_access": last_access, "value": value}
    try:
        text = dumps(doc, exact=True)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(str(exc)) from None
    if json.loads(text)["value"] != value:
        raise ValueError("JSON would not read it back the same (a tuple, or a key that is not a string)")
    return text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_line(raw: bytes, lineno: int, now: float) -> tuple[str, float, float, Any] | None:
    """(id, created, last access, value) of one line of an export, checked like untrusted input; None for
    a blank line; :class:`BadLine` naming the line and what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadLine(lineno, f"not UTF-8 (byte {exc.start + 1})") from None
    if not text.strip():
        return None
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise BadLine(lineno, f"not JSON: {exc.msg} (column {exc.colno})") from None
    except ValueError as exc:  # an int too long, NaN, Infinity
        raise BadLine(lineno, f"not JSON: {exc}") from None
    except RecursionError:
        raise BadLine(lineno, "not JSON: nested too deeply") from None
    if type(doc) is not dict:
        raise BadLine(lineno, f"a JSON {type(doc).__name__}, not an object with {', '.join(FIELDS)}")
    for name in FIELDS:
        if name not in doc:
            raise BadLine(lineno, f"no {name!r}")
    for name in doc:
        if name not in FIELDS:
            raise BadLine(lineno, f"unknown field {name[:40]!r} (expected {', '.join(FIELDS)})")
    sid = doc["id"]
    if not is_valid_id(sid):
        shown = repr(sid[:40]) if isinstance(sid, str) else f"a JSON {type(sid).__name__}"
        raise BadLine(lineno, f"'id' is not a valid session id: {shown}")
    times = []
    for name in ("created", "last_access"):
        value = doc[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadLine(lineno, f"{name!r} is not a number of seconds: {type(value).__name__}")
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if not math.isfinite(seconds) or seconds < 0:
            raise BadLine(lineno, f"{name!r} is not a finite number of seconds >= 0: {str(value)[:40]}")
        if seconds > now + FUTURE_SLACK:
            raise BadLine(lineno, f"{name!r} is more than a day in the future: {str(value)[:40]}")
        times.append(seconds)
    return sid, times[0], times[1], doc["value"]


def read_lines(f: IO[bytes], limit: int, now: float) -> Iterator[tuple[int, bytes, tuple[str, float, float, Any]]]:
    """(line number, raw line, parsed line) of every line of *f* that is not blank; each at most *limit*
    bytes (a longer one is a :class:`BadLine`)."""
    lineno = 0
    while True:
        raw = f.readline(limit + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > limit:
            raise BadLine(lineno, f"longer than {size(limit)}")
        parsed = parse_line(raw, lineno, now)
        if parsed is not None:
            yield lineno, raw, parsed


# -- export -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[IO[str]]:
    """Standard output, or ``--output FILE``: a temporary file (mode 0600, sessions are secrets) in the same
    directory, renamed over FILE only when the export is complete, so a failed export leaves FILE as it was."""
    if path is None:
        yield sys.stdout
        return
    fd, tmp = tempfile.mkstemp(prefix=".lockstore-export-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def cmd_export(args: argparse.Namespace) -> int:
    bad: list[tuple[str, str]] = []
    left_out: list[tuple[str, str]] = []
    n = 0
    with open_existing(args.path, args) as store, _output(args.output) as output, Progress("exported") as progress:
        for sid, rec in store.records(on_error=lambda sid, exc: bad.append((sid, str(exc)))):
            try:
                line = export_line(sid, rec.created, rec.last_access, rec.value)
            except ValueError as exc:
                if not args.skip_unencodable:
                    raise CommandError(
                        f"session {sid} holds a {type(rec.value).__name__} that JSON cannot carry ({exc}); "
                        "--skip-unencodable leaves such sessions out",
                        status=1,
                    ) from None
                left_out.append((sid, str(exc)))
                continue
            output.write(line + "\n")
            n += 1
            progress(n)
    report(left_out, "session", " left out (--skip-unencodable)", what="not exported: ")
    if args.output:
        out(f"exported {plural(n, 'session')} to {args.output}")
    return report_bad(bad, args.path)


# -- import -------------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    from lockstore.remote.base import DEFAULT_CODEC as REMOTE_DEFAULT_CODEC

    create = new_store_options(args, args.path)
    rules = {} if args.max_age is None else {"max_age": args.max_age}
    where = location(args.path, args.prefix, args.table)
    max_value_size = 1 << 20  # open()'s default, which the stores below are opened with
    limit = 8 * max_value_size + 65536  # a value's JSON text, escapes included
    now = time.time()
    with tempfile.TemporaryFile() as spool, Progress("checked lines") as progress:
        # 1. check every line, and keep a private copy (standard input can be read once; a file may change)
        meta = recorded(args.path, where, args.timeout)
        if meta is None:
            default = REMOTE_DEFAULT_CODEC if is_url(args.path) else str(DEFAULTS["codec"])
            codec = Codec(args.codec or default, None, max_value_size)
        else:
            with open_store(args.path, where=where, secret=secret_of(args), timeout=args.timeout) as store:
                codec = store._codec
        seen: dict[str, int] = {}
        src = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115 - closed below
        try:
            for lineno, raw, (sid, _, _, value) in read_lines(src, limit, now):
                if sid in seen:
                    raise BadLine(lineno, f"session {sid} is also on line {seen[sid]}")
                seen[sid] = lineno
                try:
                    codec.encode(value)
                except lockstore.LockstoreError as exc:
                    raise BadLine(lineno, f"session {sid} cannot be stored: {exc}") from None
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
            args.path, where=where, secret=secret_of(args), timeout=args.timeout, create=create, rules=rules
        ) as store:
            for lineno, _, (sid, created, atime, value) in read_lines(spool, limit, now):
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
        print_json({"imported": written, "present": present, "expired": expired, "bad": [list(b) for b in bad]})
    else:
        out(f"imported {plural(written, 'session')} into {args.path}")
        out(
            f"not imported: {present:,} live in the store (--overwrite replaces them), "
            f"{expired:,} already expired by its max_age"
        )
    return report_bad(bad, args.path)
