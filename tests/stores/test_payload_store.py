"""The local store for big documents: small fields in montydb, the payload in a file."""

from __future__ import annotations

import numpy as np
import pytest
from maggma.stores import MontyStore
from monty.json import MontyDecoder

from active_mlip.core.blobs import CorruptArtifactError
from active_mlip.stores.job_store import StoreSettings, make_job_store
from active_mlip.stores.payload_store import PayloadFileStore


@pytest.fixture
def store(tmp_path):
    s = PayloadFileStore("c", ["data"], database_path=str(tmp_path), database_name="db")
    s.key = "blob_uuid"
    s.connect()
    return s


def test_payload_goes_to_a_file_and_comes_back(store):
    data = {"positions": np.arange(6.0).reshape(2, 3).tolist(), "n": 2}
    store.update([{"blob_uuid": "a", "job_uuid": "j", "data": data}])
    (f,) = store.payload_dir.iterdir()
    # montydb holds the small fields and the pointer, not the payload
    with MontyStore("c", database_path=store.database_path, database_name="db") as raw:
        (doc,) = raw.query({})
    assert "data" not in doc and doc["_payload"]["file"] == f.name
    assert store.query_one({"blob_uuid": "a"})["data"] == data
    # projections: only what was asked, the payload only when asked
    assert store.query_one({"blob_uuid": "a"}, ["blob_uuid", "data"]) == {
        "blob_uuid": "a",
        "data": data,
    } | {"_id": doc["_id"]}
    assert "data" not in store.query_one({"blob_uuid": "a"}, ["job_uuid"])
    assert store.count({"job_uuid": "j"}) == 1


def test_an_update_replaces_document_and_file(store):
    store.update([{"blob_uuid": "a", "data": [1]}])
    store.update([{"blob_uuid": "a", "data": [2]}])
    assert store.count() == 1 and len(list(store.payload_dir.iterdir())) == 1
    assert store.query_one({"blob_uuid": "a"})["data"] == [2]
    store.remove_docs({"blob_uuid": "a"})
    assert store.count() == 0 and not list(store.payload_dir.iterdir())


def test_a_changed_or_missing_payload_file_is_detected(store):
    store.update([{"blob_uuid": "a", "data": {"x": 1.0}}])
    (f,) = store.payload_dir.iterdir()
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0x01
    f.write_bytes(bytes(raw))
    with pytest.raises(CorruptArtifactError, match="is corrupted"):
        store.query_one({"blob_uuid": "a"})
    f.unlink()
    with pytest.raises(CorruptArtifactError, match="is missing"):
        store.query_one({"blob_uuid": "a"})


def test_documents_written_inline_before_are_still_read(tmp_path):
    with MontyStore("c", database_path=str(tmp_path), database_name="db", key="blob_uuid") as old:
        old.update([{"blob_uuid": "a", "data": [1, 2]}])
    new = PayloadFileStore("c", ["data"], database_path=str(tmp_path), database_name="db")
    new.connect()
    assert new.query_one({"blob_uuid": "a"})["data"] == [1, 2]
    # jobflow asks for the payload by projection (blob_uuid, data)
    assert new.query_one({"blob_uuid": "a"}, ["blob_uuid", "data"])["data"] == [1, 2]
    assert "data" not in new.query_one({"blob_uuid": "a"}, ["blob_uuid"])


def test_round_trips_through_as_dict(store):
    store.update([{"blob_uuid": "a", "data": [3]}])
    again = MontyDecoder().process_decoded(store.as_dict())
    assert isinstance(again, PayloadFileStore) and again.payload_fields == ["data"]
    again.connect()
    assert again.query_one({"blob_uuid": "a"})["data"] == [3]


def test_local_job_store_keeps_data_and_cache_payloads_in_files(tmp_path):
    js = make_job_store(StoreSettings(local_path=tmp_path / "s"))
    assert isinstance(js.additional_stores["data"], PayloadFileStore)
    assert js.additional_stores["cache"].payload_fields == ["payload"]
    assert not isinstance(js.docs_store, PayloadFileStore)  # job documents stay small
