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

from active_mlip.app.local import RunConflictError, run_local
from active_mlip.workflows.materials import get_structure
from active_mlip.workflows.policy import plateau, stopping_reason
from active_mlip.workflows.settings import ActiveLearningSettings
from tests.workflows.helpers_loop import cu_frame, exploration_doc, loop_state

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
    from active_mlip.core.frames import Frame

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


def test_summary_records_relaxation_statistics_stop_and_versions(tiny_run):
    workdir, summary = tiny_run
    relax = summary["relaxation"]
    # CuI's forces vanish by symmetry: BFGS has nothing to do.
    assert relax["max_force_after"] <= relax["settings"]["fmax"] == 0.005
    assert relax["n_steps"] == 0 and "frame" not in relax
    assert summary["unstable_modes"] == []
    it0 = summary["iterations"][0]
    stats = it0["acceptance_statistics"]["300"]
    sel = tiny().selection
    assert stats["energy_reference"] == "thermal-md"
    assert stats["u_threshold"] == pytest.approx(stats["u_mean"] + sel.shift * stats["u_std"])
    assert stats["e_knee"] == pytest.approx(stats["e_mean"] + sel.knee * stats["e_std"])
    assert stats["n_accepted"] == it0["n_selected"] > 0
    assert it0["md_ps"]["300"] == pytest.approx(stats["md_ps"]) and stats["md_ps"] <= 1.6
    assert set(it0["test_statistics_by_temperature"]) == {"300"}
    assert summary["versions"]["numpy"] and summary["versions"]["mace-torch"] == "0.3.16"
    html = (workdir / "report" / "report.html").read_text()
    for words in ("Ū + s·σ_U", "largest displacement from R0", "R0 relaxed with the labeller"):
        assert words in html, words


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


def test_convergence_is_a_plateau_of_force_mae_and_sigma_u():
    s = ActiveLearningSettings.from_preset(
        "tiny",
        loop={
            "max_iterations": 10,
            "converge_window": 3,
            "force_mae_rtol": 0.05,
            "uncertainty_rtol": 0.10,
            "max_labels": 100,
        },
    )
    # Last 3 MAEs 40.0, 39.2, 38.8: range 1.2/40 = 3 %; σ_U flat: converged, with the numbers.
    done = stopping_reason(loop_state([50.0, 40.0, 39.2, 38.8]), s)
    assert done is not None and done[0] is True
    assert "iterations 1-3" in done[1] and "3.0%" in done[1] and "38.8-40.0 meV/Å" in done[1]
    p = plateau(loop_state([50.0, 40.0, 39.2, 38.8]).history, s.loop)
    assert p["plateau"] and p["force_mae_range"] == pytest.approx(1.2 / 40.0)
    assert p["iterations"] == [1, 2, 3]
    # The MAE has plateaued but σ_U still falls by 20 %: go on.
    moving = loop_state([50.0, 40.0, 39.2, 38.8], u_stds=[0.02, 0.015, 0.013, 0.012])
    assert plateau(moving.history, s.loop)["uncertainty_std_range"] == pytest.approx(0.2)
    assert stopping_reason(moving, s) is None
    # The MAE still drops by 20 % over the window: go on (the old rule called this converged
    # when an exploration happened to accept nothing).
    assert stopping_reason(loop_state([50.0, 40.0, 32.0]), s) is None
    # Fewer iterations than the window: never converged.
    assert stopping_reason(loop_state([40.0, 40.0]), s) is None
    # Budget spent.
    out = stopping_reason(loop_state([50.0, 40.0], labels=100), s)
    assert out == (False, "label budget (100) used: 100 labels")
    # Iteration cap.
    capped = ActiveLearningSettings.from_preset("tiny", loop={"max_iterations": 2})
    assert stopping_reason(loop_state([50.0, 40.0]), capped)[1].startswith("max_iter")


def test_an_empty_exploration_stops_before_retraining_and_says_how_much_md_it_ran():
    from jobflow import Flow, Response

    from active_mlip.workflows.iteration import IterationMaker, proceed
    from active_mlip.workflows.state import Candidates, FrameSet, LoopRefs

    s = ActiveLearningSettings.from_preset(
        "tiny", loop={"max_iterations": 10}, selection={"shift": 2.0}
    )
    state = loop_state([50.0, 40.0]).model_copy(update={"e0s": {"Cu": -0.5}})
    refs = LoopRefs(
        state="s",
        ensemble="e",
        evaluation="v",
        fc="f",
        initial="i",
        collect="c",
        explorations=["x"],
    )
    iteration = IterationMaker(settings=s)
    empty = [exploration_doc(300.0, 170, [], 8.0)]
    out = proceed.original(Candidates(frames=[]), empty, state, FrameSet(), {}, refs, iteration)
    assert out.converged is False
    assert out.stop_reason.startswith("no frame accepted in 8 ps of MLIP-MD at 300 K")
    assert "170 frames scored against Ū + s·σ_U = 0.07" in out.stop_reason
    last = out.state.history[-1]
    assert (last.n_selected, last.n_scored, last.md_ps) == (0, 170, {"300": 8.0})
    assert last.acceptance_statistics["300"]["u_threshold"] == pytest.approx(0.05 + 2 * 0.01)
    assert out.stop_details["acceptance_statistics"]["300"]["e_knee"] == pytest.approx(-199.75)
    # With frames to label: label, top up, merge, then train, evaluate and decide.
    found = [exploration_doc(300.0, 40, [cu_frame(0)], 1.3)]
    nxt = proceed.original(
        Candidates(frames=[cu_frame(0)]), found, state, FrameSet(), {}, refs, iteration
    )
    assert isinstance(nxt, Response) and isinstance(nxt.replace, Flow)
    names = [j.name for j in nxt.replace.jobs]
    assert names == [
        "X it1 link labels",
        "X it1 label",
        "X it1 top up labels",
        "X it2 merge",
        "X it2 train",
        "X it2 evaluate",
        "X it2 decide",
    ]


def test_several_temperatures_explore_as_one_batched_job(tmp_path):
    settings = ActiveLearningSettings.from_preset("tiny", loop={"temperatures": [300.0, 600.0]})
    summary = run_local("CuI", tmp_path / "two", settings)
    from active_mlip.stores.job_store import StoreSettings, make_job_store

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
    # Each walker was judged by statistics of its own temperature.
    it0 = summary["iterations"][0]
    assert set(it0["test_statistics_by_temperature"]) == {"300", "600"}
    by_t = it0["acceptance_statistics"]
    assert set(by_t) == {"300", "600"}
    for e in doc["explorations"]:
        ref = e["acceptance_reference"]
        assert by_t[f"{e['temperature']:g}"]["e_mean"] == ref["e_mean"]
        assert e["energy_reference_source"] == "thermal-md" and ref["n_frames"] == 10
    assert by_t["600"]["e_mean"] != by_t["300"]["e_mean"]


def test_failed_single_points_are_replaced_from_the_reserve(tmp_path):
    from jobflow import Flow, run_locally

    from active_mlip.makers.labelling import ASECalculatorLabeller, LabelMaker
    from active_mlip.stores.job_store import StoreSettings, make_job_store
    from active_mlip.workflows.jobs import top_up
    from active_mlip.workflows.state import ToppedUpBatch

    labeller = ASECalculatorLabeller(calculator="tests.makers.helpers_labelling.FailingEMT")
    primary = [cu_frame(0, rank=0), cu_frame(1, rank=1, fail="raise"), cu_frame(2, rank=2)]
    # Next best: the first replacement fails too, the second succeeds, the third is spare.
    reserve = [cu_frame(3, rank=3, fail="raise"), cu_frame(4, rank=4), cu_frame(5, rank=5)]
    store = make_job_store(StoreSettings(local_path=tmp_path / "store"))

    def run() -> ToppedUpBatch:
        label = LabelMaker(labeller=labeller).make(primary)
        topped = top_up([label.output], reserve, 3, labeller)
        run_locally(
            Flow([label, topped]), store=store, ensure_success=True, log=False, root_dir=tmp_path
        )
        return ToppedUpBatch.from_dict(store.get_output(topped.uuid, load=True))

    out = run()
    # The quota of 3 is met by the 2 good primaries and the best good reserve frame.
    assert [f.info["rank"] for f in out.frames] == [0, 2, 4]
    assert (out.n_requested, out.n_labelled, out.n_failed) == (5, 3, 2)
    assert [f.index for f in out.failures] == [1, 3]
    assert all("SCF did not converge" in f.reason for f in out.failures)
    assert (out.n_requested_here, out.n_reused_here) == (2, 0)
    # Again: the replacement's label comes from the cache (the failure is retried).
    again = run()
    assert [f.info["rank"] for f in again.frames] == [0, 2, 4]
    assert (again.n_requested_here, again.n_reused_here) == (2, 1)


def test_no_top_up_when_every_frame_failed_or_quota_met():
    from active_mlip.makers.labelling import ASECalculatorLabeller, label_in_process
    from active_mlip.workflows.jobs import top_up

    labeller = ASECalculatorLabeller(calculator="tests.makers.helpers_labelling.FailingEMT")
    reserve = [cu_frame(4), cu_frame(5)]
    all_failed = label_in_process([cu_frame(0, fail="raise"), cu_frame(1, fail="raise")], labeller)
    out = top_up.original([all_failed], reserve, 2, labeller)
    assert (out.n_requested, out.n_labelled, out.n_requested_here) == (2, 0, 0)
    fine = label_in_process([cu_frame(0), cu_frame(1)], labeller)
    out = top_up.original([fine], reserve, 2, labeller)
    assert (out.n_requested, out.n_labelled, out.n_requested_here) == (2, 2, 0)


def test_dft_replacements_become_a_label_job_and_another_top_up():
    from jobflow import Flow, Response

    from active_mlip.makers.labelling import (
        ASECalculatorLabeller,
        Atomate2Labeller,
        label_in_process,
    )
    from active_mlip.workflows.jobs import top_up

    emt = ASECalculatorLabeller(calculator="tests.makers.helpers_labelling.FailingEMT")
    batch = label_in_process([cu_frame(0), cu_frame(1, fail="raise"), cu_frame(2)], emt)
    dft = Atomate2Labeller(code="cp2k")
    out = top_up.original([batch], [cu_frame(3), cu_frame(4), cu_frame(5)], 3, dft)
    assert isinstance(out, Response) and isinstance(out.replace, Flow)
    label, nxt = out.replace.jobs
    assert len(label.function_args[0]) == 1  # exactly the one missing frame
    assert len(nxt.function_args[1]) == 2  # the rest stays in reserve
    assert nxt.function_args[0][0].n_labelled == 2


def test_collect_keeps_the_next_best_as_reserve():
    from active_mlip.makers.exploration import ExplorationDocument
    from active_mlip.workflows.jobs import collect_candidates

    frames = [cu_frame(i, uncertainty=u) for i, u in enumerate([0.3, 0.9, 0.1, 0.5, 0.7])]
    doc = ExplorationDocument.model_construct(frames=frames)
    out = collect_candidates.original([doc], 2, 0, None)
    assert [f.info["uncertainty"] for f in out.frames] == [0.9, 0.7]
    assert [f.info["uncertainty"] for f in out.reserve] == [0.5, 0.3, 0.1]
    # A label budget of 3 leaves room for one replacement only.
    out = collect_candidates.original([doc], 2, 0, 3)
    assert [f.info["uncertainty"] for f in out.reserve] == [0.5]


def test_labeller_failing_every_frame_stops_the_loop():
    s = ActiveLearningSettings.from_preset("tiny", loop={"max_iterations": 10})
    state = loop_state([50.0, 40.0])
    history = list(state.history)
    history[0] = history[0].model_copy(
        update={
            "n_selected": 6,
            "n_labelled": 0,
            "n_label_failures": 6,
            "label_failure_reasons": ["RuntimeError: SCF did not converge"],
        }
    )
    converged, reason = stopping_reason(state.model_copy(update={"history": history}), s)
    assert converged is False
    assert reason.startswith("labeller failed on every frame: 0 of 6")
    assert "SCF did not converge" in reason
    # One failure of six is no reason to stop.
    history[0] = history[0].model_copy(update={"n_labelled": 5, "n_label_failures": 1})
    assert stopping_reason(state.model_copy(update={"history": history}), s) is None


def test_loop_with_a_labeller_that_fails_on_md_frames_stops_with_a_verdict(tmp_path):
    settings = ActiveLearningSettings.from_preset(
        "tiny",
        loop={"max_iterations": 4},
        labeller={"kind": "ase", "calculator": "tests.workflows.helpers_faults.CHGNetFailingOnMD"},
    )
    summary = run_local("CuI", tmp_path / "failing", settings)
    assert summary["converged"] is False
    assert summary["stop_reason"].startswith("labeller failed on every frame")
    assert "SCF did not converge (simulated)" in summary["stop_reason"]
    it0, it1 = summary["iterations"]
    assert it0["n_selected"] > 0 and it0["n_labelled"] == 0
    assert it1["n_train"] == it0["n_train"]


def test_dft_labeller_cannot_relax_before_any_job():
    from active_mlip.workflows.active_learning import ActiveLearningMaker

    dft = ActiveLearningSettings.from_preset(
        "tiny",
        labeller={"kind": "atomate2", "code": "cp2k"},
        loop={"e0s": {"Cu": -1.0, "I": -2.0}},
    )
    with pytest.raises(ValueError, match="DFT labeller .*set loop.relax = false"):
        ActiveLearningMaker(settings=dft).make(get_structure("CuI"))
    given = dft.model_copy(update={"loop": dft.loop.model_copy(update={"relax": False})})
    flow = ActiveLearningMaker(settings=given).make(get_structure("CuI"))
    assert not [j for j in flow.jobs if "relax" in j.name]
    chgnet = ActiveLearningMaker(settings=tiny()).make(get_structure("CuI"))
    assert chgnet.jobs[0].name == "CuI relax R0"


def test_a_walker_in_a_false_basin_restarts_from_r0(monkeypatch):
    import active_mlip.workflows.jobs as al
    from active_mlip.makers.schemas import LabelledBatch, LabellerIdentity
    from active_mlip.workflows.jobs import merge
    from active_mlip.workflows.state import ExplorationOutcome, FrameSet, Walker

    monkeypatch.setattr(al, "_calibration", lambda ensemble, frames: [])  # needs no models
    r0 = cu_frame(0).unlabelled()
    state = loop_state([50.0]).model_copy(
        update={
            "r0": r0,
            "walkers": [Walker(temperature=300.0, start=r0.with_info(temperature=300.0), seed=5)],
        }
    )
    last = cu_frame(7).unlabelled().with_info(temperature=300.0, velocities=[[0.1, 0, 0]] * 4)
    explored = exploration_doc(300.0, 40, [], 1.0, last_frame=last)

    def labelled(offset_meV_per_atom: float):
        f = cu_frame(3)
        e = -4.0  # the reference's energy of the 4-atom frame; the ensemble said less
        f = f.model_copy(update={"energy": e, "forces": [[0.0, 0.0, 0.0]] * 4})
        mlip = e - offset_meV_per_atom * 4 / 1000
        f = f.with_info(temperature=300.0, energy_mlip=mlip, iteration=1, source="mlip-md")
        return LabelledBatch(
            labeller=LabellerIdentity(name="x", settings_hash="h"),
            frames=[f],
            n_requested=1,
            n_labelled=1,
            n_failed=0,
        )

    settings = ActiveLearningSettings.from_preset(
        "tiny", loop={"restart_error_meV_per_atom": 50.0, "seed": 0}
    )

    def run(offset: float):
        return merge.original(
            state.model_copy(update={"train": FrameSet(frames=[cu_frame(1), cu_frame(2)])}),
            state,
            labelled(offset),
            [explored],
            None,
            settings,
            ExplorationOutcome(),
        )

    near = run(10.0)  # 10 meV/atom off: the walker continues where it stopped
    assert near.walkers[0].start.positions == last.positions
    assert near.pending.restarts == {}
    far = run(120.0)  # 120 meV/atom off: a hallucinated basin; back to R0, no velocities
    assert far.walkers[0].start.positions == r0.positions
    assert "velocities" not in far.walkers[0].start.info
    assert far.walkers[0].start.info["temperature"] == 300.0
    # Either way the walker explores next with the next iteration's seed.
    assert near.walkers[0].seed == far.walkers[0].seed != 5
    assert far.pending.restarts["300"].startswith("a labelled frame's energy was 120 meV/atom")
