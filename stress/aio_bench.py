"""``aedit`` with asyncio tasks beside ``edit`` with threads: ``python -m stress.aio_bench``.

In one process, for a fixed time, W workers (default 50) make increments of

- ``hot``: one session shared by every worker (each edit waits for the others), and
- ``spread``: a session of each worker's own;

as asyncio tasks with ``async with store.aedit(sid)`` (``tasks``), as threads with ``with store.edit(sid)``
(``threads``) and, on Redis, as tasks speaking to the server with ``redis.asyncio`` directly: the same lock
and commit scripts as the store, nothing decoded (``redis.asyncio``, the ceiling of a native async client).
``split-default`` shows why the async API has pools of its own: an edit started in one call of
``asyncio.to_thread`` and ended in another, on asyncio's default executor (``min(32, cpus + 4)`` threads),
with a 2 s lock timeout: its figure is the number of edits that timed out.

Without ``--redis`` / ``--postgres`` URLs, temporary servers are started (``tests/servers.py``). Timings only.

    python -m stress.aio_bench --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import secrets
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import lockstore

from .remote_bench import servers

BACKENDS = ("lmdb", "redis", "postgres")


def sids(scenario: str, workers: int) -> list[str]:
    return ["hot"] * workers if scenario == "hot" else [f"own{i}" for i in range(workers)]


async def run_tasks(store: Any, scenario: str, workers: int, seconds: float) -> int:
    stop = time.monotonic() + seconds

    async def one(sid: str) -> int:
        n = 0
        while time.monotonic() < stop:
            async with store.aedit(sid) as session:
                session["n"] = session.get("n", 0) + 1
            n += 1
        return n

    return sum(await asyncio.gather(*(one(sid) for sid in sids(scenario, workers))))


def run_threads(store: Any, scenario: str, workers: int, seconds: float) -> int:
    stop = time.monotonic() + seconds
    counts = [0] * workers

    def one(i: int, sid: str) -> None:
        while time.monotonic() < stop:
            with store.edit(sid) as session:
                session["n"] = session.get("n", 0) + 1
            counts[i] += 1

    threads = [threading.Thread(target=one, args=(i, sid)) for i, sid in enumerate(sids(scenario, workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


async def run_split_default(store: Any, scenario: str, workers: int, seconds: float) -> int:
    """Edits whose start and end are two ``asyncio.to_thread`` calls: returns how many timed out."""
    stop = time.monotonic() + seconds
    timeouts = 0

    async def one(sid: str) -> None:
        nonlocal timeouts
        while time.monotonic() < stop:
            edit = store.edit(sid)
            try:
                session = await asyncio.to_thread(edit.__enter__)
            except lockstore.LockTimeout:
                timeouts += 1
                continue
            session["n"] = session.get("n", 0) + 1
            await asyncio.to_thread(edit.__exit__, None, None, None)

    await asyncio.gather(*(one(sid) for sid in sids(scenario, workers)))
    return timeouts


async def run_redis_asyncio(url: str, scenario: str, workers: int, seconds: float) -> int:
    """The store's lock-and-read and commit scripts, sent by ``redis.asyncio``; waiters block on the wake list."""
    import redis.asyncio as aredis

    from lockstore.remote.redis import ACQUIRE, COMMIT

    client = aredis.Redis.from_url(url, max_connections=workers + 1)
    acquire, commit = client.register_script(ACQUIRE), client.register_script(COMMIT)
    prefix = "aio-bench-" + secrets.token_hex(4)
    stop = time.monotonic() + seconds

    async def one(sid: str) -> int:
        key = f"{prefix}:{{{sid}}}"
        keys = [key, key + ":lock", key + ":wake"]
        n = 0
        while time.monotonic() < stop:
            token = secrets.token_hex(12)
            while True:
                got, value = await acquire(keys=keys[:2], args=[token, "30000"])
                if got:
                    break
                await client.blpop([keys[2]], timeout=min(1.0, max(0.001, (value or 50) / 1000 + 0.001)))
            record = b"x" * 60 if value is None else bytes(value)  # stands for decode, change, encode
            await commit(keys=keys, args=[token, "w", record, "", "5000"])
            n += 1
        return n

    try:
        return sum(await asyncio.gather(*(one(sid) for sid in sids(scenario, workers))))
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--workers", type=int, default=50)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--redis", help="a Redis URL (default: start one)")
    p.add_argument("--postgres", help="a PostgreSQL URL (default: start one)")
    args = p.parse_args(argv)
    wanted = [b for b in args.backends.split(",") if b]
    print(f"{args.workers} workers, {args.seconds:g} s per figure; edits/s (split-default: edits timed out)")
    print(f"{'backend':10} {'scenario':8} {'mode':14} {'figure':>10}")
    with tempfile.TemporaryDirectory() as tmp, servers(args, set(wanted), Path(tmp)) as urls:
        for backend in wanted:
            for scenario in ("hot", "spread"):
                modes = ["tasks", "threads"]
                if backend == "redis":
                    modes += ["redis.asyncio", "split-default"] if scenario == "hot" else ["redis.asyncio"]
                for mode in modes:
                    name = "t" + secrets.token_hex(6)
                    if backend == "lmdb":
                        opened = lockstore.open(f"{tmp}/{name}", backend="lmdb")
                    elif backend == "redis":
                        timeout = 2.0 if mode == "split-default" else 30.0
                        opened = lockstore.open(urls["redis"], prefix=name, timeout=timeout)
                    else:
                        opened = lockstore.open(urls["postgres"], table=name, pool_size=args.workers + 10)
                    with contextlib.closing(opened) as store:
                        if mode == "tasks":
                            n = asyncio.run(run_tasks(store, scenario, args.workers, args.seconds))
                        elif mode == "threads":
                            n = run_threads(store, scenario, args.workers, args.seconds)
                        elif mode == "split-default":
                            timeouts = asyncio.run(run_split_default(store, scenario, args.workers, args.seconds))
                            print(f"{backend:10} {scenario:8} {mode:14} {timeouts:>10}")
                            continue
                        else:
                            n = asyncio.run(run_redis_asyncio(urls["redis"], scenario, args.workers, args.seconds))
                    print(f"{backend:10} {scenario:8} {mode:14} {math.floor(n / args.seconds):>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
