"""mixed: random get / set / delete / edit / touch from P processes on shared sessions.

Every write carries a unique token (worker, sequence number). Each worker logs every operation it
saw acknowledged, with its start and end on the machine-wide monotonic clock and what it read or
wrote. The checker then requires, per session, what a linearizable store guarantees:

- a read (get, touch, the read half of edit) returns a value some write produced, one that started
  before the read ended and was not overwritten by a write that ended before the read began;
- no two edits see the same previous token (that would be a lost update);
- the final store holds a value one of the last writes could have left.
"""

from __future__ import annotations

import bisect
import contextlib
import random
import time
from collections import defaultdict
from typing import Any

from .._common import Recorder, worker_seed
from . import Context, Progress, Result, opened

KEYS = 32
ABSENT = -1  # observed or written: no session
PRESENT = -2  # observed by touch(): some session, value unknown
GET, SET, DELETE, EDIT, TOUCH = range(5)
WEIGHTS = {GET: 35, SET: 15, DELETE: 8, EDIT: 27, TOUCH: 15}
KIND_NAMES = {GET: "get", SET: "set", DELETE: "delete", EDIT: "edit", TOUCH: "touch"}
TOKEN_BASE = 1 << 32


def mixed_worker(
    opts: dict[str, Any], wid: int, deadline: float, seed: int, pad: str, counters: Any, slot: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    rec = Recorder(seed)
    progress = Progress(counters, slot)
    kinds = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()), k=4096)
    log: list[tuple[int, int, float, float, int, int]] = []  # kind, key, start, end, read, written
    mono = time.monotonic
    seq = 0
    with opened(opts) as store:
        while mono() < deadline:
            kind = kinds[seq & 4095]
            seq += 1
            key = rng.randrange(KEYS)
            sid = f"m-{key}"
            token = wid * TOKEN_BASE + seq
            read = written = ABSENT
            wait = None
            t0 = mono()
            if kind == GET:
                v = store.get(sid)
                read = v["t"] if v is not None else ABSENT
            elif kind == SET:
                store[sid] = {"t": token, "pad": pad}
                written = token
            elif kind == DELETE:
                with contextlib.suppress(KeyError):
                    del store[sid]
            elif kind == EDIT:
                with store.edit(sid) as s:
                    t1 = mono()
                    read = s.get("t", ABSENT)
                    s["t"] = token
                    s["pad"] = pad
                wait = t1 - t0
                written = token
            else:
                read = PRESENT if store.touch(sid) else ABSENT
            t2 = mono()
            rec.add(KIND_NAMES[kind], t2 - t0, wait)
            log.append((kind, key, t0, t2, read, written))
            progress.step()
    progress.flush()
    return {"log": log, "rec": rec.to_dict()}


class _KeyHistory:
    """The writes of one session, indexed to answer "was this write overwritten before t?"."""

    def __init__(self, writes: list[tuple[float, float, int]]) -> None:
        writes = sorted(writes)  # by start
        self.starts = [w[0] for w in writes]
        # suffix minimum of the end times: the earliest end among writes starting at or after i
        self.suffix_min_end = [float("inf")] * (len(writes) + 1)
        for i in range(len(writes) - 1, -1, -1):
            self.suffix_min_end[i] = min(writes[i][1], self.suffix_min_end[i + 1])
        # per value written (and PRESENT: any session), starts and the running maximum of ends
        groups: dict[int, list[tuple[float, float]]] = defaultdict(list)
        for start, end, value in writes:
            groups[value].append((start, end))
            if value != ABSENT:
                groups[PRESENT].append((start, end))
        self.by_value: dict[int, tuple[list[float], list[float]]] = {}
        for value, lst in groups.items():
            running, ends = float("-inf"), []
            for _, end in lst:
                running = max(running, end)
                ends.append(running)
            self.by_value[value] = ([s for s, _ in lst], ends)

    def explain(self, observed: int, start: float, end: float) -> str | None:
        """None if a read over [start, end] may return *observed*, else why not."""
        starts, ends = self.by_value.get(observed, ([], []))
        n = bisect.bisect_left(starts, end)  # writes of that value that started before the read ended
        if n == 0:
            return "a value no write produced before the read ended"
        i = bisect.bisect_right(self.starts, ends[n - 1])
        if self.suffix_min_end[i] < start:
            return "a stale value: it had been overwritten by a write that ended before the read began"
        return None


def check(logs: list[list[tuple[int, int, float, float, int, int]]], final: dict[int, int]) -> list[str]:
    """The violations in the workers' logs and the final state, at most 20 described."""
    writes: dict[int, list[tuple[float, float, int]]] = defaultdict(list)
    reads: dict[int, list[tuple[int, float, float, int]]] = defaultdict(list)
    end_of_time = 0.0
    for log in logs:
        for kind, key, t0, t2, read, written in log:
            if kind in (SET, EDIT, DELETE):
                writes[key].append((t0, t2, written))
            if kind in (GET, EDIT, TOUCH):
                reads[key].append((kind, t0, t2, read))
            end_of_time = max(end_of_time, t2)
    end_of_time += 1.0
    problems: list[str] = []
    for key in range(KEYS):
        hist = _KeyHistory([(-2.0, -1.0, ABSENT), *writes[key]])  # the store starts empty
        seen_prev: dict[int, int] = defaultdict(int)
        for kind, t0, t2, read in reads[key]:
            why = hist.explain(read, t0, t2)
            if why:
                problems.append(f"{KIND_NAMES[kind]} of m-{key} returned {_tok(read)}: {why}")
            if kind == EDIT and read != ABSENT:
                seen_prev[read] += 1
        for tok, n in seen_prev.items():
            if n > 1:
                problems.append(f"lost update: {n} edits of m-{key} all started from {_tok(tok)}")
        why = hist.explain(final.get(key, ABSENT), end_of_time, end_of_time + 1.0)
        if why:
            problems.append(f"final value of m-{key} is {_tok(final.get(key, ABSENT))}: {why}")
    if len(problems) > 20:
        problems = [*problems[:20], f"... and {len(problems) - 20} more"]
    return problems


def _tok(token: int) -> str:
    if token == ABSENT:
        return "no session"
    if token == PRESENT:
        return "a session"
    return f"the write {token % TOKEN_BASE} of worker {token // TOKEN_BASE}"


def run(ctx: Context) -> Result:
    result = Result(ctx.name)
    opts = ctx.store_options()
    pool = ctx.pool()
    t_start = time.monotonic()
    deadline = t_start + ctx.seconds
    for i in range(ctx.processes):
        seed = worker_seed(ctx.seed, ctx.name, i)
        pool.start(f"mixed worker {i}", mixed_worker, opts, i + 1, deadline, seed, ctx.pad(), ctx.counters, ctx.slot())
    result.violations += pool.wait(deadline + 30 + 2 * ctx.processes, ctx.tick)
    outputs = [w.result for w in pool.workers if w.result is not None]
    result.add_workers([out["rec"] for out in outputs])
    if len(outputs) == ctx.processes:
        final: dict[int, int] = {}
        with opened(opts) as store:
            for key in range(KEYS):
                v = store.get(f"m-{key}")
                final[key] = v["t"] if v is not None else ABSENT
        t0 = time.monotonic()
        result.violations += check([out["log"] for out in outputs], final)
        n = sum(len(out["log"]) for out in outputs)
        result.notes.append(
            f"{n:,} acknowledged operations on {KEYS} shared sessions checked for lost updates and stale"
            f" reads in {time.monotonic() - t0:.1f} s"
        )
    result.elapsed = time.monotonic() - t_start
    result.load = ctx.seconds
    return result
