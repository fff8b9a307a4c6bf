"""Issue 10, command line: what the commands must never do.

- An unknown URL scheme (``x://y``) is an error; it never becomes a directory ``x:/y``.
- Read-only commands (``info``/``stats``, ``ls``, ``show``, ``verify``, ``export``) create nothing: no
  directory, no ``lockstore.json``, no lock file, no key or table on a server. On a path with no store they
  print one line and exit 1.
- Text read from a store (ids, values, error texts) never reaches the terminal raw: control characters
  (C0, C1, DEL) and bidi overrides and isolates are escaped, in text and in JSON.
- ``verify`` says what it checked: signatures only in a signed store, whatever ``$LOCKSTORE_SECRET`` says.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

import lockstore
from lockstore.cli import main
from lockstore.record import HEADER

SCRIPT = os.path.join(os.path.dirname(sys.executable), "lockstore")
CLI = [[sys.executable, "-m", "lockstore"], [SCRIPT]]
READ_ONLY = {
    "info": [],
    "stats": [],
    "ls": [],
    "ls --expired": [],
    "show": ["alice"],
    "verify": [],
    "export": [],
}


def run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def argv_of(command: str, path: str) -> list[str]:
    words = command.split()
    return [words[0], path, *READ_ONLY[command], *words[1:]]


def tree(root: Path) -> dict[str, str]:
    """Every entry under *root*: a file's SHA-256 (LMDB's reader table, which readers write, excepted)."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            rel = str(path.relative_to(root))
            if path.is_dir():
                found[rel] = "dir"
            elif rel == os.path.join("lmdb", "lock.mdb"):
                found[rel] = "reader table"
            else:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


# -- an unknown scheme --------------------------------------------------------------------------

SCHEMES = {
    "info": ["info", "x://y"],
    "ls": ["ls", "x://y"],
    "show": ["show", "x://y", "alice"],
    "rm": ["rm", "x://y", "alice"],
    "clean": ["clean", "x://y"],
    "verify": ["verify", "x://y"],
    "config": ["config", "x://y", "--max-age", "60"],
    "export": ["export", "x://y"],
    "import": ["import", "x://y", "IMPORT"],
    "copy-src": ["copy", "x://y", "dst"],
    "copy-dst": ["copy", "SRC", "x://y"],
    "upper-case": ["info", "REDIS://localhost/0"],
}


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_an_unknown_scheme_is_an_error_and_creates_nothing(name, tmp_path, capsys, monkeypatch):
    src = tmp_path / "src"
    with lockstore.open(src) as store:
        store["alice"] = {"a": 1}
    lines = tmp_path / "in.jsonl"
    lines.write_text('{"id": "bob", "created": 1, "last_access": 1, "value": {}}\n')
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = [{"SRC": str(src), "IMPORT": str(lines)}.get(a, a) for a in SCHEMES[name]]
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    scheme = argv[1 if name != "copy-dst" else 2].partition("://")[0]
    assert err == (
        f"lockstore: error: unknown scheme {scheme!r}: a store is a directory or a redis://, rediss://, "
        "redis+cluster://, postgresql://, postgres:// URL\n"
    )
    assert os.listdir(work) == []


@pytest.mark.parametrize("cli", CLI, ids=["python -m lockstore", "lockstore"])
def test_info_on_an_unknown_scheme_exits_2_as_a_process(cli, tmp_path):
    proc = subprocess.run([*cli, "info", "x://y"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert "unknown scheme 'x'" in proc.stderr
    assert os.listdir(tmp_path) == []


# -- read-only commands create nothing ----------------------------------------------------------


@pytest.mark.parametrize("command", sorted(READ_ONLY))
def test_read_only_commands_on_no_store_print_one_line_and_exit_1(command, tmp_path, capsys):
    missing = tmp_path / "missing"
    code, out, err = run(capsys, *argv_of(command, str(missing)))
    assert (code, out) == (1, "")
    assert err == f"lockstore: error: no store at {missing}: no such file or directory\n"
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run(capsys, *argv_of(command, str(empty)))
    assert (code, out) == (1, "")
    assert err == f"lockstore: error: no store at {empty}: the directory holds no lockstore metadata\n"
    assert os.listdir(empty) == []
    a_file = tmp_path / "file"
    a_file.write_text("not a store")
    code, out, err = run(capsys, *argv_of(command, str(a_file)))
    assert (code, err) == (1, f"lockstore: error: no store at {a_file}: not a directory\n")
    assert a_file.read_text() == "not a store"


def test_no_store_exits_1_as_a_process(tmp_path):
    for cli in CLI:
        proc = subprocess.run([*cli, "ls", str(tmp_path / "nothing")], capture_output=True, text=True, timeout=60)
        assert (proc.returncode, proc.stdout) == (1, "")
        assert proc.stderr == f"lockstore: error: no store at {tmp_path / 'nothing'}: no such file or directory\n"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("command", "backend"),
    [(c, backend) for backend in ("lmdb", "shelve") for c in sorted(READ_ONLY)],
)
def test_read_only_commands_leave_a_store_as_it_was(command, backend, tmp_path, capsys):
    path = tmp_path / "store"
    with lockstore.open(path, backend=backend, shards=8) as store:
        store["alice"] = {"user": "alice"}  # one shard written: the seven others have no file of their own
    before = tree(path)
    code, _, err = run(capsys, *argv_of(command, str(path)))
    assert code == 0, err
    assert tree(path) == before


@pytest.mark.servers
@pytest.mark.parametrize("command", sorted(READ_ONLY))
def test_read_only_commands_create_no_redis_store(command, redis_server, capsys):
    import redis

    prefix = f"none{os.urandom(4).hex()}"
    code, out, err = run(capsys, *argv_of(command, redis_server), "--prefix", prefix)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith("lockstore: error: no store at redis://")
    assert "holds no lockstore metadata" in err
    assert redis.Redis.from_url(redis_server).keys(f"{prefix}*") == []


@pytest.mark.servers
@pytest.mark.parametrize("command", sorted(READ_ONLY))
def test_read_only_commands_create_no_postgres_table(command, postgres_server, capsys):
    import psycopg

    table = f"none{os.urandom(4).hex()}"
    code, out, err = run(capsys, *argv_of(command, postgres_server), "--table", table)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "holds no lockstore metadata" in err
    with psycopg.connect(postgres_server) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,)
        if conn.execute("SELECT to_regclass('lockstore_meta')").fetchone() != (None,):
            assert conn.execute("SELECT count(*) FROM lockstore_meta WHERE store = %s", (table,)).fetchone() == (0,)


@pytest.mark.servers
def test_remote_commands_read_an_existing_store_with_its_prefix_and_table(redis_server, postgres_server, capsys):
    prefix, table = f"p{os.urandom(4).hex()}", f"t{os.urandom(4).hex()}"
    for url, where in ((redis_server, {"prefix": prefix}), (postgres_server, {"table": table})):
        with lockstore.open(url, **where) as store:
            store["alice"] = {"user": "alice"}
        flag, name = next(iter(where.items()))
        code, out, err = run(capsys, "ls", url, f"--{flag}", name, "--json")
        assert code == 0, err
        assert [row["id"] for row in json.loads(out)] == ["alice"]
    code, _, err = run(capsys, "ls", redis_server, "--table", table)
    assert code == 2
    assert err == f"lockstore: error: --table names a store on a postgresql:// server; {redis_server} is not one\n"


# -- hostile text --------------------------------------------------------------------------------

HOSTILE = "\x1b[2J\x9b31m\u202eevil\u2066\x7f\x07"
DANGER = ["\x1b", "\x9b", "\u202e", "\u2066", "\x7f", "\x07"]
EVIL_ID = "evil\x1b]0;owned\x07\u202e\x9b2J"  # valid UTF-8, not a valid id: only a raw write plants it
SHARDS = 4


def plant(path: Path) -> dict[str, Any]:
    """A json store: sessions whose values hold HOSTILE text (through the API), and a record under
    EVIL_ID written straight into LMDB (the id rules keep it out of the API)."""
    import lmdb

    value = {"name": HOSTILE, HOSTILE: [HOSTILE, 1]}
    with lockstore.open(path, codec="json", shards=SHARDS) as store:
        store["alice"] = value
        store["bob"] = {"plain": "text"}
    env = lmdb.open(str(path / "lmdb"), max_dbs=4)
    try:
        with env.begin(write=True) as txn:
            key = EVIL_ID.encode()
            now = time.time()
            txn.put(struct.pack(">H", zlib.crc32(key) % SHARDS) + key, HEADER.pack(1, 0, now, now) + b'{"x":1}')
    finally:
        env.close()
    return value


def assert_safe(text: str) -> None:
    for char in DANGER:
        assert char not in text, (char, text[:300])
    assert all(c.isprintable() or c == "\n" for c in text), text[:300]


@pytest.mark.parametrize(
    "argv",
    [
        ["ls"],
        ["ls", "--json"],
        ["ls", "--sort", "size"],
        ["verify"],
        ["verify", "--json"],
        ["show", "alice"],
        ["show", "alice", "--json"],
        ["info"],
        ["export"],
        ["copy", "DST"],
        ["rm", "alice"],
    ],
    ids=lambda a: " ".join(a),
)
def test_hostile_text_is_escaped_in_every_output(argv, tmp_path, capsys):
    path = tmp_path / "store"
    value = plant(path)
    argv = [a if a != "DST" else str(tmp_path / "dst") for a in argv]
    code, out, err = run(capsys, argv[0], str(path), *argv[1:])
    assert code in (0, 1), err
    assert_safe(out)
    assert_safe(err)
    if argv[0] in ("ls", "verify", "copy"):  # the planted id is shown, escaped (as text, or in JSON)
        escaped_json = "evil\\u001b]0;owned\\u0007\\u202e\\u009b2J"
        escaped_text = "evil\\x1b]0;owned\\x07\\u202e\\x9b2J"
        assert escaped_json in out + err if argv == ["verify", "--json"] else escaped_text in out + err
        assert code == 1  # an id that is not valid is a bad record, reported on standard error
    if argv == ["show", "alice", "--json"]:
        assert json.loads(out)["value"] == value  # escaped as \uXXXX: decodes to the same strings
        assert "\\u009b" in out and "\\u202e" in out
    if argv == ["export"]:
        lines = [json.loads(line) for line in out.splitlines()]
        assert {doc["id"]: doc["value"] for doc in lines}["alice"] == value


def test_hostile_text_never_reaches_a_terminal_from_a_process(tmp_path):
    path = tmp_path / "store"
    plant(path)
    for argv in (["ls"], ["verify"], ["show", "alice"], ["show", "alice", "--json"], ["export"]):
        proc = subprocess.run([*CLI[0], argv[0], str(path), *argv[1:]], capture_output=True, timeout=60)
        assert proc.returncode in (0, 1), proc.stderr
        for raw in (proc.stdout, proc.stderr):
            for char in DANGER:
                assert char.encode() not in raw, (argv, char)


def test_json_escapes_what_ensure_ascii_false_would_pass():
    from lockstore.cli.output import dumps, safe

    text = "a\x1b\x85\x9b\u200e\u202a\u202e\u2066\u2069\x7f\U000e0041\ud800é😀"
    doc = dumps({"v": text})
    assert json.loads(doc) == {"v": text}
    assert all(c.isprintable() for c in doc)
    assert "é😀" in doc  # printable text stays as it is
    assert safe(text) == "a\\x1b\\x85\\x9b\\u200e\\u202a\\u202e\\u2066\\u2069\\x7f\\U000e0041\\ud800é😀"
    assert safe("two\nlines\t") == "two\nlines\\x09"


def test_error_messages_escape_what_they_quote(tmp_path, capsys):
    code, out, err = run(capsys, "show", str(tmp_path), "\x1b[2J\u202e")
    assert out == ""
    assert code == 2
    assert_safe(err)
    code, out, err = run(capsys, "info", str(tmp_path / "new\x1b[2Jline"))
    assert (code, out) == (1, "")
    assert_safe(err)
    assert "new\\x1b[2Jline" in err


# -- verify says what it checked ------------------------------------------------------------------


def test_verify_on_an_unsigned_store_claims_no_signature(tmp_path, capsys, monkeypatch):
    path = str(tmp_path / "plain")
    with lockstore.open(path) as store:
        store["alice"] = {"a": 1}
    monkeypatch.setenv("LOCKSTORE_SECRET", "a-secret-of-enough-length")
    code, out, err = run(capsys, "verify", path)
    assert (code, err) == (0, "")
    assert "signature holds" not in out
    assert out == "ok: every record decodes (the store is not signed: there is no signature to check)\n"
    code, out, _ = run(capsys, "verify", path, "--json")
    assert json.loads(out) == {"ok": True, "signed": False, "bad": []}


def test_verify_on_a_signed_store_says_the_signatures_hold(tmp_path, capsys, monkeypatch):
    path = str(tmp_path / "signed")
    secret_file = tmp_path / "secret"
    secret_file.write_text("the-right-secret-1234\n")
    with lockstore.open(path, secret="the-right-secret-1234") as store:
        store["alice"] = {"a": 1}
    monkeypatch.delenv("LOCKSTORE_SECRET", raising=False)
    code, out, err = run(capsys, "verify", path, "--secret-file", str(secret_file))
    assert (code, err) == (0, "")
    assert out == "ok: every record decodes and its signature holds\n"
    code, out, _ = run(capsys, "verify", path, "--secret-file", str(secret_file), "--json")
    assert json.loads(out) == {"ok": True, "signed": True, "bad": []}
