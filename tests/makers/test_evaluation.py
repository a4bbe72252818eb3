"""Test-set evaluation: exact errors for known members, sigma^A, statistics, the job."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.io.ase import AseAtomsAdaptor

from active_mlip.core.frames import Frame
from active_mlip.makers.ensemble import EnsembleCalculator
from active_mlip.makers.evaluation import EvaluationDocument, TestEvaluationMaker, evaluate_ensemble
from active_mlip.makers.selection import (
    SelectionSettings,
    anharmonicity_score,
    minimum_image_displacements,
)
from active_mlip.workflows.materials import get_structure
from tests.models import OffsetModel, PairModel, make_ensemble_document

ZS = [29, 53]


def ground_state():
    return AseAtomsAdaptor.get_atoms(get_structure("CuI"))


def labeller() -> EnsembleCalculator:
    """The 'reference method' of these tests: one pair potential of strength 1."""
    return EnsembleCalculator([PairModel(strength=1.0)], r_max=4.0, atomic_numbers=ZS)


def label(atoms_list) -> list[Frame]:
    out = []
    for atoms, res in zip(atoms_list, labeller().evaluate(atoms_list), strict=True):
        frame = Frame.from_atoms(atoms, include_results=False)
        out.append(frame.model_copy(update={"energy": res["energy"], "forces": res["forces"]}))
    return out


@pytest.fixture(scope="module")
def test_frames() -> list[Frame]:
    images = []
    for seed in range(6):
        a = ground_state()
        a.rattle(0.02 + 0.01 * seed, seed=seed)
        images.append(a)
    return label(images)


class FakeForceConstants:
    """Duck-typed ForceConstantsDocument: the labeller's Hessian at the ground state."""

    def __init__(self, delta: float = 1e-4):
        atoms = ground_state()
        calc = labeller()
        n = len(atoms)
        fc = np.zeros((3 * n, 3 * n))
        for i in range(n):
            for a in range(3):
                plus, minus = atoms.copy(), atoms.copy()
                plus.positions[i, a] += delta
                minus.positions[i, a] -= delta
                fp, fm = (r["forces"] for r in calc.evaluate([plus, minus]))
                fc[:, 3 * i + a] = -(fp - fm).ravel() / (2 * delta)
        self._fc = 0.5 * (fc + fc.T)
        self.reference = Frame.from_atoms(atoms, include_results=False)

    def fc_array(self) -> np.ndarray:
        return self._fc


def plus_minus(eps: float = 0.2, offset: float = 0.0):
    """Two members whose mean is exactly the labeller (energy is linear in strength)."""
    return [
        OffsetModel(PairModel(strength=1.0 + eps), offset),
        OffsetModel(PairModel(strength=1.0 - eps), offset),
    ]


def test_exact_mean_gives_zero_errors(test_frames):
    calc = EnsembleCalculator(plus_minus(), r_max=4.0, atomic_numbers=ZS)
    doc = evaluate_ensemble(calc, test_frames, batch_size=4)
    assert doc.n_frames == 6 and doc.n_members == 2
    for v in (
        doc.mae_energy_meV_per_atom,
        doc.rmse_energy_meV_per_atom,
        doc.mae_forces_meV_per_A,
        doc.rmse_forces_meV_per_A,
    ):
        assert v == pytest.approx(0.0, abs=1e-9)
    assert doc.mae_sigma_a is None
    # 6 frames in batches of 4: 2 batches x 2 members
    assert calc.n_forward_passes == 4
    # the members disagree, so the statistics are well defined and match the predictions
    u = np.array(doc.predictions["u_force_max"])
    assert u.min() > 0
    assert doc.reference.key == "force_max"
    assert doc.reference.u_mean == pytest.approx(u.mean())
    assert doc.reference.u_std == pytest.approx(u.std())
    e = np.array(doc.predictions["energy_pred_per_atom"]) * 8
    assert doc.reference.e_mean == pytest.approx(e.mean())
    assert doc.reference.e_std == pytest.approx(e.std())
    assert len(doc.predictions["force_rmse"]) == 6
    assert set(doc.predictions) >= {f"u_{k}" for k in ("energy", "force_mean_relative")}


def test_offset_gives_energy_mae_offset_per_atom(test_frames):
    delta = 0.08  # eV per structure of 8 atoms
    calc = EnsembleCalculator(plus_minus(offset=delta), r_max=4.0, atomic_numbers=ZS)
    doc = evaluate_ensemble(calc, test_frames, SelectionSettings(uncertainty="energy"))
    assert doc.mae_energy_meV_per_atom == pytest.approx(delta / 8 * 1000, rel=1e-9)  # 10 meV/atom
    assert doc.rmse_energy_meV_per_atom == pytest.approx(delta / 8 * 1000, rel=1e-9)
    assert doc.mae_forces_meV_per_A == pytest.approx(0.0, abs=1e-9)
    assert doc.reference.key == "energy"


def test_force_errors_component_wise(test_frames):
    # mean strength 1.1: forces are 1.1x the labels -> component errors 0.1 |F|
    members = [PairModel(strength=1.0), PairModel(strength=1.2)]
    calc = EnsembleCalculator(members, r_max=4.0, atomic_numbers=ZS)
    doc = evaluate_ensemble(calc, test_frames)
    f = np.concatenate([np.asarray(fr.forces).ravel() for fr in test_frames])
    assert doc.mae_forces_meV_per_A == pytest.approx(100 * np.mean(np.abs(f)), rel=1e-9)
    assert doc.rmse_forces_meV_per_A == pytest.approx(100 * np.sqrt(np.mean(f**2)), rel=1e-9)


def test_sigma_a(test_frames):
    fc = FakeForceConstants()
    exact = EnsembleCalculator(plus_minus(), r_max=4.0, atomic_numbers=ZS)
    doc = evaluate_ensemble(exact, test_frames, force_constants=fc)
    assert doc.mae_sigma_a == pytest.approx(0.0, abs=1e-9)
    ref = np.array(doc.predictions["sigma_a_ref"])
    assert np.all(ref > 0)
    frame = test_frames[3]
    u = minimum_image_displacements(frame.positions, fc.reference.positions, frame.cell)
    assert ref[3] == pytest.approx(anharmonicity_score(np.array(frame.forces), u, fc.fc_array()))

    scaled = EnsembleCalculator(
        [PairModel(strength=1.3), PairModel(strength=1.5)], r_max=4.0, atomic_numbers=ZS
    )
    doc2 = evaluate_ensemble(scaled, test_frames, force_constants=fc)
    pred = np.array(doc2.predictions["sigma_a_pred"])
    assert doc2.mae_sigma_a == pytest.approx(np.mean(np.abs(pred - ref)))
    assert doc2.mae_sigma_a > 0.1  # 1.4x forces add ≈ 0.4/1.4 ≈ 0.29 of harmonic misfit


def test_sigma_a_vanishes_linearly_in_the_harmonic_limit():
    # the labeller's own Hessian: sigma^A comes from cubic terms only, so it is ∝ amplitude
    images = []
    for amp in (0.01, 0.02):
        a = ground_state()
        a.rattle(amp, seed=11)
        images.append(a)
    frames = label(images)
    calc = EnsembleCalculator(plus_minus(), r_max=4.0, atomic_numbers=ZS)
    doc = evaluate_ensemble(calc, frames, force_constants=FakeForceConstants())
    small, large = doc.predictions["sigma_a_ref"]
    assert small < 0.06
    assert large / small == pytest.approx(2.0, rel=0.1)


def test_bad_inputs_raise(test_frames):
    calc = EnsembleCalculator(plus_minus(), r_max=4.0, atomic_numbers=ZS)
    with pytest.raises(ValueError, match="at least 2"):
        evaluate_ensemble(calc, test_frames[:1])
    with pytest.raises(ValueError, match="test frame 1 .* no label"):
        evaluate_ensemble(calc, [test_frames[0], test_frames[1].unlabelled()])
    big = label([ground_state().repeat((2, 1, 1))])[0]
    with pytest.raises(ValueError, match="force constants' supercell"):
        evaluate_ensemble(calc, [test_frames[0], big], force_constants=FakeForceConstants())
    silver = test_frames[0].model_copy(update={"numbers": [47] + test_frames[0].numbers[1:]})
    with pytest.raises(ValueError, match="Ag"):
        evaluate_ensemble(calc, [test_frames[0], silver])
    assert calc.n_forward_passes == 0
    identical = EnsembleCalculator([PairModel(), PairModel()], r_max=4.0, atomic_numbers=ZS)
    with pytest.raises(ValueError, match="std of the uncertainty 'force_max'"):
        evaluate_ensemble(identical, test_frames)


def test_job_routes_predictions_to_data_store(test_frames):
    from jobflow import JobStore, run_locally
    from maggma.stores import MemoryStore

    doc = make_ensemble_document(plus_minus(offset=0.08), ["Cu", "I"], r_max=4.0)
    job = TestEvaluationMaker(batch_size=3, device="cpu").make(doc, test_frames)
    store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
    responses = run_locally(job, store=store, ensure_success=True)
    out = responses[job.uuid][1].output
    assert isinstance(out, EvaluationDocument)
    assert out.mae_energy_meV_per_atom == pytest.approx(10.0, rel=1e-9)
    raw = store.query_one({"uuid": job.uuid}, load=False)
    assert "blob_uuid" in raw["output"]["predictions"]  # stored in the data store
    loaded = store.get_output(job.uuid, load=True)
    assert len(loaded["predictions"]["u_force_max"]) == 6
