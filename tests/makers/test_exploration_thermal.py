"""Exploration against the thermal ensemble: equilibration, the thermal window, per-temperature
statistics, an exploration that keeps going, and the frames before a blow-up."""

from __future__ import annotations

import re

import numpy as np
import pytest

from active_mlip.makers.ensemble import EnsembleCalculator
from active_mlip.makers.exploration import (
    ExplorationSettings,
    run_exploration,
    run_exploration_walkers,
)
from active_mlip.makers.selection import (
    SelectionSettings,
    energy_probability,
    reference_at,
    reference_statistics,
    split_by_temperature,
    uncertainty_probability,
)
from active_mlip.makers.walkers import _close_contact
from tests.makers.helpers_exploration import ACCEPT_ALL, ACCEPT_NONE, ZS, spring_calc, stats
from tests.models import PairModel


def test_frames_are_scored_only_after_equilibration(cui):
    # 2 fs steps: 20 steps of equilibration, then every 2nd step is scored up to step 50.
    settings = ExplorationSettings(
        timestep_fs=2.0, loginterval=2, budget_ps=0.1, equilibration_ps=0.04
    )
    assert (settings.max_steps, settings.equilibration_steps) == (50, 20)
    doc = run_exploration(spring_calc(), cui, stats(**ACCEPT_ALL), 300.0, 1000, settings, seed=1)
    assert doc.log["step"] == list(range(22, 51, 2))
    assert [f.info["step"] for f in doc.frames] == doc.log["step"]
    assert doc.equilibration_steps == 20 and doc.energy_reference_source == "test-set"
    assert doc.md_ps == pytest.approx(0.1)


def test_thermal_window_sets_the_statistics_its_frames_and_later_ones_are_judged_by(cui):
    settings = ExplorationSettings(
        timestep_fs=2.0, loginterval=2, budget_ps=0.2, equilibration_ps=0.02, thermal_window_ps=0.04
    )
    # The test set's statistics would accept every frame; the window's must be used instead.
    doc = run_exploration(spring_calc(), cui, stats(**ACCEPT_ALL), 300.0, 1000, settings, seed=3)
    assert doc.energy_reference_source == "thermal-md"
    # Window: steps 12..30 (10 frames), scored once it closed, like every later frame.
    assert doc.log["step"][:10] == list(range(12, 31, 2)) and doc.log["step"][-1] == 100
    u = np.array(doc.log["u"])
    e = np.array(doc.log["energy"])
    ref = doc.acceptance_reference
    assert ref.n_frames == 10
    assert ref.u_mean == pytest.approx(u[:10].mean(), rel=1e-12)
    assert ref.u_std == pytest.approx(u[:10].std(), rel=1e-12)  # population std
    assert ref.e_mean == pytest.approx(e[:10].mean(), rel=1e-12)
    assert ref.e_std == pytest.approx(e[:10].std(), rel=1e-12)
    sel = SelectionSettings()
    p_u = uncertainty_probability(u, ref.u_mean, ref.u_std, sel.shift, sel.grad)
    p_e = energy_probability(e, ref.e_mean, ref.e_std, sel.knee, sel.decay_at, sel.decay_to)
    np.testing.assert_allclose(doc.log["p_u"], p_u, rtol=1e-12)
    np.testing.assert_allclose(doc.log["p_e"], p_e, rtol=1e-12)
    # A frame's P_U is ½ exactly at Ū + 2σ_U of the window; not every frame is accepted.
    assert 0 < sum(doc.log["accepted"]) < len(u)


def test_an_exploration_that_accepts_nothing_runs_its_whole_budget(cui):
    settings = ExplorationSettings(
        timestep_fs=2.0, loginterval=2, budget_ps=0.2, equilibration_ps=0.02, thermal_window_ps=0.04
    )
    never = SelectionSettings(shift=1000.0)  # P_U = Φ(-huge) for every frame
    doc = run_exploration(spring_calc(), cui, stats(**ACCEPT_ALL), 300.0, 2, settings, never, 3)
    assert doc.frames == [] and doc.stopped_by == "budget"
    assert doc.n_steps == settings.max_steps == 100 and doc.md_ps == pytest.approx(0.2)
    assert doc.n_scored == 45  # steps 12, 14, ..., 100


def test_a_300K_frame_is_judged_against_300K_statistics_when_600K_is_present():
    # Test-set energies: 300 K at 0 ± 1 eV, 600 K at 10 ± 1 eV (population std).
    temps = [300.0] * 4 + [600.0] * 4
    energies = [-1.0, 1.0, -1.0, 1.0, 9.0, 11.0, 9.0, 11.0]
    u = [0.1, 0.2, 0.1, 0.2, 0.3, 0.4, 0.3, 0.4]
    groups = split_by_temperature({"u": u, "e": energies}, temps)
    by_t = {k: reference_statistics(g["u"], g["e"], "force_max") for k, g in groups.items()}
    pooled = reference_statistics(u, energies, "force_max")
    own = reference_at(pooled, by_t, 300.0)
    assert (own.e_mean, own.e_std, own.u_mean) == (0.0, 1.0, pytest.approx(0.15))
    # A 300 K frame 3σ above its own temperature's mean: P_E = 0.2^((3-1)/0.8) = 0.0179.
    assert energy_probability(3.0, own.e_mean, own.e_std) == pytest.approx(0.2**2.5)
    assert 0.2**2.5 == pytest.approx(0.017889, abs=1e-6)
    # Pooled with the 600 K frames (mean 5, std √26) it would pass unvetoed.
    assert (pooled.e_mean, pooled.e_std) == (5.0, pytest.approx(26**0.5))
    assert energy_probability(3.0, pooled.e_mean, pooled.e_std) == 1.0
    # A temperature the test set lacks falls back to the whole set.
    assert reference_at(pooled, by_t, 450.0) is pooled
    assert reference_at(pooled, None, 300.0) is pooled


def test_batched_walkers_each_use_their_own_thermal_window(cui):
    settings = ExplorationSettings(
        timestep_fs=2.0, loginterval=2, budget_ps=0.3, equilibration_ps=0.1, thermal_window_ps=0.1
    )
    docs = run_exploration_walkers(
        spring_calc(),
        [cui, cui],
        stats(**ACCEPT_ALL),
        [300.0, 900.0],
        1000,
        settings,
        seeds=[4, 5],
    )
    for doc in docs:
        e = np.array(doc.log["energy"])
        n = doc.acceptance_reference.n_frames
        assert n == 25
        assert doc.acceptance_reference.e_mean == pytest.approx(e[:n].mean(), rel=1e-12)
    cold, hot = (d.acceptance_reference for d in docs)
    assert cold.e_mean != hot.e_mean and cold.e_std != hot.e_std


def test_frames_before_a_blow_up_are_kept_for_labelling(cui):
    # Attractive pair members pull the crystal together until atoms overlap.
    members = [PairModel(-1.0, 5.0), PairModel(-1.2, 5.0)]
    calc = EnsembleCalculator(members, r_max=4.0, atomic_numbers=ZS, compute_stress=False)
    settings = ExplorationSettings(loginterval=1, max_steps=500, max_energy_drift_per_atom=100.0)
    doc = run_exploration(calc, cui, stats(**ACCEPT_NONE), 300.0, 3, settings, seed=0)
    assert doc.stopped_by == "blowup"
    blow = doc.blowup["step"]
    # Nothing was accepted, yet the quota is filled by the last sane frames, highest U first.
    assert sum(doc.log["accepted"]) == 0
    assert doc.n_precursors == doc.n_accepted == 3
    assert all(f.info["blowup_precursor"] for f in doc.frames)
    steps = [f.info["step"] for f in doc.frames]
    assert sorted(steps) == [blow - 3, blow - 2, blow - 1]
    us = [f.info["uncertainty"] for f in doc.frames]
    assert us == sorted(us, reverse=True)
    by_step = dict(zip(doc.log["step"], doc.log["u"], strict=True))
    assert us == [by_step[s] for s in steps]
    for f in doc.frames:
        assert _close_contact(f.to_atoms(), settings.min_distance_fraction) is None


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (
            {"budget_ps": 0.5, "equilibration_ps": 0.5},
            "equilibration_ps (0.5) + thermal_window_ps (0) = 0.5 ps must be shorter",
        ),
        ({"budget_ps": 0.5, "thermal_window_ps": 0.004}, "holds fewer than 2 frames"),
        ({"max_steps": 1.5}, "max_steps must be an integer"),
    ],
)
def test_phases_that_do_not_fit_the_budget_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        ExplorationSettings(**kwargs)


def test_legacy_step_budget_becomes_picoseconds():
    s = ExplorationSettings(timestep_fs=4.0, max_steps=1500)
    assert s.budget_ps == pytest.approx(6.0) and s.max_steps == 1500
    assert "max_steps" not in s.model_dump()
