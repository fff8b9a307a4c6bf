"""The mapping protocol, on every backend (embedded and remote), against a plain dict as the model."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import lockstore


@pytest.fixture
def store(make_store: Any, any_backend: str) -> lockstore.BaseStore:
    return make_store(any_backend)


def test_set_get_delete(store: lockstore.BaseStore) -> None:
    sid = lockstore.new_id()
    assert sid not in store
    assert store.get(sid) is None
    store[sid] = {"user": 42, "cart": [1, 2]}
    assert sid in store
    assert store[sid] == {"user": 42, "cart": [1, 2]}
    assert len(store) == 1
    assert list(store) == [sid]
    assert dict(store.items()) == {sid: {"user": 42, "cart": [1, 2]}}
    del store[sid]
    assert sid not in store
    assert len(store) == 0
    with pytest.raises(KeyError):
        store[sid]
    with pytest.raises(KeyError):
        del store[sid]


def test_reads_are_fresh_copies(store: lockstore.BaseStore) -> None:
    store["a"] = {"list": [1]}
    got = store["a"]
    got["list"].append(2)
    got["new"] = True
    assert store["a"] == {"list": [1]}


def test_dict_methods(store: lockstore.BaseStore) -> None:
    store.update({"a": 1, "b": 2}, c=3)
    assert sorted(store.keys()) == ["a", "b", "c"]
    assert sorted(store.values()) == [1, 2, 3]
    assert store.pop("a") == 1
    assert store.pop("a", "gone") == "gone"
    assert store.setdefault("b", 9) == 2
    assert store.setdefault("d", 4) == 4
    assert store["d"] == 4
    store.clear()
    assert len(store) == 0 and list(store) == []


def test_edit_creates_saves_and_discards(store: lockstore.BaseStore) -> None:
    with store.edit("s") as session:
        assert session == {}
        session["n"] = 1
    assert store["s"] == {"n": 1}
    with store.edit("s") as session:
        session["n"] += 1
    assert store["s"] == {"n": 2}
    with pytest.raises(RuntimeError), store.edit("s") as session:
        session["n"] = 100
        raise RuntimeError("handler failed")
    assert store["s"] == {"n": 2}
    with pytest.raises(KeyError), store.edit("absent", create=False):
        pass
    with store.edit("untouched"):
        pass
    assert "untouched" not in store  # just in time: an empty new session is never written


def test_edit_refuses_non_dict(store: lockstore.BaseStore) -> None:
    store["x"] = [1, 2]
    with pytest.raises(TypeError), store.edit("x"):
        pass
    assert store["x"] == [1, 2]


def test_record_and_put_record(store: lockstore.BaseStore) -> None:
    now = store.clock()
    store.put_record("r", {"v": 1}, created=now - 100, last_access=now - 10)
    rec = store.record("r")
    assert rec is not None
    assert rec.value == {"v": 1}
    assert rec.created == pytest.approx(now - 100, abs=1e-3)
    assert rec.last_access == pytest.approx(now - 10, abs=1e-3)
    assert store.record("nothing") is None
    assert [sid for sid, _ in store.records()] == ["r"]


def test_stats_and_verify(store: lockstore.BaseStore) -> None:
    for i in range(20):
        store[f"s{i}"] = {"i": i}
    stats = store.stats()
    assert stats["live"] == 20
    assert stats["expired"] == 0
    if "per_shard" in stats:
        assert sum(s["live"] for s in stats["per_shard"]) == 20
    assert store.verify() == []


def test_closed_store_refuses(store: lockstore.BaseStore) -> None:
    store["a"] = 1
    store.close()
    with pytest.raises(lockstore.StoreClosed):
        store["a"]
    with pytest.raises(lockstore.StoreClosed):
        store["a"] = 2


@pytest.mark.parametrize("options", [{"codec": "json"}, {"codec": "msgpack"}, {"secret": b"0123456789abcdef0123"}])
def test_codecs_and_signing(tmp_path: Any, backend: str, options: dict[str, Any]) -> None:
    with lockstore.open(tmp_path / "s", backend=backend, **options) as store:
        store["a"] = {"n": [1, "x"]}
        assert store["a"] == {"n": [1, "x"]}
        with store.edit("a") as session:
            session["m"] = True
        assert store["a"] == {"n": [1, "x"], "m": True}
        assert store.verify() == []


ids = st.sampled_from(["a", "b", "c", "d-1", "e.2", "f~3", "G_4"])
values = st.one_of(st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=5))


class MappingModel(RuleBasedStateMachine):
    """Random sequences of operations give the same results on the store as on a dict."""

    backend = "lmdb"

    @initialize()
    def open_store(self) -> None:
        import tempfile

        self.dir = tempfile.mkdtemp()
        self.store = lockstore.open(self.dir + "/s", backend=self.backend, shards=4)
        self.model: dict[str, Any] = {}

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()

    @rule(sid=ids, value=values)
    def set(self, sid: str, value: Any) -> None:
        self.store[sid] = value
        self.model[sid] = value

    @rule(sid=ids)
    def get(self, sid: str) -> None:
        assert self.store.get(sid) == self.model.get(sid)

    @rule(sid=ids)
    def delete(self, sid: str) -> None:
        if sid in self.model:
            del self.store[sid]
            del self.model[sid]
        else:
            with pytest.raises(KeyError):
                del self.store[sid]

    @rule(sid=ids, n=st.integers())
    def edit(self, sid: str, n: int) -> None:
        if sid in self.model and not isinstance(self.model[sid], dict):
            return
        with self.store.edit(sid) as session:
            session["n"] = n
        self.model.setdefault(sid, {})
        self.model[sid] = {**self.model[sid], "n": n}

    @precondition(lambda self: bool(self.model))
    @rule(sid=ids)
    def pop(self, sid: str) -> None:
        assert self.store.pop(sid, None) == self.model.pop(sid, None)

    @invariant()
    def same(self) -> None:
        if hasattr(self, "store"):
            assert len(self.store) == len(self.model)
            assert sorted(self.store) == sorted(self.model)


class ShelveModel(MappingModel):
    backend = "shelve"


class MemoryModel(MappingModel):
    backend = "memory"


_settings = {"max_examples": 25, "stateful_step_count": 30, "deadline": None,
             "suppress_health_check": [HealthCheck.too_slow]}
MappingModel.TestCase.settings = settings(**_settings)
ShelveModel.TestCase.settings = settings(**_settings)
MemoryModel.TestCase.settings = settings(**_settings)
TestLmdbModel = MappingModel.TestCase
TestShelveModel = ShelveModel.TestCase
TestMemoryModel = MemoryModel.TestCase
