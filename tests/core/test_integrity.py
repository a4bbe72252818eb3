"""Content hashes on everything stored: frames in job stores, files a run exports.

A changed number, byte or label is detected where the data is read back and raises
CorruptArtifactError naming what, the recorded and the actual hash; untouched data loads.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from jobflow import job, run_locally

from active_mlip.core.blobs import (
    MANIFEST,
    Blob,
    CorruptArtifactError,
    read_manifest,
    verify_listed,
    verify_manifest,
    write_manifest,
)
from active_mlip.core.frames import Frame, read_frames, write_extxyz
from active_mlip.core.hashing import file_hash, frame_content_hash
from active_mlip.makers.schemas import DATA_FIELDS, LabelledBatch, LabellerIdentity
from active_mlip.stores.job_store import StoreSettings, make_job_store


def cu_frame(seed: int = 3, **info) -> Frame:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=seed)
    atoms.calc = EMT()
    atoms.get_stress()
    atoms.set_velocities(np.full((len(atoms), 3), 0.01 * seed))
    frame = Frame.from_atoms(atoms, source="test", **info)
    return frame.with_info(velocities=atoms.get_velocities().tolist())


def batch(n: int = 3) -> LabelledBatch:
    return LabelledBatch(
        labeller=LabellerIdentity(name="ase:EMT", settings_hash="h"),
        frames=[cu_frame(seed=s, iteration=0) for s in range(n)],
        n_requested=n,
        n_labelled=n,
        n_failed=0,
    )


# ---------------------------------------------------------------------------------------
# Frames: the hash travels with every serialised frame and is checked when validated
# ---------------------------------------------------------------------------------------
def test_frame_hash_is_exact_and_travels_with_the_frame():
    f = cu_frame()
    d = f.model_dump(mode="json")
    assert (
        d["sha256"]
        == f.sha256
        == frame_content_hash(
            f.numbers, f.positions, f.cell, f.pbc, f.energy, f.forces, f.stress, f.info
        )
    )
    # JSON text round trip (what a job store does) gives back the same frame, checked
    back = Frame.model_validate(json.loads(json.dumps(d)))
    assert back == f and back.sha256 == f.sha256
    assert Frame.model_validate_json(f.model_dump_json()) == f
    # exact: a change far below the structure hash's 1e-6 Å rounding still counts
    moved = f.model_copy(update={"positions": [[p[0] + 1e-12, *p[1:]] for p in f.positions]})
    assert moved.structure_hash() == f.structure_hash()
    assert moved.sha256 != f.sha256
    # labels, info and None-vs-value all enter the hash
    assert f.unlabelled().sha256 != f.sha256
    assert f.with_info(iteration=1).sha256 != f.with_info(iteration=2).sha256
    assert f.model_copy(update={"stress": None}).sha256 != f.sha256


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda d: d["positions"][2].__setitem__(1, d["positions"][2][1] + 1e-9),
        lambda d: d["forces"][0].__setitem__(0, -d["forces"][0][0]),
        lambda d: d.__setitem__("energy", d["energy"] + 1e-6),
        lambda d: d["numbers"].__setitem__(0, 30),
        lambda d: d["info"]["velocities"][1].__setitem__(2, 0.5),
        lambda d: d["info"].__setitem__("source", "tampered"),
        lambda d: d.__setitem__("stress", None),
    ],
    ids=["position", "force", "energy", "species", "velocity", "info", "label dropped"],
)
def test_one_changed_number_in_a_stored_frame_is_detected(corrupt):
    d = json.loads(cu_frame().model_dump_json())
    corrupt(d)
    with pytest.raises(CorruptArtifactError) as err:
        Frame.model_validate(d)
    msg = str(err.value)
    assert "corrupted" in msg and d["sha256"] in msg and "(Cu" in msg and "source=" in msg


def test_frames_without_a_hash_load_unchecked():
    # stores written before frames carried hashes
    d = cu_frame().model_dump()
    del d["sha256"]
    d["energy"] += 1.0
    assert Frame.model_validate(d).energy == pytest.approx(cu_frame().energy + 1.0)


def test_documents_check_every_frame_they_hold():
    b = batch()
    d = b.as_dict()
    assert LabelledBatch.from_dict(json.loads(json.dumps(d))) == b
    d["frames"][1]["forces"][3][2] += 1e-7
    with pytest.raises(CorruptArtifactError, match="corrupted"):
        LabelledBatch.from_dict(d)


def test_loop_and_exploration_documents_are_covered():
    from active_mlip.makers.exploration import ExplorationDocument
    from active_mlip.workflows.state import Candidates

    f = cu_frame()
    cand = Candidates(frames=[f], reserve=[f.unlabelled()])
    d = cand.as_dict()
    d["reserve"][0]["positions"][0][0] = 9.0
    with pytest.raises(CorruptArtifactError):
        Candidates.from_dict(d)
    doc = ExplorationDocument(
        temperature=300.0,
        n_new=1,
        seed=0,
        n_steps=10,
        n_scored=1,
        n_accepted=1,
        stopped_by="quota",
        uncertainty_key="force_max",
        frames=[f.unlabelled(step=10)],
        last_frame=f,
    )
    d = doc.as_dict()
    assert ExplorationDocument.from_dict(json.loads(json.dumps(d))) == doc
    d["last_frame"]["info"]["velocities"][0][0] += 1.0  # the MD restart point, not a list
    with pytest.raises(CorruptArtifactError):
        ExplorationDocument.from_dict(d)


@job(data=DATA_FIELDS)
def _labelled_batch(n: int) -> LabelledBatch:
    return batch(n)


def test_corrupted_frame_in_the_data_store_is_detected_on_load(tmp_path):
    store = make_job_store(StoreSettings(local_path=tmp_path / "store"))
    j = _labelled_batch(3)
    run_locally(j, store=store, ensure_success=True, log=False)
    store.connect()
    # jobflow hands back the dict; readers validate it (active_mlip.core.documents.as_model)
    good = LabelledBatch.model_validate(store.get_output(j.uuid, load=True))
    assert good == batch(3)

    data = store.additional_stores["data"]
    (blob,) = list(data.query({}))
    frames = blob["data"]
    assert [f["sha256"] for f in frames] == [f.sha256 for f in batch(3).frames]
    frames[2]["positions"][0][1] += 1e-6  # one number, in the data store only
    data.update([blob], key="blob_uuid")
    with pytest.raises(CorruptArtifactError) as err:
        LabelledBatch.model_validate(store.get_output(j.uuid, load=True))
    assert frames[2]["sha256"] in str(err.value)


# ---------------------------------------------------------------------------------------
# Files: SHA256SUMS beside what a run exports, checked by our readers
# ---------------------------------------------------------------------------------------
def _flip_byte(path, offset: int = 40) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_manifest_is_sha256sum_format_and_readers_check_it(tmp_path):
    write_extxyz([cu_frame(s) for s in range(3)], tmp_path / "dataset.extxyz")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m0.model").write_bytes(b"weights" * 100)
    write_manifest(tmp_path, [tmp_path / "dataset.extxyz", tmp_path / "models" / "m0.model"])
    entries = read_manifest(tmp_path / MANIFEST)
    assert entries == {
        "dataset.extxyz": file_hash(tmp_path / "dataset.extxyz"),
        "models/m0.model": file_hash(tmp_path / "models" / "m0.model"),
    }
    if shutil.which("sha256sum"):
        ok = subprocess.run(["sha256sum", "-c", MANIFEST], cwd=tmp_path, capture_output=True)
        assert ok.returncode == 0, ok.stdout + ok.stderr
    assert len(read_frames(tmp_path / "dataset.extxyz")) == 3
    assert verify_listed(tmp_path / "models" / "m0.model")  # manifest one directory up
    assert len(verify_manifest(tmp_path)) == 2

    expected = entries["dataset.extxyz"]
    _flip_byte(tmp_path / "dataset.extxyz")
    actual = file_hash(tmp_path / "dataset.extxyz")
    with pytest.raises(CorruptArtifactError) as err:
        read_frames(tmp_path / "dataset.extxyz")
    msg = str(err.value)
    assert "dataset.extxyz" in msg and expected in msg and actual in msg
    _flip_byte(tmp_path / "models" / "m0.model", 3)
    with pytest.raises(CorruptArtifactError, match="m0.model"):
        verify_listed(tmp_path / "models" / "m0.model")
    _flip_byte(tmp_path / "dataset.extxyz")  # flipped back: passes again
    assert len(read_frames(tmp_path / "dataset.extxyz")) == 3
    (tmp_path / "models" / "m0.model").unlink()
    with pytest.raises(CorruptArtifactError, match="m0.model' is listed in .* but missing"):
        verify_manifest(tmp_path)


def test_unlisted_files_are_read_unchecked(tmp_path):
    write_extxyz([cu_frame()], tmp_path / "a.extxyz")
    write_manifest(tmp_path, [tmp_path / "a.extxyz"])
    write_extxyz([cu_frame(4)], tmp_path / "b.extxyz")  # written after the manifest
    assert verify_listed(tmp_path / "b.extxyz") is False
    assert len(read_frames(tmp_path / "b.extxyz")) == 1


class _Store:
    """Hands export_run the documents it asks for by uuid."""

    def __init__(self, outputs: dict):
        self.outputs = outputs

    def get_output(self, uuid: str, load: bool = True):
        return self.outputs[uuid]


def _loop_result():
    from active_mlip.makers.schemas import EnsembleDocument, MemberDocument
    from active_mlip.workflows.state import (
        FrameSet,
        IterationRecord,
        LoopResult,
        LoopState,
        Walker,
    )

    train = [cu_frame(s, iteration=0, subset=s % 2) for s in range(4)]
    test = [cu_frame(10 + s) for s in range(2)]
    walker = Walker(temperature=300.0, start=train[0], seed=0)
    common = dict(material="Cu", e0s={"Cu": 0.0}, walkers=[walker], started_at=0.0)
    record = IterationRecord(
        iteration=0,
        n_train=4,
        n_test=2,
        test_mae_energy_meV_per_atom=1.0,
        test_mae_forces_meV_per_A=10.0,
        uncertainty_key="force_max",
        uncertainty_mean=0.1,
        uncertainty_std=0.01,
        wall_seconds=1.0,
        finished_at=1.0,
        ensemble_uuid="ens",
        evaluation_uuid="eval",
    )
    state = LoopState(
        train=FrameSet(frames=train), history=[record], fc_uuid="fc", test_uuid="t", **common
    )
    initial = LoopState(
        train=FrameSet(frames=train), test=FrameSet(frames=test), fc_uuid="fc", test_uuid="t",
        **common,
    )  # fmt: skip
    members = [
        MemberDocument(
            index=m,
            subset=m,
            seed=7,
            n_train=2,
            n_valid=1,
            model_file=Blob.from_bytes(bytes([m]) * 500, f"member{m}.model"),
        )  # fmt: skip
        for m in range(2)
    ]
    ensemble = EnsembleDocument(
        members=members, n_sub=2, n_seed=1, elements=["Cu"], e0s={"Cu": 0.0}, r_max=5.0
    )
    result = LoopResult(material="Cu", converged=False, stop_reason="max_iterations", state=state)
    return result, _Store({"t": initial, "ens": ensemble})


def test_export_run_writes_a_manifest_that_catches_a_flipped_byte(tmp_path, monkeypatch):
    import active_mlip.app.report
    from active_mlip.app.local import export_run
    from active_mlip.workflows.settings import ActiveLearningSettings

    monkeypatch.setattr(active_mlip.app.report, "write_report", lambda *a, **k: None)
    result, store = _loop_result()
    settings = ActiveLearningSettings.from_preset("tiny")
    counts = {"labels_computed": 0, "labels_reused": 0, "members_trained": 0}
    export_run(result, store, tmp_path, settings, wall_seconds=1.0, counts=counts)
    listed = read_manifest(tmp_path / MANIFEST)
    assert set(listed) == {
        "summary.json",
        "dataset.extxyz",
        "test.extxyz",
        "models/ensemble.json",
        "models/member00_subset0_seed7.model",
        "models/member01_subset1_seed7.model",
    }
    assert [p.name for p in verify_manifest(tmp_path)] == sorted(p.split("/")[-1] for p in listed)
    assert len(read_frames(tmp_path / "dataset.extxyz")) == 4
    assert len(read_frames(tmp_path / "test.extxyz")) == 2
    if shutil.which("sha256sum"):
        ok = subprocess.run(["sha256sum", "-c", MANIFEST], cwd=tmp_path, capture_output=True)
        assert ok.returncode == 0, ok.stdout + ok.stderr

    _flip_byte(tmp_path / "test.extxyz", 60)
    with pytest.raises(CorruptArtifactError, match="test.extxyz"):
        read_frames(tmp_path / "test.extxyz")
    model = tmp_path / "models" / "member01_subset1_seed7.model"
    _flip_byte(model, 10)
    with pytest.raises(CorruptArtifactError, match="member01"):
        verify_listed(model)
    # exporting again rewrites the files and the manifest from the store: clean again
    export_run(result, store, tmp_path, settings, wall_seconds=1.0, counts=counts)
    assert len(verify_manifest(tmp_path)) == 6
    assert model.read_bytes() == bytes([1]) * 500


def test_corrupted_export_fed_to_run_is_refused_before_work(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from active_mlip.app.cli import app

    write_extxyz([cu_frame()], tmp_path / "dataset.extxyz")
    write_manifest(tmp_path, [tmp_path / "dataset.extxyz"])
    _flip_byte(tmp_path / "dataset.extxyz", 50)
    workdir = tmp_path / "run"
    out = CliRunner().invoke(
        app,
        ["run", str(tmp_path / "dataset.extxyz"), "--preset", "tiny", "--workdir", str(workdir)],
    )
    assert out.exit_code == 2, out.output
    assert "corrupted" in out.output and "dataset.extxyz" in out.output
    assert not workdir.exists()
