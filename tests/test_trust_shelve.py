"""Issue 9, items 1 and 6, on the shelve engine: stored bytes never reach pickle, and no read changes a file.

Item 1: a pickle planted in a shard with the standard ``dbm.dumb`` runs nothing, in a json store and in a
signed one; stores written through ``shelve.Shelf`` (values pickled) are read by a strict parser and
upgraded in place. Item 6: a damaged ``dbm.dumb`` index is :class:`CorruptRecord`, left byte for byte as
it was; only a torn final line is skipped by readers and cut by the next writer.
"""

from __future__ import annotations

import dbm.dumb
import os
import pickle
import pickletools
import re
import shelve
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lockstore
from lockstore import CorruptRecord
from lockstore.backends.dumb import DumbShard
from lockstore.backends.shelve import ShelveEngine, unwrap_legacy
from lockstore.codec import Codec
from lockstore.ids import shard_of
from lockstore.record import TIME as ATIME

NOW = 1_700_000_000.0
INDEX = r"shard-000\.dir"  # the file a damaged-index error names
FUZZ = settings(max_examples=300, deadline=None)


class Planted:
    """A pickle that, loaded, creates the directory *marker*: proof that stored bytes ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> Any:
        return os.mkdir, (self.marker,)


def plant(store_dir: Path, shards: int, sid: str, value: bytes) -> None:
    """Write *value* under *sid* into its shard with nothing but the standard library's ``dbm.dumb``."""
    base = store_dir / "shelve" / f"shard-{shard_of(sid, shards):03d}"
    with dbm.dumb.open(str(base), "w") as db:
        db[sid.encode()] = value


def read_record(path: Path, sid: str) -> bytes:
    with lockstore.open(path) as store:
        return store._engine.get(0, sid.encode())  # type: ignore[attr-defined,no-any-return]


def read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# -- item 1: a planted pickle never runs ------------------------------------------------------------


@pytest.mark.parametrize("options", [{"codec": "json"}, {"secret": b"x" * 32}], ids=["json", "signed"])
def test_a_planted_pickle_never_runs(tmp_path: Path, options: dict[str, Any]) -> None:
    path, marker = tmp_path / "s", tmp_path / "ran"
    with lockstore.open(path, backend="shelve", shards=4, **options) as store:
        store["good"] = {"n": 1}
    plant(path, 4, "evil", pickle.dumps(Planted(marker), protocol=5))
    with lockstore.open(path, **options) as store:
        with pytest.raises(CorruptRecord, match="pickle"):
            store["evil"]
        assert len(store) == 1  # counting and listing go on past it: it holds no live session
        assert list(store) == ["good"]
        with pytest.raises(CorruptRecord):
            list(store.records())
        with pytest.raises(CorruptRecord):
            "evil" in store  # noqa: B015
        try:
            bad = store.verify()
        except CorruptRecord:
            pass
        else:
            assert [sid for sid, _ in bad] == ["evil"]
        assert store["good"] == {"n": 1}
        assert store.clean(max_idle=0) == 1  # sweeps go past it (leaving it for an operator)...
        assert not marker.exists()
    with dbm.dumb.open(str(path / "shelve" / f"shard-{shard_of('evil', 4):03d}"), "r") as db:
        assert db[b"evil"] == pickle.dumps(Planted(marker), protocol=5)  # ...and do not delete it


def test_a_legacy_engine_runs_no_pickle_either(tmp_path: Path) -> None:
    shelf_dir, marker = tmp_path / "shelve", tmp_path / "ran"
    shelf_dir.mkdir()
    codec = Codec("json", None, 1 << 20)
    good = codec.record(b"good", b'{"n":1}', NOW, NOW)
    with dbm.dumb.open(str(shelf_dir / "shard-000"), "c") as db:
        db[b"good"] = pickle.dumps(good, protocol=5)
        db[b"evil"] = pickle.dumps(Planted(marker), protocol=5)
        db[b"text"] = pickle.dumps(good.decode("latin-1"), protocol=5)  # a str, not bytes
        db[b"array"] = pickle.dumps(bytearray(good), protocol=5)
    engine = ShelveEngine(str(shelf_dir), 1, "dbm.dumb", "process", 0o600, legacy=True)
    try:
        assert engine.get(0, b"good") == good
        for key in (b"evil", b"text", b"array"):
            with pytest.raises(CorruptRecord):
                engine.get(0, key)
        scanned = dict(engine.scan(0))  # a scan passes what holds no record on, for the codec to refuse
        assert scanned[b"good"] == good
        for key in (b"evil", b"text", b"array"):
            with pytest.raises(CorruptRecord):
                codec.decode(key, scanned[key])
        assert engine.upgrade(0) == 1  # the good one; what does not unwrap stays as it is
        assert engine.sweep(0, NOW, NOW + 1, None) == 1  # past the bad ones, which stay
        assert not marker.exists()
    finally:
        engine.close()
    with dbm.dumb.open(str(shelf_dir / "shard-000"), "r") as db:
        assert sorted(db.keys()) == [b"#clean", b"array", b"evil", b"text"]


# -- item 1: stores written through shelve.Shelf ----------------------------------------------------


def legacy_shard(shelf_dir: Path, n: int) -> dict[bytes, bytes]:
    """A shard as lockstore wrote it through ``shelve.Shelf(protocol=5)``: every value a pickle of the
    record bytes, ``#clean`` too. Returns the records by key."""
    codec = Codec("json", None, 1 << 20)
    records = {}
    with shelve.Shelf(dbm.dumb.open(str(shelf_dir / "shard-000"), "c"), protocol=5) as shelf:
        for i in range(n):
            key = f"s{i}".encode()
            records[key] = codec.record(key, b'{"i":%d,"pad":"%s"}' % (i, b"x" * (i * 40)), NOW + i, NOW)
            shelf[key.decode()] = records[key]
        shelf["#clean"] = ATIME.pack(NOW - 5)
    return records


def engine(shelf_dir: Path, *, legacy: bool) -> ShelveEngine:
    return ShelveEngine(str(shelf_dir), 1, "dbm.dumb", "process", 0o600, legacy=legacy)


def test_a_legacy_engine_reads_and_upgrades_a_shelf_store(tmp_path: Path) -> None:
    records = legacy_shard(tmp_path, 12)
    old = engine(tmp_path, legacy=True)
    assert all(old.get(0, key) == rec for key, rec in records.items())
    assert dict(old.scan(0)) == records
    assert dict(old.scan_times(0)) == {key: NOW + i for i, key in enumerate(records)}
    assert old.last_clean(0) == NOW - 5
    new = engine(tmp_path, legacy=False)
    with pytest.raises(CorruptRecord, match="pickle"):
        new.get(0, b"s0")
    assert new.last_clean(0) == 0.0  # not a raw time: clean now
    assert old.upgrade(0) == 13  # twelve records and #clean
    assert old.upgrade(0) == 0
    with dbm.dumb.open(str(tmp_path / "shard-000"), "r") as db:  # raw bytes, as the standard dbm.dumb sees them
        assert {key: db[key] for key in db if key != b"#clean"} == records
        assert db[b"#clean"] == ATIME.pack(NOW - 5)
    for e in (old, new):
        assert dict(e.scan(0)) == records
        assert e.last_clean(0) == NOW - 5
        e.close()


def test_an_upgrade_killed_half_way_leaves_a_readable_mix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = legacy_shard(tmp_path, 10)
    real_setitem = DumbShard.__setitem__
    writes: list[bytes] = []

    def killed_after_four(self: DumbShard, key: bytes, value: bytes) -> None:
        if len(writes) == 4:
            raise SystemExit("killed")
        real_setitem(self, key, value)
        writes.append(key)

    monkeypatch.setattr(DumbShard, "__setitem__", killed_after_four)
    dying = engine(tmp_path, legacy=True)
    with pytest.raises(SystemExit):
        dying.upgrade(0)
    monkeypatch.undo()
    dying.close()
    with dbm.dumb.open(str(tmp_path / "shard-000"), "r") as db:
        first_bytes = sorted(db[key][:1] for key in db if key != b"#clean")
    assert first_bytes == [b"\x01"] * 4 + [b"\x80"] * 6  # four rewritten, six still pickled
    old = engine(tmp_path, legacy=True)
    assert dict(old.scan(0)) == records
    new = engine(tmp_path, legacy=False)
    codec = Codec("json", None, 1 << 20)
    with pytest.raises(CorruptRecord):
        [codec.decode(key, rec) for key, rec in new.scan(0)]
    assert old.upgrade(0) == 7  # the six left and #clean
    assert dict(new.scan(0)) == records
    old.close()
    new.close()


def test_a_new_store_writes_no_pickle(tmp_path: Path) -> None:
    with lockstore.open(tmp_path / "s", backend="shelve", shards=1, codec="json", clean_interval=1) as store:
        store["a"] = {"n": 1}
        store.clean()
    with dbm.dumb.open(str(tmp_path / "s" / "shelve" / "shard-000"), "r") as db:
        assert db[b"a"][:1] == b"\x01"
        assert len(db[b"#clean"]) == ATIME.size


# -- item 1: the parser of legacy values ------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 70000])
def test_unwrap_reads_what_pickle_writes(protocol: int, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + os.urandom(size % 256)
    assert unwrap_legacy(pickle.dumps(data, protocol=protocol)) == data


@FUZZ
@given(data=st.binary(max_size=600), protocol=st.integers(2, 5))
def test_unwrap_round_trips(data: bytes, protocol: int) -> None:
    assert unwrap_legacy(pickle.dumps(data, protocol=protocol)) == data


# What pickle reads in each accepted form: the opcodes pickletools finds (it only parses, it runs nothing);
# a frame and a memo change nothing in what pickle loads, and may be missing
_BYTES_FORMS = {("PROTO", op, "STOP") for op in ("SHORT_BINBYTES", "BINBYTES", "BINBYTES8")}
_CODECS_FORMS = {
    ("PROTO", "GLOBAL", "BINPUT", "EMPTY_TUPLE", "REDUCE", "BINPUT", "STOP"),
    ("PROTO", "GLOBAL", "BINPUT", *("BINUNICODE", "BINPUT") * 2, "TUPLE2", "BINPUT", "REDUCE", "BINPUT", "STOP"),
}
_VALUE_OPS = ("SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BINUNICODE", "GLOBAL")


def check_unwrap(value: bytes) -> None:
    """unwrap_legacy(value) raises CorruptRecord, or returns exactly the bytes object pickle would load."""
    try:
        got = unwrap_legacy(value)
    except CorruptRecord:
        return
    ops = list(pickletools.genops(value))
    names = tuple(op.name for op, _, _ in ops)
    assert ops[-1][2] == len(value) - 1  # STOP is the last byte
    args = [arg for op, arg, _ in ops if op.name in _VALUE_OPS]
    if "GLOBAL" in names:
        assert names in _CODECS_FORMS
        if len(args) == 1:
            assert args == ["__builtin__ bytes"] and got == b""
        else:
            assert args[0] == "_codecs encode" and args[2] == "latin1" and got == args[1].encode("latin-1")
    else:
        assert tuple(n for n in names if n not in ("FRAME", "MEMOIZE", "BINPUT")) in _BYTES_FORMS, names
        assert args == [got]


@FUZZ
@given(
    data=st.binary(max_size=300),
    protocol=st.integers(2, 5),
    edits=st.lists(st.tuples(st.sampled_from("rid"), st.integers(0, 400), st.integers(0, 255)), max_size=3),
    cut=st.integers(0, 400),
)
def test_unwrap_fuzzed(data: bytes, protocol: int, edits: list[tuple[str, int, int]], cut: int) -> None:
    value = bytearray(pickle.dumps(data, protocol=protocol))
    for kind, at, byte in edits:
        at %= len(value)
        if kind == "r":
            value[at] = byte
        elif kind == "i":
            value.insert(at, byte)
        else:
            del value[at]
    check_unwrap(bytes(value))
    check_unwrap(bytes(value[: cut % (len(value) + 1)]))


@FUZZ
@given(st.binary(max_size=64))
def test_unwrap_random_bytes(tail: bytes) -> None:
    for head in (b"", b"\x80", b"\x80\x05", b"\x80\x05\x95", b"\x80\x03", b"\x80\x02", b"\x80\x04\x8e"):
        check_unwrap(head + tail)


@pytest.mark.parametrize(
    "value",
    [
        b"\x80\x05\x8e" + (2**63).to_bytes(8, "little") + b"\x94.",  # a length far past the end
        b"\x80\x05B" + (2**32 - 1).to_bytes(4, "little") + b"ab\x94.",
        b"\x80\x05\x95" + (2**64 - 1).to_bytes(8, "little") + b"C\x01a\x94.",  # a frame of the wrong length
        b"\x80\x05\x95\x05\x00\x00\x00\x00\x00\x00\x00C\x01a\x94.\x00",  # bytes after STOP
        b"\x80\x05C\x01a\x94\x94.",  # two memos
        b"\x80\x03\x8e\x01\x00\x00\x00\x00\x00\x00\x00a.",  # BINBYTES8 is protocol 4
        b"\x80\x06C\x01a\x94.",  # protocol 6
        b"\x80\x02c_codecs\nencode\nq\x00X\x02\x00\x00\x00\xc4\x80q\x01X\x06\x00\x00\x00latin1q\x02\x86q\x03Rq\x04.",
        b"\x80\x05",
        b"",
    ],
)
def test_unwrap_refuses(value: bytes) -> None:
    with pytest.raises(CorruptRecord):
        unwrap_legacy(value)


# -- item 6: a damaged dbm.dumb index ---------------------------------------------------------------


def shelve_store(tmp_path: Path, n: int = 8) -> tuple[Path, Path]:
    """A one-shard shelve store holding s0..s{n-1}; returns its path and the shard's index file."""
    path = tmp_path / "s"
    with lockstore.open(path, backend="shelve", shards=1, codec="json") as store:
        for i in range(n):
            store[f"s{i}"] = {"i": i}
    return path, path / "shelve" / "shard-000.dir"


def test_a_zero_filled_index_is_an_error_and_loses_nothing(tmp_path: Path) -> None:
    path, index = shelve_store(tmp_path)
    good = read_bytes(index)
    index.write_bytes(b"\0" * len(good))  # in place: the same file, as a crashed file system leaves it
    with lockstore.open(path) as store:
        with pytest.raises(CorruptRecord, match=INDEX):
            store["s0"]
        with pytest.raises(CorruptRecord):
            len(store)
        with pytest.raises(CorruptRecord):
            store["new"] = {"n": 1}
        assert read_bytes(index) == b"\0" * len(good)  # left exactly as it was
        index.write_bytes(good)  # an operator restores it
        assert {sid: store[sid]["i"] for sid in store} == {f"s{i}": i for i in range(8)}
    with lockstore.open(path) as store:
        assert len(store) == 8


@pytest.mark.parametrize(
    "line",
    [
        b"garbage",
        b"\0\0\0\0",
        b"1, (0, 3)",  # the old fallback parser took this for a line of the standard dbm.dumb
        b"'s1', 'xy'",
        b"'s1', {0: 1, 2: 3}",
        b'"s1", (0, 3)',
        b"'s1', (0, 3), 'x'",
        b"'s/1', (0, 3)",
        b"'s1', (-1, 3)",
        b"'s1', (0, 9999999999999999999)",  # 19 digits: parses, but lies past the end of .dat
        b"'s1', (99999999999999999999999, 1)",  # 23 digits
        b"'s1', (1000000, 5)",
    ],
)
@pytest.mark.parametrize("where", ["middle", "last"])
def test_a_bad_index_line_is_an_error_and_the_file_is_left_alone(tmp_path: Path, line: bytes, where: str) -> None:
    path, index = shelve_store(tmp_path)
    lines = read_bytes(index).splitlines(keepends=True)
    lines.insert(3 if where == "middle" else len(lines), line + b"\n")
    damaged = b"".join(lines)
    index.write_bytes(damaged)
    with lockstore.open(path) as store:
        for action in (lambda: store["s0"], lambda: len(store), lambda: store.__setitem__("s0", 1), store.clean):
            with pytest.raises(CorruptRecord, match=INDEX):
                action()
        assert read_bytes(index) == damaged


@pytest.mark.parametrize("tail", [b"'s9', (0, ", b"'", b"'#clea", b"'s9', (12, 34)"])
def test_a_torn_last_line_is_skipped_by_readers_and_cut_by_the_next_writer(tmp_path: Path, tail: bytes) -> None:
    path, index = shelve_store(tmp_path)
    torn = read_bytes(index) + tail  # a writer killed while appending its line: never acknowledged
    index.write_bytes(torn)
    with lockstore.open(path) as store:
        assert len(store) == 8 and store["s3"] == {"i": 3}
        assert read_bytes(index) == torn  # a reader changes nothing
        store["s9"] = {"i": 9}
    after = read_bytes(index)
    good = torn[: len(torn) - len(tail)]
    assert after.startswith(good)
    assert re.fullmatch(rb"'s9', \(\d+, \d+\)\n", after[len(good) :])  # the torn line cut, the writer's after
    with lockstore.open(path) as store:
        assert {sid: store[sid]["i"] for sid in store} == {f"s{i}": i for i in [*range(8), 9]}
    with dbm.dumb.open(str(index)[: -len(".dir")], "r") as plain:  # and the standard dbm.dumb reads it
        assert plain[b"s9"] == read_record(path, "s9")


@pytest.mark.parametrize("tail", [b"'s9', (0, x", b"\0", b"'s9', (0, 3)x", b"'s" + b"9" * 300])
def test_a_last_line_that_is_no_torn_line_is_an_error(tmp_path: Path, tail: bytes) -> None:
    path, index = shelve_store(tmp_path)
    damaged = read_bytes(index) + tail
    index.write_bytes(damaged)
    with lockstore.open(path) as store:
        with pytest.raises(CorruptRecord, match=INDEX):
            store["s0"]
        with pytest.raises(CorruptRecord, match=INDEX):
            store["s0"] = 1
    assert read_bytes(index) == damaged


def test_an_index_the_standard_dbm_dumb_wrote_loads(tmp_path: Path) -> None:
    base = str(tmp_path / "shard")
    with dbm.dumb.open(base, "c") as db:
        db[b"a"] = b"one"
        db[b"B-c_d.e~f"] = b"two" * 300
        db[b"#clean"] = b"12345678"
    shard = DumbShard(base, durable=False, file_mode=0o600)
    shard.refresh()
    assert dict(shard.items()) == {b"a": b"one", b"B-c_d.e~f": b"two" * 300, b"#clean": b"12345678"}
    shard.release()


@FUZZ
@given(junk=st.binary(max_size=80), at=st.integers(0, 200))
def test_any_index_reads_or_is_an_error_and_stays_as_it_was(junk: bytes, at: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "shard")
        writer = DumbShard(base, durable=False, file_mode=0o600)
        writer.refresh()
        for key in (b"a", b"b", b"c"):
            writer[key] = key * 10
        writer.release()
        with open(base + ".dir", "rb") as f:
            good = f.read()
        at %= len(good) + 1
        damaged = good[:at] + junk + good[at:]
        with open(base + ".dir", "wb") as f:
            f.write(damaged)
        reader = DumbShard(base, durable=False, file_mode=0o600)
        try:
            reader.refresh()
            for key in list(reader):
                value = reader[key]
                assert len(value) == reader._index[key][1]
        except CorruptRecord as exc:
            assert base + ".dir" in str(exc)
        finally:
            reader.release()
        with open(base + ".dir", "rb") as f:
            assert f.read() == damaged


# -- item 1, the opener: a store of the previous format is converted on open ---------------------------


def _legacy_store(path: Path, records: dict[str, dict[str, Any]], when: float) -> None:
    """A shelve store as the previous lockstore wrote it: format 1, values pickled by shelve.Shelf."""
    import json

    (path / "shelve").mkdir(parents=True, mode=0o700)
    os.chmod(path, 0o700)
    meta = {"format": 1, "backend": "shelve", "shards": 2, "codec": "json", "signed": False, "dbm": "dbm.dumb"}
    (path / "lockstore.json").write_text(json.dumps(meta))
    os.chmod(path / "lockstore.json", 0o600)
    codec = Codec("json", None, 1 << 20)
    for shard in range(2):
        with shelve.Shelf(dbm.dumb.open(str(path / "shelve" / f"shard-{shard:03d}"), "c", 0o600), protocol=5) as db:
            for sid, value in records.items():
                if shard_of(sid, 2) == shard:
                    db[sid] = codec.record(sid.encode(), json.dumps(value).encode(), when, when)
            db["#clean"] = ATIME.pack(when)


def test_a_store_of_the_previous_format_is_converted_on_open(tmp_path: Path) -> None:
    import json
    import time

    path, marker = tmp_path / "s", tmp_path / "ran"
    sessions = {f"user{i}": {"n": i} for i in range(10)}
    _legacy_store(path, sessions, time.time())
    with lockstore.open(path, max_age=3600) as store:  # an old store records no max_age: given once
        assert dict(store.items()) == sessions
    assert json.loads((path / "lockstore.json").read_text())["format"] == 2
    for shard in range(2):
        with dbm.dumb.open(str(path / "shelve" / f"shard-{shard:03d}"), "r") as db:
            for key in db:
                assert db[key][:1] != b"\x80", key  # every value is a raw record now
    plant(path, 2, "evil", pickle.dumps(Planted(marker), protocol=5))
    with lockstore.open(path) as store:
        with pytest.raises(CorruptRecord, match="never writes"):
            store["evil"]
        assert store["user3"] == {"n": 3}
    assert not marker.exists()
