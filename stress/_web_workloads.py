"""The workloads of ``stress/web_compare.py``: HTTP clients that count the updates a session layer loses.

Each one drives a counter app of ``tests/web_apps`` (WSGI/Flask ``apps.py`` or ASGI ``asgi_apps.py``, the same
routes) on a port, over fresh connections (every request may reach another worker), and returns a dict:

* :func:`shared`: C clients share one session (one cookie jar: each request sends the cookie the jar holds,
  each Set-Cookie replaces it) and send N increments each; requests/s and lost updates (C x N + 1 minus
  the final count).
* :func:`readers`: one client sends 40 increments one after another while 7 others only read the same
  session; lost updates of the 41.
* :func:`users`: C clients with their own sessions, N increments each; requests/s and lost updates.
* :func:`during`: one request sleeps with the session open (``/slow``) while the same user keeps
  incrementing; lost updates of those made meanwhile plus the slow one.

The tests (``tests/test_asgi_baselines.py``) run the same functions, so what the table claims is tested.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.web_apps.servers import Client, get


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
        "finals": finals,
    }


def during(port: int, seconds: float = 2.0) -> dict[str, Any]:
    """The same user's increments while one of their requests sleeps *seconds* with the session open."""
    jar = Client(port)
    jar.get("/incr")
    done = threading.Event()

    def slow() -> None:
        try:
            jar.get(f"/slow?s={seconds}")
        finally:
            done.set()

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(min(0.2, seconds / 4))  # let the slow request open the session first
    # stop well before the slow request ends, so that its answer is the last: an increment still in flight
    # would otherwise race it for the cookie jar, and the count would depend on that race
    end = time.monotonic() + seconds / 2
    meanwhile = 0
    while not done.is_set() and time.monotonic() < end:
        jar.get("/incr")
        meanwhile += 1
    thread.join()
    updates = meanwhile + 1  # and the slow request's own
    final = int(jar.get("/read").body)
    return {"updates": updates, "final": final, "lost": 1 + updates - final}


__all__ = ["during", "readers", "shared", "users"]
