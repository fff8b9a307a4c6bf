"""fork: a store opened and used in a parent is used by its forked children (gunicorn ``--preload``).

1. The parent holds a session in ``edit()`` while it forks a child that edits the same session: the
   child must wait for the parent (it must not inherit the parent's lock) and see its change.
2. The parent forks P children that use the inherited store object (never reopened by hand) for
   increments and reads of sessions the parent wrote, while the parent keeps incrementing too. Half
   the children close the store before leaving, half leave with ``os._exit`` without closing.
3. The parent's store must still work: every increment is there, the parent's sessions read back,
   ``verify()`` is empty, and a second round of forks from the same parent works as well.
"""

from __future__ import annotations

import random
import time
from typing import Any

from .._common import Recorder, WorkerPool, mp_context, worker_seed
from . import Context, Progress, Result, open_store

HOLD = 0.3  # seconds the parent holds the session while the child waits


def waiter(store: Any, t_release_after: float) -> dict[str, Any]:
    t0 = time.monotonic()
    with store.edit("held") as s:
        t1 = time.monotonic()
        seen = s.get("by")
        s["child"] = True
    return {"seen": seen, "waited": t1 - t0, "entered": t1, "not_before": t_release_after}


def child(
    store: Any, parent_values: dict[str, int], deadline: float, seed: int, close: bool, counters: Any, slot: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    rec = Recorder(seed)
    progress = Progress(counters, slot)
    clock = time.perf_counter
    done = 0
    problems = []
    keys = list(parent_values)
    while time.monotonic() < deadline:
        t0 = clock()
        if rng.random() < 0.7:
            with store.edit("counter") as s:
                t1 = clock()
                s["n"] = s.get("n", 0) + 1
            done += 1
            rec.add("edit", clock() - t0, t1 - t0)
        else:
            key = rng.choice(keys)
            v = store.get(key)
            rec.add("get", clock() - t0)
            if v is None or v.get("v") != parent_values[key]:
                problems.append(f"child read {key} as {v!r}, the parent wrote {parent_values[key]}")
                break
        progress.step()
    progress.flush()
    if close:
        store.close()
    return {"done": done, "rec": rec.to_dict(), "problems": problems}


def _round(ctx: Context, store: Any, result: Result, label: str, seconds: float, values: dict[str, int]) -> int:
    """Fork children that use *store*; the parent increments meanwhile. Returns increments acknowledged."""
    pool = WorkerPool(mp_context())
    deadline = time.monotonic() + seconds
    for i in range(ctx.processes):
        pool.start(
            f"{label} child {i}",
            child,
            store,
            values,
            deadline,
            worker_seed(ctx.seed, label, i),
            i % 2 == 0,
            ctx.counters,
            ctx.slot(),
        )
    rec = Recorder(ctx.seed)
    mine = 0
    clock = time.perf_counter
    while time.monotonic() < deadline:
        t0 = clock()
        with store.edit("counter") as s:
            t1 = clock()
            s["n"] = s.get("n", 0) + 1
        mine += 1
        rec.add("edit (parent)", clock() - t0, t1 - t0)
        pool.poll()
        if not mine & 63 and ctx.tick is not None:
            ctx.tick()
    result.violations += pool.wait(deadline + 30 + 2 * ctx.processes, ctx.tick)
    outputs = [w.result for w in pool.workers if w.result is not None]
    result.add_workers([rec.to_dict()] + [{f"{k} (child)": v for k, v in out["rec"].items()} for out in outputs])
    for out in outputs:
        result.violations += out["problems"]
    return mine + sum(out["done"] for out in outputs)


def run(ctx: Context) -> Result:
    result = Result(ctx.name)
    if ctx.in_process:
        result.skipped = "the memory backend lives in one process: a forked child has its own copy"
        return result
    if mp_context().get_start_method() != "fork":
        result.skipped = "this platform does not fork"
        return result
    t_start = time.monotonic()
    store = open_store(ctx.store_options())
    try:
        values = {f"p-{i}": i * 7 for i in range(min(ctx.sessions, 200))}
        for key, v in values.items():
            store[key] = {"v": v}
        # 1. a child must wait for a session the parent holds, and see the parent's change
        pool = WorkerPool(mp_context())
        with store.edit("held") as s:
            pool.start("waiting child", waiter, store, 0.0)
            time.sleep(HOLD)
            s["by"] = "parent"
            released = time.monotonic()
        result.violations += pool.wait(time.monotonic() + 30, ctx.tick)
        out = pool.workers[0].result
        if out is not None:
            if out["seen"] != "parent" or out["entered"] < released - 0.001:
                result.violations.append(
                    f"a forked child entered a session its parent held: it saw {out['seen']!r}"
                    f" after waiting {out['waited'] * 1000:.0f} ms"
                )
            held = store.get("held")
            if not held or not held.get("child"):
                result.violations.append("the forked child's edit of the held session is missing")
        # 2. and 3. two rounds of children using the inherited store while the parent writes too
        expected = 0
        for label in ("first", "second"):
            expected += _round(ctx, store, result, label, ctx.seconds / 2, values)
            got = (store.get("counter") or {}).get("n", 0)
            if got != expected:
                result.violations.append(f"after the {label} round the counter holds {got:,}, expected {expected:,}")
        for key, v in values.items():
            got_v = store.get(key)
            if got_v != {"v": v}:
                result.violations.append(f"the parent reads {key} as {got_v!r} after its children left")
                break
        result.violations += [f"verify: {sid}: {why}" for sid, why in store.verify()[:10]]
        result.notes.append(
            f"{expected:,} increments by a parent and {2 * ctx.processes} forked children"
            f" (half closing the inherited store, half not), all accounted for"
            if not result.violations
            else f"{expected:,} increments acknowledged"
        )
    finally:
        store.close()
    result.elapsed = time.monotonic() - t_start
    result.load = ctx.seconds
    return result
