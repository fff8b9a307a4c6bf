"""Issue 10, command line: the commands and options operators expect.

``--version``; ``ls --sort size|idle|created --limit N`` with a size column; ``export`` and ``import`` as
JSON lines with each session's times (import checks every line like untrusted input and writes nothing
unless all are good, and never replaces a live session without ``--overwrite``); ``copy`` with
``--prefix``/``--table`` for a server DST and one secret per side; ``copy --backend memory`` refused.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import lockstore
from lockstore.cli import main
from lockstore.record import HEADER_SIZE, MAC_SIZE

SECRET_A = "secret-of-the-source-123"
SECRET_B = "secret-of-the-destination-456"


def run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def records(path: str | Path, **options: Any) -> dict[str, tuple[Any, float, float]]:
    with lockstore.open(path, **options) as store:
        return {sid: (rec.value, rec.created, rec.last_access) for sid, rec in store.records()}


@pytest.fixture
def store_path(tmp_path: Path) -> str:
    """A json store: small, big and old sessions, with distinct times."""
    path = tmp_path / "store"
    now = time.time()
    with lockstore.open(path, codec="json") as store:
        store.put_record("small", {"n": 1}, created=now - 100, last_access=now - 10)
        store.put_record("big", {"blob": "x" * 5000}, created=now - 300, last_access=now - 20)
        store.put_record("middle", {"blob": "y" * 500}, created=now - 50, last_access=now - 1000)
        store.put_record("old", {"n": [1.5, None, True, "é"]}, created=now - 5000, last_access=now - 5)
    return str(path)


# -- --version --------------------------------------------------------------------------------


def test_version(capsys):
    code, out, err = run(capsys, "--version")
    assert (code, out, err) == (0, f"lockstore {lockstore.__version__}\n", "")
    script = os.path.join(os.path.dirname(sys.executable), "lockstore")
    proc = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, f"lockstore {lockstore.__version__}\n")


# -- ls --sort --limit, and the size column -------------------------------------------------------


@pytest.mark.parametrize(
    ("sort", "order"),
    [
        ("id", ["big", "middle", "old", "small"]),
        ("size", ["big", "middle", "old", "small"]),
        ("idle", ["middle", "big", "small", "old"]),
        ("created", ["old", "big", "small", "middle"]),
    ],
)
def test_ls_sorts_and_limits(store_path, capsys, sort, order):
    code, out, err = run(capsys, "ls", store_path, "--sort", sort, "--json")
    assert (code, err) == (0, "")
    assert [row["id"] for row in json.loads(out)] == order
    code, out, _ = run(capsys, "ls", store_path, "--sort", sort, "--limit", "2")
    lines = out.splitlines()
    assert lines[0].split() == ["id", "created", "last", "access", "idle", "size"]
    assert [line.split()[0] for line in lines[1:]] == order[:2]


def test_ls_size_is_the_bytes_of_the_record(tmp_path, capsys):
    import lmdb

    path = tmp_path / "signed"
    with lockstore.open(path, codec="json", secret=SECRET_A, shards=1) as store:
        store["a"] = {"blob": "z" * 1234, "list": [1, 2, 3]}
        store["b"] = {}
    env = lmdb.open(str(path / "lmdb"), max_dbs=4, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            raw = {bytes(k)[2:].decode(): len(v) for k, v in txn.cursor() if bytes(k)[2:] in (b"a", b"b")}
    finally:
        env.close()
    (path.parent / "secret").write_text(SECRET_A)
    code, out, err = run(capsys, "ls", str(path), "--json", "--secret-file", str(path.parent / "secret"))
    assert code == 0, err
    sizes = {row["id"]: row["size"] for row in json.loads(out)}
    assert sizes == raw
    assert sizes["b"] == HEADER_SIZE + MAC_SIZE + len(b"{}")
    code, out, _ = run(capsys, "ls", str(path), "--sort", "size", "--secret-file", str(path.parent / "secret"))
    assert out.splitlines()[1].split()[-2:] == [f"{raw['a'] / 1024:.1f}", "KiB"]


# -- export and import ----------------------------------------------------------------------------


def test_export_then_import_restores_every_session_with_its_times(store_path, tmp_path, capsys):
    code, out, err = run(capsys, "export", store_path)
    assert (code, err) == (0, "")
    lines = [json.loads(line) for line in out.splitlines()]
    assert all(list(doc) == ["id", "created", "last_access", "value"] for doc in lines)
    dump = tmp_path / "sessions.jsonl"
    dump.write_text(out)
    restored = tmp_path / "restored"
    code, out, err = run(capsys, "import", str(restored), str(dump), "--codec", "json")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"imported 4 sessions into {restored}",
        "not imported: 0 live in the store (--overwrite replaces them), 0 already expired by its max_age",
    ]
    assert records(restored) == records(store_path)  # values and both times, exactly


def test_export_output_file_is_private_and_whole(store_path, tmp_path, capsys):
    target = tmp_path / "backup.jsonl"
    code, out, err = run(capsys, "export", store_path, "--output", str(target))
    assert (code, err) == (0, "")
    assert out == f"exported 4 sessions to {target}\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert len(target.read_text().splitlines()) == 4
    assert sorted(os.listdir(tmp_path)) == ["backup.jsonl", "store"]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ({1: "int key"}, "would not read it back the same"),
        ({"t": (1, 2)}, "would not read it back the same"),
        ({"s": {1, 2}}, "not JSON serializable"),
        ({"b": b"bytes"}, "not JSON serializable"),
        ({"f": float("nan")}, "Out of range float"),
    ],
    ids=["int-key", "tuple", "set", "bytes", "nan"],
)
def test_export_of_a_value_json_cannot_carry(tmp_path, capsys, value, why):
    path = tmp_path / "pickled"
    with lockstore.open(path) as store:  # pickle
        store["good"] = {"ok": True}
        store["weird"] = value
    target = tmp_path / "backup.jsonl"
    target.write_text("the previous backup\n")
    code, out, err = run(capsys, "export", str(path), "--output", str(target))
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith("lockstore: error: session weird holds a dict that JSON cannot carry (")
    assert why in err
    assert err.endswith("; --skip-unencodable leaves such sessions out\n")
    assert target.read_text() == "the previous backup\n"  # left as it was
    assert sorted(os.listdir(tmp_path)) == ["backup.jsonl", "pickled"]  # no temporary file left
    code, out, err = run(capsys, "export", str(path), "--skip-unencodable")
    assert code == 0
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["good"]
    assert err.splitlines()[-1] == "1 session left out (--skip-unencodable)"
    assert err.startswith("weird: not exported: ")


NOW = time.time()
GOOD = json.dumps({"id": "good", "created": NOW - 10, "last_access": NOW - 5, "value": {"a": 1}})
BAD_LINES = {
    "not-json": ("{nope", "line 2: not JSON: Expecting property name enclosed in double quotes (column 2)"),
    "array": ("[1, 2]", "line 2: a JSON list, not an object with id, created, last_access, value"),
    "no-value": ('{"id": "x", "created": 1, "last_access": 1}', "line 2: no 'value'"),
    "extra": (
        '{"id": "x", "created": 1, "last_access": 1, "value": 1, "owner": 2}',
        "line 2: unknown field 'owner' (expected id, created, last_access, value)",
    ),
    "bad-id": (
        '{"id": "../etc", "created": 1, "last_access": 1, "value": 1}',
        "line 2: 'id' is not a valid session id: '../etc'",
    ),
    "id-number": (
        '{"id": 5, "created": 1, "last_access": 1, "value": 1}',
        "line 2: 'id' is not a valid session id: a JSON int",
    ),
    "time-text": (
        '{"id": "x", "created": "1", "last_access": 1, "value": 1}',
        "line 2: 'created' is not a number of seconds: str",
    ),
    "time-bool": (
        '{"id": "x", "created": 1, "last_access": true, "value": 1}',
        "line 2: 'last_access' is not a number of seconds: bool",
    ),
    "nan": ('{"id": "x", "created": NaN, "last_access": 1, "value": 1}', "line 2: not JSON: NaN is not a number"),
    "infinity": (
        '{"id": "x", "created": 1, "last_access": Infinity, "value": 1}',
        "line 2: not JSON: Infinity is not a number",
    ),
    "overflow": (
        '{"id": "x", "created": 1e400, "last_access": 1, "value": 1}',
        "line 2: 'created' is not a finite number of seconds >= 0: inf",
    ),
    "big-int": (
        '{"id": "x", "created": 1' + "0" * 400 + ', "last_access": 1, "value": 1}',
        "line 2: 'created' is not a finite number of seconds >= 0: 1" + "0" * 39,
    ),
    "negative": (
        '{"id": "x", "created": -1, "last_access": 1, "value": 1}',
        "line 2: 'created' is not a finite number of seconds >= 0: -1",
    ),
    "future": (
        '{"id": "x", "created": 1, "last_access": 1e12, "value": 1}',
        "line 2: 'last_access' is more than a day in the future: 1000000000000.0",
    ),
    "duplicate": (GOOD, "line 2: session good is also on line 1"),
    "deep": (
        '{"id": "x", "created": 1, "last_access": 1, "value": ' + "[" * 100000 + "]" * 100000 + "}",
        "line 2: not JSON: nested too deeply",
    ),
    "too-big": (
        json.dumps({"id": "x", "created": 1, "last_access": NOW, "value": "v" * (1 << 20)}),
        "line 2: session x cannot be stored: encoded value is",
    ),
}


def write_lines(path: Path, *lines: str | bytes) -> Path:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_import_checks_every_line_and_writes_nothing_unless_all_are_good(case, tmp_path, capsys):
    line, message = BAD_LINES[case]
    dump = write_lines(tmp_path / "in.jsonl", GOOD, line, GOOD.replace('"good"', '"third"'))
    new = tmp_path / "new"
    code, out, err = run(capsys, "import", str(new), str(dump), "--codec", "json")
    assert (code, out) == (1, "")
    assert err.count("\n") == 1, err
    assert err.startswith(f"lockstore: error: {message}"), err
    assert not new.exists()  # nothing created
    existing = tmp_path / "existing"
    with lockstore.open(existing, codec="json") as store:
        store["keep"] = {"k": 1}
    code, _, err = run(capsys, "import", str(existing), str(dump))
    assert code == 1
    assert err.startswith(f"lockstore: error: {message}")
    assert sorted(records(existing)) == ["keep"]  # line 1 was good, and still not written


def test_import_rejects_bytes_that_are_not_utf8(tmp_path, capsys):
    dump = write_lines(tmp_path / "in.jsonl", GOOD, b'{"id": "\xff"}')
    code, _, err = run(capsys, "import", str(tmp_path / "new"), str(dump))
    assert (code, err) == (1, "lockstore: error: line 2: not UTF-8 (byte 9)\n")
    assert not (tmp_path / "new").exists()


def test_import_never_replaces_a_live_session_unless_told(tmp_path, capsys):
    path = tmp_path / "store"
    now = time.time()
    with lockstore.open(path, codec="json") as store:
        store.put_record("live", {"from": "store"}, created=now - 50, last_access=now - 5)
        store.put_record("stale", {"from": "store"}, created=now - 9000, last_access=now - 9000)  # expired
    dump = write_lines(
        tmp_path / "in.jsonl",
        *(
            json.dumps({"id": sid, "created": now - 100, "last_access": now - 1, "value": {"from": "file"}})
            for sid in ("live", "stale", "new")
        ),
        json.dumps({"id": "ancient", "created": 1, "last_access": 2, "value": {}}),
    )
    code, out, err = run(capsys, "import", str(path), str(dump))
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"imported 2 sessions into {path}",
        "not imported: 1 live in the store (--overwrite replaces them), 1 already expired by its max_age",
    ]
    got = records(path)
    assert got["live"][0] == {"from": "store"}
    assert got["stale"][0] == got["new"][0] == {"from": "file"}
    assert "ancient" not in got
    code, out, _ = run(capsys, "import", str(path), str(dump), "--overwrite", "--json")
    assert code == 0
    assert json.loads(out) == {"imported": 3, "present": 0, "expired": 1, "bad": []}
    assert records(path)["live"] == ({"from": "file"}, now - 100, now - 1)


def test_import_reads_standard_input_as_a_process(store_path, tmp_path):
    cli = [sys.executable, "-m", "lockstore"]
    exported = subprocess.run([*cli, "export", store_path], capture_output=True, timeout=60, check=True).stdout
    dst = tmp_path / "dst"
    proc = subprocess.run(
        [*cli, "import", str(dst), "-", "--codec", "json"], input=exported, capture_output=True, timeout=60
    )
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert records(dst) == records(store_path)


def test_import_into_a_new_store_records_its_max_age(tmp_path, capsys):
    now = time.time()
    dump = write_lines(
        tmp_path / "in.jsonl", json.dumps({"id": "a", "created": now - 7200, "last_access": now - 3600, "value": 1})
    )
    code, _, err = run(capsys, "import", str(tmp_path / "two-weeks"), str(dump), "--max-age", "1209600")
    assert code == 0, err
    with lockstore.open(tmp_path / "two-weeks") as store:
        assert store.max_age == 1209600
        assert store["a"] == 1
    code, _, err = run(capsys, "import", str(tmp_path / "two-weeks"), str(dump), "--max-age", "60")
    assert code == 2
    assert "records max_age=1209600.0, opened with max_age=60.0" in err


def test_import_and_copy_refuse_the_memory_backend(store_path, tmp_path, capsys):
    dump = write_lines(tmp_path / "in.jsonl", GOOD)
    for argv in (["copy", store_path, str(tmp_path / "dst")], ["import", str(tmp_path / "dst"), str(dump)]):
        code, out, err = run(capsys, *argv, "--backend", "memory")
        assert (code, out) == (2, "")
        assert err == (
            f"lockstore: error: --backend memory keeps a store in this process only: what {argv[0]} wrote would "
            "be lost when it exits; use lmdb or shelve\n"
        )
        assert not (tmp_path / "dst").exists()


# -- copy: a secret per side, --prefix and --table ------------------------------------------------


def test_copy_takes_a_secret_for_each_side(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LOCKSTORE_SECRET", raising=False)
    src, dst = tmp_path / "src", tmp_path / "dst"
    (tmp_path / "a").write_text(SECRET_A + "\n")
    (tmp_path / "b").write_text(SECRET_B + "\n")
    with lockstore.open(src, secret=SECRET_A) as store:
        store["alice"] = {"user": "alice"}
    code, _, err = run(
        capsys,
        "copy",
        str(src),
        str(dst),
        "--secret-file",
        str(tmp_path / "a"),
        "--dst-secret-file",
        str(tmp_path / "b"),
    )
    assert code == 0, err
    with lockstore.open(dst, secret=SECRET_B) as store:
        assert store["alice"] == {"user": "alice"}
    # the destination exists and is signed: without its secret, a one-line error that names the option
    code, _, err = run(capsys, "copy", str(src), str(tmp_path / "other"), "--secret-file", str(tmp_path / "a"))
    assert code == 0, err  # a new destination is signed with the source's secret by default
    with lockstore.open(tmp_path / "other", secret=SECRET_A) as store:
        assert store["alice"] == {"user": "alice"}
    unsigned = tmp_path / "unsigned-src"
    with lockstore.open(unsigned) as store:
        store["bob"] = {"user": "bob"}
    code, _, err = run(capsys, "copy", str(unsigned), str(dst))
    assert code == 2
    assert err == (
        f"lockstore: error: the store at {dst} is signed: give its secret in $LOCKSTORE_SECRET or with "
        "--dst-secret-file\n"
    )


def test_copy_prefix_and_table_need_a_server_destination(store_path, tmp_path, capsys):
    for option in ("--prefix", "--table"):
        code, out, err = run(capsys, "copy", store_path, str(tmp_path / "dst"), option, "x")
        assert (code, out) == (2, "")
        assert err.startswith(f"lockstore: error: {option} names a store on a ")
    assert not (tmp_path / "dst").exists()


@pytest.mark.servers
def test_copy_into_a_redis_prefix_and_a_postgres_table_and_back(
    store_path, tmp_path, redis_server, postgres_server, capsys
):
    prefix, table = f"p{os.urandom(4).hex()}", f"t{os.urandom(4).hex()}"
    want = records(store_path)
    journal = str(tmp_path / "journal.jsonl")
    code, _, err = run(capsys, "copy", store_path, redis_server, "--prefix", prefix)
    assert code == 0, err
    assert records(redis_server, prefix=prefix) == want
    code, _, err = run(capsys, "copy", store_path, postgres_server, "--table", table)
    assert code == 0, err
    assert records(postgres_server, table=table) == want
    # between servers: --src-prefix names the source's prefix
    code, _, err = run(
        capsys,
        "copy",
        redis_server,
        postgres_server,
        "--src-prefix",
        prefix,
        "--table",
        table + "b",
        "--journal",
        journal,
    )
    assert code == 0, err
    assert records(postgres_server, table=table + "b") == want
    # back into a directory: the journal of each source prefix is its own
    back = tmp_path / "back"
    code, _, err = run(capsys, "copy", redis_server, str(back), "--src-prefix", prefix)
    assert code == 0, err
    assert records(back) == want
    other = f"q{os.urandom(4).hex()}"
    with lockstore.open(redis_server, prefix=other) as store:
        store["zed"] = {"z": 1}
    code, _, err = run(capsys, "copy", redis_server, str(back), "--src-prefix", other)
    assert code == 0, err
    assert len([name for name in os.listdir(back) if name.startswith("copy-journal-")]) == 2
    assert "zed" in records(back)
