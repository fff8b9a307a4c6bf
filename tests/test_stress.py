"""The stress harness and the benchmarks, run for real in short sizes (``python -m stress``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

from stress.scenarios import mixed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def harness(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stress", *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def run_json(*argv: str) -> dict:
    proc = harness(*argv, "--json", "--seed", "7")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["verdict"] == "pass"
    assert doc["violations"] == 0
    return doc


@pytest.mark.parametrize("scenario", ["counter", "mixed", "kill", "expiry", "fork", "threads"])
def test_scenario_short_run_passes(scenario, tmp_path):
    doc = run_json(
        "--scenario", scenario, "--seconds", "2.5", "--processes", "2", "--threads", "2", "--path", str(tmp_path)
    )
    (result,) = doc["scenarios"]
    assert result["scenario"] == scenario
    assert result["skipped"] is None
    assert sum(op["operations"] for op in result["operations"].values()) > 100
    assert result["notes"]
    assert os.path.isdir(tmp_path / scenario)  # --path keeps the store


# Each scenario's check, shown failing on a store broken on purpose (tests/stress_breaks.py, test only):
# the harness must find the violation it exists to find, say FAIL and exit 1.
BROKEN = [
    ("counter", "no-op-lock", "lost update: hot-"),
    ("mixed", "no-op-lock", "lost update: "),
    ("threads", "no-op-lock", "lost update: hot-"),
    ("fork", "no-op-lock", "a forked child entered a session its parent held"),
    ("kill", "ack-before-write", "acknowledged write lost: "),
    ("mixed", "ack-before-write", "a stale value"),
    ("expiry", "no-expiry-check", "expired session returned by "),
]


def broken_harness(breakage: str, scenario: str, path: str) -> subprocess.CompletedProcess[str]:
    options = ["--seconds", "2.5", "--processes", "2", "--threads", "2", "--json", "--path", path]
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "stress_breaks.py"), breakage, "--scenario", scenario, *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.mark.parametrize(("scenario", "breakage", "finding"), BROKEN)
def test_scenario_fails_on_a_broken_store(scenario, breakage, finding, tmp_path):
    proc = broken_harness(breakage, scenario, str(tmp_path))
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["verdict"] == "fail"
    (result,) = doc["scenarios"]
    assert result["skipped"] is None
    assert doc["violations"] == len(result["violations"]) > 0
    assert not [v for v in result["violations"] if "failed" in v.split(":")[0]]  # workers ran: no crash
    assert any(finding in v for v in result["violations"]), result["violations"]


def test_broken_store_harness_passes_unbroken():
    """The control: the same wrapper with nothing broken passes, so the failures above are the breakages'."""
    for scenario in ("counter", "expiry"):
        with tempfile.TemporaryDirectory() as path:
            proc = broken_harness("none", scenario, path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert json.loads(proc.stdout)["verdict"] == "pass"


def test_default_run_prints_tables_and_a_verdict():
    proc = harness("--seconds", "3", "--processes", "2", "--scenario", "counter", "--scenario", "kill")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "counter: ok" in out
    assert "kill: ok" in out
    for column in ("ops/s", "p50", "p99", "max", "lock wait"):
        assert column in out
    assert "\r" not in out  # no progress display when stdout is not a terminal
    assert "verdict: PASS: 2 scenario(s)" in out


def test_shelve_backend_survives_kills():
    doc = run_json("--backend", "shelve", "--scenario", "kill", "--seconds", "2.5", "--processes", "2")
    assert "writers killed with SIGKILL" in doc["scenarios"][0]["notes"][0]


def test_memory_backend_runs_workers_as_threads():
    doc = run_json("--backend", "memory", "--scenario", "threads", "--scenario", "fork", "--seconds", "1.5")
    threads, fork = doc["scenarios"]
    assert threads["skipped"] is None
    assert "memory backend" in fork["skipped"]


def test_memory_backend_counter_with_a_store_object_per_thread():
    run_json("--backend", "memory", "--scenario", "counter", "--seconds", "1.5")


def test_bad_options_exit_2():
    proc = harness("--scenario", "nonesuch")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
    proc = harness("--processes", "0")
    assert proc.returncode == 2


def _op(kind, key, start, end, read=mixed.ABSENT, written=mixed.ABSENT):
    return (kind, key, start, end, read, written)


def test_mixed_checker_accepts_a_linearizable_history():
    w1, w2 = mixed.TOKEN_BASE + 1, 2 * mixed.TOKEN_BASE + 1
    logs = [
        [_op(mixed.SET, 0, 1.0, 2.0, written=w1), _op(mixed.GET, 0, 2.5, 3.0, read=w1)],
        [_op(mixed.EDIT, 0, 3.5, 4.0, read=w1, written=w2), _op(mixed.TOUCH, 0, 4.5, 5.0, read=mixed.PRESENT)],
    ]
    assert mixed.check(logs, {0: w2}) == []


def test_mixed_checker_finds_lost_updates_and_stale_reads():
    w1, w2, w3 = mixed.TOKEN_BASE + 1, 2 * mixed.TOKEN_BASE + 1, 2 * mixed.TOKEN_BASE + 2
    logs = [
        [_op(mixed.SET, 0, 1.0, 2.0, written=w1)],
        # two edits that both started from w1: one update was lost
        [
            _op(mixed.EDIT, 0, 3.0, 4.0, read=w1, written=w2),
            _op(mixed.EDIT, 0, 5.0, 6.0, read=w1, written=w3),
            # a read of w1 long after w3 was acknowledged: stale
            _op(mixed.GET, 0, 7.0, 8.0, read=w1),
        ],
    ]
    problems = mixed.check(logs, {0: w3})
    assert any(p.startswith("lost update: 2 edits of m-0") for p in problems)
    assert any("get of m-0" in p and "stale" in p for p in problems)
    # a final value older than the last acknowledged write is a lost write too
    assert any("final value" in p for p in mixed.check([*logs[:1], [_op(mixed.SET, 0, 3.0, 4.0, written=w2)]], {0: w1}))


def test_bench_quick_prints_ratios_to_raw_lmdb():
    proc = subprocess.run(
        [sys.executable, "-m", "stress.bench", "--quick", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    results = doc["results"]
    for target in (
        "lockstore lmdb",
        "lockstore shelve",
        "raw-lmdb",
        "naive-shelve",
        "diskcache",
        "sqlitedict",
        "cachelib-fs",
    ):
        assert results["latency"][target]["get_p50"] > 0, target
    assert results["rmw"]["1p-low"]["lockstore lmdb"]["lost"] == 0
    assert results["rmw"]["2p-high"]["lockstore lmdb"]["lost"] == 0
    assert (
        results["clean_on_write"]["lockstore lmdb"]["expired_after"]
        < results["clean_on_write"]["lockstore lmdb"]["expired_before"]
    )
    assert {t["target"].split(",")[0] for t in doc["targets"]} >= {"get median <= 1.5x raw LMDB"}
    proc = subprocess.run(
        [sys.executable, "-m", "stress.bench", "--quick", "--targets", "raw-lmdb,lockstore lmdb", "--seconds", "0.2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vs raw" in proc.stdout
    assert "1.00x" in proc.stdout
