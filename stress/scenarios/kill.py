"""kill: writers are killed with SIGKILL at random moments; no acknowledged write may be lost.

Each writer sets its own sessions (``k<w>-<i>``, the value is a sequence number), increments its own
counter (``c<w>``) and a shared counter with ``edit()``, and after each acknowledged write sends
one message over its own pipe. The parent kills a random writer every few tens of milliseconds and
starts a fresh one. At the end every writer is killed, the store is reopened, and

- ``verify()`` reports no bad record;
- each ``k<w>-<i>`` holds at least its last acknowledged sequence number;
- each ``c<w>`` holds its acknowledged count, or one more; the shared counter holds at least the
  sum of acknowledged increments and at most that plus one per killed writer;
- a killed lock holder blocks no one: the survivors keep going, and a final ``edit()`` of the
  shared counter succeeds within the store's timeout.
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import os
import random
import signal
import time
from typing import Any

from .._common import Recorder, mp_context, worker_seed
from . import Context, Progress, Result, opened

OWN_KEYS = 32
SET, OWN, SHARED = range(3)


def writer(opts: dict[str, Any], wid: int, conn: Any, seed: int, pad: str, counters: Any, slot: int) -> None:
    rng = random.Random(seed)
    progress = Progress(counters, slot)
    rec = Recorder(seed)
    clock = time.perf_counter
    seq = 0
    try:
        with opened(opts) as store:
            conn.send(("ready", 0, 0))
            while True:
                r = rng.random()
                seq += 1
                t0 = clock()
                if r < 0.6:
                    i = rng.randrange(OWN_KEYS)
                    store[f"k{wid}-{i}"] = {"seq": seq, "pad": pad}
                    msg = (SET, i, seq)
                    kind = "set"
                    t1 = None
                else:
                    sid = f"c{wid}" if r < 0.85 else "shared"
                    with store.edit(sid) as s:
                        t1 = clock()
                        n = s["n"] = s.get("n", 0) + 1
                    msg = (OWN if sid != "shared" else SHARED, 0, n)
                    kind = "edit"
                t2 = clock()
                rec.add(kind, t2 - t0, None if t1 is None else t1 - t0)
                conn.send(msg)
                if not seq & 255:
                    conn.send(("rec", rec.to_dict(), 0))
                    rec = Recorder(seed + seq)
                progress.step()
    except BaseException as exc:
        with contextlib.suppress(Exception):
            conn.send(("error", f"{type(exc).__name__}: {exc}", 0))
        os._exit(3)


class _Writer:
    def __init__(self, wid: int, process: Any, conn: Any) -> None:
        self.wid = wid
        self.process = process
        self.conn = conn
        self.ready = False
        self.last_set: dict[int, int] = {}
        self.own = 0
        self.shared = 0
        self.open = True


def run(ctx: Context) -> Result:
    result = Result(ctx.name)
    if ctx.in_process:
        result.skipped = "the memory backend lives in one process: nothing survives a kill"
        return result
    opts = ctx.store_options()
    with opened(opts):  # create the store before any writer can be killed
        pass
    mp = mp_context()
    rng = ctx.rng
    writers: dict[int, _Writer] = {}
    recs: list[dict[str, Any]] = []
    next_wid = 0
    kills = 0

    def spawn() -> None:
        nonlocal next_wid
        next_wid += 1
        parent, child = mp.Pipe(duplex=False)
        p = mp.Process(
            target=writer,
            args=(
                opts,
                next_wid,
                child,
                worker_seed(ctx.seed, ctx.name, next_wid),
                ctx.pad(),
                ctx.counters,
                ctx.slot(),
            ),
            daemon=True,
        )
        p.start()
        child.close()
        writers[next_wid] = _Writer(next_wid, p, parent)

    def drain(w: _Writer, block: bool) -> None:
        while w.open and (block or w.conn.poll()):
            try:
                kind, a, b = w.conn.recv()
            except (EOFError, OSError):
                w.open = False
                break
            if kind == SET:
                w.last_set[a] = b
            elif kind == OWN:
                w.own = b
            elif kind == SHARED:
                w.shared += 1
            elif kind == "ready":
                w.ready = True
            elif kind == "rec":
                recs.append(a)
            elif kind == "error":
                result.violations.append(f"writer {w.wid} failed: {a}")

    def kill(w: _Writer) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.process.pid, signal.SIGKILL)
        w.process.join(5.0)
        drain(w, block=True)
        w.conn.close()

    t_start = time.monotonic()
    deadline = t_start + ctx.seconds
    for _ in range(ctx.processes):
        spawn()
    try:
        next_kill = time.monotonic() + rng.uniform(0.05, 0.3)
        while time.monotonic() < deadline:
            live = [w for w in writers.values() if w.open]
            multiprocessing.connection.wait([w.conn for w in live], timeout=0.02)
            for w in live:
                drain(w, block=False)
            if time.monotonic() >= next_kill:
                ready = [w for w in live if w.ready and w.process.is_alive()]
                if ready:
                    kill(rng.choice(ready))
                    kills += 1
                    spawn()
                next_kill = time.monotonic() + rng.uniform(0.02, 0.3)
            if ctx.tick is not None:
                ctx.tick()
    finally:
        for w in writers.values():
            if w.open:
                kill(w)
    result.add_workers(recs)
    result.elapsed = time.monotonic() - t_start
    result.load = ctx.seconds
    _check(ctx, opts, list(writers.values()), kills + ctx.processes, result)
    return result


def _check(ctx: Context, opts: dict[str, Any], writers: list[_Writer], killed: int, result: Result) -> None:
    problems: list[str] = []
    with opened({**opts, "timeout": 10.0}) as store:
        bad = store.verify()
        problems += [f"verify: {sid}: {why}" for sid, why in bad[:10]]
        for w in writers:
            for i, seq in w.last_set.items():
                v = store.get(f"k{w.wid}-{i}")
                got = v["seq"] if isinstance(v, dict) else None
                if got is None or got < seq:
                    problems.append(f"acknowledged write lost: k{w.wid}-{i} holds {got}, acknowledged {seq}")
            v = store.get(f"c{w.wid}")
            got = v["n"] if isinstance(v, dict) else 0
            if not w.own <= got <= w.own + 1:
                problems.append(f"counter c{w.wid} holds {got}, acknowledged {w.own}")
        try:
            with store.edit("shared") as s:
                n = s.get("n", 0)
        except Exception as exc:  # a stale lock would show here as a timeout
            problems.append(f"final edit of the shared counter failed: {type(exc).__name__}: {exc}")
            n = None
        acked = sum(w.shared for w in writers)
        if n is not None and not acked <= n <= acked + killed:
            problems.append(f"shared counter holds {n}, acknowledged {acked} (at most {killed} in flight)")
    acked_writes = sum(len(w.last_set) for w in writers)
    kills = killed - ctx.processes
    if kills == 0:
        problems.append("no writer was killed: the run was too short to test anything")
    result.violations += problems[:20]
    result.notes.append(
        f"{kills} writers killed with SIGKILL, {len(writers)} started; {acked_writes:,} last acknowledged"
        f" sets and {sum(w.own for w in writers) + sum(w.shared for w in writers):,} acknowledged increments"
        " checked after reopening"
    )
