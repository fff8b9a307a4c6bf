"""``lockstore copy``, ``export`` and ``import``: sessions from one store into another, or through JSON lines."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
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
from lockstore.options import DEFAULTS

from .lines import BadLine, Unencodable, export_line, read_lines
from .output import CommandError, Progress, err, out, plural, print_json, redact, report_bad
from .stores import is_url, location, new_store_options, open_existing, open_store, read_secret, recorded, secret_of

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
    url = redact(path) + (f"?{urllib.parse.urlencode(sorted(query))}" if query else "")
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
            except Unencodable as exc:
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
    for sid, why in left_out:
        err(f"{sid}: not exported: {why}")
    if left_out:
        err(f"{plural(len(left_out), 'session')} left out (--skip-unencodable)")
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


__all__ = ["cmd_copy", "cmd_export", "cmd_import"]
