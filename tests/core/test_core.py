"""Frames, hashes, blobs and documents: what every stage relies on."""

from __future__ import annotations

import numpy as np
import pytest

from active_mlip.core.blobs import Blob, CorruptArtifactError
from active_mlip.core.documents import Document
from active_mlip.core.frames import read_frames, write_extxyz
from active_mlip.core.hashing import content_hash, structure_hash
from tests.core.helpers_frames import labelled_cu


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
