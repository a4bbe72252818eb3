"""The loop end to end on the tiny preset, resuming, and bad input.

One uninterrupted tiny run (module fixture) is shared by the assertions; a second
invocation checks reuse, and a killed-and-resumed run checks that resuming gives the
same dataset as the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ase.io import read

from workflows.active_learning import IterationRecord, LoopState, stopping_reason
from workflows.local import RunConflictError, run_local
from workflows.materials import get_structure
from workflows.settings import ActiveLearningSettings

ITERATION_FIELDS = {
    "n_train",
    "n_selected",
    "n_scored",
    "test_mae_energy_meV_per_atom",
    "test_mae_forces_meV_per_A",
    "uncertainty_mean",
    "uncertainty_std",
    "wall_seconds",
}


def tiny() -> ActiveLearningSettings:
    return ActiveLearningSettings.from_preset("tiny")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("tiny") / "CuI"
    summary = run_local("CuI", workdir, tiny())
    return workdir, summary


def _hashes(path: Path) -> list[tuple]:
    from active_mlip.frames import Frame

    return [Frame.from_atoms(a).structure_hash() for a in read(path, ":")]


def test_summary_has_the_documented_fields(tiny_run):
    workdir, summary = tiny_run
    on_disk = json.loads((workdir / "summary.json").read_text())
    assert on_disk["material"] == "CuI"
    assert on_disk["temperatures"] == [300.0]
    assert {"converged", "stop_reason", "settings"} <= set(on_disk)
    assert len(on_disk["iterations"]) == 2
    for it in on_disk["iterations"]:
        assert ITERATION_FIELDS <= set(it)
        assert it["test_mae_forces_meV_per_A"] > 0
        assert it["uncertainty_std"] > 0
    assert on_disk["stop_reason"].startswith("max_iterations")


def test_dataset_grows_by_exactly_the_selected_frames(tiny_run):
    workdir, summary = tiny_run
    it0, it1 = summary["iterations"]
    assert it0["n_train"] == tiny().loop.n_initial
    assert it0["n_selected"] > 0
    assert it1["n_train"] == it0["n_train"] + it0["n_labelled"]
    assert it0["n_labelled"] + it0["n_label_failures"] == it0["n_selected"]
    frames = read(workdir / "dataset.extxyz", ":")
    assert len(frames) == it1["n_train"] == summary["n_dataset"]
    iterations = [a.info["iteration"] for a in frames]
    assert iterations.count(1) == it0["n_labelled"]
    subsets = {a.info["subset"] for a in frames}
    assert subsets == set(range(tiny().training.n_sub))


def test_test_set_never_enters_training(tiny_run):
    workdir, summary = tiny_run
    test = set(_hashes(workdir / "test.extxyz"))
    train = set(_hashes(workdir / "dataset.extxyz"))
    assert len(test) == tiny().loop.n_test
    assert not test & train


def test_exports_models_and_report(tiny_run):
    workdir, _ = tiny_run
    models = sorted((workdir / "models").glob("*.model"))
    assert len(models) == tiny().training.n_sub * tiny().training.n_seed
    report = workdir / "report"
    for name in (
        "test_errors.png",
        "uncertainty_trajectories.png",
        "acceptance.png",
        "parity.png",
        "calibration.png",
        "report.html",
    ):
        assert (report / name).stat().st_size > 0, name
    assert "CuI" in (report / "report.html").read_text()


def test_second_invocation_reuses_everything(tiny_run):
    workdir, first = tiny_run
    before = (workdir / "dataset.extxyz").read_text()
    again = run_local("CuI", workdir, tiny())
    inv = again["this_invocation"]
    assert inv["labels_computed"] == 0
    assert inv["labels_reused"] > 0
    assert inv["members_trained"] == 0
    assert (workdir / "dataset.extxyz").read_text() == before


def test_killed_run_resumes_to_the_same_dataset(tiny_run, tmp_path):
    workdir, _ = tiny_run
    target = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "active_mlip",
        "run",
        "CuI",
        "--preset",
        "tiny",
        "--workdir",
        str(target),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    seen = ""
    deadline = time.time() + 600
    try:
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
            if "▶ CuI it0 explore" in line:
                # kill -9 in the middle of the first exploration
                time.sleep(0.3)
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, seen[-2000:]
    assert not (target / "summary.json").exists()
    resumed = run_local("CuI", target, tiny())
    m = tiny().training.n_sub * tiny().training.n_seed
    # Iteration 0's members were taken from the cache; only iteration 1's were trained.
    assert resumed["this_invocation"]["members_reused"] == m
    assert resumed["this_invocation"]["members_trained"] == m
    assert _hashes(target / "dataset.extxyz") == _hashes(workdir / "dataset.extxyz")
    # The labels of iteration 0 were not computed again.
    assert resumed["this_invocation"]["labels_reused"] >= tiny().loop.n_initial


def test_other_settings_in_workdir_are_refused(tiny_run):
    workdir, _ = tiny_run
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
    other = ActiveLearningSettings.from_preset("tiny", loop={"seed": 7})
    with pytest.raises(RunConflictError, match="loop.seed"):
        run_local("CuI", workdir, other)
    after = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
    assert before == after


def test_unknown_material_suggests_close_matches(tmp_path):
    with pytest.raises(ValueError, match="did you mean CuI"):
        run_local("CuIi", tmp_path / "x", tiny())
    assert not (tmp_path / "x").exists()


def test_unreadable_structure_file(tmp_path):
    bad = tmp_path / "bad.cif"
    bad.write_text("this is not a CIF")
    with pytest.raises(ValueError, match="bad.cif"):
        run_local(str(bad), tmp_path / "x", tiny())
    assert not (tmp_path / "x").exists()


def test_non_positive_temperature_is_rejected():
    with pytest.raises(ValueError, match="temperatures must be > 0"):
        ActiveLearningSettings.from_preset("tiny", loop={"temperatures": [300, -5]})


def test_built_in_structures():
    cui = get_structure("CuI")
    assert cui.composition.reduced_formula == "CuI"
    assert cui.get_space_group_info()[1] == 216
    assert abs(cui.lattice.a - 6.054) < 1e-9
    agse = get_structure("AgGaSe2")
    assert agse.get_space_group_info()[1] == 122


def _record(i: int, mae: float, n_selected: int = 5) -> IterationRecord:
    return IterationRecord(
        iteration=i,
        n_train=10,
        n_test=5,
        n_selected=n_selected,
        test_mae_energy_meV_per_atom=1.0,
        test_mae_forces_meV_per_A=mae,
        uncertainty_key="force_max",
        uncertainty_mean=0.1,
        uncertainty_std=0.01,
        wall_seconds=1.0,
        finished_at=0.0,
        ensemble_uuid="e",
        evaluation_uuid="v",
    )


def _state(maes: list[float], acceptance: float | None, labels: int = 10) -> LoopState:
    from workflows.active_learning import FrameSet

    return LoopState(
        material="X",
        iteration=len(maes) - 1,
        train=FrameSet(),
        e0s={},
        starts={},
        history=[_record(i, m) for i, m in enumerate(maes)],
        labels_used=labels,
        last_acceptance_fraction=acceptance,
        fc_uuid="f",
        test_uuid="t",
        started_at=0.0,
    )


def test_stopping_rules():
    s = ActiveLearningSettings.from_preset(
        "tiny",
        loop={
            "max_iterations": 10,
            "force_mae_rtol": 0.05,
            "converge_window": 2,
            "acceptance_threshold": 0.1,
            "max_labels": 100,
        },
    )
    # Changes of 2 % and 1 % over the window, few frames accepted: converged.
    done = stopping_reason(_state([50.0, 40.0, 39.2, 38.8], acceptance=0.02), s)
    assert done is not None and done[0] is True
    # Same errors, but many frames still accepted: go on.
    assert stopping_reason(_state([50.0, 40.0, 39.2, 38.8], acceptance=0.5), s) is None
    # Error still dropping by 20 %: go on.
    assert stopping_reason(_state([50.0, 40.0, 32.0], acceptance=0.0), s) is None
    # Budget spent.
    out = stopping_reason(_state([50.0, 40.0], acceptance=0.5, labels=100), s)
    assert out == (False, "label budget (100) used: 100 labels")
    # Iteration cap.
    capped = ActiveLearningSettings.from_preset("tiny", loop={"max_iterations": 2})
    assert stopping_reason(_state([50.0, 40.0], acceptance=0.5), capped)[1].startswith("max_iter")


def test_several_temperatures_explore_as_one_batched_job(tmp_path):
    settings = ActiveLearningSettings.from_preset("tiny", loop={"temperatures": [300.0, 600.0]})
    summary = run_local("CuI", tmp_path / "two", settings)
    from active_mlip.stores import StoreSettings, make_job_store

    store = make_job_store(StoreSettings(local_path=tmp_path / "two" / "store"))
    store.connect()
    names = [d["name"] for d in store.query({"name": {"$regex": "explore"}}, properties=["name"])]
    assert names == ["CuI it0 explore 300K,600K"]
    (doc,) = [store.get_output(d["uuid"], load=True) for d in store.query({"name": names[0]})]
    temps = [e["temperature"] for e in doc["explorations"]]
    assert temps == [300.0, 600.0] and doc["batched"] is True
    # Each walker scored frames; together they fill the iteration's quota of selections.
    assert all(e["n_scored"] > 0 for e in doc["explorations"])
    assert summary["iterations"][0]["n_scored"] == sum(e["n_scored"] for e in doc["explorations"])
