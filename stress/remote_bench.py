"""``edit()`` throughput of the remote backends beside LMDB: ``python -m stress.remote_bench``.

In one run on one machine: P processes (default 4), each with its own store and connection pool,
make ``edit()`` increments for a fixed time on

- ``spread``: a session picked at random among 1,000 (little contention, as with many users), and
- ``hot``: 4 sessions shared by every process (each edit waits for the others).

Backends: ``lmdb`` (a temporary directory), ``redis`` (lock key taken and read by one script, commit
by another), ``postgres`` (``SELECT ... FOR UPDATE`` in a transaction), and ``redis-watch``: the same
read-modify-write done the optimistic way, ``WATCH`` / ``GET`` / ``MULTI`` / ``SET`` / ``EXEC`` retried on
conflict, with the same record format, to compare the two Redis designs (a ``with`` block cannot be
replayed, so ``edit()`` itself cannot use it).

Without ``--redis`` / ``--postgres`` URLs, temporary servers are started on free 127.0.0.1 ports with
the test suite's helpers (``tests/servers.py``: PostgreSQL with ``fsync=off``, which, like LMDB's
default ``durability="process"``, keeps every commit through a crash of any process, not of the
machine). Timings only; nothing is asserted.

    python -m stress.remote_bench                    # 4 processes, 3 s per measure
    python -m stress.remote_bench --processes 1,4 --seconds 5 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lockstore import record

from ._common import fmt_int, fmt_seconds, format_table, percentile

BACKENDS = ("lmdb", "redis", "redis-watch", "postgres")
SCENARIOS = {"spread": 1000, "hot": 4}
PAYLOAD = "x" * 200


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m stress.remote_bench",
        description="edit() throughput of Redis and PostgreSQL beside LMDB, P processes each with its own pool.",
    )
    p.add_argument("--processes", default="4", help="comma-separated process counts (default: 4)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of each measure (default: 3)")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"subset of: {', '.join(BACKENDS)}")
    p.add_argument("--redis", metavar="URL", help="use this Redis server (default: start a temporary one)")
    p.add_argument("--postgres", metavar="URL", help="use this PostgreSQL server (default: start a temporary one)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


def _open(target: dict[str, Any]) -> Any:
    import lockstore

    if target["backend"] == "lmdb":
        return lockstore.open(target["path"], timeout=60)
    if target["backend"] == "redis":
        return lockstore.open(target["url"], prefix=target["name"], timeout=60)
    return lockstore.open(target["url"], table=target["name"], timeout=60)


def _watch_increment(client: Any, codec: Any, sid: str, max_age: float) -> int:
    """One read-modify-write the optimistic way; returns the number of conflicts retried."""
    import redis

    key = f"{sid}"
    conflicts = 0
    while True:
        with client.pipeline() as pipe:
            try:
                pipe.watch(key)
                rec = pipe.get(key)
                now = time.time()
                value = codec.decode(sid.encode(), rec) if rec else {}
                created = record.times(rec)[1] if rec else now
                value["n"] = value.get("n", 0) + 1
                value["data"] = PAYLOAD
                new = codec.record(sid.encode(), codec.encode(value), now, created)
                pipe.multi()
                pipe.set(key, new, px=int(max_age * 1000))
                pipe.execute()
                return conflicts
            except redis.WatchError:
                conflicts += 1


def worker(target: dict[str, Any], sids: list[str], seconds: float, seed: int, barrier: Any, results: Any) -> None:
    logging.getLogger("lockstore").setLevel(logging.ERROR)  # the pickle-on-a-server warning, once per worker
    rng = random.Random(seed)
    latencies: list[float] = []
    conflicts = 0
    if target["backend"] == "redis-watch":
        import redis

        from lockstore.codec import Codec

        client = redis.Redis.from_url(target["url"])
        codec = Codec("pickle", None, 1 << 20)
        prefix = target["name"]
        barrier.wait(60)
        end = time.perf_counter() + seconds
        while (start := time.perf_counter()) < end:
            conflicts += _watch_increment(client, codec, f"{prefix}:{{{rng.choice(sids)}}}", 1800.0)
            latencies.append(time.perf_counter() - start)
        client.close()
    else:
        store = _open(target)
        barrier.wait(60)
        end = time.perf_counter() + seconds
        while (start := time.perf_counter()) < end:
            with store.edit(rng.choice(sids)) as session:
                session["n"] = session.get("n", 0) + 1
                session["data"] = PAYLOAD
            latencies.append(time.perf_counter() - start)
        store.close()
    results.put({"latencies": latencies, "conflicts": conflicts})


def measure(target: dict[str, Any], processes: int, scenario: str, seconds: float, seed: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    sids = [f"{scenario}-{i}" for i in range(SCENARIOS[scenario])]
    procs = [
        ctx.Process(target=worker, args=(target, sids, seconds, seed * 1000 + i, barrier, results))
        for i in range(processes)
    ]
    try:
        for proc in procs:
            proc.start()
        barrier.wait(120)
        started = time.perf_counter()
        reports = [results.get(timeout=seconds + 120) for _ in procs]
        elapsed = time.perf_counter() - started
        for proc in procs:
            proc.join(30)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(10)
    lat = sorted(x for r in reports for x in r["latencies"])
    return {
        "backend": target["backend"],
        "scenario": scenario,
        "processes": processes,
        "edits": len(lat),
        "seconds": elapsed,
        "per_second": len(lat) / elapsed,
        "p50": percentile(lat, 0.5),
        "p99": percentile(lat, 0.99),
        "max": lat[-1] if lat else 0.0,
        "conflicts": sum(r["conflicts"] for r in reports),
    }


def _servers_module() -> Any:
    tests = Path(__file__).resolve().parent.parent / "tests"
    sys.path.insert(0, str(tests))
    import servers

    return servers


@contextlib.contextmanager
def servers(args: argparse.Namespace, wanted: set[str], base: Path) -> Iterator[dict[str, str]]:
    """URLs of the Redis and PostgreSQL servers to use, starting temporary ones where none was given."""
    urls: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if wanted & {"redis", "redis-watch"}:
            if args.redis:
                urls["redis"] = args.redis
            else:
                urls["redis"] = stack.enter_context(_servers_module().running_redis(base / "redis")).url
        if "postgres" in wanted:
            if args.postgres:
                urls["postgres"] = args.postgres
            else:
                urls["postgres"] = stack.enter_context(_servers_module().running_postgres()).url
        yield urls


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(wanted) - set(BACKENDS)
    if unknown:
        print(f"unknown backend(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    counts = [int(x) for x in args.processes.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lockstore-bench-") as tmp, servers(args, set(wanted), Path(tmp)) as urls:
        for processes in counts:
            for scenario in SCENARIOS:
                for backend in wanted:
                    name = f"b{uuid.uuid4().hex[:10]}"
                    target = {
                        "backend": backend,
                        "name": name,
                        "path": os.path.join(tmp, name),
                        "url": urls.get("postgres" if backend == "postgres" else "redis", ""),
                    }
                    rows.append(measure(target, processes, scenario, args.seconds, args.seed))
                    if not args.json:
                        r = rows[-1]
                        print(
                            f"  {backend:12} {scenario:7} {processes} processes: {fmt_int(r['per_second'])} edits/s",
                            file=sys.stderr,
                        )
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "command": "python -m stress.remote_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seconds": args.seconds,
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=1))
        return 0
    print(f"edit() throughput, {meta['machine']}, Python {meta['python']}, {meta['date']}")
    print(f"command: {meta['command']}")
    table = [
        (
            r["backend"],
            r["scenario"],
            r["processes"],
            fmt_int(r["per_second"]),
            fmt_seconds(r["p50"]),
            fmt_seconds(r["p99"]),
            fmt_seconds(r["max"]),
            fmt_int(r["conflicts"]) if r["backend"] == "redis-watch" else "-",
        )
        for r in rows
    ]
    print(format_table(["backend", "sessions", "procs", "edits/s", "p50", "p99", "max", "WATCH retries"], table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
