"""Force constants, harmonic sampling and aiMD import, checked on EMT copper."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.data import atomic_masses
from ase.io import write

from active_mlip.frames import Frame
from makers.sampling import (
    ForceConstantsDocument,
    HarmonicSamplingMaker,
    compute_force_constants,
    displacement_frames,
    harmonic_samples,
    import_trajectory,
    normal_modes,
)

#: EMT's equilibrium lattice constant of fcc Cu (equation-of-state fit, Å).
A_EMT = 3.5898


class EMTLabeller:
    """Minimal in-process labeller (``label_frame``) so these tests need no other module."""

    def label_frame(self, frame: Frame) -> Frame:
        atoms = frame.to_atoms()
        atoms.calc = EMT()
        atoms.get_forces()
        return Frame.from_atoms(atoms)


def cu_supercell() -> Frame:
    """2x2x2 conventional fcc Cu at EMT's lattice constant: 32 atoms."""
    return Frame.from_atoms(bulk("Cu", "fcc", a=A_EMT, cubic=True) * (2, 2, 2))


@pytest.fixture(scope="module")
def fc_doc() -> ForceConstantsDocument:
    return compute_force_constants(cu_supercell(), EMTLabeller(), displacement=0.01)


def emt_forces(positions: np.ndarray) -> np.ndarray:
    atoms = cu_supercell().to_atoms()
    atoms.positions = positions
    atoms.calc = EMT()
    return atoms.get_forces()


# -- force constants -----------------------------------------------------------------------
def test_displacements_are_symmetry_reduced():
    disp = displacement_frames(cu_supercell(), displacement=0.02)
    # fcc: every atom equivalent and displacing along x covers all directions by symmetry,
    # so the undisplaced cell plus one displaced cell suffice.
    assert len(disp.frames) == 2
    assert disp.frames[0].info["fc_displacement"] == -1
    du = np.asarray(disp.frames[1].positions) - np.asarray(disp.frames[0].positions)
    assert np.linalg.norm(du, axis=1).max() == pytest.approx(0.02)
    assert np.count_nonzero(np.linalg.norm(du, axis=1)) == 1
    with pytest.raises(ValueError, match="displacement"):
        displacement_frames(cu_supercell(), displacement=0.0)


def test_force_constants_invariants(fc_doc):
    fc = fc_doc.fc_array()
    n = 32
    assert fc.shape == (3 * n, 3 * n)
    # Φ = Φᵀ and the acoustic sum rule (a rigid translation costs no force).
    assert np.abs(fc - fc.T).max() < 1e-10
    assert np.abs(fc.reshape(3 * n, n, 3).sum(axis=1)).max() < 1e-8
    assert fc_doc.max_row_sum < 1e-8
    # The on-site constant of a cubic crystal is isotropic: Φ_ii = k·1 with k > 0.
    onsite = fc[:3, :3]
    assert np.allclose(onsite, onsite[0, 0] * np.eye(3), atol=1e-8)
    assert onsite[0, 0] > 1.0
    # Three zero (translation) modes, all others stable.
    w2, _, _ = normal_modes(fc_doc)
    assert np.abs(w2[:3]).max() < 1e-10
    assert w2[3] > 1e-3
    assert fc_doc.reference.labelled
    assert fc_doc.reference.energy == pytest.approx(
        EMTLabeller().label_frame(cu_supercell()).energy
    )


def test_harmonic_forces_match_emt_for_small_displacements(fc_doc):
    rng = np.random.default_rng(7)
    r0 = np.asarray(fc_doc.reference.positions)
    u = rng.standard_normal((32, 3)) * 1e-3
    df = emt_forces(r0 + u) - emt_forces(r0)
    f_harm = -(fc_doc.fc_array() @ u.ravel()).reshape(-1, 3)
    assert np.linalg.norm(df - f_harm) / np.linalg.norm(df) < 0.01


def test_fc_document_round_trip(fc_doc):
    again = ForceConstantsDocument.model_validate_json(fc_doc.model_dump_json())
    assert np.array_equal(again.fc_array(), fc_doc.fc_array())
    bad = fc_doc.model_copy(update={"force_constants": [[0.0] * 3] * 3})
    with pytest.raises(ValueError, match="shape"):
        bad.fc_array()


# -- harmonic sampling ---------------------------------------------------------------------
def _energies(frames, fc_doc):
    masses = atomic_masses[np.asarray(fc_doc.reference.numbers)]
    r0 = np.asarray(fc_doc.reference.positions)
    fc = fc_doc.fc_array()
    epot, ekin = [], []
    for f in frames:
        u = (np.asarray(f.positions) - r0).ravel()
        epot.append(0.5 * u @ fc @ u)
        v = np.asarray(f.info["velocities"])
        ekin.append(0.5 * (masses[:, None] * v**2).sum())
    return np.array(epot), np.array(ekin)


def test_classical_equipartition(fc_doc):
    t, n = 300.0, 200
    frames = harmonic_samples(fc_doc, t, n, seed=3)
    epot, ekin = _energies(frames, fc_doc)
    dof = 3 * 32 - 3
    expected = dof / 2 * units.kB * t
    # Each sample's energy is a chi² with `dof` degrees of freedom: relative std sqrt(2/dof).
    tol = 4 * np.sqrt(2 / dof / n)
    assert abs(epot.mean() / expected - 1) < tol
    assert abs(ekin.mean() / expected - 1) < tol
    # The stored harmonic energy is ½uᵀΦu of the stored positions.
    assert np.allclose([f.info["harmonic_energy"] for f in frames], epot)
    # No drift: zero centre-of-mass momentum and zero mean displacement (translations skipped).
    masses = atomic_masses[np.asarray(fc_doc.reference.numbers)]
    p = np.array([(masses[:, None] * np.asarray(f.info["velocities"])).sum(0) for f in frames])
    assert np.abs(p).max() < 1e-10
    # ASE counts 3N degrees of freedom, so its temperature averages (3N-3)/3N of T.
    atoms = frames[0].to_atoms()
    atoms.set_velocities(frames[0].info["velocities"])
    assert atoms.get_kinetic_energy() == pytest.approx(ekin[0])
    temps = []
    for f in frames:
        atoms.set_velocities(f.info["velocities"])
        temps.append(atoms.get_temperature())
    assert abs(np.mean(temps) / (t * dof / 96) - 1) < tol
    assert not frames[0].labelled
    assert frames[5].info["sample"] == 5 and frames[5].info["temperature"] == t


def test_quantum_sampling_has_zero_point_energy(fc_doc):
    t, n = 20.0, 200
    frames = harmonic_samples(fc_doc, t, n, seed=4, quantum=True)
    epot, _ = _energies(frames, fc_doc)
    w2, _, _ = normal_modes(fc_doc)
    w = np.sqrt(w2[3:])
    hbar = units._hbar * units.J * units.s
    # <½ω²q²> = ħω/4 · coth(ħω/2kT) per mode: mostly zero-point at 20 K.
    expected = np.sum(hbar * w / 4 / np.tanh(hbar * w / (2 * units.kB * t)))
    classical = 93 / 2 * units.kB * t
    assert expected > 2 * classical
    assert abs(epot.mean() / expected - 1) < 0.05


def test_sampling_is_reproducible(fc_doc):
    a = harmonic_samples(fc_doc, 500.0, 5, seed=11)
    b = harmonic_samples(fc_doc, 500.0, 8, seed=11)
    c = harmonic_samples(fc_doc, 500.0, 5, seed=12)
    # Sample i depends only on (seed, i): a longer draw starts with the same frames.
    assert [f.positions for f in a] == [f.positions for f in b[:5]]
    assert [f.info["velocities"] for f in a] == [f.info["velocities"] for f in b[:5]]
    assert a[0].positions != c[0].positions
    assert a[0].positions != a[1].positions


def test_sampling_bad_input(fc_doc):
    with pytest.raises(ValueError, match="temperature"):
        harmonic_samples(fc_doc, 0.0, 3, seed=0)
    with pytest.raises(ValueError, match="samples"):
        harmonic_samples(fc_doc, 300.0, 0, seed=0)


def test_harmonic_sampling_maker_job(fc_doc):
    from jobflow import run_locally

    job = HarmonicSamplingMaker().make(fc_doc, 300.0, 4, 1)
    out = run_locally(job, ensure_success=True)[job.uuid][1].output
    assert len(out.frames) == 4
    assert out.frames[2].positions == harmonic_samples(fc_doc, 300.0, 4, 1)[2].positions


# -- aiMD import ---------------------------------------------------------------------------
def _emt_trajectory(n: int) -> list:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=A_EMT, cubic=True)
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        atoms.set_velocities(rng.normal(0, 0.01, atoms.positions.shape))
        atoms.calc = EMT()
        atoms.get_forces()
        images.append(atoms)
    return images


@pytest.mark.parametrize("suffix", [".extxyz", ".traj"])
def test_import_trajectory(tmp_path, suffix):
    images = _emt_trajectory(7)
    path = tmp_path / f"aimd{suffix}"
    write(path, images)
    frames = import_trajectory(path, every=2, max_frames=3)
    assert [f.info["aimd_index"] for f in frames] == [0, 2, 4]
    for f in frames:
        ref = images[f.info["aimd_index"]]
        assert f.labelled and f.info["source"] == "aimd"
        assert f.energy == pytest.approx(ref.get_potential_energy())
        assert np.allclose(f.forces, ref.get_forces())
        assert np.allclose(f.positions, ref.positions)
    assert len(import_trajectory(path)) == 7


def test_import_trajectory_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        import_trajectory(tmp_path / "missing.extxyz")
    junk = tmp_path / "junk.extxyz"
    junk.write_text("this is not\na trajectory\n")
    with pytest.raises(ValueError, match="could not read"):
        import_trajectory(junk)
    unlabelled = tmp_path / "unlabelled.extxyz"
    write(unlabelled, [bulk("Cu", "fcc", a=A_EMT, cubic=True)])
    with pytest.raises(ValueError, match="frame 0 has no energy"):
        import_trajectory(unlabelled)
    good = tmp_path / "good.extxyz"
    write(good, _emt_trajectory(1))
    with pytest.raises(ValueError, match="every"):
        import_trajectory(good, every=0)
    with pytest.raises(ValueError, match="max_frames"):
        import_trajectory(good, max_frames=0)


# -- the flow ------------------------------------------------------------------------------
def test_force_constants_maker_flow(tmp_path, fc_doc):
    from jobflow import run_locally

    from active_mlip.stores import StoreSettings, make_job_store
    from makers.labelling import ASECalculatorLabeller
    from makers.sampling import ForceConstantsMaker

    labeller = ASECalculatorLabeller(calculator="ase.calculators.emt.EMT")
    flow = ForceConstantsMaker(labeller=labeller).make(cu_supercell())
    store = make_job_store(StoreSettings(local_path=tmp_path))
    responses = run_locally(flow, store=store, ensure_success=True)
    out = responses[flow.jobs[-1].uuid][1].output
    assert np.allclose(out.fc_array(), fc_doc.fc_array(), atol=1e-8)
    assert out.labeller_hash == labeller.identity().settings_hash
    assert out.reference.energy == pytest.approx(fc_doc.reference.energy)
    # The force constants went to the data store, not inline into the job document.
    store.connect()
    doc = store.docs_store.query_one({"uuid": flow.jobs[-1].uuid})
    assert "blob_uuid" in str(doc["output"]["force_constants"])


def test_force_constants_maker_rejects_unsupported_elements():
    from makers.labelling import ASECalculatorLabeller
    from makers.sampling import ForceConstantsMaker

    labeller = ASECalculatorLabeller(calculator="ase.calculators.emt.EMT")
    cui = Frame.from_atoms(bulk("CuI", "zincblende", a=6.054, cubic=True))
    with pytest.raises(ValueError, match=r"\['I'\]"):
        ForceConstantsMaker(labeller=labeller).make(cui)
    with pytest.raises(ValueError, match="displacement"):
        ForceConstantsMaker(displacement=-0.01)
