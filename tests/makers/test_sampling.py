"""Force constants, harmonic sampling and aiMD import, checked on EMT copper."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.data import atomic_masses
from ase.io import write

from active_mlip.core.frames import Frame
from active_mlip.makers.sampling import (
    ForceConstantsDocument,
    HarmonicSamplingMaker,
    compute_force_constants,
    displacement_frames,
    frequency_thz,
    harmonic_samples,
    import_trajectory,
    normal_modes,
    unstable_modes,
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


# -- unstable modes ------------------------------------------------------------------------
def bcc_cu_supercell() -> Frame:
    """bcc Cu at fcc's volume per atom, 2x2x2 conventional cells (16 atoms).

    bcc is a saddle of EMT copper (the Bain path leads to fcc): a maximum along six
    degenerate zone-boundary modes of this supercell.
    """
    return Frame.from_atoms(bulk("Cu", "bcc", a=A_EMT / 2 ** (1 / 3), cubic=True) * (2, 2, 2))


@pytest.fixture(scope="module")
def bcc_fc_doc() -> ForceConstantsDocument:
    return compute_force_constants(bcc_cu_supercell(), EMTLabeller(), displacement=0.01)


def _mode_amplitudes(frames, fc_doc, key=None):
    """Mass-weighted normal-mode amplitudes of displacements (or ``info[key]`` velocities)."""
    _, vecs, masses = normal_modes(fc_doc)
    r0 = np.asarray(fc_doc.reference.positions)
    out = []
    for f in frames:
        x = np.asarray(f.info[key]) if key else np.asarray(f.positions) - r0
        out.append(vecs.T @ (np.sqrt(masses) * x.ravel()))
    return np.array(out)


def test_frequency_unit_is_phonopys():
    # ω² = 1 eV/(Å² amu): ω = 1/ASE-time; ν = ω/2π = 15.6333 THz (phonopy's VaspToTHz).
    assert frequency_thz(1.0) == pytest.approx(15.633302, rel=1e-6)
    assert frequency_thz(-4.0) == pytest.approx(-2 * 15.633302, rel=1e-6)
    assert frequency_thz(0.0) == 0.0


def test_frequencies_match_phonopy(bcc_fc_doc):
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    ref = bcc_fc_doc.reference
    unit = PhonopyAtoms(numbers=ref.numbers, cell=ref.cell, positions=ref.positions)
    ph = Phonopy(unit, supercell_matrix=np.eye(3, dtype=int), primitive_matrix="P")
    n = ref.n_atoms
    ph.force_constants = bcc_fc_doc.fc_array().reshape(n, 3, n, 3).transpose(0, 2, 1, 3)
    expected = np.sort(ph.get_frequencies([0, 0, 0]))  # THz, imaginary as negative
    w2, _, _ = normal_modes(bcc_fc_doc)
    assert frequency_thz(w2) == pytest.approx(expected, rel=1e-5, abs=1e-4)
    # The unstable modes are phonopy's negative frequencies.
    modes = unstable_modes(bcc_fc_doc)
    assert len(modes) == 6 == int((expected < -0.1).sum())
    assert [m.frequency_thz for m in modes] == pytest.approx(expected[:6], rel=1e-5)
    assert bcc_fc_doc.unstable_modes == modes  # filled when the force constants were made


def test_unstable_modes_sort_below_the_translations(bcc_fc_doc):
    modes = unstable_modes(bcc_fc_doc)
    w2, _, _ = normal_modes(bcc_fc_doc)
    # ω² < 0 sorts first: the most unstable modes are 0..5, the translations 6..8.
    assert [m.index for m in modes] == list(range(6))
    assert np.abs(w2[6:9]).max() < 1e-10
    for m in modes:
        assert m.omega2 == w2[m.index] < -1e-3
        assert m.frequency_thz == pytest.approx(-np.sqrt(-m.omega2) * 15.633302, rel=1e-6)
        assert m.action == "skipped"
    assert [m.omega2 for m in modes] == pytest.approx([modes[0].omega2] * 6)  # degenerate


def test_stable_crystals_record_no_unstable_mode(fc_doc):
    assert fc_doc.unstable_modes == [] and unstable_modes(fc_doc) == []
    # Documents stored before the field existed still load, with no modes.
    old = fc_doc.model_dump(mode="json", exclude={"unstable_modes"})
    assert ForceConstantsDocument.model_validate(old).unstable_modes == []


def test_cui_under_chgnet_has_no_unstable_mode():
    from pymatgen.io.ase import AseAtomsAdaptor

    from active_mlip.makers.labelling import CHGNetLabeller
    from active_mlip.workflows.materials import default_supercell, get_structure

    atoms = AseAtomsAdaptor.get_atoms(get_structure("CuI")) * default_supercell("CuI")
    doc = compute_force_constants(Frame.from_atoms(atoms), CHGNetLabeller())
    # Zincblende: zero forces by symmetry, and every mode stable.
    assert np.abs(doc.reference.forces).max() < 1e-4
    assert doc.unstable_modes == []
    w2, _, _ = normal_modes(doc)
    assert w2[3] > 0


def test_constructed_negative_mode_is_recorded_and_not_sampled(fc_doc, caplog):
    # Lower one optical mode e of D = M^-1/2 Φ M^-1/2 to ω² = -δ: Φ' = Φ - (ω_e² + δ) M^1/2 e eᵀ
    # M^1/2. e is orthogonal to the translations, so the acoustic sum rule still holds.
    w2, vecs, masses = normal_modes(fc_doc)
    k, delta = 50, 0.004
    sqrt_m = np.sqrt(masses)
    e = vecs[:, k]
    fc = fc_doc.fc_array() - (w2[k] + delta) * np.outer(sqrt_m * e, sqrt_m * e)
    doc = fc_doc.model_copy(update={"force_constants": fc.tolist()})
    modes = unstable_modes(doc)
    assert len(modes) == 1
    (mode,) = modes
    assert mode.index == 0 and mode.omega2 == pytest.approx(-delta, abs=1e-12)
    assert mode.frequency_thz == pytest.approx(-np.sqrt(delta) * 15.633302, rel=1e-6)
    # The samples neither move nor have velocity along it; every other optical mode moves.
    with caplog.at_level("WARNING", logger="active_mlip.makers.sampling"):
        frames = harmonic_samples(doc, 300.0, 10, seed=2)
    assert "unstable modes" in caplog.text
    _, new_vecs, _ = normal_modes(doc)
    assert abs(new_vecs[:, 0] @ e) == pytest.approx(1.0)
    q = _mode_amplitudes(frames, doc)
    qdot = _mode_amplitudes(frames, doc, key="velocities")
    assert np.abs(q[:, 0]).max() < 1e-10 * np.abs(q).max()
    assert np.abs(qdot[:, 0]).max() < 1e-10 * np.abs(qdot).max()
    moving = (np.abs(q) > 1e-8 * np.abs(q).max()).all(axis=0)
    assert moving.sum() == 3 * 32 - 3 - 1


def test_harmonic_sampling_job_records_skipped_modes(bcc_fc_doc):
    from jobflow import run_locally

    job = HarmonicSamplingMaker().make(bcc_fc_doc, 300.0, 6, 5)
    out = run_locally(job, ensure_success=True)[job.uuid][1].output
    assert out.skipped_modes == unstable_modes(bcc_fc_doc)
    assert len(out.skipped_modes) == 6
    q = _mode_amplitudes(out.frames, bcc_fc_doc)
    assert np.abs(q[:, :9]).max() < 1e-10 * np.abs(q).max()  # 6 unstable + 3 translations
    assert (np.abs(q[:, 9:]) > 0).all()
    stable = harmonic_samples(bcc_fc_doc, 300.0, 6, 5)
    assert [f.positions for f in out.frames] == [f.positions for f in stable]


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

    from active_mlip.makers.labelling import ASECalculatorLabeller
    from active_mlip.makers.sampling import ForceConstantsMaker
    from active_mlip.stores.job_store import StoreSettings, make_job_store

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
    from active_mlip.makers.labelling import ASECalculatorLabeller
    from active_mlip.makers.sampling import ForceConstantsMaker

    labeller = ASECalculatorLabeller(calculator="ase.calculators.emt.EMT")
    cui = Frame.from_atoms(bulk("CuI", "zincblende", a=6.054, cubic=True))
    with pytest.raises(ValueError, match=r"\['I'\]"):
        ForceConstantsMaker(labeller=labeller).make(cui)
    with pytest.raises(ValueError, match="displacement"):
        ForceConstantsMaker(displacement=-0.01)
