"""Smoke tests of the benchmarks: their measuring code on hand-made inputs and tiny runs.

The benchmarks themselves are not run here (minutes each); these prove that what they
measure is what they say: MACE's per-epoch log read into a cost curve, every job's own
time split from jobflow's work around it, FireWorks overhead and the status read on a
real wire-protocol server.
"""

from __future__ import annotations

import argparse
import json
import time

import pytest
from jobflow import Flow, JobStore, job, run_locally
from maggma.stores import MemoryStore

from benchmarks.co_tenants import slowdowns
from benchmarks.orchestration_overhead import JobTimer, kind_of, split_times
from benchmarks.training_cost import (
    LEVEL,
    cost_to_reach,
    epoch_curve,
    plot,
    print_summary,
    targets,
    time_axis,
)


def _write_mace_log(workdir, rows):
    (workdir / "results").mkdir()
    with open(workdir / "results" / "member_run-1_train.txt", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def test_cost_to_reach_reads_mace_epochs_and_times(tmp_path):
    ev = {"mode": "eval", "time": 0.5}
    _write_mace_log(
        tmp_path,
        [
            {**ev, "epoch": None, "rmse_f": 0.100},
            {"mode": "opt", "epoch": 0, "time": 1.0},
            {"mode": "opt", "epoch": 0, "time": 1.0},
            {**ev, "epoch": 0, "rmse_f": 0.080},
            {"mode": "opt", "epoch": 1, "time": 1.0},
            {"mode": "opt", "epoch": 1, "time": 2.0},
            {**ev, "epoch": 1, "rmse_f": 0.050},
            {"mode": "opt", "epoch": 2, "time": 1.0},
            {**ev, "epoch": 2, "rmse_f": 0.060},
        ],
    )
    initial, curve = epoch_curve(tmp_path)
    assert initial == pytest.approx(100.0)
    assert [e for e, _, _ in curve] == [0, 1, 2]
    assert [r for _, r, _ in curve] == pytest.approx([80.0, 50.0, 60.0])
    assert [t for _, _, t in curve] == pytest.approx([2.5, 3.5, 1.5])
    # A 10 s run logged 7.5 s of epochs: 2.5 s of start-up and saving.
    assert cost_to_reach(100.0, initial, curve, 10.0) == (0, pytest.approx(2.5))
    assert cost_to_reach(80.0, initial, curve, 10.0) == (1, pytest.approx(5.0))
    assert cost_to_reach(55.0, initial, curve, 10.0) == (2, pytest.approx(8.5))
    assert cost_to_reach(40.0, initial, curve, 10.0) == (None, None)


def test_learning_curve_time_axis_matches_cost_to_reach(tmp_path):
    # Initial 100 meV/Å; epochs of 2.5, 3.5, 1.5 s ending at 80, 50, 60; a 10 s run.
    curve = [(0, 80.0, 2.5), (1, 50.0, 3.5), (2, 60.0, 1.5)]
    xs, ys = time_axis(100.0, curve, 10.0)
    # 2.5 s outside the epochs come first; the last point is the run's wall time.
    assert xs == pytest.approx([2.5, 5.0, 8.5, 10.0])
    assert ys == [100.0, 80.0, 50.0, 60.0]
    # Where the curve first reaches a target is what cost_to_reach charges.
    assert xs[ys.index(50.0)] == pytest.approx(cost_to_reach(55.0, 100.0, curve, 10.0)[1])
    assert time_axis(None, curve, 10.0)[0] == pytest.approx([5.0, 8.5, 10.0])
    run = {"member": 0, "warm": (60.0, curve, 9.0), "scratch": (100.0, curve, 10.0)}
    path = tmp_path / "curves.png"
    plot([run, {**run, "member": 1}], "title", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_takes_medians_over_members(capsys):
    # (target, warm epochs, warm s, scratch epochs, scratch s) per target factor.
    rows = [
        {1.0: (50.0, 10, 10.0, 30, 30.0), 1.1: (55.0, 5, 8.0, 20, 24.0)},
        {1.0: (40.0, 15, 20.0, 30, 30.0), 1.1: (44.0, 0, 6.0, 25, 30.0)},
        {1.0: (60.0, None, None, 30, 30.0), 1.1: (66.0, 10, 10.0, 30, 30.0)},
    ]
    for row, budget in zip(rows, ((52.0, 30.0), (41.0, 30.0), (61.0, 30.0)), strict=True):
        row["budget"] = (budget, (45.0, 15.0))
    out = print_summary(rows, (30, 15), "quick")
    # 1.0x: the third warm run never got there; medians of (3, 2) epochs and (3, 1.5) s.
    assert out[1.0] == (pytest.approx(2.5), pytest.approx(2.25))
    # 1.1x: a warm run at target before training counts as 1 epoch (25 / 1).
    assert out[1.1] == (pytest.approx(4.0), pytest.approx(3.0))
    text = capsys.readouterr().out
    assert "1 warm runs never reached it" in text
    assert "scratch 52.0, warm 45.0 meV/Å (medians); seconds scratch/warm = 2.00x" in text
    assert text.count("MET") == 1 and text.count("MISSED") == 1


def test_targets_include_the_scratch_runs_final_level():
    rmses = [100.0, 80.0, 30.0, 31.0, 29.0, 30.0, 32.0, 28.0, 30.0, 31.0, 29.0, 30.0]
    curve = [(k, r, 1.0) for k, r in enumerate(rmses)]
    got = targets(curve)
    # The best is one low evaluation; the level is the mean of the last 10: 300 / 10.
    assert got == {1.0: 28.0, 1.1: pytest.approx(30.8), LEVEL: pytest.approx(30.0)}
    # A warm curve on the same plateau reaches the level at once, the best only late.
    warm = [(k, r, 1.0) for k, r in enumerate([33.0, 30.0, 29.5, 31.0, 28.0])]
    assert cost_to_reach(got[LEVEL], 29.0, warm, 7.0)[0] == 0
    assert cost_to_reach(got[1.0], 31.0, warm, 7.0) == (5, 7.0)
    assert cost_to_reach(got[LEVEL], 31.0, warm, 7.0) == (2, 4.0)
    # The summary reports it under its own key.
    row = {key: (t, 2, 4.0, 8, 12.0) for key, t in got.items()}
    assert print_summary([row], (30, 15), "quick")[LEVEL] == (4.0, 3.0)


@job
def _sleep(x, seconds):
    time.sleep(seconds)
    return x + 1


def test_job_timer_separates_job_time_from_jobflow_time():
    from jobflow.core.job import Job

    original = Job.run
    a = _sleep(0, 0.2)
    a.name = "demo it1 a"
    b = _sleep(a.output, 0.1)
    b.name = "demo it1 b"
    t0 = time.perf_counter()
    with JobTimer() as timer:
        responses = run_locally(Flow([a, b]), store=JobStore(MemoryStore()), log=False)
    wall = time.perf_counter() - t0
    assert Job.run is original
    assert responses[b.uuid][1].output == 2  # the jobs still ran, with their inputs
    recs = {r["name"]: r for r in timer.records}
    assert set(recs) == {"demo it1 a", "demo it1 b"}
    for name, seconds in (("demo it1 a", 0.2), ("demo it1 b", 0.1)):
        assert seconds <= recs[name]["function"] < seconds + 0.1
        assert recs[name]["run"] >= recs[name]["function"]
        assert recs[name]["output"] == "int"
    assert recs["demo it1 a"]["gap"] == 0.0 and recs["demo it1 b"]["gap"] >= 0.0
    parts = split_times(timer.records)
    assert parts["other jobs"] == pytest.approx(
        recs["demo it1 a"]["function"] + recs["demo it1 b"]["function"]
    )
    assert sum(parts.values()) <= wall
    assert kind_of({"name": "x it1 train", "output": "MemberDocument"}) == "training"
    assert kind_of({"name": "x it1 label", "output": "ToppedUpBatch"}) == "labelling"
    assert kind_of({"name": "x E0s", "output": "dict"}) == "labelling"
    assert kind_of({"name": "x it1 explore", "output": "ExplorationBatchDocument"}) == "MD"
    assert kind_of({"name": "x it1 evaluate", "output": "EvaluationDocument"}) == "evaluation"
    assert kind_of({"name": "x it1 merge", "output": "LoopState"}) == "other jobs"


def _own_env(monkeypatch):
    """Let the benchmark set its database variables; restore them after the test."""
    import fireworks.core.launchpad as lpmod

    monkeypatch.setattr(lpmod, "GRIDFS_FALLBACK_COLLECTION", None)  # jongodb has no GridFS
    for k in ("ACTIVE_MLIP_MONGO_URI", "ACTIVE_MLIP_FW_DB", "ACTIVE_MLIP_MONGO_DB"):
        monkeypatch.setenv(k, "unset")
    monkeypatch.delenv("ACTIVE_MLIP_LAUNCHPAD", raising=False)


@pytest.fixture(scope="module")
def jongodb():
    from benchmarks.orchestration_overhead import start_jongodb, stop_jongodb
    from tests.mongo import jongodb_binary, unavailable

    # The tests' lookup, which installs jongodb with npm when it is missing: on a fresh
    # clone these tests may run before any other test installed it.
    binary, why = jongodb_binary()
    if binary is None:
        unavailable(why)
    proc, uri = start_jongodb()
    yield uri
    stop_jongodb(proc)


@pytest.mark.timeout(120)
def test_fireworks_overhead_runs_a_chain(jongodb, monkeypatch):
    from benchmarks.orchestration_overhead import fireworks_overhead

    _own_env(monkeypatch)
    args = argparse.Namespace(fireworks=[3], work=0.05, repeats=1, verbose=False)
    per_fw = fireworks_overhead(args, jongodb)  # raises unless all 3 fireworks completed
    assert 0.0 < per_fw < 30.0


@pytest.mark.timeout(120)
def test_status_reads_the_filled_launchpad(jongodb, tmp_path, monkeypatch):
    from active_mlip.app.launchpad import load_launchpad
    from active_mlip.app.status import campaign_status
    from active_mlip.stores.worker_store import client_job_store
    from benchmarks.campaign_scale import fill_and_complete, write_campaign
    from benchmarks.orchestration_overhead import use_databases

    _own_env(monkeypatch)
    use_databases(jongodb)
    names = ["CuI", "AgI"]
    campaign_file = write_campaign(tmp_path / "c.yaml", "smoke", "tiny", names)
    lp = load_launchpad()
    n_done = fill_and_complete(lp, campaign_file, 1, "tiny", names)
    rows = campaign_status(lp, None, client_job_store())
    assert sorted(r.material for r in rows) == sorted(names)
    labelling = lp.fireworks.count_documents({"spec.kind": "labelling"})
    assert n_done >= labelling > 0
    # Each labelling firework was given 10 labelled + 1 failed frame.
    assert sum(r.labels for r in rows) == 11 * labelling
    assert {r.test_force_mae for r in rows} == {42.0}
    # Counts come from the workflows' fw_states, which the filler keeps in step.
    assert sum(r.counts.get("COMPLETED", 0) for r in rows) == n_done
    assert sum(sum(r.counts.values()) for r in rows) == lp.fireworks.count_documents({})


def test_find_ids_reads_a_range_or_a_list(jongodb):
    """campaign_status's firework read: one range when the ids are dense, else ``$in``."""
    from pymongo import MongoClient

    from active_mlip.app.status import _find_ids

    coll = MongoClient(jongodb).find_ids_test.fireworks
    coll.insert_many(
        [{"fw_id": i, "state": "COMPLETED" if i % 2 else "READY"} for i in range(1, 101)]
    )
    done = {"state": "COMPLETED"}
    sent: list[dict] = []
    find = coll.find

    class Spy:
        def find(self, query, projection):
            sent.append(query)
            return find(query, projection)

    # Dense: 1..9 asked among 9 nodes -> one range query, filtered by state on the server.
    got = _find_ids(Spy(), [1, 3, 5, 7, 9], done, {"fw_id": 1}, population=9)
    assert sorted(d["fw_id"] for d in got) == [1, 3, 5, 7, 9]
    assert sent[-1]["fw_id"] == {"$gte": 1, "$lte": 9}
    # Sparse: 3 ids spread over 100 -> a list; the server still drops the READY one.
    got = _find_ids(Spy(), [1, 50, 99], done, {"fw_id": 1}, population=3)
    assert sorted(d["fw_id"] for d in got) == [1, 99]
    assert sent[-1]["fw_id"] == {"$in": [1, 50, 99]}
    assert _find_ids(Spy(), [], done, {"fw_id": 1}) == [] and len(sent) == 2


@pytest.mark.slow
def test_trainer_startup_times_both_start_methods(monkeypatch, capsys):
    from benchmarks import trainer_startup

    argv = ["trainer_startup.py", "--repeats", "1", "--epochs", "1", "--preset", "tiny"]
    monkeypatch.setattr("sys.argv", [*argv, "--n-frames", "4"])
    # the benchmark switches the variable itself; this makes monkeypatch restore it
    monkeypatch.setenv("ACTIVE_MLIP_MACE_LAUNCH", "forkserver")
    trainer_startup.main()
    out = capsys.readouterr().out
    assert "run 0 forkserver" in out and "run 0 subprocess" in out
    assert "fresh / forked: wall time" in out


def test_screening_benchmarks_measure_what_they_say(tmp_path):
    from active_mlip.makers.screening_calibration import synthetic_screenings
    from benchmarks.screening_chance_flags import review_rules
    from benchmarks.screening_controls import _walltimes

    # the review's rules fire on a screening whose uncertainties all sit far above the test set
    ev, md_u, checks, _ = next(synthetic_screenings(16, 1, seed=0))
    assert "uncertainty" in review_rules(ev, {300.0: [10.0] * 60}, checks)
    # a campaign log's mm:ss clock wraps after an hour
    log = tmp_path / "run.log"
    log.write_text(
        "00:00 starting A in /x/A\n50:00 starting B in /x/B\n05:00 ▶ B screening\n"
        "20:00 starting C in /x/C\n25:30 done\n"
    )
    assert _walltimes(log) == pytest.approx({"A": 50.0, "B": 30.0, "C": 5.5})


def test_co_tenant_slowdowns_are_median_time_over_alone():
    rounds = [
        {0: [30.0], 1: [60.0, 66.0], 2: [100.0, 110.0, 120.0]},
        {0: [34.0], 1: [64.0, 70.0], 2: [90.0, 95.0, 130.0]},
    ]
    ratios = slowdowns(rounds)
    assert list(ratios) == [1, 2]
    assert ratios[1] == pytest.approx(65.0 / 32.0)
    assert ratios[2] == pytest.approx(105.0 / 32.0)
