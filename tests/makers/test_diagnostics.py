"""Screening diagnostics: thresholds, frame checks and verdicts on constructed cases."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from active_mlip.core.frames import Frame
from active_mlip.makers.diagnostics import (
    DiagnosticsSettings,
    FrameCheck,
    check_frame,
    prediction_level,
    screening_verdict,
)
from active_mlip.makers.ensemble import EnsembleCalculator
from active_mlip.makers.evaluation import EvaluationDocument
from active_mlip.makers.exploration import ExplorationSettings, run_exploration
from active_mlip.makers.screening_calibration import chance_flag_rate
from active_mlip.makers.screening_jobs import relax
from active_mlip.makers.selection import ReferenceStatistics
from tests.models import PairModel

ZS = [29, 53]


def test_prediction_level_hand_computed():
    values = [1.0, 2.0, 3.0, 4.0]  # mean 2.5, sample std sqrt(5/3)
    # one-sided 95 %: t(0.95, 3) = 2.353363 from the tables, times sqrt(1 + 1/4)
    assert prediction_level(values, 0.05, log=False, min_ratio=0.0) == pytest.approx(
        2.5 + 2.353363 * np.sqrt(5 / 3) * np.sqrt(1.25), rel=1e-6
    )
    # five values checked: alpha / 5 = 0.01, t(0.99, 3) = 4.540703
    assert prediction_level(values, 0.05, m=5, log=False, min_ratio=0.0) == pytest.approx(
        2.5 + 4.540703 * np.sqrt(5 / 3) * np.sqrt(1.25), rel=1e-6
    )
    # log-normal: logs 0, 1, 2 (mean 1, std 1), t(0.95, 2) = 2.919986, sqrt(1 + 1/3)
    e = np.e
    assert prediction_level([1.0, e, e**2], 0.05) == pytest.approx(
        np.exp(1 + 2.919986 * np.sqrt(4 / 3)), rel=1e-6
    )
    # a floor at a multiple of the mean; NaN ignored
    assert prediction_level([1.0, 1.0001, np.nan], 0.05, min_ratio=3.0) == pytest.approx(
        3 * 1.00005
    )
    with pytest.raises(ValueError, match="at least 2"):
        prediction_level([np.nan, 1.0], 0.05)


def _pair_frame(positions, energy=None, forces=None, **info) -> Frame:
    return Frame(
        numbers=[29, 29],
        positions=positions,
        cell=(10 * np.eye(3)).tolist(),
        pbc=[True, True, True],
        energy=energy,
        forces=forces,
        info=info,
    )


def test_check_frame_hand_computed():
    r0 = _pair_frame([[2.0, 5.0, 5.0], [4.0, 5.0, 5.0]])
    fc = SimpleNamespace(reference=r0, fc_array=lambda: 5.0 * np.eye(6))
    frame = _pair_frame(
        [[2.1, 5.0, 5.0], [3.9, 5.0, 5.0]],
        energy=1.0,
        forces=[[-1.0, 0, 0], [1.0, 0, 0]],
        temperature=300.0,
        step=40,
    )
    pred = np.array([[-0.7, 0, 0], [0.7, 0, 0]])
    c = check_frame(frame, 0.8, pred, "md", fc)
    assert c.energy_gap_meV_per_atom == pytest.approx(100.0)  # (1.0 - 0.8) eV / 2 atoms
    assert c.energy_gap_eV == pytest.approx(0.2)
    assert c.force_rmse_meV_per_A == pytest.approx(np.sqrt(2 * 0.09 / 6) * 1000)
    assert c.max_reference_force == pytest.approx(1.0)
    # u = ±0.1 Å, F2 = -5u = ∓0.5 eV/Å: sigma^A = sqrt((0.5² + 0.5²) / (1 + 1)) = 0.5
    assert c.sigma_a == pytest.approx(0.5)
    assert c.max_displacement == pytest.approx(0.1)
    assert (c.temperature, c.step, c.kind) == (300.0, 40, "md")
    with pytest.raises(ValueError, match="no reference label"):
        check_frame(frame.unlabelled(), 0.8, pred, "md")


def _evaluation() -> EvaluationDocument:
    """Test set of 64-atom frames: U ~ 0.10 ± 0.01, force RMSE ~ 50 meV/Å, σ^A ~ 0.30,
    energies within ±0.064 eV, largest per-atom force errors ~ 0.15 eV/Å."""
    return EvaluationDocument(
        n_frames=4,
        n_members=4,
        mae_energy_meV_per_atom=1.0,
        rmse_energy_meV_per_atom=1.2,
        mae_forces_meV_per_A=40.0,
        rmse_forces_meV_per_A=50.0,
        reference=ReferenceStatistics(
            key="force_max", u_mean=0.10, u_std=0.01, e_mean=-10.0, e_std=0.05, n_frames=4
        ),
        predictions={
            "n_atoms": [64] * 4,
            "force_rmse": [48.0, 50.0, 52.0, 50.0],
            "energy_ref_per_atom": [-3.000, -3.001, -2.999, -3.000],
            "energy_pred_per_atom": [-3.001, -3.000, -3.000, -2.999],
            "sigma_a_ref": [0.28, 0.30, 0.32, 0.30],
        },
    )


def _check(kind="md", gap=0.05, rmse=55.0, fmax=0.1, sigma=0.31) -> FrameCheck:
    return FrameCheck(
        kind=kind,
        temperature=300.0,
        step=100,
        energy_gap_meV_per_atom=gap / 64 * 1000,
        energy_gap_eV=gap,
        force_rmse_meV_per_A=rmse,
        max_reference_force=fmax,
        sigma_a=sigma,
        max_displacement=0.2,
    )


CALM_U = [0.10, 0.11, 0.09, 0.12, 0.10] * 4  # all far below the level, 0.204 (see below)


# Levels of _evaluation(), by hand (t quantiles from the tables):
# - uncertainty, normal model of the summary (n = 4): 0.10 + t(0.998, 3) = 8.052613 times
#   0.01·sqrt(4/3) (the population std made a sample std) times sqrt(1.25) = 0.2041;
# - force error, log-normal, one checked frame: exp(mean log + t(0.99, 3)·s·sqrt(1.25)) =
#   59.3 meV/Å, below 2·50 = 100 (min_ratio): the level is 100;
# - σ^A: the same way 0.40 < 2·0.30: the level is 0.60;
# - energy: test errors 0.064·[1, -1, 1, -1] eV (zero mean): 0.15 eV for one state,
#   above the 0.1 eV floor;
# - relaxes away: no per-atom errors in the document, so the 0.1 eV/Å floor.
@pytest.mark.parametrize(
    ("md_u", "checks", "verdict", "tests"),
    [
        (CALM_U, [_check(), _check("minimum")], "ok", []),
        # 4 of 20 frames above 0.2041: 20 % > 10 %
        (CALM_U[:16] + [0.25] * 4, [_check()], "missing", ["uncertainty"]),
        # 2 of 20 frames above: 10 %, not more than 10 %
        (CALM_U[:18] + [0.25] * 2, [_check()], "ok", []),
        # force error 120 > 100; 90 is not
        (CALM_U, [_check(rmse=120.0)], "missing", ["force_error"]),
        (CALM_U, [_check(rmse=90.0)], "ok", []),
        # sigma^A 0.8 > 0.6
        (CALM_U, [_check(sigma=0.8)], "missing", ["sigma_a"]),
        # 0.5 eV above the prediction > 0.15 eV
        (CALM_U, [_check(gap=0.5)], "hallucinated", ["energy_gap"]),
        # the same 0.5 eV at the ground state too: an offset everywhere, not a false state
        (CALM_U, [_check(gap=0.5), _check("ground", gap=0.48)], "ok", []),
        # the reference pushes with 0.5 eV/Å at an MLIP minimum (> 0.1)
        (CALM_U, [_check("minimum", fmax=0.5)], "hallucinated", ["relaxes_away"]),
        # both failure modes: hallucinated wins, both flags and all evidence kept
        (
            CALM_U,
            [_check(rmse=120.0), _check("minimum", fmax=0.5)],
            "hallucinated",
            ["force_error", "relaxes_away"],
        ),
        # an energy gap alone beside missing evidence: a genuine state the ensemble puts
        # too low (the reference keeps it: no push at the minimum) is a missing one
        (
            CALM_U,
            [_check(rmse=120.0), _check("minimum", gap=0.5)],
            "missing",
            ["force_error", "energy_gap"],
        ),
    ],
)
def test_verdict_on_constructed_cases(md_u, checks, verdict, tests):
    doc = screening_verdict(_evaluation(), {300.0: md_u}, checks, DiagnosticsSettings(), "X")
    assert doc.verdict == verdict
    assert [e.test for e in doc.evidence] == tests
    assert doc.n_md_frames == len(md_u)
    for e in doc.evidence:
        assert e.value > e.threshold
    if verdict == "ok":
        assert doc.flags == [] and doc.summary.startswith("ok")
    if len(tests) == 2:
        assert doc.flags == ["missing", "hallucinated"]


def test_levels_hand_computed():
    ev = _evaluation()
    doc = screening_verdict(
        ev,
        {300.0: CALM_U[:16] + [0.25] * 4},
        [_check(rmse=120.0, sigma=0.8, gap=0.5), _check("minimum", fmax=0.5)],
        DiagnosticsSettings(),
    )
    levels = {e.test: e.threshold for e in doc.evidence}
    u_level = 0.10 + 8.052613 * 0.01 * np.sqrt(4 / 3) * np.sqrt(1.25)
    assert levels["uncertainty"] == pytest.approx(0.10)  # the fraction's threshold
    assert doc.evidence[0].message.startswith(f"uncertainty above {u_level:.3g}")
    assert levels["force_error"] == pytest.approx(100.0)
    assert levels["sigma_a"] == pytest.approx(0.60)
    # two states (the MD frame and the minimum) share alpha: t(0.995, 3) = 5.840909
    errors = 0.064 * np.array([1.0, -1.0, 1.0, -1.0])
    gap_level = 5.840909 * errors.std(ddof=1) * np.sqrt(1.25)
    assert levels["energy_gap"] == pytest.approx(gap_level, rel=1e-5)
    assert levels["relaxes_away"] == pytest.approx(0.1)


def test_residual_force_is_judged_against_the_ensembles_own_force_errors():
    # An ensemble whose largest per-atom errors on the test set are ~0.6 eV/Å: a residual
    # of 0.5 eV/Å at its minimum is its usual error, not a false state.
    ev = _evaluation()
    ev.predictions["force_max_error"] = [0.55, 0.6, 0.65, 0.6]
    doc = screening_verdict(
        ev, {300.0: CALM_U}, [_check("minimum", fmax=0.5)], DiagnosticsSettings()
    )
    assert doc.verdict == "ok"
    doc = screening_verdict(
        ev, {300.0: CALM_U}, [_check("minimum", fmax=1.5)], DiagnosticsSettings()
    )
    assert doc.verdict == "hallucinated" and doc.evidence[0].threshold > 0.6


@pytest.mark.parametrize("n_test", [16, 100])
def test_chance_flags_of_an_in_distribution_ensemble_stay_below_5_percent(n_test):
    # 16 test frames is the quick preset's test set; 100 the paper preset's.
    for correlation, spread in ((0.5, 0.2), (0.9, 0.4)):
        rates = chance_flag_rate(
            DiagnosticsSettings(), n_test, 1000, seed=3, correlation=correlation, spread=spread
        )
        assert rates["any"] <= 0.05, rates
        assert rates["any"] >= max(v for k, v in rates.items() if k != "any")
    # the rule the review measured (mean + 3·std, 5 % of frames) flagged ~11 % on
    # uncertainty alone; a looser setting must show up here as a higher rate
    loose = DiagnosticsSettings(frame_alpha=0.02, spike_fraction=0.05, alpha=0.05)
    assert chance_flag_rate(loose, n_test, 1000, seed=3)["any"] > 0.05


def test_a_large_force_at_an_md_frame_is_not_relaxing_away():
    # Only minima count for 'relaxes away': MD frames are hot and carry large forces.
    doc = screening_verdict(
        _evaluation(), {300.0: CALM_U}, [_check("md", fmax=3.0)], DiagnosticsSettings()
    )
    assert doc.verdict == "ok"


class WellCalculator(Calculator):
    """EMT plus a Gaussian well that holds atom 0 off its lattice site: a false minimum."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, center, depth=3.0, width=0.3):
        super().__init__()
        self.emt = EMT()
        self.center, self.depth, self.width = np.asarray(center), depth, width

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms.copy()
        a.calc = self.emt
        energy, forces = a.get_potential_energy(), a.get_forces().copy()
        d = self.atoms.positions[0] - self.center
        g = self.depth * np.exp(-(d @ d) / (2 * self.width**2))
        self.results = {"energy": energy - g, "forces": forces}
        self.results["forces"][0] -= g * d / self.width**2


def _minimum_check(calc, start) -> FrameCheck:
    """What the screening does: relax on the MLIP, label the minimum with the reference."""
    relaxed, converged = relax(start, calc, fmax=0.01, steps=500)
    assert converged
    e_mlip, f_mlip = calc.get_potential_energy(relaxed), calc.get_forces(relaxed)
    ref = relaxed.copy()
    ref.calc = EMT()
    labelled = Frame.from_atoms(ref.copy(), include_results=False).model_copy(
        update={"energy": ref.get_potential_energy(), "forces": ref.get_forces().tolist()}
    )
    return check_frame(labelled, e_mlip, f_mlip, "minimum")


def test_an_mlip_with_a_false_minimum_is_judged_hallucinated():
    """The MLIP holds an atom 0.8 Å off its site; the reference (EMT) pushes it back."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    center = atoms.positions[0] + [0.8, 0.0, 0.0]
    start = atoms.copy()
    start.positions[0] = center
    false_min = _minimum_check(WellCalculator(center), start)
    # The reference is not at rest there (soft: the neighbours relaxed around the atom).
    assert false_min.max_reference_force > 0.25
    assert false_min.energy_gap_meV_per_atom > 50  # ~3 eV well over 32 atoms
    assert false_min.energy_gap_eV > 1.6
    faithful = _minimum_check(EMT(), start)  # an MLIP equal to the reference
    assert faithful.max_reference_force < 0.02
    assert abs(faithful.energy_gap_meV_per_atom) < 1e-6

    s = DiagnosticsSettings()
    bad = screening_verdict(_evaluation(), {300.0: CALM_U}, [false_min], s)
    assert bad.verdict == "hallucinated"
    assert {e.test for e in bad.evidence} == {"energy_gap", "relaxes_away"}
    good = screening_verdict(_evaluation(), {300.0: CALM_U}, [faithful], s)
    assert good.verdict == "ok"


def test_an_ensemble_that_never_saw_displaced_atoms_is_judged_missing(cui):
    """Test statistics from nearly undisplaced frames; MD at 600 K leaves that ground.

    Two pair-potential members agree at the lattice sites and drift apart with the
    displacement, as members trained only on small displacements do.
    """
    members = [PairModel(1.0, 2.62, r_max=3.5), PairModel(1.3, 2.64, r_max=3.5)]
    calc = EnsembleCalculator(members, r_max=3.5, atomic_numbers=ZS, compute_stress=False)
    rng = np.random.default_rng(0)
    quiet = []
    for _ in range(12):
        a = cui.to_atoms()
        a.positions += rng.normal(scale=0.005, size=a.positions.shape)
        quiet.append(a)
    u = np.array([r["uncertainty"]["force_max"] for r in calc.evaluate(quiet)])
    e = np.array([r["energy"] for r in calc.evaluate(quiet)])
    stats = ReferenceStatistics(
        key="force_max",
        u_mean=float(u.mean()),
        u_std=float(u.std()),
        e_mean=float(e.mean()),
        e_std=float(max(e.std(), 1e-3)),
        n_frames=12,
    )
    md = ExplorationSettings(timestep_fs=2.0, loginterval=5, max_steps=200, sample_every=8)
    doc = run_exploration(calc, cui, stats, 600.0, 10**9, md, seed=1)
    assert doc.stopped_by == "budget" and doc.n_scored == 40
    assert len(doc.samples) == 5  # every 8th of 40 scored frames
    assert [f.info["step"] for f in doc.samples] == [40, 80, 120, 160, 200]
    for f in doc.samples:
        assert np.shape(f.info["forces_mlip"]) == (8, 3) and not f.labelled
    evaluation = _evaluation().model_copy(update={"reference": stats, "predictions": {}})
    verdict = screening_verdict(evaluation, {600.0: doc.log["u"]}, [], DiagnosticsSettings(), "CuI")
    assert verdict.verdict == "missing"
    assert verdict.evidence[0].test == "uncertainty"
    assert verdict.uncertainty_spike_fraction > 0.5


def test_an_ensemble_screened_where_its_test_set_was_sampled_is_judged_ok(cui):
    """The clean case: test frames and screening MD from the same thermal ensemble.

    The same two pair-potential members as above; the test set is a 600 K trajectory
    of its own, so the screening MD (other seeds, same T) stays in distribution.
    """
    members = [PairModel(1.0, 2.62, r_max=3.5), PairModel(1.3, 2.64, r_max=3.5)]
    calc = EnsembleCalculator(members, r_max=3.5, atomic_numbers=ZS, compute_stress=False)
    md = ExplorationSettings(timestep_fs=2.0, loginterval=5, max_steps=400)
    placeholder = ReferenceStatistics(
        key="force_max", u_mean=1.0, u_std=1.0, e_mean=0.0, e_std=1.0, n_frames=2
    )
    thermal = run_exploration(calc, cui, placeholder, 600.0, 10**9, md, seed=11)
    u_test = thermal.log["u"][20::3]  # after 0.2 ps, every third scored frame
    evaluation = _evaluation().model_copy(
        update={
            "reference": ReferenceStatistics(
                key="force_max",
                u_mean=float(np.mean(u_test)),
                u_std=float(np.std(u_test)),
                e_mean=0.0,
                e_std=1.0,
                n_frames=len(u_test),
            ),
            "predictions": {"u_force_max": u_test},
        }
    )
    for seed in (1, 2, 3):
        start = thermal.last_frame  # thermalised, with its velocities
        doc = run_exploration(calc, start, placeholder, 600.0, 10**9, md, seed=seed)
        verdict = screening_verdict(evaluation, {600.0: doc.log["u"]}, [], DiagnosticsSettings())
        assert verdict.verdict == "ok", verdict.summary
        assert verdict.uncertainty_spike_fraction <= 0.10


def test_a_false_minimum_of_0_3_eV_in_64_atoms_is_not_diluted():
    # 0.3 eV in a 64-atom cell is 4.7 meV/atom: per atom it hid under a 10 meV/atom floor.
    rng = np.random.default_rng(0)
    errors = rng.normal(0.0, 0.064, 16)  # test energy errors of 1 meV/atom, whole cell
    ev = _evaluation().model_copy(
        update={
            "n_frames": 16,
            "predictions": {
                "n_atoms": [64] * 16,
                "energy_ref_per_atom": [-3.0] * 16,
                "energy_pred_per_atom": (-3.0 - errors / 64).tolist(),
            },
        }
    )
    false_min = _check("minimum", gap=0.35, fmax=0.05)
    doc = screening_verdict(
        ev, {300.0: CALM_U}, [false_min, _check("ground", gap=0.05)], DiagnosticsSettings()
    )
    assert doc.verdict == "hallucinated"
    assert doc.evidence[0].value == pytest.approx(0.30)
    assert false_min.energy_gap_meV_per_atom < 10
