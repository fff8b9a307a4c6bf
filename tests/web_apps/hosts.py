"""Two hosts sharing one session store on a server: two gunicorn instances and the clients that drive them.

Each instance has what a machine of its own would have: its own directory with its own ``TMPDIR`` (gunicorn's
worker heartbeat files, anything ``tempfile`` makes) and its own request-lock directory, and 4 sync workers.
Both serve the same counter app (``tests/web_apps/apps.py``: ``make_wsgi_host_app()`` or
``make_flask_host_app()``) against ONE store URL: Redis, PostgreSQL or a Redis Cluster.

The request lock is chosen by *lock* (``LOCKSTORE_TEST_REQUEST_LOCK`` in the apps):

``dir``     ``lock_dir=`` per instance, today's only request lock for a server store: it serialises one
            machine's requests and no more, so a cookie shared across the two instances loses updates;
``server``  no ``lock_dir``: the integration takes the server-side request lock (issue 12). Until that
            exists, the workers fail to boot and :func:`two_hosts` raises ``RuntimeError``;
``off``     ``request_lock=False``.

Workloads (each returns a dict, the figures the tests assert and the benchmark prints):

:func:`shared_cookie`   C clients share one cookie, each sends N ``/incr`` alternately to both instances:
                        requests/s and lost updates (increments answered 200 minus the final count);
:func:`writer_readers`  one client sends 40 ``/incr`` while 7 others only ``/read`` the same session, all
                        alternating between the instances: lost updates of the 40.

Used by ``tests/test_two_hosts*.py`` and ``stress/remote_web.py``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .servers import cookie_value, get, gunicorn

APPS = {"wsgi": "make_wsgi_host_app()", "flask": "make_flask_host_app()"}
"""The counter apps a host serves, by name (gunicorn's ``tests.web_apps.apps:<factory>``)."""
LOCKS = ("dir", "server", "off")
KINDS = ("redis", "postgres", "redis-cluster")
"""The server stores two hosts may share."""


def store_options(kind: str, name: str) -> dict[str, Any]:
    """The ``lockstore.open`` keyword that keeps a run's sessions apart on a shared server: a Redis
    ``prefix`` (also Flask-Session's key prefix) or a PostgreSQL ``table``."""
    return {"table": name} if kind == "postgres" else {"prefix": name}


def unsupported(url: str) -> str | None:
    """Why lockstore cannot open *url* today (its scheme is not registered), or None.

    The ``redis+cluster://`` scheme comes with issue 12; until then the cluster runs are skipped with this
    reason instead of failing on ``unknown store URL scheme``.
    """
    from lockstore.opener import REMOTE_SCHEMES

    scheme = url.partition("://")[0]
    if scheme in REMOTE_SCHEMES:
        return None
    return f"lockstore cannot open {scheme}:// URLs yet (issue 12: Redis Cluster); known: {', '.join(REMOTE_SCHEMES)}"


def server_lock_missing(url: str, options: Mapping[str, Any] | None = None) -> str | None:
    """Why the integrations cannot take a request lock on the server of *url* (today: they need ``lock_dir=``),
    or None once they can (issue 12). Asks the public API: a ``SessionMiddleware`` on the store, no ``lock_dir``.
    """
    import lockstore
    from lockstore.wsgi import SessionMiddleware

    with lockstore.open(url, **dict(options or {})) as store:
        try:
            SessionMiddleware(lambda environ, start_response: [], store)
        except (ValueError, lockstore.LockstoreError) as exc:
            return str(exc)
    return None


@contextlib.contextmanager
def two_hosts(
    app: str,
    url: str,
    base: Path,
    *,
    options: Mapping[str, Any] | None = None,
    lock: str = "dir",
    session: str = "lockstore",
    workers: int = 4,
    timeout: float = 10.0,
    preload: bool = True,
) -> Iterator[tuple[int, int]]:
    """Start two gunicorn instances of *app* (a key of :data:`APPS`) on the store *url*; yield their ports.

    Parameters
    ----------
    base
        A fresh directory; each instance gets ``base/host-a`` or ``base/host-b`` with ``tmp/`` (its
        ``TMPDIR``) and ``locks/`` (its ``lock_dir`` when *lock* is ``"dir"``).
    options
        ``lockstore.open`` keywords (:func:`store_options`).
    lock
        ``"dir"``, ``"server"`` or ``"off"`` (module docstring).
    session
        ``"lockstore"``, or ``"flask-session"``: Flask-Session's Redis backend (``app="flask"`` only).
    timeout
        The store's ``timeout``: how long a request waits for its session's lock before answering 503.
    preload
        Build the app (its store and connection pool) in each instance's master before its workers fork
        (``gunicorn --preload``): one import instead of one per worker, so the instances start in a second
        on a busy machine; each worker then reopens the store's connections as its own.
    """
    if app not in APPS:
        raise ValueError(f"unknown app {app!r}: use {', '.join(APPS)}")
    if lock not in LOCKS:
        raise ValueError(f"unknown lock {lock!r}: use {', '.join(LOCKS)}")
    reason = unsupported(url)
    if reason is not None:
        raise ValueError(reason)
    with contextlib.ExitStack() as stack:
        ports = []
        for name in ("host-a", "host-b"):
            host = Path(base) / name
            (host / "tmp").mkdir(parents=True)
            (host / "locks").mkdir()
            env = {
                "TMPDIR": str(host / "tmp"),
                "LOCKSTORE_TEST_URL": url,
                "LOCKSTORE_TEST_OPTIONS": json.dumps(dict(options or {})),
                "LOCKSTORE_TEST_REQUEST_LOCK": lock,
                "LOCKSTORE_TEST_LOCK_DIR": str(host / "locks"),
                "LOCKSTORE_TEST_MODE": "cookie",  # make_flask_host_app replaces Flask's cookie sessions
                "LOCKSTORE_TEST_SESSION": session,
                "LOCKSTORE_TEST_TIMEOUT": str(timeout),
            }
            server = gunicorn(APPS[app], host / "store", workers=workers, env=env, preload=preload)
            ports.append(stack.enter_context(server))
        yield ports[0], ports[1]


# -- clients ------------------------------------------------------------------------------------------


@dataclass
class SharedCookie:
    """One browser's cookie, shared by the client threads: each request sends the cookie held now, and
    each ``Set-Cookie`` replaces it. The request goes to the port the caller names."""

    cookie: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, port: int, path: str) -> int:
        """GET *path* on *port*; return the status."""
        with self.lock:
            cookie = self.cookie
        reply = get(port, path, cookie)
        value = cookie_value(reply)
        if value is not None:
            with self.lock:
                self.cookie = value or None
        return reply.status

    def read(self, port: int) -> int:
        """The counter as the session holds it now (``/read``)."""
        with self.lock:
            cookie = self.cookie
        reply = get(port, "/read", cookie)
        if reply.status != 200:
            raise RuntimeError(f"/read answered {reply.status}: {reply.body[:200]!r}")
        return int(reply.body)


def shared_cookie(ports: Sequence[int], *, clients: int = 8, requests: int = 25) -> dict[str, Any]:
    """*clients* threads sharing one cookie each send *requests* ``/incr``, alternately to each of *ports*
    (client *i* starts on ``ports[i % len(ports)]``, so every instance is busy at every moment).

    Returns requests/s and ``lost``: the increments answered 200, plus the first one, minus the final count.
    ``busy`` counts 503 answers (a lock not obtained in time: that increment did not happen), ``errors``
    any other status.
    """
    jar = SharedCookie()
    first = jar.get(ports[0], "/incr")
    if first != 200:
        raise RuntimeError(f"the first /incr answered {first}")

    def client(index: int) -> list[int]:
        turns = itertools.islice(itertools.cycle(ports), index % len(ports), index % len(ports) + requests)
        return [jar.get(port, "/incr") for port in turns]

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        statuses = [status for done in pool.map(client, range(clients)) for status in done]
    elapsed = time.monotonic() - started
    ok = statuses.count(200)
    expected = ok + 1
    final = jar.read(ports[-1])
    return {
        "requests": len(statuses),
        "seconds": round(elapsed, 2),
        "rps": round(len(statuses) / elapsed),
        "expected": expected,
        "final": final,
        "lost": expected - final,
        "busy": statuses.count(503),
        "errors": len(statuses) - ok - statuses.count(503),
    }


def writer_readers(ports: Sequence[int], *, writes: int = 40, readers: int = 7) -> dict[str, Any]:
    """One client sends *writes* ``/incr`` one after another while *readers* threads ``/read`` the same
    session as fast as they can; every client alternates between *ports*.

    Returns ``lost`` (of the ``writes + 1`` increments answered 200, the first included), ``reads`` and
    ``errors`` (answers other than 200, reads and writes).
    """
    writer = SharedCookie()
    statuses = [writer.get(ports[0], "/incr")]
    stop = threading.Event()

    def reader(index: int) -> list[int]:
        seen: list[int] = []
        for port in itertools.islice(itertools.cycle(ports), index % len(ports), None):
            if stop.is_set():
                return seen
            with writer.lock:
                cookie = writer.cookie
            seen.append(get(port, "/read", cookie).status)
        return seen  # not reached: the cycle is endless

    with ThreadPoolExecutor(readers) as pool:
        futures = [pool.submit(reader, i) for i in range(readers)]
        try:
            for i in range(writes):
                statuses.append(writer.get(ports[i % len(ports)], "/incr"))
                time.sleep(0.005)
        finally:
            stop.set()
        reads = [status for future in futures for status in future.result()]
    expected = statuses.count(200)
    final = writer.read(ports[-1])
    return {
        "writes": len(statuses),
        "expected": expected,
        "final": final,
        "lost": expected - final,
        "reads": len(reads),
        "errors": len(statuses) - expected + len(reads) - reads.count(200),
    }


__all__ = [
    "APPS",
    "KINDS",
    "LOCKS",
    "SharedCookie",
    "server_lock_missing",
    "shared_cookie",
    "store_options",
    "two_hosts",
    "unsupported",
    "writer_readers",
]
