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
    relax,
    screening_verdict,
    spike_threshold,
)
from active_mlip.makers.ensemble import EnsembleCalculator
from active_mlip.makers.evaluation import EvaluationDocument
from active_mlip.makers.exploration import ExplorationSettings, run_exploration
from active_mlip.makers.selection import ReferenceStatistics
from tests.models import PairModel

ZS = [29, 53]


def test_spike_threshold_is_mean_plus_k_std_or_a_multiple_of_the_mean():
    values = [1.0, 2.0, 3.0, 4.0]  # mean 2.5, population std sqrt(1.25)
    assert spike_threshold(values, 2.0) == pytest.approx(2.5 + 2 * np.sqrt(1.25))
    assert spike_threshold(values, 2.0, min_ratio=3.0) == pytest.approx(7.5)
    assert spike_threshold([1.0, np.nan, 3.0], 1.0) == pytest.approx(3.0)  # NaN ignored
    with pytest.raises(ValueError, match="no finite"):
        spike_threshold([np.nan], 1.0)


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
    assert c.force_rmse_meV_per_A == pytest.approx(np.sqrt(2 * 0.09 / 6) * 1000)
    assert c.max_reference_force == pytest.approx(1.0)
    # u = ±0.1 Å, F2 = -5u = ∓0.5 eV/Å: sigma^A = sqrt((0.5² + 0.5²) / (1 + 1)) = 0.5
    assert c.sigma_a == pytest.approx(0.5)
    assert c.max_displacement == pytest.approx(0.1)
    assert (c.temperature, c.step, c.kind) == (300.0, 40, "md")
    with pytest.raises(ValueError, match="no reference label"):
        check_frame(frame.unlabelled(), 0.8, pred, "md")


def _evaluation() -> EvaluationDocument:
    """Test set: U ~ 0.10 ± 0.01, force RMSE ~ 50 meV/Å, σ^A ~ 0.30, energies within 1 meV."""
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
            "force_rmse": [48.0, 50.0, 52.0, 50.0],
            "energy_ref_per_atom": [-3.000, -3.001, -2.999, -3.000],
            "energy_pred_per_atom": [-3.001, -3.000, -3.000, -2.999],
            "sigma_a_ref": [0.28, 0.30, 0.32, 0.30],
        },
    )


def _check(kind="md", gap=2.0, rmse=55.0, fmax=0.1, sigma=0.31) -> FrameCheck:
    return FrameCheck(
        kind=kind,
        temperature=300.0,
        step=100,
        energy_gap_meV_per_atom=gap,
        force_rmse_meV_per_A=rmse,
        max_reference_force=fmax,
        sigma_a=sigma,
        max_displacement=0.2,
    )


CALM_U = [0.10, 0.11, 0.09, 0.12, 0.10] * 4  # all below Ū + 3σ = 0.13


@pytest.mark.parametrize(
    ("md_u", "checks", "verdict", "tests"),
    [
        (CALM_U, [_check(), _check("minimum")], "ok", []),
        # 4 of 20 frames above 0.13: 20 % > 5 %
        (CALM_U[:16] + [0.2] * 4, [_check()], "missing", ["uncertainty"]),
        # force error 90 > max(50 + 3·1.41, 1.5·50 = 75)
        (CALM_U, [_check(rmse=90.0)], "missing", ["force_error"]),
        # sigma^A 0.6 > max(0.30 + 3·0.014, 1.5·0.30 = 0.45)
        (CALM_U, [_check(sigma=0.6)], "missing", ["sigma_a"]),
        # 25 meV/atom above the prediction > 10 meV/atom
        (CALM_U, [_check(gap=25.0)], "hallucinated", ["energy_gap"]),
        # the reference pushes with 0.5 eV/Å at an MLIP minimum (> 0.2)
        (CALM_U, [_check("minimum", fmax=0.5)], "hallucinated", ["relaxes_away"]),
        # both failure modes: hallucinated wins, both flags and all evidence kept
        (
            CALM_U,
            [_check(rmse=90.0), _check(gap=25.0)],
            "hallucinated",
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
    if tests == ["force_error", "energy_gap"]:
        assert doc.flags == ["missing", "hallucinated"]


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
