"""Tables and the target check for the benchmark results (``stress.bench``)."""

from __future__ import annotations

import datetime
from typing import Any

from ._common import fmt_int, fmt_seconds, format_table

REF = "raw-lmdb"
LS = "lockstore lmdb"


def _ref(x: Any) -> dict[str, Any]:
    return x if _ok(x) else {}


def _ok(x: Any) -> bool:
    return isinstance(x, dict) and "error" not in x


def _ratio(value: float | None, ref: float | None) -> str:
    if not value or not ref:
        return "-"
    return f"{value / ref:.2f}x"


def _err(x: Any) -> str:
    if isinstance(x, dict) and "error" in x:
        return "failed: " + str(x["error"])[:40]
    return "-"


def _latency_table(lat: dict[str, Any]) -> str:
    ref = _ref(lat.get(REF))
    rows = []
    for t, r in lat.items():
        if not _ok(r):
            rows.append([t, _err(r), "", "", "", "", "", "", ""])
            continue
        bps = r.get("bytes_per_session")
        rows.append(
            [
                t,
                fmt_seconds(r["get_p50"]),
                _ratio(r["get_p50"], ref.get("get_p50")),
                fmt_seconds(r["get_p99"]),
                fmt_seconds(r["set_p50"]),
                _ratio(r["set_p50"], ref.get("set_p50")),
                fmt_seconds(r["set_p99"]),
                fmt_int(bps) if bps else "-",
                _ratio(bps, ref.get("bytes_per_session")),
            ]
        )
    return format_table(
        ["target", "get p50", "vs raw", "get p99", "set p50", "vs raw", "set p99", "bytes/session", "vs raw"], rows
    )


def _rmw_table(rmw: dict[str, Any], contention: str) -> str | None:
    labels = [k for k in rmw if k.endswith("-" + contention)]
    if not labels:
        return None
    targets = list(dict.fromkeys(t for k in labels for t in rmw[k]))
    headers = ["target"] + [f"{k.split('p-')[0]} proc" for k in labels] + ["lost", "errors"]
    rows = []
    for t in targets:
        row = [t]
        lost = errors = 0
        for k in labels:
            r = rmw[k].get(t)
            ref = rmw[k].get(REF)
            if r is None:
                row.append("n/a")
            elif not _ok(r):
                row.append(_err(r)[:24])
            else:
                ratio = _ratio(r["ops_per_second"], ref["ops_per_second"] if _ok(ref) else None)
                row.append(f"{fmt_int(r['ops_per_second'])} ({ratio})")
                lost += r["lost"] or 0
                errors += r["errors"]
        row += [fmt_int(lost), fmt_int(errors)]
        rows.append(row)
    return format_table(headers, rows)


def _fairness_label(rmw: dict[str, Any]) -> str | None:
    highs = sorted((int(k.split("p-")[0]), k) for k in rmw if k.endswith("-high"))
    return highs[-1][1] if highs else None


def _fairness_table(rmw: dict[str, Any], label: str) -> str:
    rows = []
    for t, r in rmw[label].items():
        if not _ok(r):
            rows.append([t, _err(r), "", "", "", ""])
            continue
        ops = r["worker_ops"]
        rows.append(
            [
                t,
                fmt_seconds(r["max_latency"]),
                fmt_seconds(r["p99"]),
                fmt_int(min(ops)),
                fmt_int(max(ops)),
                f"{min(ops) / max(ops):.2f}" if max(ops) else "-",
            ]
        )
    return format_table(["target", "slowest op", "p99", "min ops/worker", "max ops/worker", "min/max"], rows)


def _clean_table(clean: dict[str, Any], sessions: int) -> str:
    ref = _ref(clean.get(REF))
    rows = []
    for t, r in clean.items():
        if not _ok(r):
            rows.append([t, _err(r), "", ""])
            continue
        removed = r["removed"]
        rows.append(
            [
                t,
                fmt_seconds(r["seconds"]),
                _ratio(r["seconds"], ref.get("seconds")),
                fmt_int(removed) if removed is not None else "-",
            ]
        )
    return format_table(["target", f"clean {sessions:,}", "vs raw", "removed"], rows)


def _cow_table(cow: dict[str, Any]) -> str:
    rows = []
    for t, r in cow.items():
        if not _ok(r):
            rows.append([t, _err(r), "", "", "", "", "", ""])
            continue
        rows.append(
            [
                t,
                f"{r['sweeping_writes']}",
                fmt_seconds(r["sweeping_max"]),
                fmt_seconds(r["other_p50"]),
                fmt_seconds(r["other_p99"]),
                fmt_seconds(r["other_max"]),
                fmt_seconds(r["baseline_p99"]),
                f"{r['expired_before']:,} -> {r['expired_after']:,}",
            ]
        )
    return format_table(
        ["target", "sweeping writes", "their max", "other p50", "other p99", "other max", "clean store p99", "expired"],
        rows,
    )


def _growth_table(growth: dict[str, Any]) -> str:
    sizes = sorted({g["sessions"] for r in growth.values() if isinstance(r, list) for g in r})
    rows = []
    for t, r in growth.items():
        if not isinstance(r, list):
            rows.append([t, _err(r)] + [""] * len(sizes))
            continue
        by = {g["sessions"]: g["get_p50"] for g in r}
        first = by.get(sizes[0])
        rows.append([t] + [fmt_seconds(by.get(s)) for s in sizes] + [_ratio(by.get(sizes[-1]), first)])
    return format_table(["target"] + [f"{s:,}" for s in sizes] + [f"{sizes[-1]:,} vs {sizes[0]:,}"], rows)


def _shelve_table(res: dict[str, Any]) -> str | None:
    rows = []
    lat = res["latency"]
    a, b = lat.get("lockstore shelve"), lat.get("naive-shelve")
    if _ok(a) and _ok(b):
        rows.append(
            ["get p50", fmt_seconds(a["get_p50"]), fmt_seconds(b["get_p50"]), _ratio(b["get_p50"], a["get_p50"])]
        )
        rows.append(
            ["set p50", fmt_seconds(a["set_p50"]), fmt_seconds(b["set_p50"]), _ratio(b["set_p50"], a["set_p50"])]
        )
    for label, by in res["rmw"].items():
        a, b = by.get("lockstore shelve"), by.get("naive-shelve")
        if _ok(a) and _ok(b):
            rows.append(
                [
                    f"edit ops/s {label}",
                    fmt_int(a["ops_per_second"]),
                    fmt_int(b["ops_per_second"]),
                    _ratio(a["ops_per_second"], b["ops_per_second"]),
                ]
            )
    if not rows:
        return None
    return format_table(["workload", "lockstore shelve", "naive shelve", "shelve speed-up"], rows)


def targets_check(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """lockstore's performance targets (issue 3), each with the figure measured and whether it is met."""
    res = doc["results"]
    out: list[dict[str, Any]] = []

    def add(what: str, figure: str, met: bool | None) -> None:
        out.append({"target": what, "measured": figure, "met": met})

    for label in ("1p-low", "4p-low", "1p-high", "4p-high"):
        by = res["rmw"].get(label, {})
        ls, ref, dc = by.get(LS), by.get(REF), by.get("diskcache")
        if _ok(ls) and _ok(ref):
            r = ls["ops_per_second"] / ref["ops_per_second"]
            add(
                f"edit() >= 70 % of raw LMDB read-modify-write, {label}",
                f"{fmt_int(ls['ops_per_second'])} vs {fmt_int(ref['ops_per_second'])} ops/s = {r:.0%}",
                r >= 0.7,
            )
        if _ok(ls) and _ok(dc):
            r = ls["ops_per_second"] / dc["ops_per_second"]
            add(
                f"edit() >= 3x diskcache transact(), {label}",
                f"{fmt_int(ls['ops_per_second'])} vs {fmt_int(dc['ops_per_second'])} ops/s = {r:.1f}x",
                r >= 3,
            )
    lost = [r["lost"] for by in res["rmw"].values() for t, r in by.items() if t == LS and _ok(r)]
    if lost:
        add("zero lost updates (lockstore lmdb, every run)", f"{sum(x or 0 for x in lost)} lost", sum(lost) == 0)
    ls, ref = res["latency"].get(LS), res["latency"].get(REF)
    if _ok(ls) and _ok(ref):
        for op in ("get", "set"):
            r = ls[f"{op}_p50"] / ref[f"{op}_p50"]
            add(
                f"{op} median <= 1.5x raw LMDB",
                f"{fmt_seconds(ls[f'{op}_p50'])} vs {fmt_seconds(ref[f'{op}_p50'])} = {r:.2f}x",
                r <= 1.5,
            )
    cow = res["clean_on_write"].get(LS)
    if _ok(cow):
        n = cow["expired_before"]
        add(
            f"the write that cleans on write among {n:,} expired sessions <= 5 ms",
            f"slowest of {cow['sweeping_writes']} sweeping writes {fmt_seconds(cow['sweeping_max'])}",
            cow["sweeping_max"] <= 0.005,
        )
        add(
            "no other write pays for cleaning (their p99 within 2x that of writes into a clean store)",
            f"others p99 {fmt_seconds(cow['other_p99'])}, max {fmt_seconds(cow['other_max'])}; clean store p99"
            f" {fmt_seconds(cow['baseline_p99'])}",
            cow["other_p99"] <= 2 * cow["baseline_p99"] + 20e-6,
        )
    growth = res["growth"].get(LS)
    if isinstance(growth, list) and len(growth) > 1:
        first, last = growth[0], growth[-1]
        r = last["get_p50"] / first["get_p50"]
        note = "" if last["sessions"] >= 1_000_000 else " (the target is at 1,000,000: drop --growth-max)"
        add(
            f"get at {last['sessions']:,} sessions <= 1.5x get at {first['sessions']:,}",
            f"{fmt_seconds(last['get_p50'])} vs {fmt_seconds(first['get_p50'])} = {r:.2f}x{note}",
            r <= 1.5,
        )
    label = _fairness_label(res["rmw"]) or ""
    fair = res["rmw"].get(label, {}).get(LS)
    if fair is not None and _ok(fair):
        ops = fair["worker_ops"]
        add(f"fairness {label}: slowest edit() <= 50 ms", fmt_seconds(fair["max_latency"]), fair["max_latency"] <= 0.05)
        add(
            f"fairness {label}: no worker below half the busiest",
            f"min {min(ops):,}, max {max(ops):,} ops per worker",
            min(ops) >= max(ops) / 2,
        )
    ratios = []
    lat = res["latency"]
    a, b = lat.get("lockstore shelve"), lat.get("naive-shelve")
    if _ok(a) and _ok(b):
        ratios += [("get", b["get_p50"] / a["get_p50"]), ("set", b["set_p50"] / a["set_p50"])]
    for lbl, by in res["rmw"].items():
        a, b = by.get("lockstore shelve"), by.get("naive-shelve")
        if _ok(a) and _ok(b) and b["ops_per_second"]:
            ratios.append((f"edit {lbl}", a["ops_per_second"] / b["ops_per_second"]))
    if ratios:
        worst = min(ratios, key=lambda x: x[1])
        add(
            "shelve backend >= 5x the naive shelve design on every workload",
            f"lowest speed-up {worst[1]:.1f}x ({worst[0]}); " + ", ".join(f"{k} {v:.1f}x" for k, v in ratios),
            worst[1] >= 5,
        )
    return out


def print_report(doc: dict[str, Any]) -> None:
    res, plan, m = doc["results"], doc["plan"], doc["machine"]
    when = datetime.datetime.fromtimestamp(doc["started"]).isoformat(sep=" ", timespec="minutes")
    load = m.get("load_average")
    print(
        f"lockstore bench, {when}: {m['platform']}, Python {m['python']}, {m['cpus']} CPUs"
        + (f", load average {load[0]:.2f}" if load else "")
        + f"; durability {plan['durability']};"
        f" {doc['seconds']:.0f} s{' (--quick)' if plan['quick'] else ''}"
    )
    print(f"command: {doc['command']}")
    for t, why in doc["skipped"].items():
        print(f"skipped {t}: {why}")
    print(f"\nget / set latency, {plan['sessions']:,} sessions of about 1 KB, one process (vs raw = ratio to raw LMDB)")
    print(_latency_table(res["latency"]))
    names = {
        "low": f"{plan['low_contention_sessions']:,} sessions",
        "high": f"{plan['high_contention_sessions']} sessions",
    }
    for contention in ("low", "high"):
        table = _rmw_table(res["rmw"], contention)
        if table:
            print(
                f"\nread-modify-write throughput, {contention} contention ({names[contention]}), ops/s"
                f" (ratio to raw LMDB), {plan['rmw_seconds']:g} s per run"
            )
            print(table)
    label = _fairness_label(res["rmw"])
    if label:
        print(
            f"\nfairness under contention ({label.replace('p-high', ' processes')} x"
            f" {plan['high_contention_sessions']} sessions)"
        )
        print(_fairness_table(res["rmw"], label))
    if res["clean"]:
        print(f"\nfull clean of {plan['clean_sessions']:,} sessions, half expired")
        print(_clean_table(res["clean"], plan["clean_sessions"]))
    if res["clean_on_write"]:
        print(
            f"\nclean on write: 2,000 writes into a store holding {plan['clean_sessions']:,} expired sessions"
            " (the first write into each shard sweeps it, at most clean_limit records)"
        )
        print(_cow_table(res["clean_on_write"]))
    if res["growth"]:
        print("\nget latency (median) as the store grows")
        print(_growth_table(res["growth"]))
    table = _shelve_table(res)
    if table:
        print("\nshelve backend against the naive shelve design (a FileLock, open, work, close per operation)")
        print(table)
    checks = targets_check(doc)
    if checks:
        print("\ntargets (lockstore lmdb unless named)")
        rows = [
            ["met" if c["met"] else ("MISSED" if c["met"] is False else "?"), c["target"], c["measured"]]
            for c in checks
        ]
        print(format_table(["", "target", "measured"], rows, align="lll"))


__all__ = ["print_report", "targets_check"]
