"""The job store, the file-backed store and the result cache."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest
from jobflow import Flow, job, run_locally

from active_mlip.core.environment import MONGO_URI_ENV, STORE_FILE_ENV
from active_mlip.core.frames import Frame
from active_mlip.stores.cache import ResultCache
from active_mlip.stores.job_store import StoreSettings, make_job_store
from active_mlip.stores.mongo import InsecureConfigError
from tests.core.helpers_frames import labelled_cu


@job(data="frames")
def _make_frames(n: int) -> dict:
    return {"frames": [labelled_cu().model_dump() for _ in range(n)], "n": n}


@job
def _add(a: float, b: float) -> float:
    return a + b


@job
def _adds_a_job(x: float) -> Any:
    from jobflow import Response

    inner = _add(x, 1.0)  # a new job: its output is a reference in this one's
    return Response(addition=inner, output={"n": 2, "value": inner.output})


def test_file_backed_store_keeps_frames_out_of_job_documents(tmp_path):
    store = make_job_store(StoreSettings(local_path=tmp_path))
    j = _make_frames(3)
    run_locally(j, store=store, ensure_success=True, log=False)
    store.connect()
    doc = store.docs_store.query_one({"uuid": j.uuid})
    assert doc["output"]["n"] == 3
    assert "blob_uuid" in json.dumps(doc["output"]["frames"])
    out = store.get_output(j.uuid, load=True)
    assert Frame.model_validate(out["frames"][0]) == labelled_cu()


def test_get_output_skips_the_walk_only_without_references(tmp_path, monkeypatch):
    import jobflow.core.reference as reference

    from active_mlip.stores.job_store import may_hold_reference

    store = make_job_store(StoreSettings(local_path=tmp_path))
    plain, dynamic = _make_frames(2), _adds_a_job(2.0)
    run_locally(Flow([plain, dynamic]), store=store, ensure_success=True, log=False)
    store.connect()
    # an output that holds a reference (to a job it added) is still resolved
    assert store.get_output(dynamic.uuid)["value"] == 3.0
    assert may_hold_reference(store.docs_store.query_one({"uuid": dynamic.uuid})["output"])
    # a plain output comes back as jobflow returns it, without the Python walk
    walked = []
    original = reference.find_and_resolve_references
    monkeypatch.setattr(
        reference,
        "find_and_resolve_references",
        lambda *a, **k: walked.append(1) or original(*a, **k),
    )
    out = store.get_output(plain.uuid, load=True)
    assert Frame.model_validate(out["frames"][1]) == labelled_cu() and not walked
    assert store.get_output(dynamic.uuid)["value"] == 3.0 and walked
    assert not may_hold_reference({"frames": [labelled_cu().model_dump()], "n": 1})
    assert may_hold_reference({"a": np.zeros(2)})  # not BSON: may, and jobflow walks it
    with pytest.raises(ValueError, match="has no outputs"):
        store.get_output("no-such-uuid")


def test_result_cache_is_idempotent(tmp_path):
    store = make_job_store(StoreSettings(local_path=tmp_path))
    store.connect()
    cache = ResultCache(store.additional_stores["cache"])
    cache.put("k", "label", {"e": 1.0})
    cache.put("k", "label", {"e": 1.0})
    assert cache.get("k") == {"e": 1.0}
    assert store.additional_stores["cache"].count({"cache_key": "k"}) == 1
    assert ResultCache(None).get("k") is None


def test_mongo_uri_from_a_private_store_file(tmp_path, monkeypatch):
    monkeypatch.delenv(MONGO_URI_ENV, raising=False)
    f = tmp_path / "store.yaml"
    f.write_text("mongo_uri: mongodb://aml:secret@db.example.org:27017/\n")
    monkeypatch.setenv(STORE_FILE_ENV, str(f))
    os.chmod(f, 0o644)
    with pytest.raises(InsecureConfigError, match="chmod 600"):
        StoreSettings().resolved_uri()
    os.chmod(f, 0o600)
    assert StoreSettings().resolved_uri() == "mongodb://aml:secret@db.example.org:27017/"
    monkeypatch.setenv(MONGO_URI_ENV, "mongodb://other:1/")
    assert StoreSettings().resolved_uri() == "mongodb://other:1/"


def test_store_needs_a_path_without_mongo(monkeypatch):
    monkeypatch.delenv(MONGO_URI_ENV, raising=False)
    monkeypatch.delenv(STORE_FILE_ENV, raising=False)
    with pytest.raises(ValueError, match="local_path"):
        make_job_store(StoreSettings())
