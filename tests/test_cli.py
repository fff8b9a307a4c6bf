"""The ``lockstore`` command line, on real stores: one test per command, plus errors and --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import lockstore
from lockstore.cli import main


@pytest.fixture
def store_path(tmp_path):
    """A store with two live sessions and one idle for 4,000 s (expired: the store's max_age is 1,800)."""
    path = tmp_path / "store"
    with lockstore.open(path) as store:
        store["alice"] = {"user": "alice", "n": 1}
        store["bob"] = {"user": "bob", "cart": [1, 2]}
        old = time.time() - 4000
        store.put_record("idle", {"user": "idle"}, created=old, last_access=old)
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_shows_settings_counts_and_shards(store_path, capsys):
    code, out, _ = run(capsys, "info", store_path)
    assert code == 0
    assert "backend    lmdb" in out
    assert "2 live, 1 expired" in out
    assert "last clean" in out
    code, out, _ = run(capsys, "info", store_path, "--json")
    stats = json.loads(out)
    assert (stats["backend"], stats["shards"], stats["live"], stats["expired"]) == ("lmdb", 16, 2, 1)
    assert len(stats["per_shard"]) == 16


def test_ls_lists_live_or_expired_sessions(store_path, capsys):
    code, out, _ = run(capsys, "ls", store_path)
    assert code == 0
    ids = [line.split()[0] for line in out.splitlines()[1:]]
    assert ids == ["alice", "bob"]
    code, out, _ = run(capsys, "ls", store_path, "--expired", "--json")
    rows = json.loads(out)
    assert [r["id"] for r in rows] == ["idle"]
    assert rows[0]["idle"] > 3900


def test_show_prints_a_decoded_session(store_path, capsys):
    code, out, _ = run(capsys, "show", store_path, "bob")
    assert code == 0
    assert "'cart': [1, 2]" in out
    code, out, _ = run(capsys, "show", store_path, "alice", "--json")
    assert json.loads(out)["value"] == {"user": "alice", "n": 1}
    code, _, err = run(capsys, "show", store_path, "nobody")
    assert code == 1
    assert err.strip() == f"lockstore: error: no live session nobody in {store_path}"
    code, _, err = run(capsys, "show", store_path, "../etc")
    assert code == 2
    assert "not a valid session id" in err


def test_rm_deletes_one_session(store_path, capsys):
    code, out, _ = run(capsys, "rm", store_path, "alice")
    assert (code, out.strip()) == (0, "removed alice")
    with lockstore.open(store_path) as store:
        assert "alice" not in store
        assert "bob" in store
    code, _, err = run(capsys, "rm", store_path, "alice")
    assert code == 1
    assert "no live session alice" in err


def test_clean_removes_expired_sessions_only(store_path, capsys):
    code, out, _ = run(capsys, "clean", store_path)
    assert code == 0
    assert out.startswith("removed 1 expired session ")
    with lockstore.open(store_path) as store:
        assert sorted(store) == ["alice", "bob"]
        assert list(store.records(expired=True)) == []
    code, out, _ = run(capsys, "clean", store_path, "--json")
    assert json.loads(out)["removed"] == 0


def test_clean_max_idle_removes_idle_sessions_too(store_path, capsys):
    with lockstore.open(store_path) as store:
        now = time.time()
        store.put_record("quiet", {"user": "quiet"}, created=now - 900, last_access=now - 900)
    code, out, _ = run(capsys, "clean", store_path, "--max-idle", "600")
    assert code == 0
    assert out.startswith("removed 2 sessions idle over 600 s in ")  # quiet, and idle (expired)
    with lockstore.open(store_path) as store:
        assert sorted(store) == ["alice", "bob"]
    code, _, err = run(capsys, "clean", store_path, "--max-idle", "0")
    assert code == 2
    assert "must be > 0" in err


def test_verify_passes_then_lists_tampered_records(tmp_path, capsys, monkeypatch):
    path = str(tmp_path / "signed")
    with lockstore.open(path, secret="the-right-secret-1234") as store:
        store["s1"] = {"a": 1}
        store["s2"] = {"b": 2}
    monkeypatch.setenv("LOCKSTORE_SECRET", "the-right-secret-1234")
    code, out, _ = run(capsys, "verify", path)
    assert code == 0
    assert out.startswith("ok")
    monkeypatch.setenv("LOCKSTORE_SECRET", "a-wrong-secret-123456")  # every signature now fails, as after tampering
    code, out, err = run(capsys, "verify", path)
    assert code == 1
    assert sorted(line.split(":")[0] for line in out.splitlines()) == ["s1", "s2"]
    assert "2 bad records" in err
    code, out, _ = run(capsys, "verify", path, "--json")
    assert code == 1
    assert sorted(b["id"] for b in json.loads(out)["bad"]) == ["s1", "s2"]
    monkeypatch.delenv("LOCKSTORE_SECRET")
    code, _, err = run(capsys, "verify", path)
    assert code == 2
    assert "is signed" in err


def test_copy_copies_sessions_into_a_new_store(store_path, tmp_path, capsys):
    dst = str(tmp_path / "copy")
    code, out, err = run(capsys, "copy", store_path, dst, "--codec", "json")
    assert code == 0, err
    journal = next(name for name in os.listdir(dst) if name.startswith("copy-journal-"))
    assert out.splitlines() == [
        f"copied 2 sessions from {store_path} to {dst}",
        "not copied: 0 present in the destination, 0 deleted there, 0 changed there, 0 unchanged since the last copy",
        f"journal: {os.path.join(dst, journal)}",
    ]
    with lockstore.open(dst) as store:
        assert store["bob"] == {"user": "bob", "cart": [1, 2]}
        assert store.stats()["codec"] == "json"
        assert "idle" not in store
        del store["alice"]  # logged out on the new store
    code, out, err = run(capsys, "copy", store_path, dst, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["written"], doc["unchanged"], doc["bad"]) == (0, 2, [])
    with lockstore.open(dst) as store:
        assert sorted(store) == ["bob"]


def test_copy_journal_defaults_and_between_two_servers(tmp_path, capsys):
    from lockstore.cli import build_parser
    from lockstore.cli.transfer import _journal_path

    def journal(*argv):
        return _journal_path(build_parser().parse_args(["copy", *argv]))

    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    url = "redis://:secret@127.0.0.1:6379/0?password=other&prefix=p"
    assert journal(src, dst, "--journal", "j.jsonl") == "j.jsonl"
    # in the directory store of the pair, named after the other store (a URL without its credentials)
    in_dst = journal(src, dst)
    assert os.path.dirname(in_dst) == dst
    assert journal(str(tmp_path / "x" / ".." / "src"), dst) == in_dst
    assert journal(url, dst) == journal("redis://127.0.0.1:6379/0?prefix=p", dst) != in_dst
    assert os.path.dirname(journal(src, url)) == src
    code, out, err = run(capsys, "copy", url, "postgresql://127.0.0.1/db")
    assert (code, out) == (2, "")
    assert err == (
        "lockstore: error: copying between two servers needs --journal FILE: where to remember what was copied\n"
    )


@pytest.mark.parametrize("command", ["info", "ls", "clean", "verify"])
def test_a_path_without_a_store_is_one_line_and_creates_nothing(tmp_path, capsys, command):
    missing = tmp_path / "missing"
    code, out, err = run(capsys, command, str(missing))
    assert code == 1  # issue 10: no store is a problem found (1), as no such session is, not an error (2)
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"lockstore: error: no store at {missing}")
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, command, str(empty))
    assert code == 1
    assert "holds no lockstore metadata" in err
    assert os.listdir(empty) == []


@pytest.mark.parametrize("command", ["info", "ls", "show", "rm", "clean", "verify", "copy"])
def test_no_command_takes_an_expiry_rule_of_its_own(store_path, tmp_path, capsys, command):
    """The store's max_age decides what is expired, never the command line's (issue 9, item 8)."""
    argv = {"show": [store_path, "alice"], "rm": [store_path, "alice"], "copy": [store_path, str(tmp_path / "d")]}
    code, _, err = run(capsys, command, *argv.get(command, [store_path]), "--max-age", "600")
    assert code == 2
    assert "unrecognized arguments: --max-age" in err
    with lockstore.open(store_path) as store:
        assert len(store) == 2
    assert not (tmp_path / "d").exists()


def test_help_everywhere(capsys):
    commands = ("info", "stats", "ls", "show", "rm", "clean", "config", "verify", "copy", "export", "import",
                "stress", "bench")
    for argv in (["--help"], *([c, "--help"] for c in commands)):
        code, out, _ = run(capsys, *argv)
        assert code == 0, argv
        assert out.startswith("usage: lockstore"), argv
    code, _, err = run(capsys, "frobnicate")
    assert code == 2
    assert "invalid choice" in err


def test_stress_command_runs_the_harness(capsys):
    code, out, _ = run(capsys, "stress", "--scenario", "counter", "--seconds", "1.5", "--processes", "2", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["verdict"] == "pass"
    assert doc["scenarios"][0]["operations"]


def test_bench_command_runs_the_benchmarks(capsys):
    code, out, _ = run(capsys, "bench", "--quick", "--targets", "lockstore lmdb,raw-lmdb", "--seconds", "0.2")
    assert code == 0
    assert "get / set latency" in out
    assert "1.00x" in out  # raw LMDB against itself
    assert "targets (lockstore lmdb unless named)" in out


def test_console_script_reports_errors_without_a_traceback(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "lockstore")
    argv = [script] if os.path.exists(script) else [sys.executable, "-m", "lockstore"]
    proc = subprocess.run([*argv, "ls", str(tmp_path / "nothing")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.strip() == f"lockstore: error: no store at {tmp_path / 'nothing'}: no such file or directory"
    assert "Traceback" not in proc.stderr
