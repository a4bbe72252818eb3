"""Ensemble calculator: means, uncertainties, one graph per frame, agreement with MACE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from pymatgen.io.ase import AseAtomsAdaptor

from active_mlip.core.blobs import CorruptArtifactError
from active_mlip.core.frames import Frame
from active_mlip.makers.ensemble import (
    UNCERTAINTY_KEYS,
    EnsembleCalculator,
    ensemble_uncertainty,
    force_spread,
)
from active_mlip.workflows.materials import get_structure
from tests.models import (
    OffsetModel,
    PairModel,
    make_ensemble_document,
    make_mace_model,
    write_model,
)


@pytest.fixture(scope="module")
def mace_models():
    return [make_mace_model(seed) for seed in range(3)]


def cui(rattle: float = 0.05, seed: int = 1) -> Atoms:
    atoms = AseAtomsAdaptor.get_atoms(get_structure("CuI"))
    atoms.rattle(rattle, seed=seed)
    return atoms


def three_structures() -> list[Atoms]:
    """Three different structures: rattled CuI, a strained copy and a 2x1x1 supercell."""
    a = cui(0.05, seed=1)
    b = cui(0.08, seed=2)
    b.set_cell(b.cell * 1.03, scale_atoms=True)
    c = cui(0.0).repeat((2, 1, 1))
    c.rattle(0.04, seed=3)
    return [a, b, c]


# -- ensemble_uncertainty ------------------------------------------------------------------
def test_uncertainty_hand_computed():
    energies = [1.0, 2.0]
    forces = np.zeros((2, 2, 3))
    forces[0, 0] = [1.0, 0.0, 0.0]
    forces[1, 0] = [-1.0, 0.0, 0.0]  # atom 0: mean 0, sigma = 1
    forces[1, 1] = [0.0, 3.0, 4.0]  # atom 1: mean (0, 1.5, 2), |dev| = 2.5 -> sigma = 2.5
    u = ensemble_uncertainty(energies, forces)
    assert set(u) == set(UNCERTAINTY_KEYS)
    assert u["energy"] == pytest.approx(0.5)
    assert u["energy_relative"] == pytest.approx(0.5 / 1.5)
    assert u["force_mean"] == pytest.approx(1.75)
    assert u["force_max"] == pytest.approx(2.5)
    # atom 0 has a zero mean force: its denominator is floored at 1e-3 eV/Å
    assert u["force_max_relative"] == pytest.approx(1.0 / 1e-3)
    assert u["force_mean_relative"] == pytest.approx((1.0 / 1e-3 + 1.0) / 2)
    # members referenced to their own ground state: the offset 1 eV cancels
    ref = ensemble_uncertainty(energies, forces, reference_energies=[0.5, 1.5])
    assert ref["energy"] == pytest.approx(0.0, abs=1e-15)
    assert ref["force_max"] == pytest.approx(2.5)


def test_uncertainty_rejects_bad_shapes():
    with pytest.raises(ValueError, match="member_forces"):
        ensemble_uncertainty([1.0, 2.0], np.zeros((3, 4, 3)))
    with pytest.raises(ValueError, match="reference_energies"):
        ensemble_uncertainty([1.0, 2.0], np.zeros((2, 4, 3)), reference_energies=[0.0])


# -- synthetic members ------------------------------------------------------------------------
def test_pair_model_forces_and_stress_are_derivatives():
    atoms = cui(0.1)
    calc = EnsembleCalculator([PairModel(strength=0.7, r0=2.7)], r_max=4.0, atomic_numbers=[29, 53])
    res = calc.evaluate([atoms])[0]
    assert np.abs(res["forces"]).max() > 0.05  # not trivially zero
    d = 1e-5

    def energy(a: Atoms) -> float:
        return calc.evaluate([a])[0]["energy"]

    for i in (0, 5):  # one Cu, one I
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, k] += d
            minus.positions[i, k] -= d
            numeric = -(energy(plus) - energy(minus)) / (2 * d)
            assert res["forces"][i, k] == pytest.approx(numeric, abs=1e-7)
    # stress = (1/V) dE/dstrain, checked on the diagonal and one shear component (Voigt)
    for voigt, (a, b) in ((0, (0, 0)), (2, (2, 2)), (5, (0, 1))):
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[a, b] += sign * d
            strained = atoms.copy()
            strained.set_cell(atoms.cell @ strain, scale_atoms=True)
            energies.append(energy(strained))
        numeric = (energies[0] - energies[1]) / (2 * d) / atoms.get_volume()
        assert res["stress"][voigt] == pytest.approx(numeric, abs=1e-7)


def test_identical_members_have_zero_uncertainty(mace_models):
    m = mace_models[0]
    calc = EnsembleCalculator([m, m, m], r_max=4.0, atomic_numbers=[29, 53])
    res = calc.evaluate([cui()])[0]
    assert all(abs(res["uncertainty"][k]) < 1e-14 for k in UNCERTAINTY_KEYS), res["uncertainty"]


def test_constant_offsets_give_their_std_and_cancel_with_reference():
    base = PairModel(strength=1.0, r0=2.6)
    offsets = [0.0, 0.3, -0.3]
    members = [OffsetModel(base, o) for o in offsets]
    atoms = cui()
    calc = EnsembleCalculator(members, r_max=4.0, atomic_numbers=[29, 53])
    atoms.calc = calc
    single = EnsembleCalculator([base], r_max=4.0, atomic_numbers=[29, 53]).evaluate([atoms])[0]
    u = calc.get_property("energy", atoms) and calc.results["uncertainty"]
    assert u["energy"] == pytest.approx(np.std(offsets), rel=1e-12)  # sqrt(0.06) = 0.2449
    assert u["force_mean"] < 1e-14 and u["force_max"] < 1e-14
    assert atoms.get_potential_energy() == pytest.approx(single["energy"], abs=1e-12)
    np.testing.assert_allclose(calc.results["member_energies"] - offsets, single["energy"])

    referenced = EnsembleCalculator(
        members, r_max=4.0, atomic_numbers=[29, 53], reference_atoms=cui(0.0)
    )
    res = referenced.evaluate([atoms])[0]
    assert res["uncertainty"]["energy"] == pytest.approx(0.0, abs=1e-12)
    # the mean energy stays absolute
    assert res["energy"] == pytest.approx(single["energy"], abs=1e-12)


# -- MACE -----------------------------------------------------------------------------------
def test_matches_mace_committee(mace_models, tmp_path):
    from mace.calculators import MACECalculator

    paths = [str(write_model(m, tmp_path / f"m{i}.model")) for i, m in enumerate(mace_models)]
    theirs = MACECalculator(model_paths=paths, device="cpu", default_dtype="float64")
    ours = EnsembleCalculator(mace_models, r_max=4.0, atomic_numbers=[29, 53])
    atoms = cui()
    a1, a2 = atoms.copy(), atoms.copy()
    a1.calc, a2.calc = ours, theirs
    e_ours, e_theirs = a1.get_potential_energy(), a2.get_potential_energy()
    assert abs(e_ours) > 1e-4  # random members predict something non-trivial
    assert e_ours == pytest.approx(e_theirs, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(a1.get_forces(), a2.get_forces(), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(a1.get_stress(), a2.get_stress(), rtol=1e-8, atol=1e-12)
    var = np.var(ours.results["member_energies"])  # population variance
    assert var > 0
    assert var == pytest.approx(theirs.results["energy_var"], rel=1e-8)
    np.testing.assert_allclose(
        ours.results["member_forces"], theirs.results["forces_comm"], rtol=1e-8, atol=1e-12
    )
    # MACE's forces_var is the per-component variance: summed over x,y,z it is sigma_I^2
    sigma = np.sqrt(theirs.results["forces_var"].sum(axis=1))
    assert ours.results["uncertainty"]["force_max"] == pytest.approx(sigma.max(), rel=1e-8)
    assert ours.results["uncertainty"]["force_mean"] == pytest.approx(sigma.mean(), rel=1e-8)


def test_members_in_threads_equal_members_in_turn(mace_models):
    """Concurrent members give bit-identical results, also when the caller disabled grad, and
    a pickled copy starts its own pool."""
    import pickle

    structures = three_structures()
    in_turn = EnsembleCalculator(mace_models, 4.0, [29, 53], member_threads=1)
    threaded = EnsembleCalculator(mace_models, 4.0, [29, 53], member_threads=len(mace_models))
    with torch.no_grad():
        expected = in_turn.evaluate(structures)
        got = threaded.evaluate(structures)
    copy = pickle.loads(pickle.dumps(threaded))
    again = copy.evaluate(structures)
    for e, g, a in zip(expected, got, again, strict=True):
        for key in ("member_energies", "member_forces", "member_stress"):
            np.testing.assert_array_equal(g[key], e[key])
            np.testing.assert_array_equal(a[key], e[key])
    assert threaded.n_forward_passes == len(mace_models)
    assert threaded._pool is not None and copy.member_threads == len(mace_models)


def test_batched_evaluate_equals_separate_and_costs_m_passes(mace_models):
    calc = EnsembleCalculator(mace_models, r_max=4.0, atomic_numbers=[29, 53])
    structures = three_structures()
    before = calc.n_forward_passes
    batched = calc.evaluate(structures)
    assert calc.n_forward_passes - before == 3  # M passes for all three structures
    before = calc.n_forward_passes
    separate = []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calc
        atoms.get_potential_energy()
        separate.append(dict(calc.results))
    assert calc.n_forward_passes - before == 9  # 3 M
    for b, s, atoms in zip(batched, separate, structures, strict=True):
        assert b["forces"].shape == (len(atoms), 3)
        assert b["energy"] == pytest.approx(s["energy"], abs=1e-10)
        np.testing.assert_allclose(b["forces"], s["forces"], atol=1e-10)
        np.testing.assert_allclose(b["stress"], s["stress"], atol=1e-10)
        np.testing.assert_allclose(b["member_energies"], s["member_energies"], atol=1e-10)
        for k in UNCERTAINTY_KEYS:
            assert b["uncertainty"][k] == pytest.approx(s["uncertainty"][k], rel=1e-8, abs=1e-10)
    # chunked evaluation: two batches -> 2 M passes, same numbers
    before = calc.n_forward_passes
    chunked = calc.evaluate(structures, batch_size=2)
    assert calc.n_forward_passes - before == 6
    assert [c["energy"] for c in chunked] == pytest.approx([b["energy"] for b in batched])


def test_logged_frame_costs_no_extra_pass(mace_models):
    calc = EnsembleCalculator(mace_models, r_max=4.0, atomic_numbers=[29, 53])
    atoms = cui()
    atoms.calc = calc
    atoms.get_forces()
    atoms.get_potential_energy()
    atoms.get_stress()
    u = calc.results["uncertainty"]
    assert calc.n_forward_passes == 3
    assert u["force_max"] >= u["force_mean"] > 0
    assert calc.results["member_forces"].shape == (3, len(atoms), 3)
    assert calc.results["member_energies"].shape == (3,)


def test_default_dtype_untouched_and_float64_results(mace_models):
    assert torch.get_default_dtype() == torch.float32
    calc = EnsembleCalculator(mace_models, r_max=4.0, atomic_numbers=[29, 53])
    res = calc.evaluate([cui()])[0]
    assert torch.get_default_dtype() == torch.float32
    assert calc.dtype == torch.float64
    assert res["forces"].dtype == np.float64


def test_no_stress_when_not_requested():
    calc = EnsembleCalculator(
        [PairModel()], r_max=4.0, atomic_numbers=[29, 53], compute_stress=False
    )
    atoms = cui()
    atoms.calc = calc
    atoms.get_forces()
    assert "stress" not in calc.results
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


# -- validation -------------------------------------------------------------------------------
def test_unknown_elements_rejected_before_any_pass():
    calc = EnsembleCalculator([PairModel(), PairModel(strength=2.0)], 4.0, [29, 53])
    atoms = cui()
    atoms.numbers[0] = 47  # Ag
    with pytest.raises(ValueError, match=r"\['Ag'\].*not trained on"):
        calc.check_elements(atoms)
    with pytest.raises(ValueError, match="Ag"):
        calc.evaluate([cui(), atoms])
    assert calc.n_forward_passes == 0


def test_inconsistent_members_rejected():
    with pytest.raises(ValueError, match="r_max"):
        EnsembleCalculator([PairModel(r_max=4.0)], r_max=5.0, atomic_numbers=[29, 53])
    with pytest.raises(ValueError, match="atomic_numbers"):
        EnsembleCalculator([PairModel()], r_max=4.0, atomic_numbers=[29, 47])
    with pytest.raises(ValueError, match="element table"):
        EnsembleCalculator(
            [PairModel(), PairModel(atomic_numbers=(53, 29))], r_max=4.0, atomic_numbers=[29, 53]
        )
    with pytest.raises(ValueError, match="at least one"):
        EnsembleCalculator([], r_max=4.0, atomic_numbers=[29, 53])
    with pytest.raises(ValueError, match="member_threads must be >= 1, got 0"):
        EnsembleCalculator([PairModel()], r_max=4.0, atomic_numbers=[29, 53], member_threads=0)


# -- documents ---------------------------------------------------------------------------------
def test_from_document_roundtrip_and_reference(mace_models):
    ground = cui(0.0)
    doc = make_ensemble_document(
        mace_models, ["Cu", "I"], r_max=4.0, reference_frame=Frame.from_atoms(ground)
    )
    calc = EnsembleCalculator.from_document(doc, device="auto")
    assert calc.elements == ["Cu", "I"] and calc.size == 3
    direct = EnsembleCalculator(mace_models, 4.0, [29, 53], reference_atoms=ground)
    a = calc.evaluate([cui()])[0]
    b = direct.evaluate([cui()])[0]
    assert a["energy"] == pytest.approx(b["energy"], abs=1e-12)
    np.testing.assert_allclose(calc.reference_energies, direct.reference_energies, atol=1e-12)
    assert a["uncertainty"]["energy"] == pytest.approx(b["uncertainty"]["energy"], abs=1e-12)
    # the ground state itself has zero referenced energy spread
    assert calc.evaluate([ground])[0]["uncertainty"]["energy"] == pytest.approx(0.0, abs=1e-12)


def test_corrupt_model_file_is_not_loaded(mace_models):
    import base64

    doc = make_ensemble_document(mace_models[:2], ["Cu", "I"])
    blob = doc.members[1].model_file
    raw = bytearray(base64.b64decode(blob.data_b64))
    raw[len(raw) // 2] ^= 0xFF
    doc.members[1].model_file = blob.model_copy(
        update={"data_b64": base64.b64encode(bytes(raw)).decode()}
    )
    with pytest.raises(CorruptArtifactError, match="member_1.model"):
        EnsembleCalculator.from_document(doc, device="cpu")


def test_document_elements_must_be_known_to_members(mace_models):
    doc = make_ensemble_document(mace_models[:2], ["Cu", "I", "Ag"])
    with pytest.raises(ValueError, match="Ag"):
        EnsembleCalculator.from_document(doc, device="cpu")


def test_force_spread_per_atom_keeps_leading_axes():
    """Two members, forces 0 and (2, 0, 0) on atom 0, equal on atom 1: sigma = (1, 0).

    A second structure with the members' forces doubled has sigma = (2, 0).
    """
    one = np.zeros((2, 2, 3))  # (M, N, 3)
    one[1, 0] = [2.0, 0.0, 0.0]
    one[:, 1] = [0.5, -0.3, 0.1]
    np.testing.assert_allclose(force_spread(one), [1.0, 0.0])
    np.testing.assert_allclose(force_spread(np.stack([one, 2 * one])), [[1.0, 0.0], [2.0, 0.0]])
    assert ensemble_uncertainty([0.0, 0.0], one)["force_max"] == pytest.approx(1.0)
