"""Exploration MD on 8-atom CuI with tiny ensembles: reproducibility, cost, stopping, blow-ups."""

from __future__ import annotations

import numpy as np
import pytest

from active_mlip.core.frames import Frame
from active_mlip.makers.ensemble import EnsembleCalculator
from active_mlip.makers.exploration import (
    LOG_KEYS,
    ExplorationMaker,
    ExplorationSettings,
    WalkerSpec,
    exploration_cache_key,
    run_exploration,
)
from active_mlip.makers.selection import SelectionSettings
from active_mlip.makers.walkers import _close_contact, _sanity
from tests.makers.helpers_exploration import (
    ACCEPT_ALL,
    ACCEPT_NONE,
    ZS,
    mace_calc,
    spring_calc,
    stats,
)
from tests.models import PairModel, make_ensemble_document


# -- reproducibility and cost ----------------------------------------------------------------
def test_reproducible_and_no_extra_forward_passes(cui, mace_members):
    settings = ExplorationSettings(timestep_fs=2.0, loginterval=4, max_steps=60)
    # Probe the U range of this run, then centre P_U on it so draws are genuinely random.
    probe = run_exploration(
        mace_calc(mace_members, cui), cui, stats(**ACCEPT_NONE), 300.0, 1, settings, seed=5
    )
    u = np.array(probe.log["u"])
    e = np.array(probe.log["energy"])
    ref = stats(u_mean=u.mean() - 2 * u.std(), u_std=u.std(), e_mean=e.mean(), e_std=e.std())
    runs = []
    for seed in (5, 5, 6):
        calc = mace_calc(mace_members, cui)
        passes_before = calc.n_forward_passes  # the reference structure's M passes
        doc = run_exploration(calc, cui, ref, 300.0, 100, settings, seed=seed)
        # One ensemble evaluation for the start and one per step; scoring adds nothing.
        assert doc.n_force_evaluations == doc.n_steps + 1
        assert calc.n_forward_passes - passes_before == 2 * (doc.n_steps + 1)
        assert doc.n_forward_passes == 2 * (doc.n_steps + 1)
        runs.append(doc)
    a, b, c = runs
    assert a.stopped_by == "budget" and a.n_steps == 60 and a.n_scored == 15
    assert a.log == b.log
    assert [f.positions for f in a.frames] == [f.positions for f in b.frames]
    assert a.log["u"] == probe.log["u"]  # same seed, same trajectory, whatever the stats
    assert a.log["energy"] != c.log["energy"]
    # Draws with P strictly between 0 and 1 happened, and some were accepted, some not.
    p = np.array(a.log["p"])
    assert np.any((p > 0.05) & (p < 0.95))
    assert 0 < a.n_accepted < a.n_scored
    assert set(LOG_KEYS) == set(a.log)
    assert a.log["step"] == list(range(4, 61, 4))
    # An accepted frame's recorded uncertainty is that of its own positions.
    frame = a.frames[0]
    fresh = mace_calc(mace_members, cui).evaluate([frame.to_atoms()])[0]
    assert frame.info["uncertainty"] == pytest.approx(fresh["uncertainty"]["force_max"], rel=1e-9)
    assert frame.info["energy_mlip"] == pytest.approx(fresh["energy"], rel=1e-9, abs=1e-12)
    assert not frame.labelled and frame.info["step"] % 4 == 0
    i = a.log["step"].index(frame.info["step"])
    assert a.log["accepted"][i] and a.log["p"][i] == frame.info["p"]
    # last_frame continues the trajectory: velocities and step recorded.
    assert a.last_frame.info["step"] == 60
    assert np.shape(a.last_frame.info["velocities"]) == (8, 3)


# -- stopping --------------------------------------------------------------------------------
def test_stops_at_quota(cui):
    settings = ExplorationSettings(loginterval=3, max_steps=300)
    doc = run_exploration(spring_calc(), cui, stats(**ACCEPT_ALL), 300.0, 4, settings, seed=0)
    assert doc.stopped_by == "quota"
    assert doc.n_accepted == 4 and doc.n_scored == 4 and doc.n_steps == 12
    assert [f.info["step"] for f in doc.frames] == [3, 6, 9, 12]
    assert all(p == 1.0 for p in doc.log["p"])


def test_runs_budget_when_nothing_is_acceptable(cui):
    settings = ExplorationSettings(loginterval=5, max_steps=100)
    doc = run_exploration(spring_calc(), cui, stats(**ACCEPT_NONE), 300.0, 4, settings, seed=0)
    assert doc.stopped_by == "budget" and doc.blowup is None
    assert doc.n_steps == 100 and doc.n_scored == 20 and doc.n_accepted == 0
    assert doc.frames == [] and not any(doc.log["accepted"])


def test_period_mode_keeps_highest_uncertainty(cui):
    settings = ExplorationSettings(loginterval=2, max_steps=80)
    selection = SelectionSettings(mode="period")
    doc = run_exploration(
        spring_calc(), cui, stats(**ACCEPT_ALL), 300.0, 3, settings, selection, seed=2
    )
    assert doc.stopped_by == "budget" and doc.n_steps == 80
    assert doc.n_candidates == 40 and doc.n_accepted == 3
    top = sorted(doc.log["u"], reverse=True)[:3]
    assert sorted((f.info["uncertainty"] for f in doc.frames), reverse=True) == top


# -- blow-ups --------------------------------------------------------------------------------
def test_collapsing_potential_reports_blowup_not_exception(cui):
    # Attractive pair members pull every neighbour pair together: the crystal collapses.
    members = [PairModel(-1.0, 5.0), PairModel(-1.2, 5.0)]
    calc = EnsembleCalculator(members, r_max=4.0, atomic_numbers=ZS, compute_stress=False)
    settings = ExplorationSettings(loginterval=1, max_steps=500, max_energy_drift_per_atom=100.0)
    doc = run_exploration(calc, cui, stats(**ACCEPT_ALL), 300.0, 1000, settings, seed=0)
    assert doc.stopped_by == "blowup"
    blow = doc.blowup["step"]
    assert 0 < blow == doc.n_steps < 500
    assert "apart" in doc.blowup["reason"]  # caught by the close-contact check
    # Every accepted frame precedes the blow-up and is itself sane.
    assert doc.n_accepted == blow - 1
    assert max(f.info["step"] for f in doc.frames) == blow - 1
    for f in doc.frames:
        assert _close_contact(f.to_atoms(), settings.min_distance_fraction) is None
    assert max(doc.log["step"]) == blow - 1
    # The last sane frame is the step before and is a valid start for a new run.
    assert doc.last_frame.info["step"] == blow - 1
    assert doc.last_frame.positions == doc.frames[-1].positions
    assert _close_contact(doc.last_frame.to_atoms(), settings.min_distance_fraction) is None


def test_energy_runaway_is_a_blowup(cui):
    members = [PairModel(-1.0, 5.0), PairModel(-1.2, 5.0)]
    calc = EnsembleCalculator(members, r_max=4.0, atomic_numbers=ZS, compute_stress=False)
    settings = ExplorationSettings(loginterval=1, max_steps=500, max_energy_drift_per_atom=0.2)
    doc = run_exploration(calc, cui, stats(**ACCEPT_ALL), 300.0, 1000, settings, seed=0)
    assert doc.stopped_by == "blowup" and "energy per atom" in doc.blowup["reason"]
    e0 = calc.evaluate([cui.to_atoms()])[0]["energy"] / 8
    drift = np.array(doc.log["energy_per_atom"]) - e0
    assert np.abs(drift).max() <= 0.2  # every scored (sane) frame is within the limit
    assert doc.n_accepted == doc.blowup["step"] - 1


def test_broken_start_potential_is_a_blowup_at_step_zero(cui):
    pushed = np.array(cui.positions)
    pushed[0] += [0.2, 0.0, 0.0]  # off-centre atom: nonzero start forces
    start = cui.model_copy(update={"positions": pushed.tolist()})
    settings = ExplorationSettings(max_force=1e-3, max_steps=50)
    doc = run_exploration(spring_calc(), start, stats(**ACCEPT_ALL), 300.0, 5, settings, seed=0)
    assert doc.stopped_by == "blowup" and doc.blowup["step"] == 0
    assert "force" in doc.blowup["reason"]
    assert doc.n_steps == 0 and doc.n_scored == 0 and doc.frames == []
    assert doc.last_frame.positions == start.positions


def test_sanity_check_reasons(cui):
    atoms = cui.to_atoms()
    s = ExplorationSettings()
    zero = np.zeros((8, 3))
    assert _sanity(atoms, {"energy": -8.0, "forces": zero}, -1.0, s) is None
    bad_f = zero.copy()
    bad_f[3, 1] = np.nan
    assert "non-finite" in _sanity(atoms, {"energy": -8.0, "forces": bad_f}, -1.0, s)
    assert "non-finite" in _sanity(atoms, {"energy": np.inf, "forces": zero}, -1.0, s)
    big = zero.copy()
    big[0, 0] = 60.0
    assert "cap" in _sanity(atoms, {"energy": -8.0, "forces": big}, -1.0, s)
    assert "+1.500 eV/atom" in _sanity(atoms, {"energy": 4.0, "forces": zero}, -1.0, s)
    # Cu-I bond 2.62 Å; covalent radii 1.32 + 1.39 = 2.71 Å -> limit 0.6 x 2.71 = 1.63 Å.
    squeezed = atoms.copy()
    squeezed.positions[4] = squeezed.positions[1] + [0.93, 0.93, 0.0]  # 1.315 Å from Cu 1
    reason = _sanity(squeezed, {"energy": -8.0, "forces": zero}, -1.0, s)
    assert "1.315 Å apart" in reason and "atoms 1 (Cu) and 4 (I)" in reason


# -- physics ---------------------------------------------------------------------------------
def test_langevin_holds_the_temperature(cui):
    supercell = Frame.from_atoms(cui.to_atoms() * (2, 2, 2))  # 64 atoms
    settings = ExplorationSettings(friction=0.2, loginterval=2, max_steps=400)
    doc = run_exploration(
        spring_calc(), supercell, stats(**ACCEPT_NONE), 500.0, 1, settings, seed=3
    )
    assert doc.stopped_by == "budget"
    t = np.array(doc.log["temperature_K"])
    # After ~5 thermostat times (1/friction = 50 fs) the kinetic temperature (3N-3 dof,
    # centre of mass fixed) fluctuates about the target; 100 correlated samples of 64 atoms.
    assert abs(t[50:].mean() / 500.0 - 1) < 0.12


def test_npt_changes_the_cell(cui):
    settings = ExplorationSettings(
        ensemble="npt", loginterval=5, max_steps=40, pressure_gpa=5.0, taup_fs=50.0
    )
    calc = spring_calc(compute_stress=True)
    doc = run_exploration(calc, cui, stats(**ACCEPT_NONE), 300.0, 1, settings, seed=0)
    assert doc.stopped_by == "budget"
    # MTK NPT evaluates forces and stress once per step, at the new positions and cell.
    assert doc.n_force_evaluations == doc.n_steps + 1
    v0 = abs(np.linalg.det(cui.cell))
    v1 = abs(np.linalg.det(doc.last_frame.cell))
    assert v1 < v0  # compressed by +5 GPa


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"timestep_fs": 0.0},
        {"timestep_fs": 12.0},
        {"loginterval": 0},
        {"max_steps": 0},
        {"friction": 0.0},
        {"min_distance_fraction": 1.5},
    ],
)
def test_settings_validation(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ExplorationSettings(**kwargs)


def test_bad_run_input_fails_before_md(cui):
    calc = spring_calc()
    ok = stats(**ACCEPT_ALL)
    with pytest.raises(ValueError, match="temperature"):
        run_exploration(calc, cui, ok, 0.0, 3)
    with pytest.raises(ValueError, match="temperature"):
        run_exploration(calc, cui, ok, -10.0, 3)
    with pytest.raises(ValueError, match="n_new"):
        run_exploration(calc, cui, ok, 300.0, 0)
    with pytest.raises(ValueError, match="force_mean"):
        run_exploration(calc, cui, stats(key="force_mean", **ACCEPT_ALL), 300.0, 3)
    silver = cui.model_copy(update={"numbers": [47 if z == 29 else z for z in cui.numbers]})
    with pytest.raises(ValueError, match="Ag"):
        run_exploration(calc, silver, ok, 300.0, 3)
    squashed = np.array(cui.positions)
    squashed[1] = squashed[0] + [0.3, 0.0, 0.0]
    with pytest.raises(ValueError, match="already broken"):
        run_exploration(calc, cui.model_copy(update={"positions": squashed.tolist()}), ok, 300, 3)
    assert calc.n_forward_passes == 0  # nothing ran


def test_start_velocities_are_reused_at_the_same_temperature(cui):
    first = run_exploration(
        spring_calc(), cui, stats(**ACCEPT_NONE), 300.0, 1, ExplorationSettings(max_steps=20)
    )
    start = first.last_frame
    assert start.info["temperature"] == 300.0 and np.abs(start.info["velocities"]).max() > 0
    # Without thermostat noise, a continued run is fixed by the start velocities, so the
    # seed no longer matters; drawing fresh velocities makes it matter again.
    quiet = ExplorationSettings(friction=1e-9, loginterval=2, max_steps=20)
    none = stats(**ACCEPT_NONE)
    a = run_exploration(spring_calc(), start, none, 300.0, 1, quiet, seed=9)
    b = run_exploration(spring_calc(), start, none, 300.0, 1, quiet, seed=10)
    assert np.allclose(a.log["energy"], b.log["energy"], rtol=1e-4, atol=1e-6)
    fresh = quiet.model_copy(update={"reuse_velocities": False})
    c = run_exploration(spring_calc(), start, none, 300.0, 1, fresh, seed=9)
    d = run_exploration(spring_calc(), start, none, 300.0, 1, fresh, seed=10)
    assert not np.allclose(c.log["energy"], d.log["energy"], rtol=1e-2)
    # At another temperature the stored velocities are not reused either.
    e = run_exploration(spring_calc(), start, none, 600.0, 1, quiet, seed=9)
    f = run_exploration(spring_calc(), start, none, 600.0, 1, quiet, seed=10)
    assert not np.allclose(e.log["energy"], f.log["energy"], rtol=1e-2)


# -- the job ---------------------------------------------------------------------------------
def test_exploration_maker_caches_result(tmp_path, cui):
    from jobflow import Flow, run_locally

    from active_mlip.stores.job_store import StoreSettings, make_job_store

    members = [PairModel(1.0, 2.62, r_max=3.5), PairModel(1.3, 2.64, r_max=3.5)]
    ensemble = make_ensemble_document(members, r_max=3.5)
    maker = ExplorationMaker(
        settings=ExplorationSettings(loginterval=2, max_steps=30), device="cpu"
    )
    store = make_job_store(StoreSettings(local_path=tmp_path))
    outs = []
    for _ in range(2):
        job = maker.make(ensemble, [cui], stats(**ACCEPT_ALL), [300.0], 5, [1])
        responses = run_locally(Flow([job]), store=store, ensure_success=True)
        outs.append(responses[job.uuid][1].output)
    assert not outs[0].batched and [len(o.explorations) for o in outs] == [1, 1]
    first, second = (o.explorations[0] for o in outs)
    assert first.n_accepted == 5 and not first.reused
    assert second.reused and outs[1].reused
    assert second.log == first.log and second.cache_key == first.cache_key
    # One walker keeps the key a single-walker run always had.
    spec = WalkerSpec(cui, stats(**ACCEPT_ALL), 300.0, 5, 1)
    assert first.cache_key == exploration_cache_key(ensemble, spec, maker.settings, maker.selection)
    assert [f.positions for f in second.frames] == [f.positions for f in first.frames]
    # frames and log are in the data store, not the job document
    store.connect()
    doc = store.docs_store.query_one({"uuid": job.uuid})
    assert "blob_uuid" in str(doc["output"]["explorations"][0]["frames"])
    assert "blob_uuid" in str(doc["output"]["explorations"][0]["log"])


def test_exploration_maker_rejects_unknown_elements(cui):
    members = [PairModel(1.0, 2.62, r_max=3.5), PairModel(1.3, 2.64, r_max=3.5)]
    ensemble = make_ensemble_document(members, r_max=3.5)
    silver = cui.model_copy(update={"numbers": [47 if z == 29 else z for z in cui.numbers]})
    maker = ExplorationMaker(device="cpu")
    with pytest.raises(ValueError, match="Ag"):
        maker.make.original(maker, ensemble, [silver], stats(**ACCEPT_ALL), [300.0], 3, [0])
    with pytest.raises(ValueError, match="temperature"):
        maker.make.original(maker, ensemble, [cui], stats(**ACCEPT_ALL), [0.0], 3, [0])
