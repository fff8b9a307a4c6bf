"""Web sessions under real multi-process servers: lockstore vs the sessions frameworks ship with.

The same counter app runs once per kind of session, and the workloads of ``stress/_web_workloads.py``
count the updates each kind loses: ``shared`` (C clients x N on one cookie), ``readers`` (1 writer of
40 increments vs 7 readers of the same session), ``users`` (C clients with their own cookies, N/4 each)
and ``during`` (the same user's increments while one request sleeps 2 s with the session open).

WSGI kinds (Flask app of tests/web_apps/apps.py under gunicorn sync workers):

* ``lockstore``: ``lockstore.flask``; ``cookie``: Flask's signed cookies; ``flask-session``: Flask-Session's
  filesystem sessions (the ``cachelib`` type on a ``FileSystemCache``).

ASGI kinds (``--asgi``: tests/web_apps/asgi_apps.py, plain Starlette or FastAPI, under ``uvicorn --workers``
or gunicorn with uvicorn workers; issue 13):

* ``starlette-cookie``: Starlette's ``SessionMiddleware`` (signed cookies);
* ``starsessions-redis``: starsessions with its Redis store (a redis-server started for the run);
* ``lockstore-asgi-lmdb``, ``lockstore-asgi-redis``: ``lockstore.asgi.SessionMiddleware`` on LMDB / on Redis.

A kind whose middleware or server is not installed prints ``not available: ...`` and the run goes on.

    python -m stress.web_compare                     # WSGI kinds: 4 workers, 8 clients x 200
    python -m stress.web_compare --asgi              # and the ASGI kinds, in the same run
    python -m stress.web_compare --kinds starlette-cookie,lockstore-asgi-lmdb --asgi-app fastapi
    python -m stress.web_compare --asgi --requests 40 --json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stress._web_workloads import during, readers, shared, users  # noqa: E402
from tests.web_apps.servers import gunicorn, gunicorn_uvicorn, uvicorn  # noqa: E402


@dataclass(frozen=True)
class Kind:
    mode: str  # LOCKSTORE_TEST_MODE of the app
    asgi: bool
    needs: tuple[str, ...]  # modules that must be importable
    redis: bool = False  # served by a redis-server started for the kind


WSGI = {
    "lockstore": Kind("lockstore", asgi=False, needs=("flask",)),
    "cookie": Kind("cookie", asgi=False, needs=("flask",)),
    "flask-session": Kind("flask-session", asgi=False, needs=("flask", "flask_session", "cachelib")),
}
ASGI = {
    "starlette-cookie": Kind("starlette", asgi=True, needs=("starlette", "itsdangerous")),
    "starsessions-redis": Kind("starsessions", asgi=True, needs=("starsessions", "redis"), redis=True),
    "lockstore-asgi-lmdb": Kind("lockstore", asgi=True, needs=("lockstore.asgi",)),
    "lockstore-asgi-redis": Kind("lockstore", asgi=True, needs=("lockstore.asgi", "redis"), redis=True),
}
KINDS = {**WSGI, **ASGI}
SERVER_MODULES = {
    "gunicorn": ("gunicorn",),
    "uvicorn": ("uvicorn",),
    "gunicorn-uvicorn": ("gunicorn", "uvicorn_worker"),
}


def unavailable(kind: Kind, asgi_server: str) -> str | None:
    """Why *kind* cannot run here (``"lockstore.asgi missing"``), or None."""
    server = asgi_server if kind.asgi else "gunicorn"
    for module in (*kind.needs, *SERVER_MODULES[server]):
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # a missing parent package
            found = False
        if not found:
            return f"{module} missing"
    if kind.redis and shutil.which("redis-server") is None:
        return "redis-server not installed"
    return None


def _running_redis(directory: Path) -> Any:
    # the test suite's helper (tests/servers.py, which imports pytest): loaded only when a kind needs Redis
    servers = importlib.import_module("tests.servers")
    return servers.running_redis(directory)


@contextlib.contextmanager
def serve(kind: Kind, tmp: Path, args: argparse.Namespace) -> Iterator[int]:
    """Start the server for *kind* (and its redis-server); yield the port."""
    env = {"LOCKSTORE_TEST_MODE": kind.mode, "LOCKSTORE_TEST_PATH": str(tmp / "store")}
    with contextlib.ExitStack() as stack:
        if kind.redis:
            env["LOCKSTORE_TEST_URL"] = stack.enter_context(_running_redis(tmp / "redis")).url
        if not kind.asgi:
            yield stack.enter_context(gunicorn("make_flask_app()", tmp / "store", workers=args.workers, env=env))
            return
        launch = uvicorn if args.asgi_server == "uvicorn" else gunicorn_uvicorn
        yield stack.enter_context(launch(f"make_{args.asgi_app}_app", workers=args.workers, env=env))


def measure(port: int, args: argparse.Namespace) -> dict[str, Any]:
    result = {
        "shared": shared(port, args.clients, args.requests),
        "readers": readers(port),
        "users": users(port, args.clients, args.requests // 4 or 1),
    }
    if args.slow > 0:
        result["during"] = during(port, args.slow)
    return result


def row(name: str, r: dict[str, Any]) -> str:
    s, rd, u = r["shared"], r["readers"], r["users"]
    line = (
        f"{name:20} shared cookie: {s['rps']:5} req/s, lost {s['lost']:4} of {s['expected']:4} "
        f"({100 * s['lost'] / s['expected']:4.1f} %) | 40 writes vs 7 readers: lost {rd['lost']:2} "
        f"of {rd['increments']} | own cookies: {u['rps']:5} req/s, lost {u['lost']}"
    )
    if "during" in r:
        d = r["during"]
        line += f" | same user during a slow request: lost {d['lost']} of {d['updates']}"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4, help="server worker processes (default 4)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--requests", type=int, default=200, help="increments per client (default 200)")
    parser.add_argument("--kinds", help=f"comma-separated subset of {','.join(KINDS)} (default: the WSGI kinds)")
    parser.add_argument("--asgi", action="store_true", help="add the ASGI kinds to the run")
    parser.add_argument("--asgi-server", choices=("uvicorn", "gunicorn-uvicorn"), default="uvicorn",
                        help="uvicorn --workers (default) or gunicorn with uvicorn-worker's UvicornWorker")  # fmt: skip
    parser.add_argument("--asgi-app", choices=("starlette", "fastapi"), default="starlette",
                        help="the ASGI counter: plain Starlette (default) or FastAPI")  # fmt: skip
    parser.add_argument("--slow", type=float, default=2.0, help="seconds of the 'during' request (0: skip it)")
    parser.add_argument("--seed", type=int, default=0, help="unused: the runs are not randomised")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    names = args.kinds.split(",") if args.kinds else [*WSGI, *(ASGI if args.asgi else ())]
    unknown = [name for name in names if name not in KINDS]
    if unknown:
        parser.error(f"unknown kinds {','.join(unknown)}: choose from {','.join(KINDS)}")
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
        "command": "python -m stress.web_compare " + " ".join(argv if argv is not None else sys.argv[1:]),
        "workers": args.workers,
        "wsgi": "Flask app, gunicorn sync workers",
        "asgi": f"{args.asgi_app} app, {args.asgi_server}",
        "kinds": {},
    }
    if not args.json:
        print(f"{args.workers} workers; WSGI: {results['wsgi']}; ASGI: {results['asgi']}", flush=True)
    for name in names:
        kind = KINDS[name]
        missing = unavailable(kind, args.asgi_server)
        if missing is not None:
            results["kinds"][name] = {"not available": missing}
            if not args.json:
                print(f"{name:20} not available: {missing}", flush=True)
            continue
        with tempfile.TemporaryDirectory(prefix=f"web-compare-{name}-") as tmp, serve(kind, Path(tmp), args) as port:
            results["kinds"][name] = measure(port, args)
        if not args.json:
            print(row(name, results["kinds"][name]), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
