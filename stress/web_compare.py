"""Flask sessions under gunicorn: lockstore vs Flask's cookie sessions vs Flask-Session (filesystem).

The same counter app (tests/web_apps/apps.py) runs under gunicorn with sync workers, once per kind
of session. For each kind:

* ``shared``: C clients share one session (one cookie jar: each request sends the cookie the jar
  holds, each Set-Cookie replaces it) and send N increments each; requests/s and lost updates
  (C x N + 1 minus the final count).
* ``readers``: one client sends 40 increments one after another while 7 others only read the same
  session (permanent sessions, SESSION_REFRESH_EACH_REQUEST on); lost updates of the 40.
* ``users``: C clients with their own sessions, N increments each; requests/s and lost updates.

The ``flask-session`` kind is Flask-Session (extra ``[bench]``) with its filesystem sessions: the
``cachelib`` session type on a ``FileSystemCache``.

    python -m stress.web_compare                     # 4 workers, 8 clients x 200
    python -m stress.web_compare --requests 40 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.web_apps.servers import Client, get, gunicorn  # noqa: E402

KINDS = ("lockstore", "cookie", "flask-session")


def shared(port: int, clients: int, requests: int) -> dict[str, Any]:
    jar = Client(port)
    assert jar.get("/incr").status == 200
    errors = 0

    def client(_: int) -> None:
        nonlocal errors
        for _ in range(requests):
            if jar.get("/incr").status != 200:
                errors += 1

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.monotonic() - started
    expected = clients * requests + 1
    final = int(jar.get("/read").body)
    return {
        "requests": clients * requests,
        "seconds": round(elapsed, 2),
        "rps": round(clients * requests / elapsed),
        "expected": expected,
        "final": final,
        "lost": expected - final,
        "errors": errors,
    }


def readers(port: int, increments: int = 40, reader_count: int = 7) -> dict[str, Any]:
    writer = Client(port)
    writer.get("/incr")
    stop = threading.Event()

    def reader() -> int:
        n = 0
        while not stop.is_set():
            with writer.lock:
                cookie = writer.cookie
            get(port, "/read", cookie)
            n += 1
        return n

    with ThreadPoolExecutor(reader_count) as pool:
        futures = [pool.submit(reader) for _ in range(reader_count)]
        for _ in range(increments):
            writer.get("/incr")
            time.sleep(0.005)
        stop.set()
        reads = sum(f.result() for f in futures)
    final = int(writer.get("/read").body)
    return {"increments": increments + 1, "final": final, "lost": increments + 1 - final, "reads": reads}


def users(port: int, clients: int, requests: int) -> dict[str, Any]:
    jars = [Client(port) for _ in range(clients)]

    def run(jar: Client) -> int:
        for _ in range(requests):
            jar.get("/incr")
        return int(jar.get("/read").body)

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        finals = list(pool.map(run, jars))
    elapsed = time.monotonic() - started
    total = clients * (requests + 1)
    return {
        "requests": total,
        "seconds": round(elapsed, 2),
        "rps": round(total / elapsed),
        "lost": clients * requests - sum(finals),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4, help="gunicorn sync workers (default 4)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--requests", type=int, default=200, help="increments per client (default 200)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--seed", type=int, default=0, help="unused: the runs are not randomised")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
        "command": "python -m stress.web_compare " + " ".join(argv if argv is not None else sys.argv[1:]),
        "workers": args.workers,
        "kinds": {},
    }
    for kind in args.kinds.split(","):
        with tempfile.TemporaryDirectory(prefix=f"web-compare-{kind}-") as tmp:
            env = {"LOCKSTORE_TEST_MODE": kind}
            with gunicorn("make_flask_app()", Path(tmp) / "store", workers=args.workers, env=env) as port:
                results["kinds"][kind] = {
                    "shared": shared(port, args.clients, args.requests),
                    "readers": readers(port),
                    "users": users(port, args.clients, args.requests // 4 or 1),
                }
        if not args.json:
            r = results["kinds"][kind]
            s, rd, u = r["shared"], r["readers"], r["users"]
            print(
                f"{kind:13} shared cookie: {s['rps']:5} req/s, lost {s['lost']:4} of {s['expected']:4} "
                f"({100 * s['lost'] / s['expected']:4.1f} %) | 40 writes vs 7 readers: lost {rd['lost']:2} "
                f"of {rd['increments']} | own cookies: {u['rps']:5} req/s, lost {u['lost']}",
                flush=True,
            )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
