"""counter: P processes increment sessions with ``edit()``; no increment may be lost.

Two phases: a few hot sessions (every worker on the same shards: contention) and ``--sessions``
sessions (spread over the shards: throughput). Each worker counts the increments whose ``edit()``
returned; at the end each session must hold exactly the sum of those counts.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

from .._common import Recorder, worker_seed
from . import Context, Progress, Result, opened

HOT_SESSIONS = 4


def increment_worker(
    opts: dict[str, Any], sids: list[str], deadline: float, seed: int, pad: str, counters: Any, slot: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    rec = Recorder(seed)
    done: Counter[str] = Counter()
    progress = Progress(counters, slot)
    clock = time.perf_counter
    with opened(opts) as store:
        while time.monotonic() < deadline:
            sid = rng.choice(sids)
            t0 = clock()
            with store.edit(sid) as s:
                t1 = clock()
                s["n"] = s.get("n", 0) + 1
                if "pad" not in s:
                    s["pad"] = pad
            rec.add("edit", clock() - t0, t1 - t0)
            done[sid] += 1
            progress.step()
    progress.flush()
    return {"done": dict(done), "rec": rec.to_dict()}


def _phase(ctx: Context, result: Result, label: str, sids: list[str], seconds: float) -> None:
    opts = ctx.store_options()
    pool = ctx.pool()
    deadline = time.monotonic() + seconds
    for i in range(ctx.processes):
        seed = worker_seed(ctx.seed, ctx.name, label, i)
        pool.start(
            f"{label} worker {i}", increment_worker, opts, sids, deadline, seed, ctx.pad(), ctx.counters, ctx.slot()
        )
    result.violations += pool.wait(deadline + 30 + 2 * ctx.processes, ctx.tick)
    outputs = [w.result for w in pool.workers if w.result is not None]
    kind = f"edit ({label})"  # name the phase in the table
    result.add_workers([{kind: out["rec"]["edit"]} for out in outputs if "edit" in out["rec"]])
    result.durations[kind] = seconds
    expected: Counter[str] = Counter()
    for out in outputs:
        expected.update(out["done"])
    if len(outputs) < ctx.processes:
        return  # a failed worker may have applied one increment it never counted: already a violation
    with opened(opts) as store:
        for sid in sids:
            value = store.get(sid)
            got = value.get("n", 0) if isinstance(value, dict) else 0
            if got < expected[sid]:
                result.violations.append(
                    f"lost update: {sid} holds {got:,} but {expected[sid]:,} increments were acknowledged"
                )
            elif got > expected[sid]:
                result.violations.append(
                    f"phantom update: {sid} holds {got:,} but only {expected[sid]:,} increments were made"
                )
    result.notes.append(f"{label}: {sum(expected.values()):,} increments acknowledged, each one checked")


def run(ctx: Context) -> Result:
    result = Result(ctx.name)
    hot = [f"hot-{i}" for i in range(min(HOT_SESSIONS, ctx.sessions))]
    wide = [f"wide-{i}" for i in range(ctx.sessions)]
    t0 = time.monotonic()
    _phase(ctx, result, f"{len(hot)} hot sessions", hot, ctx.seconds / 2)
    _phase(ctx, result, f"{len(wide):,} sessions", wide, ctx.seconds / 2)
    result.elapsed = time.monotonic() - t0
    result.load = ctx.seconds
    return result
