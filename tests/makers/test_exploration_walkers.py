"""Batched exploration walkers: a batch must be transparent (same trajectories as single runs)
and cost M forward passes per step for all walkers together."""

from __future__ import annotations

import numpy as np
import pytest

from active_mlip.core.frames import Frame
from active_mlip.makers.exploration import (
    LOG_KEYS,
    ExplorationBatchDocument,
    ExplorationDocument,
    ExplorationMaker,
    ExplorationSettings,
    run_exploration,
    run_exploration_walkers,
)
from tests.makers.helpers_exploration import (
    ACCEPT_ALL,
    ACCEPT_NONE,
    mace_calc,
    spring_calc,
    stats,
)
from tests.models import PairModel, make_ensemble_document


@pytest.fixture(scope="module")
def mace_reference(cui, mace_members):
    """Statistics centred on the U of a 300 K run, so acceptance draws are genuinely random."""
    settings = ExplorationSettings(loginterval=4, max_steps=40)
    probe = run_exploration(
        mace_calc(mace_members, cui), cui, stats(**ACCEPT_NONE), 300.0, 1, settings, seed=5
    )
    u = np.array(probe.log["u"])
    e = np.array(probe.log["energy"])
    ref = stats(u_mean=u.mean() - 2 * u.std(), u_std=u.std(), e_mean=e.mean(), e_std=e.std())
    return ref, probe.last_frame


def assert_same_run(batched: ExplorationDocument, single: ExplorationDocument) -> None:
    """Same trajectory, scores, draws and outcome, up to the rounding of a batched pass."""
    assert batched.log["step"] == single.log["step"]
    assert batched.log["accepted"] == single.log["accepted"]
    for key in set(LOG_KEYS) - {"step", "accepted"}:
        np.testing.assert_allclose(batched.log[key], single.log[key], rtol=1e-10, atol=1e-12)
    for field in ("n_steps", "n_scored", "n_accepted", "n_candidates", "stopped_by", "blowup"):
        assert getattr(batched, field) == getattr(single, field), field
    assert [f.info["step"] for f in batched.frames] == [f.info["step"] for f in single.frames]
    for a, b in zip(batched.frames, single.frames, strict=True):
        np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        batched.last_frame.positions, single.last_frame.positions, rtol=0, atol=1e-10
    )
    np.testing.assert_allclose(
        batched.last_frame.info["velocities"],
        single.last_frame.info["velocities"],
        rtol=0,
        atol=1e-12,
    )
    assert batched.last_frame.info["step"] == single.last_frame.info["step"]


# -- transparency ----------------------------------------------------------------------------
def test_batch_of_one_reproduces_run_exploration(cui, mace_members, mace_reference):
    ref, _ = mace_reference
    settings = ExplorationSettings(loginterval=4, max_steps=60)
    single = run_exploration(mace_calc(mace_members, cui), cui, ref, 300.0, 100, settings, seed=5)
    calc = mace_calc(mace_members, cui)
    (batched,) = run_exploration_walkers(calc, [cui], ref, [300.0], 100, settings, seeds=[5])
    assert_same_run(batched, single)
    # The draws were genuinely random, so equal acceptances mean equal streams.
    assert 0 < single.n_accepted < single.n_scored == 15
    assert batched.n_force_evaluations == single.n_force_evaluations == 61
    assert batched.n_forward_passes == single.n_forward_passes == 2 * 61
    # A different seed gives a different trajectory: the comparison above can fail.
    (other,) = run_exploration_walkers(calc, [cui], ref, [300.0], 100, settings, seeds=[6])
    assert not np.allclose(other.log["energy"], single.log["energy"], rtol=1e-6)


def test_walkers_follow_their_single_runs(cui, mace_members, mace_reference):
    # Different temperatures, sizes, seeds, quotas, and one walker continuing a previous
    # run with its stored velocities: batching them must change nothing for any walker.
    ref, continued = mace_reference
    assert continued.info["temperature"] == 300.0 and "velocities" in continued.info
    cell16 = Frame.from_atoms(cui.to_atoms() * (1, 1, 2))
    settings = ExplorationSettings(loginterval=4, max_steps=48)
    starts, temps, quotas, seeds = [continued, cell16], [300.0, 600.0], [100, 3], [5, 7]
    singles = [
        run_exploration(mace_calc(mace_members, cui), s, ref, t, n, settings, seed=seed)
        for s, t, n, seed in zip(starts, temps, quotas, seeds, strict=True)
    ]
    calc = mace_calc(mace_members, cui)
    passes0 = calc.n_forward_passes
    batched = run_exploration_walkers(calc, starts, ref, temps, quotas, settings, seeds=seeds)
    for b, s in zip(batched, singles, strict=True):
        assert_same_run(b, s)
    assert [b.temperature for b in batched] == temps and [b.seed for b in batched] == seeds
    assert len(batched[1].last_frame.numbers) == 16
    assert batched[0].stopped_by == "budget" and batched[1].stopped_by == "quota"
    # The walkers' runs are distinct and each stopped for its own reason; while both ran
    # they shared every evaluation, then the survivor went on alone.
    assert batched[0].log["temperature_K"] != batched[1].log["temperature_K"]
    n_both = min(b.n_steps for b in batched) + 1
    n_all = max(b.n_steps for b in batched) + 1
    assert calc.n_forward_passes - passes0 == 2 * n_all
    assert sum(s.n_forward_passes for s in singles) == 2 * (n_all + n_both)


# -- cost ------------------------------------------------------------------------------------
def test_batch_costs_m_passes_per_step_for_all_walkers(cui):
    settings = ExplorationSettings(loginterval=5, max_steps=40)
    none = stats(**ACCEPT_NONE)
    calc = spring_calc()
    docs = run_exploration_walkers(
        calc, [cui] * 3, none, [200.0, 400.0, 800.0], 1, settings, seeds=[1, 2, 3]
    )
    # S = 40 steps + the start: M (S + 1) passes for the three walkers together.
    assert calc.n_forward_passes == 2 * 41
    assert all(d.stopped_by == "budget" and d.n_steps == 40 for d in docs)
    assert all(d.n_force_evaluations == 41 and d.n_forward_passes == 82 for d in docs)
    sequential = spring_calc()
    for d, t, seed in zip(docs, [200.0, 400.0, 800.0], [1, 2, 3], strict=True):
        assert_same_run(d, run_exploration(sequential, cui, none, t, 1, settings, seed=seed))
    assert sequential.n_forward_passes == 3 * 2 * 41


def test_each_walker_stops_at_its_own_quota(cui):
    settings = ExplorationSettings(loginterval=3, max_steps=300)
    calc = spring_calc()
    fast, slow = run_exploration_walkers(
        calc, [cui, cui], stats(**ACCEPT_ALL), [300.0, 300.0], [2, 5], settings, seeds=[0, 1]
    )
    assert fast.stopped_by == slow.stopped_by == "quota"
    assert (fast.n_steps, fast.n_accepted) == (6, 2) and (slow.n_steps, slow.n_accepted) == (15, 5)
    assert [f.info["step"] for f in slow.frames] == [3, 6, 9, 12, 15]
    assert fast.n_force_evaluations == 7 and slow.n_force_evaluations == 16
    assert calc.n_forward_passes == 2 * 16  # the fast walker left the batch after step 6


def test_blown_up_walker_leaves_the_batch(cui):
    settings = ExplorationSettings(loginterval=5, max_steps=100)
    none = stats(**ACCEPT_NONE)
    calc = spring_calc()
    calm, hot = run_exploration_walkers(
        calc, [cui, cui], none, [300.0, 1e4], 1, settings, seeds=[1, 1]
    )
    # 10^4 K drives atoms into each other: caught by the close-contact check.
    assert hot.stopped_by == "blowup" and "apart" in hot.blowup["reason"]
    assert 0 < hot.n_steps == hot.blowup["step"] < 100
    assert hot.last_frame.info["step"] == hot.n_steps - 1
    assert max(hot.log["step"]) < hot.n_steps
    assert hot.n_force_evaluations == hot.n_steps + 1
    assert calm.stopped_by == "budget" and calm.n_steps == 100 and calm.blowup is None
    assert calc.n_forward_passes == 2 * 101
    for batched, t in ((calm, 300.0), (hot, 1e4)):
        assert_same_run(batched, run_exploration(spring_calc(), cui, none, t, 1, settings, seed=1))


def test_npt_walkers_run_in_turn(cui):
    settings = ExplorationSettings(ensemble="npt", loginterval=5, max_steps=20, pressure_gpa=2.0)
    none = stats(**ACCEPT_NONE)
    docs = run_exploration_walkers(
        spring_calc(compute_stress=True),
        [cui, cui],
        none,
        [300.0, 500.0],
        1,
        settings,
        seeds=[3, 4],
    )
    for d, t, seed in zip(docs, [300.0, 500.0], [3, 4], strict=True):
        single = run_exploration(spring_calc(True), cui, none, t, 1, settings, seed=seed)
        assert_same_run(d, single)
        assert d.n_force_evaluations == 20 + 1  # not batched: its own evaluations


# -- bad input -------------------------------------------------------------------------------
def test_bad_walker_input_fails_before_md(cui):
    calc = spring_calc()
    ok = stats(**ACCEPT_ALL)
    with pytest.raises(ValueError, match="lengths"):
        run_exploration_walkers(calc, [cui, cui], ok, [300.0], 3, seeds=[0, 1])
    with pytest.raises(ValueError, match="lengths"):
        run_exploration_walkers(calc, [cui, cui], ok, [300.0, 300.0], [3], seeds=[0, 1])
    with pytest.raises(ValueError, match="at least one"):
        run_exploration_walkers(calc, [], ok, [], 3, seeds=[])
    with pytest.raises(ValueError, match="seeds"):
        run_exploration_walkers(calc, [cui], ok, [300.0], 3)
    # The second walker is bad: nothing runs, not even the first one.
    with pytest.raises(ValueError, match="temperature"):
        run_exploration_walkers(calc, [cui, cui], ok, [300.0, -5.0], 3, seeds=[0, 1])
    silver = cui.model_copy(update={"numbers": [47 if z == 29 else z for z in cui.numbers]})
    with pytest.raises(ValueError, match="Ag"):
        run_exploration_walkers(calc, [cui, silver], ok, [300.0, 300.0], 3, seeds=[0, 1])
    assert calc.n_forward_passes == 0


# -- the job ---------------------------------------------------------------------------------
def spring_ensemble():
    members = [PairModel(1.0, 2.62, r_max=3.5), PairModel(1.3, 2.64, r_max=3.5)]
    return make_ensemble_document(members, r_max=3.5)


def test_a_batched_exploration_job_caches_and_routes_data(tmp_path, cui):
    from jobflow import Flow, run_locally

    from active_mlip.stores.job_store import StoreSettings, make_job_store

    ensemble = spring_ensemble()
    settings = ExplorationSettings(loginterval=2, max_steps=30)
    maker = ExplorationMaker(settings=settings, device="cpu")
    store = make_job_store(StoreSettings(local_path=tmp_path))
    outs = []
    for _ in range(2):
        job = maker.make(ensemble, [cui, cui], stats(**ACCEPT_ALL), [300.0, 600.0], 4, [1, 2])
        responses = run_locally(Flow([job]), store=store, ensure_success=True)
        outs.append(responses[job.uuid][1].output)
    first, second = outs
    assert isinstance(first, ExplorationBatchDocument) and first.batched and not first.reused
    assert [w.n_accepted for w in first.explorations] == [4, 4]
    assert [w.temperature for w in first.explorations] == [300.0, 600.0]
    # Quota after 4 scored frames at every 2nd step: 8 steps, one batch per step + start.
    assert first.n_force_evaluations == 9 and first.n_forward_passes == 18
    assert second.reused and all(w.reused for w in second.explorations)
    assert second.cache_key == first.cache_key != ""
    for a, b in zip(first.explorations, second.explorations, strict=True):
        assert a.log == b.log
        assert [f.positions for f in a.frames] == [f.positions for f in b.frames]
    # The walkers are those the single-walker job gives.
    single = run_exploration(spring_calc(), cui, stats(**ACCEPT_ALL), 600.0, 4, settings, seed=2)
    assert_same_run(first.explorations[1], single)
    # Nested frames and logs are in the data store, not the job document.
    store.connect()
    doc = store.docs_store.query_one({"uuid": job.uuid})
    for walker in doc["output"]["explorations"]:
        assert "blob_uuid" in str(walker["frames"])
        assert "blob_uuid" in str(walker["log"])


def test_an_exploration_job_rejects_bad_input(cui):
    ensemble = spring_ensemble()
    maker = ExplorationMaker(device="cpu")
    ok = stats(**ACCEPT_ALL)
    silver = cui.model_copy(update={"numbers": [47 if z == 29 else z for z in cui.numbers]})
    with pytest.raises(ValueError, match="Ag"):
        maker.make.original(maker, ensemble, [cui, silver], ok, [300.0, 300.0], 3, [0, 1])
    with pytest.raises(ValueError, match="temperature"):
        maker.make.original(maker, ensemble, [cui, cui], ok, [300.0, 0.0], 3, [0, 1])
    with pytest.raises(ValueError, match="lengths"):
        maker.make.original(maker, ensemble, [cui, cui], ok, [300.0, 300.0], 3, [0])
