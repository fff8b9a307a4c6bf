"""The server backends measured: ``edit()`` throughput, then web requests on two hosts sharing one server.

``python -m stress.remote_bench``.

In one run on one machine, first P processes (default 4), each with its own store and connection pool,
make ``edit()`` increments for a fixed time on

- ``spread``: a session picked at random among 1,000 (little contention, as with many users), and
- ``hot``: 4 sessions shared by every process (each edit waits for the others).

Backends: ``lmdb`` (a temporary directory), ``redis`` (lock key taken and read by one script, commit
by another), ``redis-cluster`` (the same through ``redis+cluster://`` on a Redis Cluster of 3 masters and
3 replicas), ``postgres`` (``SELECT ... FOR UPDATE`` in a transaction), and ``redis-watch``: the same
read-modify-write done the optimistic way, ``WATCH`` / ``GET`` / ``MULTI`` / ``SET`` / ``EXEC`` retried on
conflict, with the same record format, to compare the two Redis designs (a ``with`` block cannot be
replayed, so ``edit()`` itself cannot use it).

Then web requests/s and lost updates with a shared cookie on two gunicorn instances (``stress/remote_web.py``):
lockstore on Redis, Flask-Session's Redis backend as shipped, lockstore on PostgreSQL and on the cluster.

Without ``--redis`` / ``--postgres`` / ``--cluster`` URLs, temporary servers are started on 127.0.0.1 ports
with the test suite's helpers (``tests/servers.py``: PostgreSQL with ``fsync=off``, which, like LMDB's
default ``durability="process"``, keeps every commit through a crash of any process, not of the
machine). Timings only; nothing is asserted. The tables are markdown.

    python -m stress.remote_bench                    # 4 processes, 3 s per measure; 8 clients x 50 requests
    python -m stress.remote_bench --parts edit --processes 1,4 --seconds 5 --json
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

from . import remote_web
from ._common import fmt_int, fmt_seconds, percentile

BACKENDS = ("lmdb", "redis", "redis-cluster", "redis-watch", "postgres")
SERVER_OF = {"redis": "redis", "redis-watch": "redis", "redis-cluster": "redis-cluster", "postgres": "postgres"}
"""Backend -> the server it runs on (a key of the URLs :func:`servers` yields)."""
SCENARIOS = {"spread": 1000, "hot": 4}
PAYLOAD = "x" * 200


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m stress.remote_bench",
        description="edit() throughput of the servers beside LMDB, then web requests on two hosts sharing one server.",
    )
    p.add_argument("--processes", default="4", help="comma-separated process counts (default: 4)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of each measure (default: 3)")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"subset of: {', '.join(BACKENDS)}")
    p.add_argument("--redis", metavar="URL", help="use this Redis server (default: start a temporary one)")
    p.add_argument("--postgres", metavar="URL", help="use this PostgreSQL server (default: start a temporary one)")
    p.add_argument("--cluster", metavar="URL", help="use this redis+cluster:// URL (default: start a temporary one)")
    p.add_argument("--parts", default="edit,web", help="edit, web or both (default: edit,web)")
    p.add_argument("--web-kinds", default=",".join(remote_web.KINDS), help=f"subset of: {', '.join(remote_web.KINDS)}")
    p.add_argument("--workers", type=int, default=4, help="gunicorn sync workers per host (default: 4)")
    p.add_argument("--clients", type=int, default=8, help="clients sharing one cookie (default: 8)")
    p.add_argument("--requests", type=int, default=50, help="increments per client (default: 50)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


def _open(target: dict[str, Any]) -> Any:
    import lockstore

    if target["backend"] == "lmdb":
        return lockstore.open(target["path"], timeout=60)
    if target["backend"] in ("redis", "redis-cluster"):
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
    """URLs of the servers in *wanted* (``redis``, ``postgres``, ``redis-cluster``), starting temporary ones
    where none was given. A cluster lockstore cannot open yet is not started: its URL is the bare scheme, and
    its rows say why they are skipped."""
    urls: dict[str, str] = {}
    given = {"redis": args.redis, "postgres": args.postgres, "redis-cluster": args.cluster}
    with contextlib.ExitStack() as stack:
        for kind in sorted(wanted):
            if given[kind]:
                urls[kind] = given[kind]
            elif kind == "redis":
                urls[kind] = stack.enter_context(_servers_module().running_redis(base / "redis")).url
            elif kind == "postgres":
                urls[kind] = stack.enter_context(_servers_module().running_postgres()).url
            elif remote_web.unsupported("redis+cluster://") is not None:
                urls[kind] = "redis+cluster://"
            else:
                urls[kind] = stack.enter_context(_servers_module().running_redis_cluster_retried(base / "cluster")).url
        yield urls


def markdown(headers: list[str], rows: list[list[str]], notes: list[str]) -> str:
    """A markdown table: the first column left-aligned, the others right-aligned. A cell ``skipped: why``
    becomes ``skipped [n]``, with *why* appended to *notes* (shared by the tables: one number per reason)."""

    def cell(text: str) -> str:
        if not text.startswith("skipped: "):
            return text
        why = text.removeprefix("skipped: ")
        if why not in notes:
            notes.append(why)
        return f"skipped [{notes.index(why) + 1}]"

    lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def edit_rows(args: argparse.Namespace, wanted: list[str], urls: dict[str, str], tmp: str) -> list[dict[str, Any]]:
    """The edit() throughput of every backend in *wanted*, for each process count and scenario."""
    rows: list[dict[str, Any]] = []
    for processes in [int(x) for x in args.processes.split(",")]:
        for scenario in SCENARIOS:
            for backend in wanted:
                url = urls.get(SERVER_OF.get(backend, ""), "")
                reason = remote_web.unsupported(url) if url else None
                if reason is not None:
                    rows.append({"backend": backend, "scenario": scenario, "processes": processes, "skipped": reason})
                    print(f"  {backend:13} {scenario:7} skipped: {reason}", file=sys.stderr)
                    continue
                name = f"b{uuid.uuid4().hex[:10]}"
                target = {"backend": backend, "name": name, "path": os.path.join(tmp, name), "url": url}
                rows.append(measure(target, processes, scenario, args.seconds, args.seed))
                rate = fmt_int(rows[-1]["per_second"])
                print(f"  {backend:13} {scenario:7} {processes} processes: {rate} edits/s", file=sys.stderr)
    return rows


def edit_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    headers = ["backend", "sessions", "procs", "edits/s", "p50", "p99", "max", "WATCH retries"]
    cells = []
    for r in rows:
        head = [r["backend"], r["scenario"], str(r["processes"])]
        if "skipped" in r:
            cells.append([*head, "-", "-", "-", "-", f"skipped: {r['skipped']}"])
            continue
        retries = fmt_int(r["conflicts"]) if r["backend"] == "redis-watch" else "-"
        times = [fmt_seconds(r["p50"]), fmt_seconds(r["p99"]), fmt_seconds(r["max"])]
        cells.append([*head, fmt_int(r["per_second"]), *times, retries])
    return headers, cells


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()] if "edit" in parts else []
    kinds = [k.strip() for k in args.web_kinds.split(",") if k.strip()] if "web" in parts else []
    unknown = (set(wanted) - set(BACKENDS)) | (set(kinds) - set(remote_web.KINDS)) | (parts - {"edit", "web"})
    if unknown:
        print(f"unknown part(s), backend(s) or web kind(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    needed = {SERVER_OF[b] for b in wanted if b in SERVER_OF} | {remote_web.KINDS[k][0] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="lockstore-bench-") as tmp, servers(args, needed, Path(tmp)) as urls:
        rows = edit_rows(args, wanted, urls, tmp)
        web = remote_web.run(urls, kinds, workers=args.workers, clients=args.clients, requests=args.requests)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "command": "python -m stress.remote_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seconds": args.seconds,
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": rows, "web": web}, indent=1))
        return 0
    print(f"{meta['machine']}, Python {meta['python']}, {meta['date']}")
    print(f"command: {meta['command']}")
    notes: list[str] = []
    if rows:
        print(f"\nedit() throughput, {args.seconds:g} s per measure\n")
        print(markdown(*edit_table(rows), notes))
    if web:
        print(
            f"\nweb: two gunicorn instances x {args.workers} sync workers sharing one server, Flask counter; "
            f"{args.clients} clients x {args.requests} increments on one cookie, alternating between the instances\n"
        )
        print(markdown(*remote_web.table(web), notes))
    if notes:
        print()
        print("\n".join(f"[{i}] {why}" for i, why in enumerate(notes, 1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
