"""The local stores' engine: montydb's files, answered from memory through an index."""

from __future__ import annotations

import random

import pytest
from maggma.stores import MontyStore

from active_mlip.stores.local_store import IndexedMontyStore


def _stores(tmp_path, key="uuid"):
    kw = {"database_path": str(tmp_path), "database_name": "db", "key": key}
    indexed, plain = IndexedMontyStore("jobs", **kw), MontyStore("jobs", **kw)
    indexed.connect()
    plain.connect()
    return indexed, plain


def _docs(n: int, seed: int = 0) -> list[dict]:
    """Documents with the shapes Mongo's equality treats specially: arrays, NaN, bools,
    None and missing fields, ints stored as floats, nested documents."""
    rng = random.Random(seed)
    odd = [["u3", "u5"], float("nan"), True, None, 2.0, {"a": "u1"}, "u7"]
    docs = []
    for i in range(n):
        # (uuid, index) is unique: every document stays
        d = {"uuid": f"u{i % 9}", "index": i // 9 + 1, "name": f"CuI it{i % 4} job {i}"}
        if i % 5 == 0:
            d["tag"] = odd[i % len(odd)]
        if i % 7 != 0:
            d["output"] = {"energy": rng.uniform(-1, 1), "n": i, "frames": [i, i + 1]}
        docs.append(d)
    return docs


QUERIES = [  # (criteria, properties, sort, skip, limit)
    ({"uuid": "u3"}, None, None, 0, 0),
    ({"uuid": "u3", "index": 2}, ["output"], None, 0, 0),
    ({"uuid": "u1"}, ["output"], {"index": -1}, 0, 1),
    ({"uuid": {"$in": ["u1", "u4", "nope"]}}, ["uuid", "index"], {"index": 1, "name": -1}, 1, 3),
    ({"tag": "u3"}, ["tag"], None, 0, 0),  # matches an array element
    ({"tag": "u7"}, None, None, 0, 0),
    ({"tag": 2}, ["tag"], None, 0, 0),  # an int query matches 2.0
    ({"tag": 1}, ["tag"], None, 0, 0),  # ... but not True
    ({"tag": None}, ["uuid"], {"name": 1}, 0, 0),  # missing or null: not indexed, scanned
    ({"tag": True}, ["uuid"], None, 0, 0),
    ({"name": {"$regex": "it2"}}, ["output.energy"], {"output.n": -1}, 0, 0),
    ({"output.n": {"$gt": 20}, "uuid": "u2"}, ["output.frames"], None, 0, 0),
    ({"index": 3}, ["uuid"], {"uuid": 1, "index": 1}, 2, 4),
    ({}, ["uuid"], {"name": -1}, 0, 5),
    ({"uuid": "absent"}, None, None, 0, 0),
]


@pytest.mark.parametrize("criteria, properties, sort, skip, limit", QUERIES)
def test_answers_as_montydb_does(tmp_path, criteria, properties, sort, skip, limit):
    indexed, plain = _stores(tmp_path)
    indexed.update(_docs(60), key=["uuid", "index"])
    args = (criteria, properties, sort, None, skip, limit)
    got, want = list(indexed.query(*args)), list(plain.query(*args))
    # NaN != NaN: compare the documents' reprs
    assert repr(got) == repr(want)
    assert indexed.count(criteria) == plain.count(criteria)


def test_upserts_by_key_and_keeps_the_id(tmp_path):
    indexed, plain = _stores(tmp_path)
    indexed.update([{"uuid": "a", "index": 1, "v": 1}, {"uuid": "a", "index": 2, "v": 2}])
    # the store's key is uuid alone here: the second document replaced the first
    (doc,) = plain.query({})
    assert doc["v"] == 2
    indexed.update([{"uuid": "a", "index": 1, "v": 3}], key=["uuid", "index"])
    indexed.update([{"uuid": "a", "index": 1, "v": 4}], key=["uuid", "index"])
    assert sorted(d["v"] for d in plain.query({})) == [2, 4]
    assert indexed.count() == plain.count() == 2
    assert plain.query_one({"v": 4})["_id"] == indexed.query_one({"uuid": "a", "index": 1})["_id"]


def test_sees_what_other_connections_write_and_they_see_its_writes(tmp_path):
    indexed, plain = _stores(tmp_path)
    indexed.update([{"uuid": "a", "n": 1}])
    assert indexed.query_one({"uuid": "a"})["n"] == 1  # the uuid index now exists
    plain.update([{"uuid": "a", "n": 2}, {"uuid": "b", "n": 3}])  # e.g. another process
    assert indexed.query_one({"uuid": "a"})["n"] == 2
    assert indexed.query_one({"uuid": "b"})["n"] == 3
    plain.remove_docs({"uuid": "a"})
    assert indexed.query_one({"uuid": "a"}) is None and indexed.count() == 1
    indexed.update([{"uuid": "c", "n": 4}])
    indexed.remove_docs({"uuid": "b"})
    assert [d["uuid"] for d in plain.query({})] == ["c"]
    # a store written before (by montydb alone) reads as it is
    fresh = IndexedMontyStore("jobs", database_path=str(tmp_path), database_name="db")
    fresh.connect()
    assert [d["n"] for d in fresh.query({"uuid": "c"})] == [4]


def test_a_batch_that_fails_writes_nothing(tmp_path):
    indexed, plain = _stores(tmp_path)
    indexed.update([{"uuid": "a", "n": 1}])
    with pytest.raises(KeyError):
        indexed.update([{"uuid": "b", "n": 2}, {"n": 3}])  # the second has no key
    assert [d["uuid"] for d in plain.query({})] == ["a"]
    assert indexed.count() == 1 and indexed.query_one({"uuid": "b"}) is None


def test_a_keyed_lookup_decodes_only_its_candidates(tmp_path, monkeypatch):
    indexed, _ = _stores(tmp_path)
    indexed.update([{"uuid": f"u{i}", "n": i} for i in range(200)])
    indexed.query_one({"uuid": "u0"})  # builds the uuid index (one pass)
    decoded = []
    original = IndexedMontyStore._decode
    monkeypatch.setattr(
        IndexedMontyStore, "_decode", lambda self, raw: decoded.append(1) or original(self, raw)
    )
    assert indexed.query_one({"uuid": "u123"})["n"] == 123
    indexed.update([{"uuid": "u150", "n": -1}])  # the upsert finds its row by the index
    assert indexed.query_one({"uuid": "u150"})["n"] == -1
    assert len(decoded) == 3
    decoded.clear()
    assert indexed.count({"n": {"$gt": 190}}) == 9  # no equality: every document
    assert len(decoded) == 200


def test_needs_connect_like_montystore(tmp_path):
    from maggma.core import StoreError

    store = IndexedMontyStore("jobs", database_path=str(tmp_path), database_name="db")
    with pytest.raises(StoreError, match="connect"):
        list(store.query({}))
    with pytest.raises(ValueError, match="sqlite"):
        IndexedMontyStore("jobs", database_path=str(tmp_path), storage="flatfile")
    assert IndexedMontyStore.from_dict(store.as_dict()).collection_file == store.collection_file
