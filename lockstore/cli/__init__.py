"""The ``lockstore`` command line: inspect, clean, verify, copy, export and import stores; run the stress
harness and benchmarks.

Here: the parser and :func:`main`, the package's API. The commands are in :mod:`.admin` (one store) and
:mod:`.transfer` (copy, export, import), on :mod:`.stores` (naming and opening a store) and :mod:`.output`
(what is printed); those modules are the package's internals, with no ``__all__`` of their own.

Exit status: 0 ok; 1 the command ran and found a problem (a bad record, no such session, no store at the
path, a bad import line); 2 usage errors and stores that cannot be opened; 130 interrupted; 141 standard
output closed early (``lockstore ls STORE | head``), quietly, as a process killed by SIGPIPE. Progress
(``clean``, ``copy``, ``export``, ``import``, ``verify``) is drawn on standard error only when it is a
terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import lockstore
from lockstore._files import CODECS
from lockstore.errors import LockstoreError, LockTimeout
from lockstore.options import BACKENDS

from .admin import SORT_KEYS, cmd_clean, cmd_config, cmd_info, cmd_ls, cmd_rm, cmd_show, cmd_verify
from .output import CommandError, err
from .stores import SECRET_ENV, check_scheme, is_url
from .transfer import cmd_copy, cmd_export, cmd_import

PROG = "lockstore"

HELP = {  # each command's line in ``lockstore --help``, and its description in ``lockstore COMMAND --help``
    "info": "show a store's settings, session counts, size and last clean per shard",
    "ls": "list the live sessions (or the expired ones not yet swept)",
    "show": "print one session, decoded",
    "rm": "delete one session",
    "clean": "remove every expired session now (by the store's max_age)",
    "config": "show the store's recorded sweep rules, or change them (processes that have the store open stop "
    "sweeping until restarted)",
    "verify": "check that every record decodes and, in a signed store, that its signature holds (exit 1 and list the "
    "bad ids otherwise)",
    "export": 'write every live session as a JSON line {"id", "created", "last_access", "value"} (times in seconds '
    "since the epoch); each line starts with its id, so sort(1) orders an export by id, to diff two",
    "import": "read sessions written by export into a store (created if needed): every line is checked before "
    "anything is written, and a live session is never replaced unless --overwrite",
    "copy": "copy every live session, with its times, from one store into another (created if needed)",
}


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
    seconds: dict[str, Any] = {"type": _positive_float, "metavar": "SECONDS"}

    # no --max-age: every command applies the store's own expiry rule (issue 9, item 8)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--timeout", **seconds, default=10.0, help="how long to wait for a shard lock (default: 10)")
    common.add_argument("--secret-file", metavar="FILE", help=f"file holding the store's secret (else ${SECRET_ENV})")
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--prefix", help="the store's key prefix on a redis:// server (default: lockstore)")
    remote.add_argument("--table", help="the store's table on a postgresql:// server (default: lockstore_sessions)")
    jsonopt = argparse.ArgumentParser(add_help=False)
    jsonopt.add_argument("--json", action="store_true", help="print JSON")
    new_store = argparse.ArgumentParser(add_help=False)
    new_store.add_argument("--backend", choices=BACKENDS, help="backend of a new store")
    new_store.add_argument("--shards", type=_positive_int, help="shards of a new store")
    new_store.add_argument("--codec", choices=CODECS, help="codec of a new store")
    one_store = [common, remote, jsonopt]

    def add(
        name: str,
        fn: Callable[[argparse.Namespace], int],
        parents: list[argparse.ArgumentParser],
        aliases: Sequence[str] = (),
        path: str | None = "store directory, or redis:// / postgresql:// URL",
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=HELP[name], description=HELP[name], parents=parents, aliases=list(aliases))
        p.set_defaults(func=fn)
        if path is not None:
            p.add_argument("path", help=path)
        return p

    add("info", cmd_info, one_store, ["stats"])
    p = add("ls", cmd_ls, one_store)
    p.add_argument("--expired", action="store_true", help="list expired sessions not yet removed instead")
    p.add_argument(
        "--sort",
        choices=tuple(SORT_KEYS),
        default="id",
        help="order: id (default), size (biggest first), idle (longest idle first), created (oldest first)",
    )
    p.add_argument("--limit", type=_positive_int, metavar="N", help="list the first N only")
    add("show", cmd_show, one_store).add_argument("sid", metavar="SID", help="session id")
    add("rm", cmd_rm, [common, remote]).add_argument("sid", metavar="SID", help="session id")
    p = add("clean", cmd_clean, one_store)
    p.add_argument(
        "--max-idle", **seconds, help="also remove every session idle longer than this: logs those users out"
    )
    p = add("config", cmd_config, [jsonopt], path="store directory")
    p.add_argument("--max-age", **seconds, help="idle time after which a session expires")
    p.add_argument("--clean-interval", type=float, metavar="SECONDS", help="how often a write sweeps its shard")
    p.add_argument("--clean-limit", type=_positive_int, metavar="N", help="at most this many removed by one write")
    add("verify", cmd_verify, one_store)
    p = add("export", cmd_export, [common, remote])
    p.add_argument("-o", "--output", metavar="FILE", help="write FILE (mode 0600, whole or not at all), not stdout")
    p.add_argument(
        "--skip-unencodable",
        action="store_true",
        help="leave out (and list) sessions whose value JSON cannot carry exactly, instead of failing",
    )
    p = add("import", cmd_import, [*one_store, new_store])
    p.add_argument("file", metavar="FILE", help="JSON lines to read ('-': standard input)")
    p.add_argument("--overwrite", action="store_true", help="replace live sessions that have the same id")
    p.add_argument(
        "--max-age",
        **seconds,
        help="max_age of a new store (an existing one keeps its own: a different value is an error)",
    )
    p = add("copy", cmd_copy, [common, jsonopt, new_store], path=None)
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
    help_ = "run the benchmarks against raw LMDB and the peers (lockstore bench --help)"
    sub.add_parser("bench", help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``lockstore`` command line; returns the exit status."""
    try:
        try:
            status = _dispatch(sys.argv[1:] if argv is None else list(argv))
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
    for name in ("path", "src", "dst"):
        if is_url(getattr(args, name, None) or ""):
            check_scheme(getattr(args, name))  # before anything else: an unknown scheme is never a directory
    return int(args.func(args))


def _silence_stdout() -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):  # not a real file (tests capture it)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _report(exc: Exception) -> int:
    """One line for any error that reaches the top, a lockstore error or not; never a traceback."""
    if isinstance(exc, LockTimeout):
        text = f"locked too long: {exc}"
    elif isinstance(exc, LockstoreError):
        text = str(exc)
    elif isinstance(exc, OSError):
        text = f"{exc.filename} {exc.strerror or exc}" if exc.filename else f"{exc.strerror or exc}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    err(f"{PROG}: error: {text}")
    return 2


def _run_tool(name: str, argv: list[str]) -> int:
    """``lockstore stress`` and ``lockstore bench`` run the harness and benchmarks in ``stress/``.

    ``stress/`` belongs to the source tree and is not installed (PyPI has another project named
    ``stress``): these commands work in a checkout (``pip install -e .``, ``python -m lockstore``), where
    it stands beside the ``lockstore`` package, and say so elsewhere.
    """
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


__all__ = ["build_parser", "main"]
