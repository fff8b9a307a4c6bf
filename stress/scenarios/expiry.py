"""expiry: sessions expire in real time and are cleaned on write while others stay busy.

The store gets a short ``max_age`` (about 2 s, less for short runs) and a short ``clean_interval``.
Each worker keeps a few busy sessions alive with ``edit()``, creates short-lived sessions it never
writes again, and probes those with ``record()``, ``in`` and ``get()``; worker 0 also runs full
``clean()`` sweeps and scans ``records()``. Each worker knows, for every session it owns, bounds on
its last access: it is at least the start of the last write (or, after a read that found the session,
that read's start minus ``touch_interval``) and at most the end of the last operation that found it.
Checked with the wall clock the store uses:

- no expired session is returned: a session found by an operation that started more than ``max_age``
  after the latest possible last access is a violation, and so is a record whose own ``last_access``
  is older than ``max_age`` when the read began;
- no live session is swept: a session missing at an operation that ended less than ``max_age`` after
  the earliest possible last access is a violation (a busy session's counter must also never reset).
"""

from __future__ import annotations

import random
import time
from typing import Any

from .._common import Recorder, worker_seed
from . import Context, Progress, Result, opened

EPS = 0.01  # seconds of slack for float rounding of the stored times
BUSY = 8
POOL = 4000


def _params(seconds: float) -> dict[str, float]:
    max_age = min(2.0, max(0.05, seconds / 3))
    return {"max_age": max_age, "clean_interval": max_age / 4, "touch_interval": max_age / 10}


def expiry_worker(
    opts: dict[str, Any], wid: int, deadline: float, seed: int, pad: str, counters: Any, slot: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    rec = Recorder(seed)
    progress = Progress(counters, slot)
    max_age, touch_interval = opts["max_age"], opts["touch_interval"]
    now = time.time
    problems: list[str] = []
    stats = {"expired_seen": 0, "busy_expired": 0, "created": 0, "swept": 0, "scanned": 0}
    busy = {f"b{wid}-{i}": [0, 0.0] for i in range(BUSY)}  # sid -> [count, earliest last access]
    pool: list[list[Any]] = []  # [sid, earliest last access, latest last access, gone]
    next_sweep = time.monotonic() + 0.3

    def violation(msg: str) -> None:
        if len(problems) < 20:
            problems.append(msg)

    with opened(opts) as store:
        for sid, state in busy.items():
            state[1] = now()
            store[sid] = {"n": 0}
        while time.monotonic() < deadline:
            r = rng.random()
            t0 = now()
            if r < 0.45:  # keep a busy session busy
                sid = rng.choice(list(busy))
                state = busy[sid]
                try:
                    with store.edit(sid, create=False) as s:
                        t1 = now()
                        if s.get("n") != state[0]:
                            violation(f"{sid} holds {s.get('n')}, its only writer last wrote {state[0]}")
                        s["n"] = state[0] + 1
                    state[0] += 1
                    state[1] = t0
                    rec.add("edit", now() - t0, t1 - t0)
                except KeyError:
                    t2 = now()
                    if t2 - state[1] < max_age - EPS:
                        violation(f"live session swept: {sid} missing {t2 - state[1]:.3f} s after its last write")
                    stats["busy_expired"] += 1
                    store[sid] = {"n": 0}
                    busy[sid] = [0, now()]
            elif r < 0.75:  # a short-lived session, never written again
                sid = f"x{wid}-{stats['created']}"
                store[sid] = {"pad": pad}
                stats["created"] += 1
                t2 = now()
                rec.add("set", t2 - t0)
                entry: list[Any] = [sid, t0, t2, False]
                if len(pool) < POOL:
                    pool.append(entry)
                else:
                    pool[rng.randrange(POOL)] = entry
            elif pool:  # probe a short-lived session
                entry = pool[rng.randrange(len(pool))]
                sid, lo, hi, gone = str(entry[0]), float(entry[1]), float(entry[2]), bool(entry[3])
                how = rng.choice(("record", "in", "get"))
                if how == "record":
                    got = store.record(sid)
                    found = got is not None
                elif how == "in":
                    found = sid in store
                else:
                    found = store.get(sid) is not None
                t2 = now()
                rec.add(how, t2 - t0)
                if found:
                    if gone:
                        violation(f"{sid} came back after it had expired")
                    if t0 - hi > max_age + EPS:
                        violation(f"expired session returned by {how}: {sid} idle {t0 - hi:.3f} s at least")
                    if how == "record" and got is not None and t0 - got.last_access > max_age + EPS:
                        violation(f"record() returned {sid} with last_access {t0 - got.last_access:.3f} s old")
                    if how == "record" and got is not None and not lo - EPS <= got.last_access <= t2 + EPS:
                        violation(f"record() of {sid}: last_access outside the times it was written")
                    entry[2] = t2
                    if how == "get":
                        entry[1] = max(lo, t0 - touch_interval)
                else:
                    if t2 - lo < max_age - EPS:
                        violation(f"live session swept: {sid} missing {t2 - lo:.3f} s after its last access")
                    if not gone:
                        stats["expired_seen"] += 1
                    entry[3] = True
            if wid == 1 and time.monotonic() >= next_sweep:  # sweeps and scans by one worker
                t0 = now()
                stats["swept"] += store.clean()
                rec.add("clean", now() - t0)
                t0 = now()
                for sid, r_ in store.records():
                    stats["scanned"] += 1
                    if t0 - r_.last_access > max_age + EPS:
                        violation(f"records() yielded {sid}, idle {t0 - r_.last_access:.3f} s")
                for sid, r_ in store.records(expired=True):
                    # the store judged it expired at some instant before now: it must have been by then
                    if now() - r_.last_access <= max_age - EPS:
                        violation(f"records(expired=True) yielded live {sid}")
                rec.add("scan", now() - t0)
                next_sweep = time.monotonic() + 0.5
            progress.step()
    progress.flush()
    return {"rec": rec.to_dict(), "busy": {s: v[1] for s, v in busy.items()}, "problems": problems, "stats": stats}


def run(ctx: Context) -> Result:
    result = Result(ctx.name)
    params = _params(ctx.seconds)
    opts = ctx.store_options(**params)
    pool = ctx.pool()
    t_start = time.monotonic()
    deadline = t_start + ctx.seconds
    for i in range(ctx.processes):
        seed = worker_seed(ctx.seed, ctx.name, i)
        pool.start(
            f"expiry worker {i}", expiry_worker, opts, i + 1, deadline, seed, ctx.pad(), ctx.counters, ctx.slot()
        )
    result.violations += pool.wait(deadline + 30 + 2 * ctx.processes, ctx.tick)
    outputs = [w.result for w in pool.workers if w.result is not None]
    result.add_workers([out["rec"] for out in outputs])
    for out in outputs:
        result.violations += out["problems"]
    with opened(opts) as store:
        for out in outputs:
            for sid, lo in out["busy"].items():
                present = sid in store
                if not present and time.time() - lo < params["max_age"] - EPS:
                    result.violations.append(f"live session swept: busy session {sid} missing at the end")
        left = store.stats()["expired"]
    totals = {k: sum(out["stats"][k] for out in outputs) for k in ("created", "expired_seen", "swept")}
    if totals["expired_seen"] == 0 and not result.violations:
        result.violations.append("no session was seen to expire: the run was too short to test expiry")
    result.notes.append(
        f"max_age {params['max_age']:.2f} s, clean_interval {params['clean_interval']:.2f} s:"
        f" {totals['created']:,} short-lived sessions, {totals['expired_seen']:,} seen expired,"
        f" {totals['swept']:,} removed by clean(), {left:,} expired left unswept at the end"
    )
    result.elapsed = time.monotonic() - t_start
    result.load = ctx.seconds
    return result
