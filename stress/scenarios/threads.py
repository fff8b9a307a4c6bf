"""threads: threads and processes mixed.

Half the processes run T threads each, sharing one store object per process; the other half are
single-threaded. Every thread increments a few hot sessions shared by all threads of all processes with ``edit()``,
and writes then reads back sessions of its own. At the end each hot session must hold exactly the
increments acknowledged by every thread, and no thread may ever have read back anything other than
what it had just written.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

from .._common import Recorder, worker_seed
from . import Context, Progress, Result, opened
from .counter import increment_worker

HOT = 4
OWN = 8


def _thread_body(
    store: Any,
    tag: str,
    deadline: float,
    seed: int,
    pad: str,
    out: dict[str, Any],
    progress: Progress,
    lock: threading.Lock,
) -> None:
    rng = random.Random(seed)
    rec = Recorder(seed)
    done: Counter[str] = Counter()
    problems: list[str] = []
    clock = time.perf_counter
    seq = 0
    try:
        while time.monotonic() < deadline:
            seq += 1
            t0 = clock()
            if rng.random() < 0.6:
                sid = f"hot-{rng.randrange(HOT)}"
                with store.edit(sid) as s:
                    t1 = clock()
                    s["n"] = s.get("n", 0) + 1
                rec.add("edit", clock() - t0, t1 - t0)
                done[sid] += 1
            else:
                sid = f"t-{tag}-{rng.randrange(OWN)}"
                store[sid] = {"seq": seq, "pad": pad}
                t1 = clock()
                rec.add("set", t1 - t0)
                v = store.get(sid)
                rec.add("get", clock() - t1)
                if v is None or v.get("seq") != seq:
                    problems.append(f"thread {tag} wrote seq {seq} to {sid} and read back {v and v.get('seq')!r}")
                    break
            with lock:
                progress.step()
    except Exception as exc:
        problems.append(f"thread {tag} failed: {type(exc).__name__}: {exc}")
    out[tag] = {"done": done, "rec": rec.to_dict(), "problems": problems}


def threads_worker(
    opts: dict[str, Any], wid: int, threads: int, deadline: float, seed: int, pad: str, counters: Any, slot: int
) -> dict[str, Any]:
    progress = Progress(counters, slot)
    out: dict[str, Any] = {}
    lock = threading.Lock()
    with opened(opts) as store:
        ts = [
            threading.Thread(
                target=_thread_body, args=(store, f"{wid}.{i}", deadline, seed + i, pad, out, progress, lock)
            )
            for i in range(threads)
        ]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    progress.flush()
    done: Counter[str] = Counter()
    for v in out.values():
        done.update(v["done"])
    return {
        "done": dict(done),
        "recs": [v["rec"] for v in out.values()],
        "problems": [p for v in out.values() for p in v["problems"]],
        "threads": len(out),
    }


def run(ctx: Context) -> Result:
    result = Result(ctx.name)
    opts = ctx.store_options()
    pool = ctx.pool()
    t_start = time.monotonic()
    deadline = t_start + ctx.seconds
    # processes hosting threads; with the memory backend, threads of this process only
    hosts = 1 if ctx.in_process else max(1, ctx.processes // 2)
    singles = 0 if ctx.in_process else ctx.processes - hosts
    hot = [f"hot-{i}" for i in range(HOT)]
    for i in range(hosts):
        seed = worker_seed(ctx.seed, ctx.name, i)
        pool.start(
            f"threads worker {i}",
            threads_worker,
            opts,
            i + 1,
            ctx.threads,
            deadline,
            seed,
            ctx.pad(),
            ctx.counters,
            ctx.slot(),
        )
    for i in range(singles):
        seed = worker_seed(ctx.seed, ctx.name, "single", i)
        pool.start(
            f"single-threaded worker {i}",
            increment_worker,
            opts,
            hot,
            deadline,
            seed,
            ctx.pad(),
            ctx.counters,
            ctx.slot(),
        )
    result.violations += pool.wait(deadline + 30 + 2 * ctx.processes, ctx.tick)
    outputs = [w.result for w in pool.workers if w.result is not None]
    for out in outputs:
        if "recs" not in out:  # a single-threaded worker
            result.add_workers([{"edit (single-threaded)": out["rec"]["edit"]}] if "edit" in out["rec"] else [])
            continue
        result.add_workers(out["recs"])
        result.violations += out["problems"][:10]
        if out["threads"] != ctx.threads:
            result.violations.append(f"only {out['threads']} of {ctx.threads} threads reported back")
    expected: Counter[str] = Counter()
    for out in outputs:
        expected.update(out["done"])
    if len(outputs) == hosts + singles:
        with opened(opts) as store:
            for i in range(HOT):
                sid = f"hot-{i}"
                got = (store.get(sid) or {}).get("n", 0)
                if got != expected[sid]:
                    result.violations.append(
                        f"{'lost' if got < expected[sid] else 'phantom'} update: {sid} holds {got:,},"
                        f" {expected[sid]:,} increments acknowledged"
                    )
    result.notes.append(
        f"{hosts} process(es) x {ctx.threads} threads sharing a store object, {singles} single-threaded:"
        f" {sum(expected.values()):,} increments acknowledged and checked"
    )
    result.elapsed = time.monotonic() - t_start
    result.load = ctx.seconds
    return result
