"""Frames, hashes, blobs and stores: what every stage relies on."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from jobflow import Flow, job, run_locally

from active_mlip.core.blobs import Blob, CorruptArtifactError
from active_mlip.core.documents import Document
from active_mlip.core.frames import Frame, read_frames, write_extxyz
from active_mlip.core.hashing import content_hash, structure_hash
from active_mlip.stores.cache import ResultCache
from active_mlip.stores.job_store import STORE_FILE_ENV, StoreSettings, make_job_store
from active_mlip.stores.mongo import MONGO_URI_ENV, InsecureConfigError


def labelled_cu() -> Frame:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=3)
    atoms.calc = EMT()
    atoms.get_stress()
    return Frame.from_atoms(atoms, source="test")


def test_frame_round_trips_through_extxyz(tmp_path):
    # extxyz stores 8 decimals: exact enough for hashes (6 decimals) and for training.
    frame = labelled_cu()
    write_extxyz([frame], tmp_path / "f.extxyz")
    (back,) = read_frames(tmp_path / "f.extxyz")
    np.testing.assert_allclose(back.positions, frame.positions, atol=1e-8)
    np.testing.assert_allclose(back.forces, frame.forces, atol=1e-8)
    np.testing.assert_allclose(back.stress, frame.stress, atol=1e-8)
    assert back.energy == pytest.approx(frame.energy, abs=1e-8)
    assert back.structure_hash() == frame.structure_hash()
    assert back.info["source"] == "test"


def test_structure_hash_ignores_labels_and_tiny_noise_but_not_moves():
    frame = labelled_cu()
    moved = np.array(frame.positions)
    moved[0, 0] += 1e-9
    assert structure_hash(frame.numbers, moved, frame.cell) == frame.structure_hash()
    assert frame.unlabelled().structure_hash() == frame.structure_hash()
    moved[0, 0] += 1e-3
    assert structure_hash(frame.numbers, moved, frame.cell) != frame.structure_hash()


def test_content_hash_is_independent_of_key_order():
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 2})


def test_blob_detects_corruption(tmp_path):
    blob = Blob.from_bytes(b"model weights", "m.model")
    assert blob.to_bytes() == b"model weights"
    tampered = blob.model_copy(update={"data_b64": Blob.from_bytes(b"model weightz", "x").data_b64})
    with pytest.raises(CorruptArtifactError, match="m.model"):
        tampered.to_bytes()
    with pytest.raises(CorruptArtifactError):
        tampered.write(tmp_path / "out.model")
    assert not (tmp_path / "out.model").exists()


class Settings(Document):
    a: int = 1
    nested: dict[str, float] = {}


def test_documents_survive_non_strict_serialisation():
    # FireWorks serialises job arguments with jsanitize(strict=False): a plain pydantic
    # model would become its repr string there.
    from monty.json import MontyDecoder, jsanitize

    s = Settings(a=3, nested={"x": 0.5})
    out = MontyDecoder().process_decoded(jsanitize({"s": s.as_dict()}))
    assert out["s"] == s


@job(data="frames")
def _make_frames(n: int) -> dict:
    return {"frames": [labelled_cu().model_dump() for _ in range(n)], "n": n}


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


@job
def _add(a: float, b: float) -> float:
    return a + b


@job
def _adds_a_job(x: float) -> Any:
    from jobflow import Response

    inner = _add(x, 1.0)  # a new job: its output is a reference in this one's
    return Response(addition=inner, output={"n": 2, "value": inner.output})


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
