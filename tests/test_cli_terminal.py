"""Issue 10, command line: behaviour at the terminal and in pipes, run as real processes.

- A reader that goes away (``lockstore ls STORE | head``) ends the command quietly, with status 141 (as a
  process SIGPIPE ended), not "error: Broken pipe".
- ``clean``, ``copy``, ``export``, ``import`` and ``verify`` draw progress on standard error when it is a
  terminal (a pty here), and write nothing there when it is a pipe.
- ``stress`` names the scenarios it skipped, and a run where every scenario was skipped is no PASS.
- ``bench --targets`` takes target names a shell passes as one word (``lockstore-lmdb``).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lockstore
from lockstore.cli import main

CLI = [sys.executable, "-m", "lockstore"]
SCRIPT = os.path.join(os.path.dirname(sys.executable), "lockstore")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """3,000 sessions: ``ls`` prints some 250 KB, more than a pipe holds, so a writer must block on it."""
    path = tmp_path_factory.mktemp("big") / "store"
    with lockstore.open(path, codec="json") as store:
        for i in range(3000):
            store[f"session-{i:05d}"] = {"n": i}
    return str(path)


# -- a pipe closed early ----------------------------------------------------------------------------


@pytest.mark.parametrize("cli", [CLI, [SCRIPT]], ids=["python -m lockstore", "lockstore"])
def test_ls_into_head_exits_quietly(cli, big_store):
    proc = subprocess.Popen([*cli, "ls", big_store], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    assert first.split()[0] == b"id"  # the header
    proc.stdout.close()  # as head does after its lines: the writer has 250 KB left for a pipe of 64 KB
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141
    assert err == b""


@pytest.mark.parametrize("argv", [["info"], ["ls", "--json"], ["export"], ["verify"]], ids=" ".join)
def test_a_reader_gone_before_the_first_write_ends_the_command_quietly(argv, big_store):
    read, write = os.pipe()
    os.close(read)  # nobody will ever read: the first write fails with EPIPE
    try:
        proc = subprocess.run([*CLI, argv[0], big_store, *argv[1:]], stdout=write, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, b"")


def test_a_shell_pipeline_into_head(big_store):
    proc = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | head -n 2', "sh", SCRIPT, "ls", big_store],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert len(proc.stdout.splitlines()) == 2
    assert proc.stderr == ""
    assert proc.returncode == 141  # pipefail reports the writer SIGPIPE would have ended, as for `seq ... | head`


# -- progress: on a terminal only ---------------------------------------------------------------------


def commands(tmp_path: Path, store: str) -> dict[str, list[str]]:
    dump = tmp_path / "dump.jsonl"
    with lockstore.open(store) as opened, open(dump, "w", encoding="utf-8") as f:
        for sid, rec in opened.records():
            doc = {"id": sid, "created": rec.created, "last_access": rec.last_access, "value": rec.value}
            f.write(json.dumps(doc) + "\n")
    return {
        "clean": ["clean", store],
        "copy": ["copy", store, str(tmp_path / "copy")],
        "export": ["export", store],
        "import": ["import", str(tmp_path / "imported"), str(dump)],
        "verify": ["verify", store],
    }


LABELS = {
    "clean": "cleaning shards",
    "copy": "copying",
    "export": "exported",
    "import": "imported",
    "verify": "verifying",
}


@pytest.mark.parametrize("command", sorted(LABELS))
def test_progress_stays_off_a_pipe(command, big_store, tmp_path):
    argv = commands(tmp_path, big_store)[command]
    proc = subprocess.run([*CLI, *argv], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    assert b"\r" not in proc.stdout


def run_on_a_pty(argv: list[str]) -> tuple[int, bytes, bytes]:
    """Run the command line with its standard error on a terminal (a pty) and standard output on a pipe."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([*CLI, *argv], stdout=subprocess.PIPE, stderr=slave)
    finally:
        os.close(slave)
    assert proc.stdout is not None
    terminal, out = b"", b""
    deadline = time.monotonic() + 60
    open_fds = {master: "tty", proc.stdout.fileno(): "out"}
    try:
        while open_fds and time.monotonic() < deadline:
            ready, _, _ = select.select(list(open_fds), [], [], 1)
            for fd in ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the pty's last writer is gone
                    chunk = b""
                if not chunk:
                    del open_fds[fd]
                elif open_fds[fd] == "tty":
                    terminal += chunk
                else:
                    out += chunk
        return proc.wait(timeout=10), out, terminal
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("command", sorted(LABELS))
def test_progress_is_drawn_on_a_terminal(command, big_store, tmp_path):
    code, out, terminal = run_on_a_pty(commands(tmp_path, big_store)[command])
    assert code == 0, terminal
    assert f"\r{LABELS[command]}".encode() in terminal  # drawn, then redrawn in place
    assert terminal.rstrip(b" ").endswith(b"\r")  # and erased at the end
    assert b"\r" not in out  # standard output keeps only what the command prints
    if command == "export":
        assert len([json.loads(line) for line in out.splitlines()]) == 3000


# -- stress: skipped scenarios --------------------------------------------------------------------


def stress(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "stress", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_stress_where_every_scenario_is_skipped_is_no_pass():
    proc = stress("--backend", "memory", "--scenario", "kill", "--seconds", "1")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "kill: skipped (the memory backend lives in one process" in proc.stdout
    verdict = proc.stdout.splitlines()[-1]
    assert verdict.startswith("verdict: SKIP: 0 scenario(s) in ")
    assert "skipped: kill" in verdict
    assert "PASS" not in proc.stdout
    proc = stress("--backend", "memory", "--scenario", "kill", "--scenario", "fork", "--seconds", "1", "--json")
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["verdict"] == "skip"
    assert sorted(doc["skipped"]) == ["fork", "kill"]


def test_stress_names_the_scenarios_it_skipped():
    proc = stress("--backend", "memory", "--scenario", "kill", "--scenario", "counter", "--seconds", "1.5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdict = proc.stdout.splitlines()[-1]
    assert verdict.startswith("verdict: PASS: 1 scenario(s) in ")
    assert ", skipped: kill (seed " in verdict


# -- bench: target names without spaces -----------------------------------------------------------


def test_bench_targets_a_shell_passes_as_one_word(capsys):
    code = main(
        ["bench", "--quick", "--targets", "lockstore-lmdb", "--targets", "raw-lmdb,lmdb+filelock", "--seconds", "0.2"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    latency = out.split("get / set latency")[1].split("\n\n")[0]
    assert [line.split()[0] for line in latency.splitlines()[3:]] == ["lockstore", "raw-lmdb", "lmdb+filelock"]
    code = main(["bench", "--targets", "lockstore"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "unknown target(s) 'lockstore'; choose from lockstore-lmdb, lockstore-shelve, " in err


def test_bench_targets_as_a_process_with_a_shell_word_split():
    proc = subprocess.run(
        ["bash", "-c", f"{SCRIPT} bench --quick --targets lockstore-lmdb,raw-lmdb --seconds 0.2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "lockstore lmdb" in proc.stdout
