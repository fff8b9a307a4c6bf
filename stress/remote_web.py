"""Web requests on two hosts sharing one server store: the web half of ``python -m stress.remote_bench``.

Two gunicorn instances with W sync workers each (default 4), their own TMPDIR and lock directory, as two
machines would have them, serve the Flask counter (``tests/web_apps/hosts.py``) from one server:

- ``lockstore-redis``: lockstore on Redis;
- ``flask-session-redis``: Flask-Session with its Redis backend, as shipped (``SESSION_TYPE = "redis"``);
- ``lockstore-postgres``: lockstore on PostgreSQL;
- ``lockstore-cluster``: lockstore on a Redis Cluster (``redis+cluster://``).

lockstore runs with each request lock it can take: ``lock_dir`` (a directory per host, so one machine's
requests only) and, once issue 12's server-side lock exists, ``server``. For each: C clients sharing one cookie
send N increments each, alternately to the two instances (requests/s, lost updates), then one writer sends
40 increments while 7 readers read the same session (lost updates of the 41).
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.web_apps.hosts import (  # noqa: E402  (the checkout's tests/, as stress/web_compare.py does)
    server_lock_missing,
    shared_cookie,
    store_options,
    two_hosts,
    unsupported,
    writer_readers,
)

KINDS = {
    "lockstore-redis": ("redis", "lockstore"),
    "flask-session-redis": ("redis", "flask-session"),
    "lockstore-postgres": ("postgres", "lockstore"),
    "lockstore-cluster": ("redis-cluster", "lockstore"),
}
"""Web kind -> (server kind, session implementation)."""
LABELS = {
    "lockstore-redis": "lockstore + Redis",
    "flask-session-redis": "Flask-Session + Redis (as shipped)",
    "lockstore-postgres": "lockstore + PostgreSQL",
    "lockstore-cluster": "lockstore + Redis Cluster",
}
LOCK_LABELS = {"dir": "lock_dir per host", "server": "server-side", "none": "none"}


def plan(kind: str, url: str) -> list[tuple[str, str | None]]:
    """The request locks to measure *kind* with, each with why it is skipped (None: measured)."""
    server, session = KINDS[kind]
    if not url:
        return [("dir", f"no {server} server")]
    reason = unsupported(url)
    if session == "flask-session":
        return [("none", reason)]
    if reason is not None:
        return [("dir", reason), ("server", reason)]
    return [("dir", None), ("server", server_lock_missing(url, store_options(server, f"p{uuid.uuid4().hex[:8]}")))]


def measure(kind: str, lock: str, url: str, *, workers: int, clients: int, requests: int) -> dict[str, Any]:
    """One row: *kind* with *lock* on two fresh instances, both workloads under one fresh prefix or table."""
    server, session = KINDS[kind]
    options = store_options(server, f"w{uuid.uuid4().hex[:10]}")
    with tempfile.TemporaryDirectory(prefix="lockstore-hosts-") as tmp:
        hosts_lock = "dir" if lock == "none" else lock  # Flask-Session ignores it
        with two_hosts(
            "flask", url, Path(tmp), options=options, lock=hosts_lock, session=session, workers=workers
        ) as ports:
            shared = shared_cookie(ports, clients=clients, requests=requests)
            readers = writer_readers(ports, writes=40, readers=7)
    return {"kind": kind, "lock": lock, "shared": shared, "readers": readers}


def run(urls: dict[str, str], kinds: list[str], *, workers: int, clients: int, requests: int) -> list[dict[str, Any]]:
    """Every row of *kinds*, measured or skipped; progress on stderr."""
    rows: list[dict[str, Any]] = []
    for kind in kinds:
        url = urls.get(KINDS[kind][0], "")
        for lock, reason in plan(kind, url):
            if reason is not None:
                rows.append({"kind": kind, "lock": lock, "skipped": reason})
                print(f"  web {kind:20} {lock:6}: skipped: {reason}", file=sys.stderr)
                continue
            rows.append(measure(kind, lock, url, workers=workers, clients=clients, requests=requests))
            s = rows[-1]["shared"]
            print(f"  web {kind:20} {lock:6}: {s['rps']} req/s, lost {s['lost']}/{s['expected']}", file=sys.stderr)
    return rows


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The headers and cells of the web table."""
    headers = ["sessions", "request lock", "req/s", "lost, shared cookie", "lost, 40 writes vs 7 readers", "errors"]
    cells = []
    for row in rows:
        label = [LABELS[row["kind"]], LOCK_LABELS[row["lock"]]]
        if "skipped" in row:
            cells.append([*label, "-", "-", "-", f"skipped: {row['skipped']}"])
            continue
        s, r = row["shared"], row["readers"]
        cells.append(
            [
                *label,
                f"{s['rps']:,}",
                f"{s['lost']} of {s['expected']} ({100 * s['lost'] / s['expected']:.0f} %)",
                f"{r['lost']} of {r['expected']}",
                str(s["errors"] + s["busy"] + r["errors"]),
            ]
        )
    return headers, cells


__all__ = ["KINDS", "measure", "plan", "run", "table", "unsupported"]
